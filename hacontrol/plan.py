"""The vocabulary of the core: actions, plans, their kinds, alert kinds and action results.

Actions are values the executor runs in order. Each names its own precondition in its
docstring; the executor's implementation re-checks it on fresh data before changing anything.
``targets()`` names the nodes an action acts on and ``routes`` says whether it changes the
router: after a plan, the controller waits for fresh probes of exactly those.
A plan is a rule's answer: its actions, in order, with the rule's name and a one-line reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from hacontrol.routing import Membership


class AlertKind(StrEnum):
    """What an alert mail is about (its subject line, dedup key and ``X-Hacontrol-Kind``)."""

    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    SWITCHOVER_ROLLED_BACK = "switchover_rolled_back"
    HALT = "halt"
    NO_CANDIDATE = "no_candidate"
    CANDIDATE_INCOMPLETE = "candidate_incomplete"
    FAILOVER_BLOCKED = "failover_blocked"
    NO_QUORUM = "no_quorum"
    NO_PRIMARY = "no_primary"
    PRIMARY_READ_ONLY = "primary_read_only"
    UNREACHABLE_PRIMARY = "unreachable_primary"
    ERRANT_TRANSACTIONS = "errant_transactions"
    ROUTER_WRITER_MISMATCH = "router_writer_mismatch"
    PAUSED_CHANGE_WITHHELD = "paused_change_withheld"
    FENCE_FAILED = "fence_failed"
    REJOIN_FAILED = "rejoin_failed"
    REPOINT_FAILED = "repoint_failed"
    REBUILD_FAILED = "rebuild_failed"
    JOURNAL_UNWRITABLE = "journal_unwritable"
    JOURNAL_LOW_SPACE = "journal_low_space"
    ROUTER_NOT_UPDATED = "router_not_updated"
    """A failover or switchover promoted a node but could not update the router."""
    CLUSTER_CRASHED = "cluster_crashed"
    """A worker of the cluster's controller crashed (a bug): halted, restarted or not."""

    @property
    def halts(self) -> bool:
        """No automatic change until an operator acts: the ``on_halt`` hook runs too."""
        return self in (AlertKind.HALT, AlertKind.NO_CANDIDATE, AlertKind.CANDIDATE_INCOMPLETE)


class _OneNode:
    """Mixin: an action on its ``node``."""

    node: str
    routes: ClassVar[bool] = False

    def targets(self) -> tuple[str, ...]:
        return (self.node,)


class _Nodes:
    """Mixin: an action on every node of ``nodes``, concurrently."""

    nodes: tuple[str, ...]
    routes: ClassVar[bool] = False

    def targets(self) -> tuple[str, ...]:
        return self.nodes


class _NoNode:
    """Mixin: an action on no node (the router, a hook, a mail)."""

    routes: ClassVar[bool] = False

    def targets(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class RouteFence(_NoNode):
    """Take ``node`` out of the router's writer and reader groups (no writer for a moment)."""

    node: str
    required: bool = False  # a dead primary takes no writes anyway: failure is logged, not fatal
    routes: ClassVar[bool] = True


@dataclass(frozen=True)
class Drain(_NoNode):
    """Stop new writes from starting on ``node``, the router's writer, and wait at most
    ``timeout`` seconds until what runs there has finished: ProxySQL sets its writer row
    OFFLINE_SOFT and waits until none of its connections is in use (new statements are held
    until a writer is back), HAProxy sets it DRAIN and waits until it has no session (new
    connections are refused). The first step of a switchover: past the deadline the plan goes
    on, and its Fence ends what is left. Undone by any Route (the rollback's puts it back)."""

    node: str
    timeout: float
    required: bool = True
    routes: ClassVar[bool] = True


@dataclass(frozen=True)
class Route(_NoNode):
    """Make the router do ``desired`` (exactly one writer)."""

    desired: Membership
    required: bool = True
    hidden_change: bool = False
    """An operator's maintenance command: the hidden group may change (never otherwise)."""
    no_writer: bool = False
    """A fleet instance while no node carries the leader's publication: no writer at all,
    deliberately (writes wait; never a stale primary)."""
    routes: ClassVar[bool] = True


@dataclass(frozen=True)
class WaitApplied(_OneNode):
    """Wait until ``node`` applied everything it received from its source.

    ``peers``: replicas whose IO threads the plan stopped with ``node``'s. First, on fresh
    positions, ``node`` must have received everything each of them received and none of
    their IO threads may run: a source that answered again while they stopped may have had a
    transaction acknowledged by one of them only (semi-sync), which promoting ``node`` would
    lose. Otherwise it fails (required: the plan stops before its promotion)."""

    node: str
    timeout: float
    required: bool = True
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Promote(_OneNode):
    """Make ``node`` (still a replica of ``old_primary``) the primary: writable, no source.

    The point of no return of a plan. ``finish_half_done``: the journal says this very
    promotion began before a controller crash; a node found read-only without replication is
    then that half-done promotion, and is made writable (it had applied everything)."""

    node: str
    old_primary: str
    required: bool = True
    finish_half_done: bool = False


@dataclass(frozen=True)
class Repoint(_Nodes):
    """Make every node of ``nodes`` replicate from ``new_primary`` (GTID), concurrently."""

    nodes: tuple[str, ...]
    new_primary: str
    required: bool = False  # a replica that cannot be repointed ends up in broken, not a halt


@dataclass(frozen=True)
class Fence(_OneNode):
    """``read_only=ON`` on ``node`` and its application connections killed."""

    node: str
    required: bool = True


@dataclass(frozen=True)
class Rejoin(_OneNode):
    """Make the fenced old primary ``node`` a replica of ``new_primary``, if not errant."""

    node: str
    new_primary: str
    required: bool = True


@dataclass(frozen=True)
class SetIOThreads(_Nodes):
    """Stop (or start) the IO thread of every node of ``nodes``, concurrently."""

    nodes: tuple[str, ...]
    running: bool
    required: bool = False


@dataclass(frozen=True)
class CheckTransactions(_OneNode):
    """Switchover pre-flight on the live primary: no transaction older than ``max_age``."""

    node: str
    max_age: float
    required: bool = True


@dataclass(frozen=True)
class CatchUp(_OneNode):
    """Wait until replica ``node`` executed everything ``source`` (now read-only) wrote."""

    node: str
    source: str
    timeout: float
    required: bool = True


@dataclass(frozen=True)
class SetWritable(_OneNode):
    """``read_only`` OFF (``on``) or ON on ``node``: the rollback of a switchover."""

    node: str
    on: bool
    required: bool = True
    semi_sync_source: bool | None = None
    """With ``on``: the semi-sync source setting to restore (the fence turned it off)."""


@dataclass(frozen=True)
class RequireReadOnly(_OneNode):
    """Go on only if ``node`` is read-only: a guard before the old primary of a switchover
    whose promotion failed is made writable again (never two writers)."""

    node: str
    required: bool = True


@dataclass(frozen=True)
class Publish(_OneNode):
    """Fleet: hold the primary lock on ``node``, on the lease session that holds this
    instance's leader lock there, after releasing it wherever else this instance holds it:
    every instance's router then sends writes to ``node``. Precondition: this instance holds
    the leader lock on ``node``."""

    node: str
    required: bool = False  # unpublished, the followers' routers have no writer: not a halt


@dataclass(frozen=True)
class Rebuild(_OneNode):
    """Replace the datadir of the fenced ``node`` with a copy of replica ``source``'s
    (mariadb-backup), then make it replicate from ``primary`` (docs/rebuild.md). Long: its
    progress is in the status. Any failure leaves the node stopped with its old datadir."""

    node: str
    source: str
    primary: str
    required: bool = True


@dataclass(frozen=True)
class Hook(_NoNode):
    """Run the operator's command for ``phase`` (when configured) with ``context``.

    ``required``: a non-zero exit (or a timeout) stops the plan: ``pre_failover`` is a veto."""

    phase: str
    context: tuple[tuple[str, str], ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Notify(_NoNode):
    """An alert: logged, and mailed by the notifier's background poster."""

    kind: AlertKind
    node: str | None
    summary: str
    reason: str
    sections: tuple[tuple[str, str], ...] = ()
    required: bool = False


Action = (
    RouteFence
    | Drain
    | Route
    | WaitApplied
    | Promote
    | Repoint
    | Fence
    | Rejoin
    | SetIOThreads
    | CheckTransactions
    | CatchUp
    | SetWritable
    | RequireReadOnly
    | Publish
    | Rebuild
    | Hook
    | Notify
)
"""Every action type, once: the journal and the executor take their lists from here."""


class PlanKind(StrEnum):
    """What a plan does; its id starts with it, and the after-plan rules branch on it."""

    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    REJOIN = "rejoin"
    FENCE = "fence"
    REPOINT = "repoint"
    ROUTE = "route"
    PUBLISH = "publish"
    """Fleet: the leader publishes the primary (the primary lock)."""
    MAINTENANCE = "maintenance"
    REBUILD = "rebuild"
    """An operator's rebuild of one node (one Rebuild action)."""
    ROLLBACK = "rollback"
    """The rollback of a plan cut before its promotion by a controller restart."""
    HALT = "halt"
    """Alerts only, and no automatic change until the condition is gone or acknowledged."""
    ALERT = "alert"
    NONE = "none"

    @property
    def journaled(self) -> bool:
        """Multi-step plans: journaled before their first step, finished after a crash."""
        return self in (PlanKind.FAILOVER, PlanKind.SWITCHOVER, PlanKind.REJOIN, PlanKind.REBUILD)


@dataclass(frozen=True)
class Plan:
    rule: str
    reason: str
    actions: tuple[Action, ...] = ()
    kind: PlanKind = PlanKind.NONE
    deadline: float | None = None
    """Seconds from the start: past it, before the first Promote, the plan rolls back."""
    rollback: tuple[Action, ...] = ()
    """Run when the plan stops before its first Promote (switchover)."""

    @property
    def changes_cluster(self) -> bool:
        return any(not isinstance(a, Notify) for a in self.actions)

    @property
    def changes_nodes(self) -> bool:
        """It acts on a database node (not only on the router or by mail)."""
        return any(a.targets() for a in self.actions)

    @property
    def point_of_no_return(self) -> int:
        """Index of the first Promote (past it the plan is always finished), or the end."""
        return next(
            (i for i, a in enumerate(self.actions) if isinstance(a, Promote)), len(self.actions)
        )

    @property
    def promote(self) -> Promote | None:
        return next((a for a in self.actions if isinstance(a, Promote)), None)


LEASE_LOST = "lease_lost"
"""``ActionResult.detail`` key: refused because this instance no longer held a fleet's lease."""


@dataclass(frozen=True)
class ActionResult:
    """What one action did: the one result type, from an action on one node (``actions/``)
    to a step of a plan (the executor sets ``index`` and ``seconds``).

    ``changed``: something was changed (a statement sent, a router row moved). ``detail``:
    facts for the log (the statements run, positions), and ``half_done_promotion`` when
    promote found a read-only node without replication."""

    action: str
    node: str | None
    ok: bool
    changed: bool
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    index: int = -1
    seconds: float = 0.0
