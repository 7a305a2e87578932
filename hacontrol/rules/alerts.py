"""Alerts: each condition alerts once and is forgotten when it is gone, so that it alerts again
if it returns. A paused controller withholds changes, never alerts.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.model import ControllerState, Decision
from hacontrol.plan import Notify, Plan, PlanKind
from hacontrol.view import ClusterView, Code


def alert_once(state: ControllerState, key: str, plan: Plan, alert: Notify) -> Decision:
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
    alert = Notify("paused_change_withheld", None, f"paused: {withheld.rule} withheld", plan.reason)
    return alert_once(state, f"paused:{withheld.rule}", plan, alert)


def _primary_read_only(view: ClusterView) -> bool:
    node = view.nodes.get(view.primary) if view.primary else None
    return bool(node and node.reachable and node.status and node.status.read_only)


def prune(view: ClusterView, state: ControllerState) -> ControllerState:
    """Forget alerts and halts whose condition is gone, so they fire again if it returns."""
    codes = {p.code.value for p in view.problems}
    keep = set()
    for key in state.alerted:
        kind, _, node = key.partition(":")
        alive = {
            "NoQuorum": not view.quorum.ok,
            "halt": node in codes,
            "blocked": view.has(Code.DEAD_PRIMARY),
            "no_candidate": view.has(Code.DEAD_PRIMARY),
            "unreachable": view.has(Code.UNREACHABLE_PRIMARY),
            "errant": node in state.quarantined,
            "writer_mismatch": view.has(Code.ROUTER_WRITER_IS_NOT_PRIMARY),
            "no_primary": view.has(Code.NO_PRIMARY) or _primary_read_only(view),
            "paused": state.paused,
        }.get(kind, False)
        if alive:
            keep.add(key)
    halt = state.halt
    # A halt about the dead primary (no candidate, a failover step failed) lasts while the
    # primary is dead; the others while their problem is seen.
    about_dead = halt is not None and halt.code == "FailoverFailed"
    if (
        halt is not None
        and halt.code not in codes
        and not (about_dead and view.has(Code.DEAD_PRIMARY))
    ):
        halt = None
    first_seen = {
        k: v
        for k, v in state.first_seen.items()
        if k.startswith("unreachable:") and view.has(Code.UNREACHABLE_PRIMARY)
    }
    return replace(state, alerted=frozenset(keep), halt=halt, first_seen=first_seen)
