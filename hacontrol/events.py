"""Events: small immutable values on the controller's queue. Nothing else lives here.

Every event carries ``at``, a monotonic timestamp (``time.monotonic()``) taken where it was
observed. Probes and the router probe produce them; operator commands, plan results and timer
ticks are events too, so the single decision task sees one ordered stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hacontrol.flavors.base import NodeStatus
    from hacontrol.plan import ActionResult, PlanKind
    from hacontrol.routing import Membership


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one node. Reachable form: ``status`` set; unreachable form: ``error`` set."""

    node: str
    at: float
    rtt: float | None
    status: NodeStatus | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and self.error is None


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The connection kept open to a node closed: a crashed server closes it at once."""

    node: str
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseObserved:
    """One round trip on this instance's lease session to a node (a keepalive, or an attempt
    to take the leader lock): what the node says about the fleet's two locks.

    ``at``: when the round trip was sent (a lock it confirmed counts from then). ``session``:
    this instance's lease session (its connection id); None with ``error`` set when there is
    none (cannot connect, or the session broke: the locks it held are gone). ``leader`` and
    ``primary``: the connection ids holding ``hacontrol.<cluster>.leader`` and
    ``hacontrol.<cluster>.primary`` on that node (None: free). ``holder``: the client address
    of the leader lock's holder, when known. ``jitter``: a random number in [0, 1) drawn by the
    edge, for the rules' random back-off."""

    node: str
    at: float
    session: int | None = None
    leader: int | None = None
    primary: int | None = None
    error: str | None = None
    holder: str | None = None
    jitter: float = 0.0

    @property
    def ok(self) -> bool:
        return self.session is not None and self.error is None


@dataclass(frozen=True, slots=True)
class RouterProbeResult:
    """The router's real state, read back; ``error`` set when it could not be read."""

    kind: str
    at: float
    membership: Membership | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.membership is not None and self.error is None


@dataclass(frozen=True, slots=True)
class PlanFinished:
    """The executor ran a plan: the facts the after-plan rules need, typed."""

    at: float
    plan_id: str
    rule: str
    kind: PlanKind
    ok: bool
    reason: str
    failed_at: int | None
    """Index of the required action that failed and stopped the plan."""
    steps: tuple[ActionResult, ...]
    seconds: float
    promoted: str | None = None
    """The node this plan promoted (in this run, or before a controller restart)."""
    touched: frozenset[str] = frozenset()
    """The nodes its actions acted on."""
    routed: bool = False
    """It acted on the router."""
    rolled_back: bool = False
    """It stopped before its point of no return and its rollback ran."""
    lease_lost: bool = False
    """It stopped because this instance no longer held the fleet's lease (nothing undone)."""


COMMANDS = ("switchover", "maintenance", "ack", "pause", "resume")


@dataclass(frozen=True)
class CommandResult:
    """The controller's answer to an operator command. ``ok`` False: refused or failed."""

    ok: bool
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


class ReplyTo(Protocol):
    """Where a command's answer goes (an ``asyncio.Future`` in the runtime)."""

    def done(self) -> bool: ...

    def set_result(self, result: CommandResult, /) -> None: ...


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """An operator's command (API or CLI), on the same queue as every other event.

    switchover: ``node`` is the optional target; maintenance: ``node`` and ``on``; rebuild:
    ``node``, ``source`` and ``dry_run``;
    ack, pause, resume: no arguments. The controller answers through ``reply``.
    """

    at: float
    command: str
    node: str | None = None
    on: bool | None = None
    reply: ReplyTo | None = field(default=None, compare=False)
    source: str | None = None
    """rebuild: the node to copy from (None: the best healthy replica)."""
    dry_run: bool = False
    """rebuild: only say whether it would run, and from which source."""


@dataclass(frozen=True, slots=True)
class CallerGone:
    """The caller of a deferred command stopped waiting (its own timeout): the command is
    dropped, never run late. The decision task tells itself, before a plan's result."""

    at: float
    command: OperatorCommand


@dataclass(frozen=True, slots=True)
class Tick:
    """Timer tick: lets time-based rules (stalled heartbeats, blocks) fire without a probe."""

    at: float


@dataclass(frozen=True, slots=True)
class JournalStatus:
    """The journal's health: from its periodic check (``free_bytes`` known) or from a record
    that could not be written (``writable`` False)."""

    at: float
    writable: bool
    reason: str = ""
    free_bytes: int | None = None
    low: bool = False
    """Writable, but less room left than an operator should let it get to."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Queue sentinel: the decision task finishes what it holds and returns."""

    at: float
    reason: str


Event = (
    ProbeResult
    | ConnectionLost
    | LeaseObserved
    | RouterProbeResult
    | PlanFinished
    | OperatorCommand
    | CallerGone
    | Tick
    | JournalStatus
    | Stop
)
