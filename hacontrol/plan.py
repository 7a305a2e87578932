"""The vocabulary of the core: actions, plans and their kinds.

Actions are values the executor runs in order. Each names its own precondition in its
docstring; the executor's implementation re-checks it on fresh data before changing anything.
A plan is a rule's answer: its actions, in order, with the rule's name and a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hacontrol.routing import Membership


@dataclass(frozen=True)
class RouteFence:
    """Take ``node`` out of the router's writer and reader groups (no writer for a moment)."""

    node: str
    required: bool = False  # a dead primary takes no writes anyway: failure is logged, not fatal


@dataclass(frozen=True)
class Route:
    """Make the router do ``desired`` (exactly one writer)."""

    desired: Membership
    required: bool = True
    hidden_change: bool = False
    """An operator's maintenance command: the hidden group may change (never otherwise)."""


@dataclass(frozen=True)
class WaitApplied:
    """Wait until ``node`` applied everything it received from its source."""

    node: str
    timeout: float
    required: bool = True


@dataclass(frozen=True)
class Promote:
    """Make ``node`` (still a replica of ``old_primary``) the primary: writable, no source."""

    node: str
    old_primary: str
    required: bool = True


@dataclass(frozen=True)
class Repoint:
    """Make every node of ``nodes`` replicate from ``new_primary`` (GTID), concurrently."""

    nodes: tuple[str, ...]
    new_primary: str
    required: bool = False  # a replica that cannot be repointed ends up in broken, not a halt


@dataclass(frozen=True)
class Fence:
    """``read_only=ON`` on ``node`` and its application connections killed."""

    node: str
    required: bool = True


@dataclass(frozen=True)
class Rejoin:
    """Make the fenced old primary ``node`` a replica of ``new_primary``, if not errant."""

    node: str
    new_primary: str
    required: bool = True


@dataclass(frozen=True)
class SetIOThreads:
    """Stop (or start) the IO thread of every node of ``nodes``, concurrently."""

    nodes: tuple[str, ...]
    running: bool
    required: bool = False


@dataclass(frozen=True)
class CheckTransactions:
    """Switchover pre-flight on the live primary: no transaction older than ``max_age``."""

    node: str
    max_age: float
    required: bool = True


@dataclass(frozen=True)
class CatchUp:
    """Wait until replica ``node`` executed everything ``source`` (now read-only) wrote."""

    node: str
    source: str
    timeout: float
    required: bool = True


@dataclass(frozen=True)
class SetWritable:
    """``read_only`` OFF (``on``) or ON on ``node``: the rollback of a switchover."""

    node: str
    on: bool
    required: bool = True
    semi_sync_source: bool | None = None
    """With ``on``: the semi-sync source setting to restore (the fence turned it off)."""


@dataclass(frozen=True)
class Hook:
    """Run the operator's command for ``phase`` (when configured) with ``context``.

    ``required``: a non-zero exit (or a timeout) stops the plan: ``pre_failover`` is a veto."""

    phase: str
    context: tuple[tuple[str, str], ...] = ()
    required: bool = False


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

    @property
    def halts(self) -> bool:
        """No automatic change until an operator acts: the ``on_halt`` hook runs too."""
        return self in (AlertKind.HALT, AlertKind.NO_CANDIDATE, AlertKind.CANDIDATE_INCOMPLETE)


@dataclass(frozen=True)
class Notify:
    kind: AlertKind
    node: str | None
    summary: str
    reason: str
    sections: tuple[tuple[str, str], ...] = ()
    required: bool = False


Action = (
    RouteFence
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
    | Hook
    | Notify
)


class PlanKind(StrEnum):
    """What a plan does; its id starts with it, and the after-plan rules branch on it."""

    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    REJOIN = "rejoin"
    FENCE = "fence"
    REPOINT = "repoint"
    ROUTE = "route"
    MAINTENANCE = "maintenance"
    ROLLBACK = "rollback"
    """The rollback of a plan cut before its promotion by a controller restart."""
    HALT = "halt"
    """Alerts only, and no automatic change until the condition is gone or acknowledged."""
    ALERT = "alert"
    NONE = "none"

    @property
    def journaled(self) -> bool:
        """Multi-step plans: journaled before their first step, finished after a crash."""
        return self in (PlanKind.FAILOVER, PlanKind.SWITCHOVER, PlanKind.REJOIN)


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
