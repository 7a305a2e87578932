"""The decision task's first form, driven with plain events: no database, no sleeping."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import pytest

from hacontrol.controller import Controller
from hacontrol.events import ConnectionLost, Stop
from hacontrol.flavors.base import IoState
from hacontrol.jsonlog import JsonLog
from hacontrol.rules.failure import reprobe_targets
from hacontrol.view import fold
from tests.factories import S, down, healthy_round, primary, replica, router
from tests.support import eventually, fold_all

ALL = frozenset({"node1", "node2", "node3"})


def healthy_view():
    return fold_all(S, [primary(), replica("node2"), replica("node3"), router()])


DEAD_IO = {"io_state": IoState.CONNECTING, "last_io_errno": 2003, "last_io_error": "x"}


def dead_round(t: float) -> list:
    return [
        down("node1", t),
        replica("node2", t, **DEAD_IO),
        replica("node3", t, **DEAD_IO),
        router(at=t),
    ]


def feed(controller: Controller, events: list, clock: list[float] | None = None) -> None:
    """Events through the controller; its clock (when given) follows their time."""
    for event in events:
        if clock is not None:
            clock[0] = event.at
        controller.handle(event)


def test_lost_connection_reprobes_every_node():
    assert reprobe_targets(healthy_view(), ConnectionLost("node2", 2.0, "2013"), S) == ALL


def test_failed_primary_probe_reprobes_everyone_until_confirmed():
    view = healthy_view()
    assert reprobe_targets(view, down("node1", 2.0), S) == ALL
    view = fold(view, down("node1", 2.0), S)
    assert reprobe_targets(view, down("node1", 2.1), S) == ALL
    view = fold(view, down("node1", 2.1), S)
    # The third failure confirms (threshold 3): no more storms of re-probes.
    assert reprobe_targets(view, down("node1", 2.2), S) == frozenset()


def test_failed_replica_probe_waits_for_its_interval():
    assert reprobe_targets(healthy_view(), down("node2", 2.0), S) == frozenset()


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_controller_logs_events_and_state_changes_as_json_lines():
    out = io.StringIO()
    woken: list[frozenset[str]] = []
    queue: asyncio.Queue = asyncio.Queue()
    controller = Controller(S, JsonLog("t", stream=out), queue, reprobe=woken.append)
    for event in (
        primary(),
        replica("node2"),
        replica("node3"),
        router(),
        down("node1", 2.0),
        Stop(3.0, "test"),
    ):
        queue.put_nowait(event)
    await asyncio.wait_for(controller.run(), 5)
    records = lines(out)
    assert all({"ts", "level", "event", "cluster", "node"} <= r.keys() for r in records)
    assert all(r["cluster"] == "t" for r in records)
    events = [r["event"] for r in records]
    assert events.count("probe") == 4
    assert "router_probe" in events and "quorum" in events
    assert next(r for r in records if r["event"] == "fast_reprobe")["nodes"] == sorted(ALL)
    assert woken == [ALL]
    assert events[-1] == "stop_requested"
    failed = [r for r in records if r["event"] == "probe" and r["ok"] is False]
    assert failed[0]["node"] == "node1" and "timeout" in failed[0]["error"]


def test_log_scrubs_known_secrets_and_masks_secret_values():
    from pydantic import SecretStr

    out = io.StringIO()
    log = JsonLog("t", stream=out, secrets=["hunter2"])
    log.emit(
        "x", "node1", error="Access denied near 'MASTER_PASSWORD=hunter2'", token=SecretStr("abc")
    )
    text = out.getvalue()
    assert "hunter2" not in text and "abc" not in text
    assert json.loads(text)["error"].endswith("MASTER_PASSWORD=********'")


def test_log_level_filters_routine_lines():
    out = io.StringIO()
    log = JsonLog("t", stream=out, level="info")
    log.emit("probe", "node1", "debug", ok=True)
    log.emit("problem", "node1", "warning", code="X")
    assert [r["event"] for r in lines(out)] == ["problem"]


class FakeExecutor:
    """Answers every plan with a canned result; records alerts. No I/O."""

    def __init__(self, ok: bool, done_actions: tuple[str, ...]) -> None:
        self.ok, self.done_actions = ok, done_actions
        self.alerts: list[str] = []
        self.plans: list[str] = []

    async def run(self, plan_id, plan, *, skip=frozenset(), resumed=False):
        from hacontrol.events import PlanFinished
        from hacontrol.plan import ActionResult

        self.plans.append(plan.rule)
        ran = [
            (i, a)
            for i, a in enumerate(plan.actions)
            if type(a).__name__ in (*self.done_actions, "WaitApplied")
        ]
        steps = tuple(
            ActionResult(
                type(a).__name__,
                None,
                type(a).__name__ in self.done_actions,
                False,
                "fake",
                index=i,
            )
            for i, a in ran
        )
        failed_at = next((s.index for s in steps if s.action == "WaitApplied"), None)
        return PlanFinished(
            5.0,
            plan_id,
            plan.rule,
            plan.kind,
            self.ok,
            "WaitApplied failed: timed out" if not self.ok else "done",
            None if self.ok else failed_at,
            steps,
            0.1,
            promoted=plan.promote.node if plan.promote and "Promote" in self.done_actions else None,
            touched=frozenset(n for _, a in ran for n in a.targets()),
            routed=any(a.routes for _, a in ran),
        )

    def notify(self, action, plan, *, on_halt=False) -> None:
        self.alerts.append(action.kind)


async def test_failed_failover_leaves_no_quarantine_and_ack_clears_the_halt():
    from hacontrol.events import OperatorCommand

    executor = FakeExecutor(ok=False, done_actions=("RouteFence",))
    queue: asyncio.Queue = asyncio.Queue()
    now = [0.0]  # the controller's clock follows the events' time
    controller = Controller(
        S, JsonLog("t", stream=io.StringIO()), queue, executor=executor, clock=lambda: now[0]
    )
    for t in (1.0, 2.0, 3.0):
        feed(controller, healthy_round(t), now)
    for t in (4.0, 5.0, 6.0):
        feed(controller, dead_round(t), now)
    t = 6.0
    while True:  # a reader change may run first (the replicas' IO errors show earlier)
        finished = await asyncio.wait_for(queue.get(), 5)
        controller.handle(finished)
        if finished.kind == "failover":
            break
        t += 1.0
        feed(controller, dead_round(t), now)  # fresh probes after the plan: decide again
    assert executor.plans[-1] == "DeadPrimary"
    assert controller.state.halt is not None and controller.state.halt.code == "FailoverFailed"
    assert controller.state.quarantined == {}  # nothing was promoted: no "old primary"
    assert controller.state.blocked_until is None
    assert "halt" in executor.alerts
    reply = asyncio.get_running_loop().create_future()
    controller.handle(OperatorCommand(t + 1, "ack", reply=reply))
    assert reply.result().ok and "halt cleared" in reply.result().message
    assert controller.state.halt is None


def test_journal_knows_a_promote_that_started_but_did_not_finish(tmp_path):
    from hacontrol.journal import Journal
    from hacontrol.plan import Plan, Promote, WaitApplied

    journal = Journal(tmp_path / "j.jsonl")
    plan = Plan(
        "DeadPrimary", "r", (WaitApplied("node2", 5.0), Promote("node2", "node1")), kind="failover"
    )
    journal.begin("p1", plan)
    journal.step("p1", 0, True, "applied")
    journal.step_started("p1", 1)  # then the controller dies inside Promote
    replay = Journal(journal.path).load()
    assert replay.unfinished is not None
    assert replay.unfinished.done == {0} and replay.unfinished.started == {1}
    # Compaction keeps it.
    again = Journal(journal.path).load()
    assert again.unfinished is not None and again.unfinished.started == {1}


async def test_commands_still_waiting_at_stop_get_an_answer():
    from hacontrol.events import OperatorCommand

    queue: asyncio.Queue = asyncio.Queue()
    controller = Controller(S, JsonLog("t", stream=io.StringIO()), queue)
    reply = asyncio.get_running_loop().create_future()
    deferred = (OperatorCommand(1.0, "switchover", "node2", reply=reply),)
    controller.model = replace(controller.model, deferred=deferred)
    queue.put_nowait(Stop(2.0, "test"))
    await asyncio.wait_for(controller.run(), 5)
    assert reply.done() and not reply.result().ok
    assert "stopping" in reply.result().message


async def test_no_new_plan_before_the_last_one_is_handled():
    """A plan whose task is done but whose PlanFinished still waits in the queue is still the
    running plan: an event handled in between must not start another plan on stale state."""
    executor = FakeExecutor(ok=False, done_actions=())
    queue: asyncio.Queue = asyncio.Queue()
    now = [0.0]
    controller = Controller(
        S, JsonLog("t", stream=io.StringIO()), queue, executor=executor, clock=lambda: now[0]
    )
    for t in (1.0, 2.0, 3.0):
        feed(controller, [*healthy_round(t)[:3], router(writers=("node2",), at=t)], now)
    finished = await asyncio.wait_for(queue.get(), 5)  # the plan's task is done now
    assert executor.plans == ["RouteReconcile"]
    controller.handle(router(writers=("node2",), at=3.5))  # an event queued before its result
    await asyncio.sleep(0.01)  # a plan started now would run
    assert executor.plans == ["RouteReconcile"]
    assert controller.running_plan is not None
    controller.handle(finished)
    assert controller.state.route_retry_at > 3.0  # the failure's back-off applies


class GatedExecutor(FakeExecutor):
    """A FakeExecutor whose failover plans wait until ``gate`` is set."""

    def __init__(self, ok: bool, done_actions: tuple[str, ...]) -> None:
        super().__init__(ok, done_actions)
        self.gate = asyncio.Event()
        self.started: str | None = None

    async def run(self, plan_id, plan, *, skip=frozenset(), resumed=False):
        if plan.kind == "failover":
            self.started = plan.rule
            await self.gate.wait()
        return await super().run(plan_id, plan, skip=skip, resumed=resumed)


async def test_a_plan_running_at_stop_still_reports_its_outcome(tmp_path):
    """Stop while a failover runs: the controller waits for it and takes in its outcome. A
    failover that promoted nothing must leave no quarantine in the journal: after a restart
    the still dead primary would otherwise never be failed over."""
    from hacontrol.journal import Journal

    executor = GatedExecutor(ok=False, done_actions=("RouteFence",))
    queue: asyncio.Queue = asyncio.Queue()
    journal = Journal(tmp_path / "journal.jsonl")
    now = [0.0]
    controller = Controller(
        S,
        JsonLog("t", stream=io.StringIO()),
        queue,
        executor=executor,
        journal=journal,
        clock=lambda: now[0],
    )
    for t in (1.0, 2.0, 3.0):
        feed(controller, healthy_round(t), now)
    t = 4.0
    while executor.started is None and t < 20:
        feed(controller, dead_round(t), now)
        await asyncio.sleep(0.01)
        while not queue.empty():  # a reader change may run first
            controller.handle(queue.get_nowait())
        t += 1.0
    assert executor.started == "DeadPrimary"
    assert "node1" in controller.state.quarantined  # taken when the failover was decided
    queue.put_nowait(Stop(t, "test"))
    stopping = asyncio.create_task(controller.run())
    await asyncio.sleep(0.05)
    executor.gate.set()
    await asyncio.wait_for(stopping, 5)
    assert controller.state.quarantined == {}
    assert controller.state.halt is not None and controller.state.halt.code == "FailoverFailed"
    assert Journal(journal.path).load().state["quarantined"] == {}
    assert executor.plans.count("DeadPrimary") == 1  # nothing new started while stopping


def test_journal_round_trips_every_action_type():
    from dataclasses import fields
    from typing import get_args

    from hacontrol.journal import action_from_json, action_to_json
    from hacontrol.plan import (
        Action,
        AlertKind,
        CatchUp,
        CheckTransactions,
        Drain,
        Fence,
        Hook,
        Notify,
        Promote,
        Publish,
        Rebuild,
        Rejoin,
        Repoint,
        RequireReadOnly,
        Route,
        RouteFence,
        SetIOThreads,
        SetWritable,
        WaitApplied,
    )
    from hacontrol.routing import Membership

    examples = [
        RouteFence("node1", required=True),
        Drain("node1", 2.5),
        Route(Membership.of(["node2"], ["node2", "node3"], ["node1"], ["node4"]), False, True),
        Route(Membership.of([], ["node3"], ["node1"]), no_writer=True),
        WaitApplied("node2", 5.0),
        Promote("node2", "node1", finish_half_done=True),
        Repoint(("node3", "node4"), "node2"),
        Fence("node1"),
        Rejoin("node1", "node2", required=False),
        SetIOThreads(("node2", "node3"), running=False),
        CheckTransactions("node1", 5.0),
        CatchUp("node2", "node1", 10.0),
        SetWritable("node1", True, semi_sync_source=True),
        RequireReadOnly("node2"),
        Publish("node2"),
        Rebuild("node1", "node3", "node2"),
        Hook("pre_failover", (("phase", "pre_failover"), ("old_primary", "node1")), True),
        Notify(AlertKind.FAILOVER, "node1", "s", "r", (("candidates", "table"),)),
    ]
    assert {type(a) for a in examples} == set(get_args(Action))  # every type
    for action in examples:
        restored = action_from_json(json.loads(json.dumps(action_to_json(action))))
        assert restored == action
        for f in fields(action):  # the same types too (an enum stays an enum)
            assert type(getattr(restored, f.name)) is type(getattr(action, f.name)), f.name


class RecordingExecutor(FakeExecutor):
    """A FakeExecutor that keeps every plan it was given, with its skip set."""

    def __init__(self) -> None:
        super().__init__(ok=True, done_actions=())
        self.given: list[tuple] = []

    async def run(self, plan_id, plan, *, skip=frozenset(), resumed=False):
        self.given.append((plan_id, plan, skip, resumed))
        return await super().run(plan_id, plan, skip=skip, resumed=resumed)


@pytest.mark.parametrize(
    ("started", "done", "finish"),
    [({3}, {0, 1, 2}, True), ((), {0, 1, 2, 3}, False), ((), {0, 1, 2}, False)],
    ids=["crash inside Promote", "crash after Promote", "crash before Promote"],
)
async def test_resume_finishes_a_half_done_promotion_only_after_a_crash_inside_it(
    tmp_path, started, done, finish
):
    from hacontrol.journal import Journal
    from hacontrol.plan import Plan, PlanKind, Promote, Route, RouteFence, SetIOThreads, WaitApplied
    from hacontrol.routing import Membership

    plan = Plan(
        "DeadPrimary",
        "node1 is dead",
        (
            RouteFence("node1", required=True),
            SetIOThreads(("node2", "node3"), running=False),
            WaitApplied("node2", 5.0),
            Promote("node2", "node1"),
            Route(Membership.of(["node2"], ["node2"], ["node1", "node3"])),
        ),
        PlanKind.FAILOVER,
    )
    journal = Journal(tmp_path / "journal.jsonl")
    journal.begin("failover-1", plan)
    for index in sorted(done):
        journal.step("failover-1", index, True, "done")
    for index in started:
        journal.step_started("failover-1", index)
    executor = RecordingExecutor()
    queue: asyncio.Queue = asyncio.Queue()
    controller = Controller(
        S, JsonLog("t", stream=io.StringIO()), queue, executor=executor, journal=journal
    )
    for t in (1.0, 2.0, 3.0):
        feed(controller, dead_round(t))
    await asyncio.sleep(0.01)
    plan_id, resumed, skip, was_resumed = executor.given[0]
    assert plan_id == "failover-1" and was_resumed and skip == done
    assert resumed.promote is not None and resumed.promote.finish_half_done is finish


async def test_an_unwritable_journal_never_stops_the_controller_nor_a_failover(tmp_path):
    """The journal's folder turns into a file (every record fails) while the cluster runs,
    then the primary dies: the controller alerts, fails over through the real executor,
    keeps the quarantine in memory and writes it once the journal is writable again."""
    from hacontrol.executor import Executor
    from hacontrol.journal import Journal
    from tests.fakes import BEFORE, FakeNodes, FakeNotifier, FakeRouter
    from tests.support import break_journal

    out = io.StringIO()
    log = JsonLog("t", stream=out)
    journal = Journal(tmp_path / "state" / "journal.jsonl")
    original = journal.path
    nodes, notifier, queue, now = FakeNodes(), FakeNotifier(), asyncio.Queue(), [0.0]
    executor = Executor(
        S,
        log,
        mysql=nodes,
        router=FakeRouter(BEFORE),
        notifier=notifier,
        journal=journal,
        view=lambda: controller.view,
    )
    controller = Controller(
        S,
        log,
        queue,
        executor=executor,
        journal=journal,
        clock=lambda: now[0],
        journal_check_every=0.02,
    )
    running = asyncio.create_task(controller.run())
    for t in (1.0, 2.0, 3.0):
        feed(controller, healthy_round(t), now)
    break_journal(journal)()
    await eventually(lambda: not controller.state.journal.writable, 5, "the check sees it")
    for t in (4.0, 5.0, 6.0):
        feed(controller, dead_round(t), now)
    records = await eventually(
        lambda: [
            r for r in lines(out) if r["event"] == "plan_finished" and r["kind"] == "failover"
        ],
        5,
        "the failover",
    )
    assert records[0]["ok"], records[0]
    assert ("promote", "node2") in nodes.calls and not running.done()
    events = [r["event"] for r in lines(out)]
    assert events.count("journal_unwritable") == 1
    assert "journal_write_failed" in events  # the failover's begin, and the state
    (alert,) = [a for a in notifier.alerts if a.kind == "journal_unwritable"]
    assert "not-a-folder" in alert.reason
    assert "node1" in controller.state.quarantined
    journal.path = original  # room again
    await eventually(lambda: controller.state.journal.writable, 5, "the journal back")
    await eventually(lambda: "journal_writable" in [r["event"] for r in lines(out)], 5, "logged")
    queue.put_nowait(Stop(7.0, "test"))
    await asyncio.wait_for(running, 5)
    kept = Journal(original).load().state
    assert kept is not None and "node1" in kept["quarantined"]  # written when it could be
