"""The controller's memory, as explicit frozen records: no hidden flags.

``ControllerState`` is what the rules read and return updated (halts, the recovery block,
quarantined old primaries, alerts already sent, back-offs). A ``Decision`` is a rule's answer:
the plan and the state after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hacontrol.plan import Plan, PlanKind


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
    ERRANT = "errant"
    """Subject: the quarantined old primary with errant transactions."""
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
class ControllerState:
    started_at: float = 0.0
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


@dataclass(frozen=True)
class Decision:
    plan: Plan
    state: ControllerState
