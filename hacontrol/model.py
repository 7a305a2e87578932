"""The controller's memory, as explicit frozen records: no hidden flags.

``ControllerState`` is what the rules read and return updated (halts, the recovery block,
quarantined old primaries, alerts already sent, back-offs). A ``Decision`` is a rule's answer:
the plan and the state after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hacontrol.plan import Plan


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
    alerted: frozenset[str] = frozenset()
    """Keys of conditions already alerted; a key leaves when its condition is gone."""
    paused: bool = False
    """An operator paused automatic changes; observation goes on."""
    maintenance: frozenset[str] = frozenset()
    """Nodes an operator put in maintenance through hacontrol (hidden, never promoted)."""
    route_retry_at: float = 0.0
    """After a failed router change, the next attempt waits until then."""
    first_seen: Mapping[str, float] = field(default_factory=dict)
    """When a condition that alerts only if it lasts was first seen (alert key -> time)."""
    retry_at: Mapping[str, float] = field(default_factory=dict)
    """``fence:node`` / ``rejoin:node`` -> not before: a failed action is not hammered."""


@dataclass(frozen=True)
class Decision:
    plan: Plan
    state: ControllerState
