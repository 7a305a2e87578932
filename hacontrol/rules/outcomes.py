"""After a plan: what its outcome changes. Pure.

- Every plan: decide again only on fresh facts about what it touched (``Settle``); the
  operator who asked for it gets its outcome.
- A failed failover halts every automatic change until an operator acknowledges; when it
  promoted nothing, the dead primary is no "old primary" and no recovery block applies.
- A plan that promoted a node but could not update the router after it is done (the database
  side is): an alert says so, and the routing rule moves the writer once the router answers.
- A failed router change is retried after two probe intervals; a failed fence too (a
  writable old primary left unfenced is the start of a split brain: clients connected to it
  directly still write), doubling with each failure in a row up to ``RETRY_SECONDS``, with an
  alert each time; a failed rejoin or repoint after
  ``RETRY_SECONDS``, with an alert.
"""

from __future__ import annotations

from dataclasses import replace

from hacontrol.effects import Effect, RecordPlan, SendAlert, Step, log
from hacontrol.events import PlanFinished
from hacontrol.model import ControllerState, Halt, Model, Running, Settle
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Route
from hacontrol.rules.commands import answer
from hacontrol.rules.rebuild import after_rebuild
from hacontrol.settings import Settings

RETRY_SECONDS = 30.0
"""A failed rejoin or repoint of one node waits this long before it is tried again."""

RETRIED = {
    PlanKind.FENCE: AlertKind.FENCE_FAILED,
    PlanKind.REJOIN: AlertKind.REJOIN_FAILED,
    PlanKind.REPOINT: AlertKind.REPOINT_FAILED,
}


def plan_finished(model: Model, event: PlanFinished, settings: Settings, now: float) -> Step:
    """The running plan reported back: the state, the settle wait, the waiting command."""
    running = model.running if model.running and model.running.plan_id == event.plan_id else None
    finished = log(
        "plan_finished",
        None,
        "info" if event.ok else "error",
        plan=event.plan_id,
        rule=event.rule,
        kind=event.kind,
        ok=event.ok,
        reason=event.reason,
        seconds=event.seconds,
    )
    effects: list[Effect] = [
        RecordPlan(event, running.detect_seconds if running else None),
        finished,
    ]
    plan = running.plan if running else None
    state, alerts = after(model.state, event, plan, settings, now)
    effects += alerts
    model = replace(
        model,
        running=None if running else model.running,
        settle=settle_after(model, event, plan, settings, now),
        state=state,
    )
    if running is not None and running.command is not None:
        effects += reply_outcome(running, event)
    return model, tuple(effects)


def settle_after(
    model: Model, event: PlanFinished, plan: Plan | None, settings: Settings, now: float
) -> Settle:
    """Fresh facts are needed about what the plan touched: the router after a router change,
    the nodes it acted on after a node action, every node after a failover."""
    waiting = {n for n in event.touched if n in model.view.nodes}
    if event.routed and settings.router.kind != "none":
        waiting.add("router")
    if plan is not None and plan.kind is PlanKind.FAILOVER:
        waiting |= set(model.view.nodes)
    return Settle(frozenset(waiting), since=now, until=now + 2 * settings.probes.interval)


def after(
    state: ControllerState,
    event: PlanFinished,
    plan: Plan | None,
    settings: Settings,
    now: float,
) -> tuple[ControllerState, tuple[Effect, ...]]:
    """The state after a plan's outcome, and the alerts a failure sends."""
    if event.kind == PlanKind.REBUILD:
        return after_rebuild(state, event, plan)
    if event.ok:
        return succeeded(state, event, plan), unrouted_promotion(event, plan)
    if event.lease_lost:  # no halt: the next leader starts from the live topology
        return (
            without_failover(state, event, plan) if event.kind == PlanKind.FAILOVER else state
        ), ()
    if event.kind == PlanKind.FAILOVER:
        return failover_failed(state, event, plan, now)
    if event.kind == PlanKind.ROLLBACK:  # a restart's rollback stopped (its guard refused)
        return state, (rollback_refused(event),)
    if event.kind == PlanKind.ROUTE:
        return replace(state, route_retry_at=now + 2 * settings.probes.interval), ()
    if event.kind == PlanKind.PUBLISH and plan is not None and plan.actions:
        node = plan.actions[0].targets()[0]
        retry_at = {**state.retry_at, (PlanKind.PUBLISH, node): now + 2 * settings.probes.interval}
        return replace(state, retry_at=retry_at), ()
    kind = PlanKind(event.kind)
    node = next((n for a in plan.actions for n in a.targets()), None) if plan else None
    if kind not in RETRIED or node is None:
        return state, ()
    failed = state.failed_in_a_row.get((kind, node), 0) + 1
    wait = retry_wait(kind, failed, settings)
    retry_at = {**state.retry_at, (kind, node): now + wait}
    alert = Notify(RETRIED[kind], node, f"{kind} failed", f"{event.reason}; retried in {wait:g} s")
    sent = SendAlert(alert, Plan(event.rule, event.reason, kind=PlanKind.ALERT))
    in_a_row = {**state.failed_in_a_row, (kind, node): failed}
    return replace(state, retry_at=retry_at, failed_in_a_row=in_a_row), (sent,)


def retry_wait(kind: PlanKind, failed: int, settings: Settings) -> float:
    """Seconds before a failed plan of ``kind`` on the same node is tried again, after its
    ``failed``-th failure in a row: a fence soon (two probe intervals, at least a second),
    doubling with each failure up to ``RETRY_SECONDS`` (a node that answers but refuses the
    fence gets no plan and alert every two intervals for hours); the rest after
    ``RETRY_SECONDS``."""
    if kind is PlanKind.FENCE:
        first = max(1.0, 2 * settings.probes.interval)
        return min(max(first, RETRY_SECONDS), first * 2 ** min(failed - 1, 16))
    return RETRY_SECONDS


def succeeded(state: ControllerState, event: PlanFinished, plan: Plan | None) -> ControllerState:
    """A plan that worked: the failures in a row of its kind on its nodes start over."""
    if plan is None or not state.failed_in_a_row or event.kind not in RETRIED:
        return state
    done = {(PlanKind(event.kind), n) for a in plan.actions for n in a.targets()}
    left = {k: v for k, v in state.failed_in_a_row.items() if k not in done}
    return replace(state, failed_in_a_row=left)


def unrouted_promotion(event: PlanFinished, plan: Plan | None) -> tuple[Effect, ...]:
    """A Route after the promotion failed (the router down or frozen): the promotion stands
    and the plan went on without it. No halt: the routing rule (``RouteReconcile``) moves the
    writer as soon as the router answers. Until then the router routes writes to nobody, or
    to the fenced (read-only) or dead old primary: a write outage, never a second writer."""
    if plan is None or event.promoted is None:
        return ()
    no_return = plan.point_of_no_return
    failed = next(
        (
            s
            for s in event.steps
            if not s.ok and s.index > no_return and isinstance(plan.actions[s.index], Route)
        ),
        None,
    )
    if failed is None:
        return ()
    new = event.promoted
    reason = (
        f"{event.kind} promoted {new}, but the router could not be updated ({failed.reason}); "
        f"writes may reach no writable node until it is: the routing is retried at every decision "
        f"and moves the writer to {new} as soon as the router answers"
    )
    alert = Notify(
        AlertKind.ROUTER_NOT_UPDATED, new, f"router not updated: {new} is the primary", reason
    )
    return (SendAlert(alert, Plan(event.rule, reason, kind=PlanKind.ALERT)),)


def failover_failed(
    state: ControllerState, event: PlanFinished, plan: Plan | None, now: float
) -> tuple[ControllerState, tuple[Effect, ...]]:
    """Halt until an operator acknowledges. Nothing promoted: the dead primary is not an "old"
    primary, and no recovery block applies; the halt decides what happens next."""
    reason = f"failover stopped: {event.reason}"
    state = without_failover(replace(state, halt=Halt("FailoverFailed", reason, now)), event, plan)
    alert = Notify(AlertKind.HALT, None, "HALT: failover failed", reason)
    return state, (SendAlert(alert, Plan("FailoverFailed", reason, kind=PlanKind.HALT), True),)


def rollback_refused(event: PlanFinished) -> SendAlert:
    """A plan cut by a restart was not rolled back (``rules.resume.roll_back``): its old
    primary was not made writable, and must not be by hand while the candidate may be."""
    reason = (
        f"{event.plan_id} not rolled back: {event.reason}; its old primary was left as it is: "
        "do not make it writable while the candidate may be writable (read it first)"
    )
    alert = Notify(AlertKind.HALT, None, "plan cut by a restart NOT rolled back", reason)
    return SendAlert(alert, Plan(event.rule, reason, kind=PlanKind.ALERT))


def without_failover(
    state: ControllerState, event: PlanFinished, plan: Plan | None
) -> ControllerState:
    """A failover that promoted nothing: its dead primary is no "old" primary, and no
    recovery block applies."""
    promote = plan.promote if plan else None
    if event.promoted is not None or promote is None:
        return state
    quarantined = {k: v for k, v in state.quarantined.items() if k != promote.old_primary}
    return replace(state, quarantined=quarantined, blocked_until=None)


def reply_outcome(running: Running, event: PlanFinished) -> tuple[Effect, ...]:
    assert running.command is not None
    steps = [
        {"action": s.action, "target": s.node, "ok": s.ok, "reason": s.reason, "seconds": s.seconds}
        for s in event.steps
    ]
    message = f"{event.rule}: {event.reason}"
    return answer(
        running.command, event.ok, message, plan=event.plan_id, seconds=event.seconds, steps=steps
    )
