"""Guards, first in the rule table: nothing changes before every node was probed, without a
strict majority, with two writers, or while halted.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.model import AlertKey, Condition, ControllerState, Decision, Halt
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Route
from hacontrol.rules.alerts import alert_once, alert_unless_a_leader_may_act
from hacontrol.rules.candidates import topology_text
from hacontrol.rules.routing import fleet_membership
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code, Health


def rule_no_quorum(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    if view.quorum.ok:
        return None
    reason = next(p.reason for p in view.problems if p.code is Code.NO_QUORUM)
    plan = Plan(Code.NO_QUORUM.value, f"no change without quorum: {reason}", kind=PlanKind.ALERT)
    alert = Notify(AlertKind.NO_QUORUM, None, "no quorum, automatic changes stopped", reason)
    decision = alert_once(state, AlertKey(Condition.NO_QUORUM), plan, alert)
    if (route := unrouted_writer(view, state, settings, now)) is None:
        return decision
    # The alert goes first: a Route that fails (the router cut off with the other nodes) ends
    # the plan, and an alert after it was never sent, while its key said it had been.
    plan = Plan(
        Code.NO_QUORUM.value,
        f"no change without quorum but this router's writer: a fleet routes writes to "
        f"nobody from a minority (the primary may have changed on the other side): {reason}",
        (*decision.plan.actions, route),
        PlanKind.ROUTE,
    )
    return replace(decision, plan=plan)


def unrouted_writer(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Route | None:
    """Fleet, without quorum: the router's writer taken out (``fleet_membership``), if any
    (not before the retry time of a router change that failed)."""
    current = view.router.membership
    if not settings.controller.fleet or current is None or not current.writers:
        return None
    if now < state.route_retry_at:
        return None
    desired = fleet_membership(view, state, settings)
    if desired is None or desired.writers:  # a tie keeps the current writer (fleet_writer)
        return None
    return Route(desired, no_writer=True)


def rule_startup_grace(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    needed = settings.probes.failure_threshold
    waiting = [
        n
        for n, node in view.nodes.items()
        if node.probes < needed and node.health is not Health.UNREACHABLE
    ]
    if settings.router.kind != "none" and view.router.at is None:
        waiting.append("the router")
    if waiting:
        return Decision(
            Plan(
                "StartupGrace", f"waiting for {needed} probes of {', '.join(waiting)} before acting"
            ),
            state,
        )
    return None


def rule_two_writers(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    problem = next(
        (
            p
            for p in view.problems
            if p.code in (Code.ROUTER_HAS_TWO_WRITERS, Code.TWO_WRITABLE_NODES)
        ),
        None,
    )
    if problem is None:
        return None
    halt = (
        state.halt
        if state.halt and state.halt.code == problem.code.value
        else Halt(problem.code.value, problem.reason, now)
    )
    plan = Plan(
        problem.code.value,
        f"halted: {problem.reason}; no automatic change until an "
        "operator leaves exactly one writer",
        kind=PlanKind.HALT,
    )
    alert = Notify(
        AlertKind.HALT,
        None,
        f"HALT: {problem.code.value}",
        problem.reason,
        (("topology", topology_text(view)),),
    )
    key = AlertKey(Condition.HALT, problem.code.value)
    decision = alert_once(replace(state, halt=halt), key, plan, alert)
    if problem.code is not Code.TWO_WRITABLE_NODES:
        return decision  # this instance's own router: no leader fixes it
    # A fleet instance that cannot tell yet whether another leads (right after a partition
    # heals): the leader may be fencing the old primary; alert only if it lasts.
    return alert_unless_a_leader_may_act(view, state, settings, now, key, decision)


def rule_halted(
    view: ClusterView, state: ControllerState, settings: Settings, now: float
) -> Decision | None:
    if state.halt is None:
        return None
    return Decision(
        Plan(
            "Halted",
            f"halted since {state.halt.since:.1f}: {state.halt.reason}",
            kind=PlanKind.HALT,
        ),
        state,
    )
