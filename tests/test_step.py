"""step(): the controller's policies with plain values. No database, no event loop, no clock.

Operator commands, the after-plan rules, the settle wait, the resume of a journaled plan,
pause, the lease, persistence and stopping: each is a rule of the pure core, driven here with
a model and an event and read back from the model and effects it returns.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.effects import (
    EndIntent,
    Log,
    PersistState,
    RecordPlan,
    Reply,
    Reprobe,
    SendAlert,
    StartPlan,
)
from hacontrol.events import (
    CallerGone,
    ConnectionLost,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Stop,
    Tick,
)
from hacontrol.model import (
    Condition,
    ControllerState,
    Halt,
    Intent,
    Lease,
    Model,
    Persisted,
    Quarantined,
    Running,
    persisted,
)
from hacontrol.plan import (
    ActionResult,
    Fence,
    Plan,
    PlanKind,
    Promote,
    Rejoin,
    Repoint,
    RequireReadOnly,
    Route,
    RouteFence,
    SetWritable,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.rules.alerts import LASTS_WHILE
from hacontrol.rules.commands import ack, farewell
from hacontrol.rules.lifecycle import plan_id
from hacontrol.rules.outcomes import RETRY_SECONDS
from hacontrol.step import boot
from hacontrol.view import initial
from tests.factories import (
    NOW,
    S,
    cmd,
    dead,
    dead_round,
    down,
    failed_over,
    healthy_round,
    lines,
    model,
    of,
    primary,
    replica,
    replies,
    router,
    status,
    steps,
)
from tests.support import fold_all

ROUTE = Plan(
    "RouteReconcile", "r", (Route(Membership.of(["node1"], ["node1", "node2"])),), PlanKind.ROUTE
)


def finished(plan_id: str, kind: PlanKind, ok: bool, steps=(), **facts) -> PlanFinished:
    reason = "all steps done" if ok else "Route failed: refused"
    return PlanFinished(NOW, plan_id, "R", kind, ok, reason, None if ok else 0, steps, 0.5, **facts)


# ---------------------------------------------------------------------------------------------
# Operator commands

COMMANDS = [
    # (name, state, command, ok, in the answer, the state after)
    (
        "ack clears the recovery block",
        ControllerState(blocked_until=NOW + 50),
        cmd("ack"),
        True,
        "automatic failover armed",
        lambda st: st.blocked_until is None,
    ),
    (
        "ack clears a failed failover's halt",
        ControllerState(halt=Halt("FailoverFailed", "WaitApplied timed out", 1.0)),
        cmd("ack"),
        True,
        "halt cleared: WaitApplied timed out",
        lambda st: st.halt is None,
    ),
    ("pause", ControllerState(), cmd("pause"), True, "observing only", lambda st: st.paused),
    (
        "resume",
        ControllerState(paused=True),
        cmd("resume"),
        True,
        "automatic changes allowed",
        lambda st: not st.paused,
    ),
    (
        "unknown command",
        ControllerState(),
        cmd("reboot"),
        False,
        "unknown command 'reboot'",
        lambda st: True,
    ),
    (
        "switchover to an unknown node",
        ControllerState(),
        cmd("switchover", "node9"),
        False,
        "refused: unknown node 'node9'",
        lambda st: True,
    ),
    (
        "maintenance of the primary",
        ControllerState(),
        cmd("maintenance", "node1", True),
        False,
        "refused: node1 is the primary",
        lambda st: True,
    ),
]


@pytest.mark.parametrize(
    ("name", "state", "command", "ok", "text", "after"), COMMANDS, ids=[c[0] for c in COMMANDS]
)
def test_commands_answered_at_once(name, state, command, ok, text, after):
    m, effects = steps(model(state=state), command)
    (result,) = replies(effects)
    assert result.ok is ok and text in result.message, result.message
    assert after(m.state)
    assert not of(effects, StartPlan)
    assert lines(effects, "operator_command")[0].fields["command"] == command.command


def test_ack_leaves_a_two_writers_halt():
    halted = model(state=ControllerState(halt=Halt("TwoWritableNodes", "two", 1.0)))
    m, effects = ack(halted, cmd("ack"))
    assert m.state.halt == halted.state.halt
    (result,) = replies(list(effects))
    assert result.ok and "halt cleared" not in result.message


def test_switchover_starts_a_plan_that_answers_when_it_finishes():
    command = cmd("switchover", "node2")
    m, effects = steps(model(), command)
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.SWITCHOVER and start.running.command is command
    assert replies(effects) == []  # answered with the outcome
    done = finished(start.running.plan_id, PlanKind.SWITCHOVER, True, promoted="node2")
    m, effects = steps(
        m, replace(done, steps=(ActionResult("Promote", "node2", True, True, "ok"),))
    )
    (result,) = replies(effects)
    assert result.ok and result.message == "R: all steps done"
    assert result.detail["steps"][0] == {
        "action": "Promote",
        "target": "node2",
        "ok": True,
        "reason": "ok",
        "seconds": 0.0,
    }
    assert m.running is None


def test_maintenance_takes_the_node_at_once_and_persists_it_before_routing():
    m, effects = steps(model(), cmd("maintenance", "node3", True))
    assert m.view.maintenance == {"node3"} and "node3" in m.view.quorum.recognized  # routing only
    kinds = [type(e) for e in effects if isinstance(e, PersistState | StartPlan)]
    assert kinds == [PersistState, StartPlan]
    assert of(effects, PersistState)[0].state.maintenance == {"node3"}


def test_a_command_waits_for_the_running_plan_then_runs():
    command = cmd("switchover", "node2")
    busy = model(running=Running("route-1", ROUTE))
    m, effects = steps(busy, command)
    assert m.deferred == (command,) and not of(effects, StartPlan) and not replies(effects)
    assert lines(effects, "operator_command_deferred")[0].fields["running"] == "route-1"
    m, effects = steps(m, finished("route-1", PlanKind.ROUTE, True))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.SWITCHOVER and m.deferred == ()


def test_a_command_after_a_routing_plan_is_planned_on_the_router_read_after_it():
    """Review s7-s7-lows #7 (older than it): a maintenance deferred behind a failover was
    planned at the failover's end from the router read while it ran (the old primary still
    its writer, or no writer after its fence) and routed that reading back over the
    failover's Route. It now waits (bounded) for the router's next reading."""
    command = cmd("maintenance", "node3", True)
    m, _ = steps(model(running=Running("route-1", ROUTE)), command)
    m, effects = steps(m, finished("route-1", PlanKind.ROUTE, True, routed=True))
    assert m.deferred == (command,) and not of(effects, StartPlan)
    now = NOW + 0.1
    fresh = router(writers=("node2",), readers=("node2", "node3"), broken=("node1",), at=now)
    m, effects = steps(m, fresh, now=now)
    (start,) = of(effects, StartPlan)
    (route,) = start.running.plan.actions
    assert route.desired.writers == {"node2"} and route.desired.hidden == {"node3"}
    # Sent right after such a plan (not deferred behind it): the same wait.
    m, _ = steps(model(running=Running("route-1", ROUTE)))
    m, _ = steps(m, finished("route-1", PlanKind.ROUTE, True, routed=True))
    m, effects = steps(m, command)
    assert m.deferred == (command,) and not of(effects, StartPlan)
    (line,) = lines(effects, "operator_command_deferred")
    assert line.fields["running"] == "fresh facts about what the last plan touched"
    m, effects = steps(m, fresh, now=now)
    assert of(effects, StartPlan)[0].running.plan.actions[0] == route
    # A failed router reading is no fresh fact; past the bound, still unread: refused.
    m, _ = steps(model(running=Running("route-1", ROUTE)))
    m, _ = steps(m, finished("route-1", PlanKind.ROUTE, True, routed=True))
    failed = RouterProbeResult("haproxy", now, None, "timeout")
    later = m.settle.until + 0.1
    m, effects = steps(m, failed, command, now=now)
    assert m.deferred == (command,) and not of(effects, StartPlan)
    m, effects = steps(m, Tick(later), now=later)
    (reply,) = replies(effects)
    assert not reply.ok and "the router was not read since the last plan" in reply.message
    assert not of(effects, StartPlan) and m.deferred == ()


def test_a_command_whose_caller_stopped_waiting_is_dropped_never_run_late():
    command = cmd("switchover", "node2")
    m, _ = steps(model(running=Running("route-1", ROUTE)), command)
    m, effects = steps(m, CallerGone(NOW, command), finished("route-1", PlanKind.ROUTE, True))
    assert m.deferred == () and lines(effects, "operator_command_dropped")
    assert not any(e.running.plan.kind is PlanKind.SWITCHOVER for e in of(effects, StartPlan))


def test_stopping_refuses_deferred_and_new_commands_and_starts_nothing():
    deferred = cmd("switchover", "node2")
    running = Running("route-1", ROUTE, command=cmd("maintenance", "node3", True))
    m, effects = steps(model(running=running, deferred=(deferred,)), Stop(NOW, "SIGTERM"))
    assert m.stopping and m.deferred == ()
    (refused,) = replies(effects)
    assert not refused.ok and "stopping" in refused.message
    m, effects = steps(m, cmd("pause"), finished("route-1", PlanKind.ROUTE, False))
    assert [r.ok for r in replies(effects)] == [False, False]  # refused; the plan failed
    assert not m.state.paused and not of(effects, StartPlan)
    # The controller returns while a plan still runs: its command is answered too.
    (last,) = [
        e.result for e in farewell(model(running=running), "stopping") if isinstance(e, Reply)
    ]
    assert not last.ok and "stopped while running it" in last.message


# ---------------------------------------------------------------------------------------------
# After a plan

QUARANTINED = failed_over(NOW)
FAILOVER = Plan(
    "DeadPrimary",
    "node1 is dead",
    (RouteFence("node1", required=True), WaitApplied("node2", 5.0), Promote("node2", "node1")),
    PlanKind.FAILOVER,
)


@pytest.mark.parametrize(("promoted", "kept"), [(None, False), ("node2", True)])
def test_a_failed_failover_halts_and_quarantines_only_what_it_promoted(promoted, kept):
    m = model(state=QUARANTINED, running=Running("failover-1", FAILOVER))
    m, effects = steps(m, finished("failover-1", PlanKind.FAILOVER, False, promoted=promoted))
    assert m.state.halt is not None and m.state.halt.code == "FailoverFailed"
    assert ("node1" in m.state.quarantined) is kept
    assert (m.state.blocked_until is not None) is kept
    (alert,) = of(effects, SendAlert)
    assert alert.alert.kind == "halt" and alert.on_halt
    assert of(effects, RecordPlan)[0].finished.plan_id == "failover-1"


UNROUTED = ActionResult("Route", None, False, False, "ProxySQL admin: connection refused", index=3)


@pytest.mark.parametrize("kind", [PlanKind.FAILOVER, PlanKind.SWITCHOVER])
def test_a_promotion_whose_route_failed_is_done_and_alerts_without_a_halt(kind):
    # Past the point of no return the database side is done: the failover keeps its
    # quarantine and recovery block, nothing halts, and an alert says the router lags.
    after = Route(Membership.of(["node2"], ["node2", "node3"], ["node1"]), required=False)
    plan = replace(FAILOVER, actions=(*FAILOVER.actions, after), kind=kind)
    steps_done = tuple(
        ActionResult(type(a).__name__, None, True, True, "done", index=i)
        for i, a in enumerate(FAILOVER.actions)
    )
    m = model(state=QUARANTINED, running=Running(f"{kind}-1", plan))
    done = finished(
        f"{kind}-1", kind, True, promoted="node2", routed=True, steps=(*steps_done, UNROUTED)
    )
    m, effects = steps(m, done)
    assert m.state.halt is None
    assert m.state.quarantined == QUARANTINED.quarantined
    assert m.state.blocked_until == QUARANTINED.blocked_until
    (sent,) = of(effects, SendAlert)
    assert sent.alert.kind == "router_not_updated" and sent.alert.node == "node2"
    assert not sent.on_halt
    assert sent.alert.reason == (
        f"{kind} promoted node2, but the router could not be updated (ProxySQL admin: "
        "connection refused); writes may reach no writable node until it is: the routing is "
        "retried at every decision and moves the writer to node2 as soon as the router answers"
    )


def test_a_failed_route_before_the_promotion_is_no_unrouted_promotion():
    # The failover's fence failing is a failed failover (halt), not this.
    fence_failed = replace(UNROUTED, action="RouteFence", index=0)
    m = model(state=QUARANTINED, running=Running("failover-1", FAILOVER))
    done = finished("failover-1", PlanKind.FAILOVER, True, steps=(fence_failed,))
    _, effects = steps(m, done)
    assert of(effects, SendAlert) == []


FAILURES = [
    # (plan, kind, the state after)
    (ROUTE, PlanKind.ROUTE, lambda st: st.route_retry_at == NOW + 2 * S.probes.interval),
    (
        Plan("FenceReturningPrimary", "r", (Fence("node1"),), PlanKind.FENCE),
        PlanKind.FENCE,
        # A writable old primary is fenced again soon, not after the others' 30 s.
        lambda st: (
            st.retry_at == {(PlanKind.FENCE, "node1"): NOW + max(1.0, 2 * S.probes.interval)}
        ),
    ),
    (
        Plan("RejoinOldPrimary", "r", (Rejoin("node1", "node2"),), PlanKind.REJOIN),
        PlanKind.REJOIN,
        lambda st: st.retry_at == {(PlanKind.REJOIN, "node1"): NOW + 30},
    ),
    (
        Plan("RepointStray", "r", (Repoint(("node3",), "node2"),), PlanKind.REPOINT),
        PlanKind.REPOINT,
        lambda st: st.retry_at == {(PlanKind.REPOINT, "node3"): NOW + 30},
    ),
]


@pytest.mark.parametrize(("plan", "kind", "after"), FAILURES, ids=[f[1] for f in FAILURES])
def test_a_failed_plan_backs_off(plan, kind, after):
    m = model(running=Running("p-1", plan))
    m, effects = steps(m, finished("p-1", kind, False))
    assert after(m.state)
    alerts = [e.alert.kind for e in of(effects, SendAlert)]
    assert alerts == ([] if kind is PlanKind.ROUTE else [f"{kind}_failed"])


def test_a_fence_that_keeps_failing_backs_off_up_to_the_others_wait():
    # A node that answers but refuses the fence (a missing privilege, say) must not get a fence
    # plan and an alert every two probe intervals for as long as it lasts: the first retries
    # come soon, then each wait doubles up to RETRY_SECONDS; a fence that works starts over.
    fence = Plan("FenceReturningPrimary", "r", (Fence("node1"),), PlanKind.FENCE)
    base = max(1.0, 2 * S.probes.interval)
    m, now, waits = model(), NOW, []
    for i in range(10):
        m = replace(m, running=Running(f"f-{i}", fence))
        m, _ = steps(m, finished(f"f-{i}", PlanKind.FENCE, False), now=now)
        waits.append(m.state.retry_at[(PlanKind.FENCE, "node1")] - now)
        now += waits[-1]
    assert waits[:2] == [base, 2 * base] and waits[-1] == RETRY_SECONDS
    assert waits == sorted(waits)
    m = replace(m, running=Running("f-ok", fence))
    m, _ = steps(m, finished("f-ok", PlanKind.FENCE, True), now=now)
    m = replace(m, running=Running("f-again", fence))
    m, _ = steps(m, finished("f-again", PlanKind.FENCE, False), now=now)
    assert m.state.retry_at[(PlanKind.FENCE, "node1")] - now == base


SETTLE = [
    # (plan, touched, routed, what must be probed again before deciding)
    (ROUTE, (), True, {"router"}),
    (Plan("R", "r", (Fence("node1"),), PlanKind.FENCE), ("node1",), False, {"node1"}),
    (FAILOVER, ("node2",), True, {"node1", "node2", "node3", "router"}),
]


@pytest.mark.parametrize(("plan", "touched", "routed", "waiting"), SETTLE)
def test_after_a_plan_decide_only_on_fresh_facts_about_what_it_touched(
    plan, touched, routed, waiting
):
    m = model(running=Running("p-1", plan))
    done = finished("p-1", plan.kind, True, touched=frozenset(touched), routed=routed)
    m, _ = steps(m, done)
    assert m.settle.waiting == waiting and m.settle.until == NOW + 2 * S.probes.interval


def test_the_settle_wait_holds_the_next_plan_until_fresh_probes_or_its_end():
    mismatch = [router(writers=("node2",), at=t) for t in (1.0, 2.0, 3.0)]
    m = model(*(healthy_round(t)[:3] for t in (1.0, 2.0, 3.0)), mismatch)
    m = replace(m, running=Running("route-1", ROUTE))
    m, effects = steps(m, finished("route-1", PlanKind.ROUTE, True, routed=True))
    assert not of(effects, StartPlan)  # the router was not probed since
    m, effects = steps(m, Tick(NOW + 0.5), now=NOW + 0.5)
    assert not of(effects, StartPlan)
    m, effects = steps(m, router(writers=("node2",), at=NOW + 0.6), now=NOW + 0.6)
    assert of(effects, StartPlan)  # a fresh router probe: decide again
    # Without fresh facts the wait ends by itself.
    m2 = replace(m, running=None, settle=replace(m.settle, waiting=frozenset({"router"})))
    _, effects = steps(m2, Tick(m.settle.until + 0.1), now=m.settle.until + 0.1)
    assert of(effects, StartPlan)


def test_a_dead_primary_never_waits_for_the_settle():
    m = replace(dead(), settle=replace(dead().settle, waiting=frozenset({"node3"}), until=NOW + 5))
    _, effects = steps(m, Tick(NOW))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.FAILOVER


# ---------------------------------------------------------------------------------------------
# Resuming a journaled plan after a restart

SWITCHOVER = Plan(
    "Switchover",
    "from node1 to node2",
    (RouteFence("node1", required=True), Fence("node1"), Promote("node2", "node1")),
    PlanKind.SWITCHOVER,
    rollback=(SetWritable("node1", True),),
)


def resumed(m: Model, intent: Intent) -> tuple[Model, list]:
    return steps(replace(m, resume=intent, state=QUARANTINED), Tick(NOW))


def test_a_plan_cut_inside_its_promote_is_finished_and_may_finish_the_promotion():
    m, effects = resumed(dead(), Intent("failover-1", FAILOVER, frozenset({0, 1}), frozenset({2})))
    (start,) = of(effects, StartPlan)
    running = start.running
    assert running.plan_id == "failover-1" and running.resumed and running.skip == {0, 1}
    assert running.plan.promote is not None and running.plan.promote.finish_half_done
    assert m.resume is None


def test_a_promote_that_only_began_while_its_candidate_still_follows_a_writable_primary():
    """The journal says the switchover's Promote began (its ``start`` landed: after a wait that
    gave up, or before the Promote failed), then the run was rolled back, and the controller
    died before its ``end``: node1 is writable again and node2 still replicates from it.
    Finishing that promotion would make node2 a second writer; it never began on the node."""
    _, effects = resumed(
        model(), Intent("switchover-1", SWITCHOVER, frozenset({0, 1}), frozenset({2}))
    )
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.ROLLBACK  # undone again, not finished
    # The Promote began: the old primary is made writable only once node2 is read read-only.
    assert start.running.plan.actions == (RequireReadOnly("node2"), *SWITCHOVER.rollback)
    # A failover cut so, whose old primary is back: not finished either (abandoned).
    _, effects = resumed(model(), Intent("failover-1", FAILOVER, frozenset({0, 1}), frozenset({2})))
    assert not of(effects, StartPlan) and lines(effects, "plan_abandoned")


def test_a_failover_cut_before_promotion_goes_on_only_while_the_same_node_is_dead():
    intent = Intent("failover-1", FAILOVER, frozenset({0}))
    _, effects = resumed(dead(), intent)
    (start,) = of(effects, StartPlan)
    assert start.running.plan_id == "failover-1" and not start.running.plan.promote.finish_half_done
    m, effects = resumed(model(), intent)  # node1 is back: abandoned
    assert of(effects, EndIntent) == [
        EndIntent("failover-1", "not resumed after a controller restart")
    ]
    assert lines(effects, "plan_abandoned") and not of(effects, StartPlan)
    assert "node1" not in m.state.quarantined and m.state.blocked_until is None


def test_a_failover_that_promoted_without_a_record_keeps_its_quarantine_when_abandoned():
    """The journal could not record the failover's steps (it went on without it), then the
    controller restarted before its end could be written: the journal says the Promote is not
    done, but node2 is the writable primary. Abandoned (node1 is not still dead), yet it did
    promote: node1 stays quarantined (fenced when it returns, not a TwoWritableNodes halt) and
    the recovery block holds, and its end says node2 was promoted."""
    after = [
        [
            down("node1", t),
            primary("node2", t),
            replica("node3", t, source="node2"),
            router(writers=("node2",), readers=("node2", "node3"), broken=("node1",), at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    m, effects = resumed(model(*after), Intent("failover-1", FAILOVER, frozenset({0, 1})))
    assert not of(effects, StartPlan) and lines(effects, "plan_abandoned")
    assert of(effects, EndIntent) == [
        EndIntent("failover-1", "not resumed after a controller restart", "node2")
    ]
    assert m.state.quarantined == QUARANTINED.quarantined
    assert m.state.blocked_until == QUARANTINED.blocked_until


def test_a_switchover_cut_before_promotion_is_rolled_back():
    _, effects = resumed(model(), Intent("switchover-1", SWITCHOVER, frozenset({0, 1})))
    (start,) = of(effects, StartPlan)
    assert start.running.plan_id == "switchover-1-rollback"
    assert start.running.plan.kind is PlanKind.ROLLBACK
    assert start.running.plan.actions == SWITCHOVER.rollback
    assert of(effects, EndIntent)


def test_a_switchover_cut_after_its_drain_is_rolled_back_with_the_writer_routed_back():
    from hacontrol.rules.planned import plan_switchover

    m = model()
    plan = plan_switchover(m.view, m.state, S, "node2", NOW)
    assert not isinstance(plan, str) and type(plan.actions[1]).__name__ == "Drain"
    _, effects = resumed(m, Intent("switchover-1", plan, frozenset({0, 1})))  # drained
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.ROLLBACK
    routes = [a for a in start.running.plan.actions if isinstance(a, Route)]
    assert routes == [Route(Membership.of(["node1"], ["node1", "node2", "node3"]))]


@pytest.mark.parametrize(
    "waiting",
    [
        "start-up grace",
        "no quorum",
        "paused",
    ],
)
def test_resume_waits_for_a_view_that_allows_a_decision(waiting):
    m = model()
    if waiting == "start-up grace":
        m = model(healthy_round(1.0))
    elif waiting == "no quorum":
        m = model(
            *(healthy_round(t) for t in (1, 2, 3)),
            *([down("node2", t), down("node3", t)] for t in (4, 5, 6)),
        )
    intent = Intent("failover-1", FAILOVER, frozenset({0, 1}), frozenset({2}))
    state = replace(QUARANTINED, paused=waiting == "paused")
    m, effects = steps(replace(m, resume=intent, state=state), Tick(NOW))
    assert m.resume == intent and not of(effects, StartPlan)


# ---------------------------------------------------------------------------------------------
# Pause, lease, persistence, fast re-probes, start-up


def writer_mismatch() -> Model:
    return model(*([*healthy_round(t)[:3], router(writers=("node2",), at=t)] for t in (1, 2, 3)))


def test_paused_withholds_the_change_but_alerts_once():
    mismatch = writer_mismatch()
    m, effects = steps(replace(mismatch, state=ControllerState(paused=True)), Tick(NOW))
    assert not of(effects, StartPlan)
    (alert,) = of(effects, SendAlert)
    assert alert.alert.kind == "paused_change_withheld"
    _, effects = steps(m, Tick(NOW + 1))
    assert not of(effects, SendAlert)


def test_a_follower_routes_but_never_fails_over():
    follower = Lease(fleet=True, reason="the lease is held by another instance")
    _, effects = steps(replace(dead(), lease=follower), Tick(NOW))
    assert not of(effects, StartPlan)
    assert lines(effects, "decision")[0].fields["rule"] == "NotLeader"
    mismatch = writer_mismatch()
    _, effects = steps(replace(mismatch, lease=follower), Tick(NOW))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.ROUTE


def test_a_failover_persists_its_quarantine_before_it_starts():
    observing = Model(fold_all(S, *(healthy_round(t) for t in (1.0, 2.0, 3.0))), acting=False)
    observing, _ = steps(observing, *(e for t in (4, 5, 6) for e in dead_round(t)))
    m, effects = steps(replace(observing, acting=True), Tick(NOW))
    persist, start = [e for e in effects if isinstance(e, PersistState | StartPlan)]
    assert isinstance(persist, PersistState) and isinstance(start, StartPlan)
    assert persist.state == persisted(m) and "node1" in persist.state.quarantined
    assert m.running is not None and m.running.plan_id == start.running.plan_id
    assert m.running.detect_seconds is not None  # from the first failed probe of node1
    _, effects = steps(m, Tick(NOW + 1))  # nothing changed: nothing written
    assert not of(effects, PersistState)


def test_a_lost_connection_asks_for_every_node_at_once():
    _, effects = steps(model(), ConnectionLost("node2", NOW, "2013"))
    assert of(effects, Reprobe) == [Reprobe(frozenset({"node1", "node2", "node3"}))]
    assert lines(effects, "fast_reprobe")[0].fields["cause"] == "ConnectionLost"


def test_no_decision_without_an_executor():
    _, effects = steps(replace(dead(), acting=False), Tick(NOW))
    assert not lines(effects, "decision") and not of(effects, StartPlan)


def test_boot_takes_what_the_journal_kept_and_the_start_up_flags():
    kept = Persisted(
        maintenance=frozenset({"node3"}),
        blocked_until=NOW + 100,
        quarantined={"node1": Quarantined("node1", "node2", NOW)},
    )
    intent = Intent("failover-1", FAILOVER, frozenset({0}))
    m, effects = boot(
        initial(S),
        S,
        kept=kept,
        unfinished=intent,
        acknowledge_block=True,
        paused=True,
        acting=True,
        wall_offset=1000.0,
    )
    assert m.view.maintenance == {"node3"} and "node1" in m.state.quarantined
    assert m.state.blocked_until is None and m.state.paused and m.resume == intent
    events = [e.event for e in of(effects, Log)]
    assert events == ["recovery_block_acknowledged", "journal_unfinished", "paused_at_start"]
    (persist,) = of(effects, PersistState)
    assert persist.state.paused and persist.state.blocked_until is None


def test_every_alert_condition_says_what_keeps_it_alive():
    assert set(LASTS_WHILE) == set(Condition)


# ---------------------------------------------------------------------------------------------
# The leader-only gate: a follower only routes

FOLLOWER = Lease(fleet=True, reason="the lease is held by another instance")


@pytest.mark.parametrize(
    "intent",
    [
        Intent("failover-1", FAILOVER, frozenset({0, 1}), frozenset({2})),  # finished
        Intent("switchover-1", SWITCHOVER, frozenset({0, 1})),  # rolled back
    ],
    ids=["finish", "roll back"],
)
def test_a_follower_never_resumes_a_journaled_plan(intent):
    """In a fleet the journal's plan is closed, never finished nor rolled back: another instance
    may have acted since this one stopped (the leader converges from the live topology)."""
    base = dead() if intent.plan.kind is PlanKind.FAILOVER else model()  # cut inside Promote
    m, effects = steps(replace(base, resume=intent, state=QUARANTINED, lease=FOLLOWER), Tick(NOW))
    assert not any(e.running.plan_id.startswith(intent.plan_id) for e in of(effects, StartPlan))
    (ended,) = of(effects, EndIntent)
    assert ended.plan_id == intent.plan_id and ended.promoted is None and m.resume is None
    # node1 is still the view's primary: the failover promoted nothing, node1 is no old primary
    assert "node1" not in m.state.quarantined and m.state.blocked_until is None


def test_a_follower_refuses_a_switchover_now_or_deferred_but_takes_maintenance():
    follower = replace(model(), lease=FOLLOWER)
    m, effects = steps(follower, cmd("switchover", "node2"))
    (refused,) = replies(effects)
    assert not refused.ok and "not the leader" in refused.message and not of(effects, StartPlan)
    busy = replace(follower, running=Running("route-1", ROUTE))
    m, _ = steps(busy, cmd("switchover", "node2"))
    m, effects = steps(m, finished("route-1", PlanKind.ROUTE, True))
    (refused,) = replies(effects)
    assert not refused.ok and "not the leader" in refused.message
    assert not any(e.running.plan.kind is PlanKind.SWITCHOVER for e in of(effects, StartPlan))
    m, effects = steps(follower, cmd("maintenance", "node3", True))  # only routes
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.MAINTENANCE and m.view.maintenance == {"node3"}


@pytest.mark.parametrize(
    "command",
    [cmd("switchover", "node3"), cmd("maintenance", "node3", True)],
    ids=["switchover", "maintenance"],
)
def test_no_operator_plan_before_the_journaled_plan_is_finished_or_undone(command):
    # Restarted paused in the middle of a switchover: a new switchover now, then `resume`,
    # would roll the old one back (the old primary writable again) over the new primary.
    intent = Intent("switchover-1", SWITCHOVER, frozenset({0, 1}))
    paused = replace(model(), resume=intent, state=replace(QUARANTINED, paused=True))
    m, effects = steps(paused, command)
    (refused,) = replies(effects)
    assert not refused.ok and "switchover-1" in refused.message, refused.message
    assert not of(effects, StartPlan) and m.view.maintenance == frozenset()
    assert m.resume == intent


def test_a_switchover_is_not_rolled_back_over_a_primary_promoted_since():
    # Cut after its fence; while the controller was down an operator finished it by hand: node2
    # is the writable primary. Rolling back would make node1 writable again: two writers.
    fenced_node1 = ProbeResult("node1", 1.0, 0.001, status(1, read_only=True))
    rounds = [
        [
            replace(fenced_node1, at=t),
            primary("node2", t),
            replica("node3", t, source="node2"),
            router(writers=("node2",), readers=("node2", "node3"), at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    m, effects = resumed(model(*rounds), Intent("switchover-1", SWITCHOVER, frozenset({0, 1})))
    assert m.view.primary == "node2"
    assert not of(effects, StartPlan) and of(effects, EndIntent) and m.resume is None
    (abandoned,) = lines(effects, "plan_abandoned")
    assert "node2" in abandoned.fields["reason"], abandoned.fields["reason"]


def test_a_restarts_rollback_refused_by_its_guard_is_alerted():
    """A rollback a restart started (``rules.resume.roll_back``) that stopped on its
    RequireReadOnly used to be silent; the next alert told the operator to make the old
    primary writable (PrimaryIsReadOnly) while the candidate may be writable."""
    plan = Plan("Switchover", "r", (SetWritable("node1", True),), PlanKind.ROLLBACK)
    running = Running("switchover-1-rollback", plan)
    refused = PlanFinished(
        NOW, "switchover-1-rollback", "Switchover", PlanKind.ROLLBACK, False,
        "RequireReadOnly failed: cannot read the candidate node2", 0, (), 0.5,
    )  # fmt: skip
    _, effects = steps(replace(model(), running=running), refused)
    (sent,) = of(effects, SendAlert)
    assert sent.alert.summary == "plan cut by a restart NOT rolled back"
    assert "cannot read the candidate node2" in sent.alert.reason
    assert "do not make it writable" in sent.alert.reason


def test_plan_ids_of_two_clusters_deciding_in_the_same_millisecond_differ() -> None:
    """One process runs several clusters: two losing their primaries together decide in the
    same millisecond; each plan keeps its own name (it names its cluster)."""
    plan = Plan("DeadPrimary", "node1 is dead", kind=PlanKind.FAILOVER)
    ids = {
        plan_id(replace(m, view=replace(m.view, cluster=name)), plan, 100.0)
        for m in [model()]
        for name in ("c001", "c002")
    }
    assert len(ids) == 2
    assert all(i.startswith("failover-c00") for i in ids)
