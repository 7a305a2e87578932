"""Alerts: each condition alerts once and is forgotten when it is gone, so that it alerts again
if it returns. A paused controller withholds changes, never alerts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from hacontrol.model import AlertKey, Condition, ControllerState, Decision
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind
from hacontrol.view import ClusterView, Code


def alert_once(state: ControllerState, key: AlertKey, plan: Plan, alert: Notify) -> Decision:
    if key in state.alerted:
        return Decision(
            replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, Notify))),
            state,
        )
    return Decision(
        replace(plan, actions=(*plan.actions, alert)), replace(state, alerted=state.alerted | {key})
    )


def paused(withheld: Plan, state: ControllerState) -> Decision:
    """Paused: the change is withheld (and its state not taken); alerts still go out, once."""
    plan = Plan(
        "Paused",
        f"paused by an operator: not doing {withheld.rule} ({withheld.reason})",
        kind=PlanKind.ALERT,
    )
    alert = Notify(
        AlertKind.PAUSED_CHANGE_WITHHELD, None, f"paused: {withheld.rule} withheld", plan.reason
    )
    return alert_once(state, AlertKey(Condition.PAUSED, withheld.rule), plan, alert)


def _primary_read_only(view: ClusterView) -> bool:
    node = view.nodes.get(view.primary) if view.primary else None
    return bool(node and node.reachable and node.status and node.status.read_only)


Alive = Callable[[ClusterView, ControllerState, str], bool]

LASTS_WHILE: Mapping[Condition, Alive] = {
    Condition.NO_QUORUM: lambda view, state, subject: not view.quorum.ok,
    Condition.HALT: lambda view, state, code: any(p.code.value == code for p in view.problems),
    Condition.FAILOVER_BLOCKED: lambda view, state, subject: view.has(Code.DEAD_PRIMARY),
    Condition.NO_CANDIDATE: lambda view, state, subject: view.has(Code.DEAD_PRIMARY),
    Condition.UNREACHABLE_PRIMARY: lambda view, state, s: view.has(Code.UNREACHABLE_PRIMARY),
    Condition.ERRANT: lambda view, state, node: node in state.quarantined,
    Condition.WRITER_MISMATCH: lambda view, state, s: view.has(Code.ROUTER_WRITER_IS_NOT_PRIMARY),
    Condition.NO_PRIMARY: lambda view, state, s: (
        view.has(Code.NO_PRIMARY) or _primary_read_only(view)
    ),
    Condition.PAUSED: lambda view, state, subject: state.paused,
}
"""Each condition that alerts, and what keeps it alive (its key is forgotten otherwise)."""


def lasts(key: AlertKey, view: ClusterView, state: ControllerState) -> bool:
    return LASTS_WHILE[key.condition](view, state, key.subject)


def prune(view: ClusterView, state: ControllerState) -> ControllerState:
    """Forget alerts and halts whose condition is gone, so they fire again if it returns."""
    alerted = frozenset(key for key in state.alerted if lasts(key, view, state))
    first_seen = {k: v for k, v in state.first_seen.items() if lasts(k, view, state)}
    halt = state.halt
    # A halt about the dead primary (no candidate, a failover step failed) lasts while the
    # primary is dead; the others while their problem is seen.
    about_dead = halt is not None and halt.code == "FailoverFailed"
    codes = {p.code.value for p in view.problems}
    if (
        halt is not None
        and halt.code not in codes
        and not (about_dead and view.has(Code.DEAD_PRIMARY))
    ):
        halt = None
    return replace(state, alerted=alerted, halt=halt, first_seen=first_seen)
