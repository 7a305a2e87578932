"""The controller's memory, as explicit frozen records: no hidden flags.

``Model`` is everything the decision task knows about one cluster: the view folded from
events, and the controller's own state. ``step`` (``hacontrol.step``) takes a model and an event
and returns the next model and the effects to perform; nothing else changes it.

``ControllerState`` is what the automatic rules read and return updated (halts, the recovery
block, quarantined old primaries, alerts already sent, back-offs). A ``Decision`` is a rule's
answer: the plan and the state after it. ``Persisted`` is the part that outlives a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hacontrol.events import OperatorCommand
from hacontrol.plan import Plan, PlanKind
from hacontrol.view import ClusterView


class Condition(StrEnum):
    """What an alert is about. Each alerts once per subject, and is forgotten when it is gone
    (``rules.alerts.prune``), so that it alerts again if it returns."""

    NO_QUORUM = "no_quorum"
    HALT = "halt"
    """Subject: the problem code that halted every change (two writers)."""
    FAILOVER_BLOCKED = "failover_blocked"
    """Subject: the dead primary, while the recovery block holds."""
    NO_CANDIDATE = "no_candidate"
    """Subject: the dead primary: no replica can be promoted, or the best one is incomplete."""
    UNREACHABLE_PRIMARY = "unreachable_primary"
    """Subject: the primary that only the controller cannot reach."""
    FAILOVER_UNDER_WAY = "failover_under_way"
    """Subject: the lost primary, while a failover its leader left (replicas' IO threads stopped)
    has a node that cannot be read (``rules.failure.failover_under_way``)."""
    ERRANT = "errant"
    """Subject: the quarantined old primary with errant transactions."""
    ERRANT_REPLICA = "errant_replica"
    """Subject: a detached or stray node left as it is: errant transactions, or (detached) an
    empty GTID position."""
    WRITER_MISMATCH = "writer_mismatch"
    """Subject: the primary the router's writer should be but is not moved to."""
    NO_PRIMARY = "no_primary"
    """No primary can be named, or the primary is read-only."""
    PAUSED = "paused"
    """Subject: the rule whose change a pause withheld."""


@dataclass(frozen=True)
class AlertKey:
    condition: Condition
    subject: str = ""


RetryKey = tuple[PlanKind, str]
"""(what failed, on which node): a failed fence, rejoin or repoint waits before its retry."""


@dataclass(frozen=True)
class Halt:
    code: str
    reason: str
    since: float


@dataclass(frozen=True)
class Quarantined:
    """An old primary after a failover: kept in broken until rejoined or repaired."""

    node: str
    new_primary: str
    since: float
    errant: str | None = None


@dataclass(frozen=True)
class Consent:
    """An operator's explicit consent (``hacontrol maintenance NODE on`` while the failover
    away from ``dead`` waited for NODE): fail over without ``node``, for this incident only.
    Journaled. The incident: ``dead`` at ``position``, what it had executed at its last good
    probe (None: not read since the controller started), and ``held``, what its replicas that
    answered held then (None: unreadable)."""

    node: str
    dead: str
    position: str | None
    held: str | None
    at: float


@dataclass(frozen=True)
class JournalHealth:
    """Whether the journal can be written, as last checked or written
    (``rules.journal`` says what a plan may do without it)."""

    writable: bool = True
    reason: str = ""
    since: float | None = None
    """When it became unwritable (monotonic)."""
    low: bool = False
    free_bytes: int | None = None


@dataclass(frozen=True)
class ControllerState:
    halt: Halt | None = None
    blocked_until: float | None = None
    """No automatic failover before this time (monotonic) unless acknowledged."""
    last_failover_at: float | None = None
    quarantined: Mapping[str, Quarantined] = field(default_factory=dict)
    alerted: frozenset[AlertKey] = frozenset()
    """Conditions already alerted; a key leaves when its condition is gone."""
    paused: bool = False
    """An operator paused automatic changes; observation goes on."""
    route_retry_at: float = 0.0
    """After a failed router change, the next attempt waits until then."""
    first_seen: Mapping[AlertKey, float] = field(default_factory=dict)
    """When a condition that alerts only if it lasts was first seen."""
    retry_at: Mapping[RetryKey, float] = field(default_factory=dict)
    """Not before then: a failed fence, rejoin or repoint is not hammered."""
    failed_in_a_row: Mapping[RetryKey, int] = field(default_factory=dict)
    """Consecutive failures of a fence per node (its retry backs off); gone once one works."""
    journal: JournalHealth = JournalHealth()
    consents: tuple[Consent, ...] = ()
    """Operators' consents to fail over without a replica in doubt (``rules.doubt``)."""


@dataclass(frozen=True)
class Decision:
    plan: Plan
    state: ControllerState


@dataclass(frozen=True)
class Intent:
    """A journaled plan that began and did not end: the controller stopped in its middle."""

    plan_id: str
    plan: Plan
    done: frozenset[int] = field(default_factory=frozenset)
    started: frozenset[int] = field(default_factory=frozenset)
    """Steps that began (Promote only): a crash inside one is known as such."""

    def remaining(self) -> Plan:
        actions = tuple(a for i, a in enumerate(self.plan.actions) if i not in self.done)
        return Plan(
            self.plan.rule,
            f"resuming after a controller restart: {self.plan.reason}",
            actions,
            self.plan.kind,
        )


@dataclass(frozen=True)
class Running:
    """The plan the executor runs, until its PlanFinished is stepped (one at a time)."""

    plan_id: str
    plan: Plan
    skip: frozenset[int] = frozenset()
    """Steps done before a controller restart."""
    resumed: bool = False
    command: OperatorCommand | None = None
    """The operator command waiting for this plan's outcome."""
    detect_seconds: float | None = None
    """A failover: from the first failed probe of the primary to the plan's start."""
    preempted: str | None = None
    """Why it is being stopped before its end (a rebuild that a failover must not wait for)."""


@dataclass(frozen=True)
class Settle:
    """After a plan, decide again only on fresh facts: a probe, taken after the plan finished,
    of each node it touched and of the router when it routed (bounded by ``until``)."""

    waiting: frozenset[str] = frozenset()
    """Node names, and "router"."""
    since: float = 0.0
    until: float = 0.0


class LeaseMode(StrEnum):
    """What the lease edge does on its sessions, as the lease rules ask (``rules.lease``)."""

    ACQUIRE = "acquire"
    """Take the leader lock on every node where it is free (and keep what is held)."""
    HOLD = "hold"
    """Keep what is held and read who holds what; take nothing new."""
    RELEASE = "release"
    """Let go of every lock held (the sessions holding them are closed)."""


@dataclass(frozen=True)
class Lease:
    """Leadership of this instance among the instances of one cluster (``controller.fleet``).

    Only the leader changes database nodes; every instance routes its own router. Without
    ``fleet`` this instance is alone and always the leader. With it, the lease rules
    (``rules.lease``) keep this record from the locks the view holds (``ClusterView.locks``):
    the leader holds the leader lock on a majority of ALL configured nodes; it acts only from
    ``ready_at`` (V after it took the majority: the old leader's belief has ended by then), and
    only once every node was probed again since."""

    fleet: bool = False
    mode: LeaseMode = LeaseMode.HOLD
    leader_since: float | None = None
    """A valid majority held since then (monotonic); None: not the leader."""
    ready_at: float | None = None
    """No change before this time: ``leader_since`` plus the lease validity V."""
    unprobed: frozenset[str] = frozenset()
    """Nodes without a probe started since ``ready_at``: the first change waits for them."""
    reprobed: bool = False
    """The nodes were asked to be probed at once when ``ready_at`` passed."""
    partial_since: float | None = None
    """Holding some leader locks but not a majority since then."""
    backoff_until: float = 0.0
    """After letting go, no new attempt before this time (random, so that instances that
    started together do not keep splitting the nodes between them)."""
    jitter: float = 0.0
    """The last random number the lease edge drew, in [0, 1)."""
    changes: int = 0
    """How often leadership changed (taken or lost)."""
    reason: str = "the only instance"

    @property
    def leader(self) -> bool:
        return not self.fleet or self.leader_since is not None

    def acting(self, now: float) -> bool:
        """May this instance change database nodes now?"""
        if not self.fleet:
            return True
        ready = self.ready_at is not None and now >= self.ready_at
        return self.leader_since is not None and ready and not self.unprobed

    def allows(self, plan: Plan, now: float) -> bool:
        return self.acting(now) or not plan.changes_nodes


@dataclass(frozen=True)
class Summary:
    due: float
    """Monotonic time of the next ``cluster_summary`` line."""
    probes: int = 0
    """Probes of the nodes counted up to the last line (the sum of the view's counters)."""


@dataclass(frozen=True)
class Model:
    """Everything the decision task of one cluster knows, in one value."""

    view: ClusterView
    state: ControllerState = ControllerState()
    running: Running | None = None
    settle: Settle = Settle()
    deferred: tuple[OperatorCommand, ...] = ()
    """Operator commands waiting for the running plan to finish, in order."""
    resume: Intent | None = None
    """A plan the journal says began: finished (or undone) before anything new."""
    primary_failing_since: float | None = None
    """When the primary's probes started failing (for the detection time of a failover)."""
    decisions: tuple[Mapping[str, object], ...] = ()
    """The last decisions with their reasons (newest last), for status and tests."""
    last_logged: tuple[str, str] | None = None
    """The last decision logged (rule, reason): an unchanged idle decision is not repeated."""
    decided_at: float | None = field(default=None, compare=False)
    """When ``decide`` last ran (monotonic): a wait that ended since then may change what it
    says (``step.quiet``'s bookkeeping, not compared)."""
    summary: Summary | None = None
    """When the next periodic summary line is due, and what the last one counted."""
    lease: Lease = Lease()
    acting: bool = True
    """False: observe only (no executor): never decide."""
    stopping: bool = False
    """A Stop was stepped: nothing new starts, commands are refused."""
    wall_offset: float = 0.0
    """Wall-clock minus monotonic time at start: plan ids and decision times in wall time."""


@dataclass(frozen=True)
class Persisted:
    """What must outlive a restart; the journal keeps it (in wall-clock time)."""

    paused: bool = False
    maintenance: frozenset[str] = frozenset()
    blocked_until: float | None = None
    last_failover_at: float | None = None
    quarantined: Mapping[str, Quarantined] = field(default_factory=dict)
    consents: tuple[Consent, ...] = ()


def persisted(model: Model) -> Persisted:
    state = model.state
    return Persisted(
        state.paused,
        model.view.maintenance,
        state.blocked_until,
        state.last_failover_at,
        state.quarantined,
        state.consents,
    )
