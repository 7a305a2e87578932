"""Effects: what ``step`` asks the controller to do, as values. The controller performs them in
order and does nothing else; tests read them as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hacontrol.events import CommandResult, OperatorCommand, PlanFinished
from hacontrol.model import LeaseMode, Model, Persisted, Running
from hacontrol.plan import Notify, Plan


@dataclass(frozen=True)
class Log:
    """One JSON log line."""

    event: str
    node: str | None
    level: str
    fields: Mapping[str, object] = field(default_factory=dict)


def log(event: str, node: str | None, level: str, **fields: object) -> Log:
    return Log(event, node, level, fields)


@dataclass(frozen=True)
class StartPlan:
    """Run a plan in the executor, in its own task; its PlanFinished comes back as an event."""

    running: Running


@dataclass(frozen=True)
class CancelPlan:
    """Stop the running plan ``plan_id`` (a rebuild a failover must not wait for): its task is
    cancelled, it undoes what it did and reports back as failed with ``reason``."""

    plan_id: str
    reason: str


@dataclass(frozen=True)
class SendAlert:
    """An alert outside a running plan; ``on_halt``: the on_halt hook runs too."""

    alert: Notify
    plan: Plan
    on_halt: bool = False


@dataclass(frozen=True)
class Reply:
    """The answer to an operator command (when its caller still waits)."""

    command: OperatorCommand
    result: CommandResult


@dataclass(frozen=True)
class Reprobe:
    """Probe these nodes again at once, without waiting for their next interval."""

    nodes: frozenset[str]


@dataclass(frozen=True)
class PersistState:
    """Write the state that outlives a restart to the journal (fsynced)."""

    state: Persisted


@dataclass(frozen=True)
class EndIntent:
    """Close a journaled plan that is not resumed after a restart."""

    plan_id: str
    reason: str
    promoted: str | None = None
    """The plan's candidate when the view shows it promoted (its records could not say so); in
    a fleet, the node the view shows as the primary in place of the plan's dead one."""


@dataclass(frozen=True)
class RecordPlan:
    """A finished plan, for the metrics."""

    finished: PlanFinished
    detect_seconds: float | None


@dataclass(frozen=True)
class SetLeaseMode:
    """Tell the lease edge what to do on its sessions from now on (take, keep, let go)."""

    mode: LeaseMode


Effect = (
    Log
    | StartPlan
    | CancelPlan
    | SendAlert
    | Reply
    | Reprobe
    | PersistState
    | EndIntent
    | RecordPlan
    | SetLeaseMode
)

Step = tuple[Model, tuple[Effect, ...]]
"""What every rule over the whole model returns: the next model and its effects."""
