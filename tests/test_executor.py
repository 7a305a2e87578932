"""The executor against fake nodes and a fake router: order, rollback, the point of no return,
journaling for crash resume, and the typed facts it reports. No database, no sleeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import pytest

from hacontrol.executor import Executor, received_beyond
from hacontrol.flavors.base import IoState, NodeStatus
from hacontrol.journal import Journal
from hacontrol.plan import (
    LEASE_LOST,
    ActionResult,
    AlertKind,
    CatchUp,
    CheckTransactions,
    Drain,
    Fence,
    Hook,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Publish,
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
from hacontrol.view import initial
from tests.factories import MemoryLog, S, channel, status
from tests.fakes import BEFORE, Crash, FakeNodes, FakeNotifier, FakeRouter
from tests.support import break_journal

AFTER = Membership.of(["node2"], ["node1", "node2", "node3"])


@dataclass
class Rig:
    executor: Executor
    nodes: FakeNodes
    router: FakeRouter
    notifier: FakeNotifier
    journal: Journal
    log: MemoryLog


def make_rig(tmp_path, settings=S, view=None, **more) -> Rig:
    nodes, router, notifier = FakeNodes(), FakeRouter(), FakeNotifier()
    journal, log = Journal(tmp_path / "journal.jsonl"), MemoryLog()
    seen = view if view is not None else initial(settings)
    executor = Executor(
        settings,
        log.log,
        mysql=nodes,
        router=router,
        notifier=notifier,  # type: ignore[arg-type]
        journal=journal,
        view=lambda: seen,
        **more,
    )
    return Rig(executor, nodes, router, notifier, journal, log)


@pytest.fixture
def rig(tmp_path) -> Rig:
    return make_rig(tmp_path)


def failover_plan() -> Plan:
    replicas = ("node2", "node3")
    return Plan(
        "DeadPrimary",
        "node1 is dead",
        (
            RouteFence("node1", required=True),
            SetIOThreads(replicas, running=False),
            WaitApplied("node2", 5.0, peers=("node3",)),
            Promote("node2", "node1"),
            Route(AFTER),
            Repoint(("node3",), "node2"),
            Notify(AlertKind.FAILOVER, "node1", "failover", "node1 is dead"),
        ),
        PlanKind.FAILOVER,
        rollback=(SetIOThreads(replicas, running=True),),
    )


def switchover_plan(deadline: float = 10.0) -> Plan:
    rolled_back = Notify(AlertKind.SWITCHOVER_ROLLED_BACK, "node1", "rolled back", "node1 again")
    return Plan(
        "Switchover",
        "switchover from node1 to node2",
        (
            CheckTransactions("node1", 5.0),
            Drain("node1", 2.0),
            Fence("node1"),
            CatchUp("node2", "node1", deadline),
            Promote("node2", "node1"),
            Route(AFTER),
            Repoint(("node3",), "node2"),
            Rejoin("node1", "node2", required=False),
        ),
        PlanKind.SWITCHOVER,
        deadline=deadline,
        rollback=(SetWritable("node1", True, semi_sync_source=True), Route(BEFORE), rolled_back),
    )


def journal_records(rig: Rig) -> list[tuple[str, object]]:
    import json

    lines = [json.loads(line) for line in rig.journal.path.read_text().splitlines()]
    return [(r["type"], r.get("index")) for r in lines]


FAILED = ActionResult("x", "node2", False, False, "timed out")


async def test_runs_every_action_in_order_and_reports_typed_facts(rig: Rig):
    finished = await rig.executor.run("failover-1", failover_plan())
    assert finished.ok and finished.reason == "all steps done" and finished.failed_at is None
    assert rig.nodes.calls == [
        ("stop_io", "node2"),
        ("stop_io", "node3"),
        ("status", "node2"),  # fresh positions: node2 holds what node3 received
        ("status", "node3"),
        ("wait_applied", "node2"),
        ("promote", "node2"),
        ("repoint", "node3"),
    ]
    assert rig.router.applied == [Membership.of([], ["node2", "node3"], ["node1"]), AFTER]
    assert finished.promoted == "node2"
    assert finished.touched == {"node2", "node3"} and finished.routed
    assert [s.action for s in finished.steps] == [type(a).__name__ for a in failover_plan().actions]
    assert [s.index for s in finished.steps] == list(range(7))
    assert finished.steps[5].node == "node3" and finished.steps[0].node == "node1"
    (alert,) = rig.notifier.alerts
    assert alert.kind == "failover" and "topology after" in dict(alert.sections)
    # Journaled: begin before the first step, start before Promote, end at the finish.
    assert journal_records(rig) == [
        ("begin", None),
        *[("step", i) for i in range(3)],
        ("start", 3),
        *[("step", i) for i in range(3, 7)],
        ("end", None),
    ]


async def test_a_failed_optional_action_is_logged_and_the_plan_goes_on(rig: Rig):
    rig.nodes.fail[("repoint", "node3")] = replace(FAILED, node="node3")
    finished = await rig.executor.run("failover-1", failover_plan())
    assert finished.ok and len(finished.steps) == 7
    assert not finished.steps[5].ok and finished.steps[5].reason == "node3: timed out"
    assert finished.reason == "done, but failed: Repoint (node3: timed out)"
    assert [r["action"] for r in rig.log.lines("action") if not r["ok"]] == ["Repoint"]


async def test_before_the_point_of_no_return_a_failure_stops_and_rolls_back(rig: Rig):
    rig.nodes.fail[("catch_up", "node2")] = FAILED
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at == 3 and finished.rolled_back
    assert ("promote", "node2") not in rig.nodes.calls  # stopped before the point of no return
    assert rig.nodes.calls[-1] == ("writable", "node1")
    assert rig.router.applied[-1] == BEFORE
    assert finished.reason == (
        "rolled back (SetWritable ok, Route ok, Notify ok) after CatchUp failed: timed out"
    )
    (alert,) = rig.notifier.alerts
    assert alert.kind == "switchover_rolled_back" and alert.reason.endswith(
        "cause: CatchUp failed: timed out"
    )
    assert finished.promoted is None and journal_records(rig)[-1] == ("end", None)
    assert rig.router.drained == ["node1"] and rig.router.membership == BEFORE  # drain undone


def stopped(node: str, received: str, io: IoState = IoState.STOPPED) -> NodeStatus:
    """A replica of node1 whose IO thread is ``io`` after receiving ``received``."""
    chan = channel("node1", io_state=io, received_gtid=received, last_io_errno=2013)
    return status(int(node[-1]), read_only=True, gtid=received, replication=(chan,))


def test_a_candidate_must_hold_what_every_stopped_peer_received() -> None:
    candidate = stopped("node2", "0-1-15")
    assert received_beyond("node2", candidate, {"node3": stopped("node3", "0-1-15")}) is None
    assert received_beyond("node2", candidate, {"node3": stopped("node3", "0-1-14")}) is None
    ahead = received_beyond("node2", candidate, {"node3": stopped("node3", "0-1-16")})
    assert ahead is not None and ahead.startswith("node3 received 0-1-16, node2 holds only 0-1-15")
    running = stopped("node3", "0-1-15", IoState.CONNECTING)
    reason = received_beyond("node2", candidate, {"node3": running})
    assert reason is not None and "node3's IO thread is Connecting, not stopped" in reason


async def test_a_peer_that_received_more_after_the_stops_stops_the_failover(rig: Rig):
    # The frozen primary answered again while the IO threads were stopping: node3 received
    # (and may have acknowledged) 0-1-16 that the candidate node2 lacks. Never promoted:
    # the plan stops before its promotion and starts the IO threads again.
    rig.nodes.statuses = {"node2": stopped("node2", "0-1-15"), "node3": stopped("node3", "0-1-16")}
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.failed_at == 2 and finished.rolled_back
    assert ("promote", "node2") not in rig.nodes.calls
    assert ("wait_applied", "node2") not in rig.nodes.calls
    assert "node3 received 0-1-16, node2 holds only 0-1-15" in finished.reason
    assert "the failover halts until an operator acts" in finished.reason
    assert {("start_io", "node2"), ("start_io", "node3")} <= set(rig.nodes.calls)
    assert finished.promoted is None


async def test_a_peer_that_cannot_be_read_after_the_stops_stops_the_failover(rig: Rig):
    # Maybe only the controller's link to node3 broke: it may hold a write it alone
    # acknowledged. Not promoted.
    rig.nodes.statuses = {"node2": stopped("node2", "0-1-15"), "node3": TimeoutError("timed out")}
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.failed_at == 2 and finished.rolled_back
    assert ("promote", "node2") not in rig.nodes.calls
    assert "node3 cannot be read" in finished.reason


async def test_a_switchover_drains_the_writer_before_it_fences_it(rig: Rig):
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert finished.ok and finished.routed
    assert rig.router.drained == ["node1"]
    assert rig.nodes.calls[:2] == [("check_transactions", "node1"), ("fence", "node1")]
    drain = finished.steps[1]
    assert drain.action == "Drain" and drain.node == "node1" and drain.changed
    assert drain.reason == "node1 drained in 0 s: no new write starts there"
    assert rig.router.applied == [AFTER]  # the Route after Promote replaces the drain


async def test_a_drain_that_reaches_its_deadline_goes_on_to_the_fence(rig: Rig):
    rig.router.in_use = 2  # e.g. two long transactions, or sessions that pinned a connection
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert finished.ok
    assert finished.steps[1].reason == (
        "node1: drain deadline of 2 s passed with 2 still in use; the fence ends them"
    )
    assert dict(finished.steps[1].detail) == {"idle": False, "in_use": 2, "seconds": 2.0}
    assert ("fence", "node1") in rig.nodes.calls and finished.promoted == "node2"


async def test_a_failed_drain_stops_the_switchover_and_routes_the_writer_back(rig: Rig):
    rig.router.drain_error = "ProxySQL admin 127.0.0.1:6032: drain failed at LOAD: 2013"
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at == 1 and finished.rolled_back
    assert finished.reason.startswith("rolled back (SetWritable ok, Route ok, Notify ok) after ")
    assert "Drain failed: RouterError: ProxySQL admin" in finished.reason
    assert ("fence", "node1") not in rig.nodes.calls
    assert rig.router.applied == [BEFORE] and rig.router.membership == BEFORE


async def test_past_the_point_of_no_return_nothing_is_rolled_back(rig: Rig):
    rig.router.apply = _failing_apply(rig.router, AFTER)  # the Route right after Promote
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at == 5 and not finished.rolled_back
    assert finished.promoted == "node2"
    assert ("writable", "node1") not in rig.nodes.calls
    assert "rolled back" not in finished.reason


def _failing_apply(router: FakeRouter, refused: Membership):
    original = router.apply

    async def apply(desired, **kw):
        if desired == refused:
            raise RuntimeError("router refused")
        return await original(desired, **kw)

    return apply


@pytest.mark.parametrize(("candidate_read_only", "undone"), [(True, True), (False, False)])
async def test_a_failed_promotion_is_undone_only_while_its_candidate_is_read_only(
    rig: Rig, candidate_read_only: bool, undone: bool
):
    rig.nodes.fail[("promote", "node2")] = FAILED
    rig.nodes.read_only["node2"] = candidate_read_only
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at == 4
    assert (("writable", "node1") in rig.nodes.calls) is undone
    if not undone:  # never two writers
        assert "NOT rolled back: the candidate node2 is writable" in finished.reason


async def test_rollback_starts_again_only_the_io_threads_this_plan_stopped(rig: Rig):
    rig.nodes.io_running = {"node2"}  # an operator stopped node3's IO thread before
    rig.nodes.fail[("wait_applied", "node2")] = FAILED
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.rolled_back
    assert rig.nodes.calls[-1] == ("start_io", "node2")
    assert ("start_io", "node3") not in rig.nodes.calls
    assert rig.nodes.io_running == {"node2"}


async def test_the_deadline_before_promotion_stops_a_slow_step(rig: Rig):
    rig.nodes.slow["catch_up"] = 5.0
    finished = await rig.executor.run("switchover-1", switchover_plan(deadline=0.05))
    assert not finished.ok and finished.failed_at == 3
    assert "deadline of 0.05 s passed before promotion" in finished.reason
    assert finished.rolled_back


async def test_a_crash_inside_promote_leaves_a_journal_that_says_so(rig: Rig):
    rig.nodes.crash.add(("promote", "node2"))
    with pytest.raises(Crash):
        await rig.executor.run("failover-1", failover_plan())
    intent = Journal(rig.journal.path).load().unfinished
    assert intent is not None and intent.plan_id == "failover-1"
    assert intent.done == {0, 1, 2} and intent.started == {3}


async def test_a_resumed_plan_skips_what_was_done_and_is_not_begun_again(rig: Rig):
    rig.journal.begin("failover-1", failover_plan())
    finished = await rig.executor.run(
        "failover-1", failover_plan(), skip=frozenset({0, 1, 2, 3}), resumed=True
    )
    assert finished.ok and [s.index for s in finished.steps] == [4, 5, 6]
    assert ("promote", "node2") not in rig.nodes.calls
    assert finished.promoted == "node2"  # promoted before the restart
    assert [t for t, _ in journal_records(rig)].count("begin") == 1


HALF_DONE = ActionResult(
    "promote", "node2", False, False, "not a replica and read-only", {"half_done_promotion": True}
)


@pytest.mark.parametrize("finish", [True, False])
async def test_a_half_done_promotion_is_finished_only_when_the_plan_says_so(rig: Rig, finish: bool):
    rig.nodes.fail[("promote", "node2")] = HALF_DONE
    plan = failover_plan()
    actions = list(plan.actions)
    actions[3] = Promote("node2", "node1", finish_half_done=finish)
    finished = await rig.executor.run("failover-1", replace(plan, actions=tuple(actions)))
    assert finished.ok is finish
    assert (("writable", "node2") in rig.nodes.calls) is finish
    if finish:
        assert finished.steps[3].reason == "finished a half-done promotion: writable done"


@pytest.mark.parametrize("old", ["writable", "unreadable"])
async def test_a_half_done_promotion_reads_its_old_primary_right_before_it_is_finished(
    rig: Rig, old: str
):
    """The old primary turned writable since the decision (restarted with read_only=OFF): the
    candidate is not made writable beside it, the plan stops (a halt and an alert follow).
    One that cannot be read is away still: the promotion is finished."""
    rig.nodes.fail[("promote", "node2")] = HALF_DONE
    if old == "writable":
        rig.nodes.read_only["node1"] = False
    else:
        rig.nodes.statuses["node1"] = TimeoutError("timed out")
    plan = failover_plan()
    actions = list(plan.actions)
    actions[3] = Promote("node2", "node1", finish_half_done=True)
    finished = await rig.executor.run("failover-1", replace(plan, actions=tuple(actions)))
    assert ("status", "node1") in rig.nodes.calls
    assert (("writable", "node2") in rig.nodes.calls) is (old == "unreadable")
    if old == "writable":
        assert not finished.ok and finished.failed_at == 3
        assert finished.steps[3].reason == (
            "the old primary node1 is writable now: not finishing the half-done promotion of "
            "node2 (it would make two writers)"
        )
    else:
        assert finished.ok


@pytest.mark.parametrize("candidate", ["read-only", "writable", "unreadable"])
async def test_a_resumed_rollback_of_a_switchover_cut_inside_its_promote_reads_the_candidate(
    rig: Rig, candidate: str
):
    """The rollback a restart starts for a switchover cut inside its Promote: the old primary
    is made writable only once the candidate is read as read-only."""
    if candidate == "writable":
        rig.nodes.read_only["node2"] = False
    elif candidate == "unreadable":
        rig.nodes.statuses["node2"] = TimeoutError("timed out")
    plan = Plan(
        "Switchover",
        "r",
        (RequireReadOnly("node2"), SetWritable("node1", True)),
        PlanKind.ROLLBACK,
    )
    finished = await rig.executor.run("switchover-1-rollback", plan)
    assert finished.ok is (candidate == "read-only")
    assert (("writable", "node1") in rig.nodes.calls) is (candidate == "read-only")


async def test_a_required_hook_vetoes_and_an_optional_one_runs_in_the_background(rig: Rig):
    from hacontrol.actions.hooks import HookResult

    ran: list[str] = []

    class Hooks:
        async def run(self, phase, context):
            ran.append(phase)
            ok = phase != "pre_failover"
            return HookResult(phase, "/bin/guard", True, ok, 0 if ok else 3, False, 0.1, "busy")

    rig.executor.hooks = Hooks()  # type: ignore[assignment]
    plan = failover_plan()
    vetoed = (Hook("on_failure_detected"), Hook("pre_failover", required=True), *plan.actions)
    finished = await rig.executor.run("failover-1", replace(plan, actions=vetoed))
    await asyncio.sleep(0)  # the background hook
    assert not finished.ok and finished.failed_at == 1
    assert finished.reason == "Hook failed: pre_failover hook `/bin/guard` exited 3: busy"
    assert finished.steps[0].reason == "on_failure_detected hook started in the background"
    assert sorted(ran) == ["on_failure_detected", "pre_failover"]
    assert rig.nodes.calls == [] and rig.router.applied == []  # nothing was changed
    assert not finished.rolled_back  # nothing to undo: no IO thread was stopped


async def test_an_alert_outside_a_plan_runs_the_on_halt_hook_only_for_a_halt(rig: Rig):
    ran: list[tuple[str, dict]] = []

    class Hooks:
        async def run(self, phase, context):
            ran.append((phase, dict(context)))

    rig.executor.hooks = Hooks()  # type: ignore[assignment]
    on_halt = S.model_copy(update={"hooks": S.hooks.model_copy(update={"on_halt": "true"})})
    rig.executor.settings = on_halt
    halt = Notify(AlertKind.HALT, None, "HALT", "two writers")
    rig.executor.notify(halt, Plan("TwoWritableNodes", "x", kind=PlanKind.HALT), on_halt=True)
    rig.executor.notify(Notify(AlertKind.NO_QUORUM, None, "q", "r"), Plan("NoQuorum", "x"))
    await asyncio.sleep(0)
    assert [a.kind for a in rig.notifier.alerts] == ["halt", "no_quorum"]
    assert ran == [("on_halt", {"kind": "halt", "node": "", "reason": "two writers"})]


# -- when the journal cannot be written (rules.journal) ---------------------------------------


async def test_a_failover_runs_without_a_journal_that_cannot_be_written(rig: Rig):
    break_journal(rig.journal)()
    finished = await rig.executor.run("failover-1", failover_plan())
    assert finished.ok and finished.promoted == "node2" and len(finished.steps) == 7
    (failed,) = rig.log.lines("journal_write_failed")  # the first record only: then none
    assert failed["plan_goes_on"] is True and "not-a-folder" in failed["reason"]
    assert "goes on without the journal" in failed["why"]


async def test_a_switchover_does_not_start_without_its_journal(rig: Rig):
    break_journal(rig.journal)()
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at is None and finished.steps == ()
    assert finished.reason.startswith("not started: the journal cannot be written")
    assert rig.nodes.calls == [] and rig.router.applied == []


async def test_a_switchover_whose_journal_fails_midway_stops_after_the_step_in_flight(rig: Rig):
    original = rig.journal.path
    rig.nodes.then[("fence", "node1")] = break_journal(rig.journal)
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert not finished.ok and finished.failed_at == 3 and finished.rolled_back
    assert ("fence", "node1") in rig.nodes.calls  # the step in flight finished ...
    assert ("catch_up", "node2") not in rig.nodes.calls  # ... and nothing after it ran
    assert "stopped before CatchUp: the journal cannot be written" in finished.reason
    assert rig.nodes.calls[-1] == ("writable", "node1") and rig.router.applied[-1] == BEFORE
    (failed,) = rig.log.lines("journal_write_failed")
    assert failed["plan_goes_on"] is False
    # Its begin is in the journal; its end could not be written: kept, and written once the
    # journal can be (a restart must not take the plan for an unfinished one).
    assert Journal(original).load().unfinished is not None
    rig.journal.path = original
    assert rig.journal.check_space().writable
    assert Journal(original).load().unfinished is None


async def test_past_its_promotion_a_plan_goes_on_without_the_journal(rig: Rig):
    rig.nodes.then[("promote", "node2")] = break_journal(rig.journal)
    finished = await rig.executor.run("switchover-1", switchover_plan())
    assert finished.ok and finished.promoted == "node2"
    assert ("repoint", "node3") in rig.nodes.calls and rig.router.applied[-1] == AFTER


async def test_an_executor_error_after_the_promotion_still_reports_it(rig: Rig):
    """The known gap: whatever fails after a successful Promote (the log's stream here), the
    failover counts as promoted: the old primary stays quarantined, the block holds."""
    rig.nodes.then[("promote", "node2")] = rig.log.stream.close
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.promoted == "node2"
    assert finished.reason.startswith("the executor failed: ValueError")
    # Done as far as the controller goes: ended, so that a restart does not redo its steps
    # (a Route to a writer that may have changed since, a Repoint to it).
    await settled(rig.journal)
    assert Journal(rig.journal.path).load().unfinished is None


def slow_first_record(journal: Journal, seconds: float) -> None:
    """The first record takes ``seconds`` to become durable (a disk that hangs, then lands it);
    the executor's wait for it gives up first."""
    original, calls = journal._write_lines, []

    def slow(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 1:
            time.sleep(seconds)
        original(data)

    journal._write_lines = slow  # type: ignore[method-assign]
    journal.write_timeout = 0.05


async def settled(journal: Journal) -> None:
    """Everything posted so far has landed (or failed), however long the writer takes."""
    await asyncio.wrap_future(journal.post(lambda: None))


@pytest.mark.parametrize(
    "plan", [failover_plan(), switchover_plan()], ids=["failover", "switchover"]
)
async def test_a_begin_that_lands_after_its_wait_gave_up_is_ended(rig: Rig, plan: Plan):
    """A begin not durable within the wait counts as not written, but may land later: the run
    must still end it, or a restart (days later) finishes or rolls back a plan long done."""
    slow_first_record(rig.journal, 0.3)
    finished = await rig.executor.run("plan-1", plan)
    assert finished.ok is (plan.kind is PlanKind.FAILOVER)  # a switchover does not start
    await settled(rig.journal)
    assert [t for t, _ in journal_records(rig)] == ["begin", "end"]
    assert Journal(rig.journal.path).load().unfinished is None


async def test_a_failover_that_promoted_nothing_leaves_no_quarantine_in_the_journal(rig: Rig):
    """The state written before the failover quarantines its dead primary and blocks the next
    failover; the controller drops both when it hears the plan promoted nothing, in a state
    record written after the executor's end. A crash between the two must not leave the dead
    primary quarantined (DeadPrimary skips a quarantined node: no failover, no alert)."""
    kept = {
        "paused": False,
        "maintenance": [],
        "blocked_until": 4_000_000_000.0,
        "last_failover_at": 1_000.0,
        "quarantined": {"node1": {"new_primary": "node2", "since": 1_000.0, "errant": None}},
    }
    rig.journal.save_state(kept)
    rig.nodes.fail[("wait_applied", "node2")] = FAILED
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.promoted is None and finished.rolled_back
    # The controller is killed here, before its own state record.
    replay = Journal(rig.journal.path).load()
    assert replay.unfinished is None and replay.state is not None
    assert replay.state["quarantined"] == {} and replay.state["blocked_until"] is None
    assert replay.state["last_failover_at"] == 1_000.0


# ---------------------------------------------------------------------------------------------
# A fleet's lease


@dataclass
class FakePublisher:
    published: list[str] = field(default_factory=list)

    async def publish(self, node: str, timeout: float) -> ActionResult:
        self.published.append(node)
        return ActionResult("publish", node, True, True, f"published {node}")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fleet_rig(tmp_path, confirmed_at: float, clock: Clock) -> tuple[Rig, FakePublisher]:
    """An executor of a fleet's leader whose locks were last confirmed at ``confirmed_at``."""
    from tests.factories import fleet, lock
    from tests.support import fold_all

    s = fleet()
    view = fold_all(s, [lock(n, confirmed_at, leader=7) for n in ("node1", "node2", "node3")])
    publisher = FakePublisher()
    return make_rig(tmp_path, s, view, clock=clock, lease=publisher), publisher


def fleet_failover() -> Plan:
    plan = failover_plan()
    at = plan.point_of_no_return + 1
    return replace(plan, actions=(*plan.actions[:at], Publish("node2"), *plan.actions[at:]))


async def test_a_leader_with_a_valid_lease_runs_the_plan_and_publishes(tmp_path):
    clock = Clock(10.0)
    rig, publisher = fleet_rig(tmp_path, 10.0, clock)
    done = await rig.executor.run("failover-1", fleet_failover())
    assert done.ok and not done.lease_lost
    assert publisher.published == ["node2"]


async def test_a_step_without_a_valid_lease_stops_the_plan_undoes_nothing_and_says_so(tmp_path):
    clock = Clock(10.0 + fleet_settings().lease.validity)  # the last keepalive is V old
    rig, publisher = fleet_rig(tmp_path, 10.0, clock)
    done = await rig.executor.run("failover-1", fleet_failover())
    assert not done.ok and done.lease_lost and not done.rolled_back
    assert done.failed_at == 1  # SetIOThreads, the first step on a node (RouteFence ran)
    assert "lease: this instance no longer holds a valid majority" in done.reason
    assert rig.nodes.calls == [] and publisher.published == []
    assert [type(a).__name__ for a in rig.router.applied] == ["Membership"]  # its own router
    assert ("end", None) in journal_records(rig)  # the journal says where it stopped


async def test_a_lease_lost_inside_an_action_stops_the_plan_even_past_an_optional_step(tmp_path):
    clock = Clock(10.0)
    rig, _ = fleet_rig(tmp_path, 10.0, clock)
    refused = ActionResult(
        "repoint", "node3", False, False, "lease: not sending", {LEASE_LOST: True}
    )
    rig.nodes.fail[("repoint", "node3")] = refused
    done = await rig.executor.run("failover-1", fleet_failover())
    assert not done.ok and done.lease_lost and done.promoted == "node2"
    assert done.steps[-1].action == "Repoint"  # optional, yet the plan stopped there


def fleet_settings():
    from tests.factories import fleet

    return fleet()


async def test_a_hook_is_not_run_without_a_valid_lease(tmp_path):
    """A leader frozen inside a failover and resumed after its lease ended must not run the
    operator's hooks either: a pre_failover hook may fence the old primary (power it off) for
    a failover the new leader, reading the live topology, may not make."""
    from hacontrol.actions.hooks import HookRunner
    from hacontrol.settings import HookSettings

    marker = tmp_path / "pre_failover-ran"
    hooks = HookRunner(HookSettings(pre_failover=f"touch {marker}"), MemoryLog().log, cluster="t")
    clock = Clock(10.0 + fleet_settings().lease.validity)  # the last keepalive is V old
    rig, _ = fleet_rig(tmp_path, 10.0, clock)
    rig.executor.hooks = hooks
    plan = fleet_failover()
    plan = replace(plan, actions=(Hook("pre_failover", required=True), *plan.actions))
    done = await rig.executor.run("failover-1", plan)
    assert not done.ok and done.lease_lost and done.failed_at == 0
    assert not marker.exists(), "the hook ran without the lease"


@dataclass
class GuardedRebuilder:
    """Asks the executor's guard before its change to the node, the way ``Rebuilder`` does;
    the lease runs out during the copy (``lose_at``)."""

    clock: Clock
    lose_at: float
    asked: list[str | None] = field(default_factory=list)

    async def rebuild(self, target, source, primary, on_progress=None, guard=None):
        from hacontrol.actions.rebuild import RebuildResult

        assert guard is not None
        self.asked.append(guard())  # the copy starts while the lease is valid
        self.clock.now = self.lose_at
        self.asked.append(problem := guard())  # before the target is stopped
        if problem:
            reason = f"rebuild of {target} failed at prepare: {problem}; untouched"
            return RebuildResult(False, target, source, reason, {LEASE_LOST: True})
        return RebuildResult(True, target, source, "rebuilt", {})


async def test_a_rebuild_asks_the_lease_before_changing_its_node_and_stops_without_it(tmp_path):
    from hacontrol.plan import Rebuild

    clock = Clock(10.0)
    s = fleet_settings()
    rig, _ = fleet_rig(tmp_path, 10.0, clock)
    rebuilder = GuardedRebuilder(clock, 10.0 + s.lease.validity)
    executor = make_rig(
        tmp_path, s, rig.executor._view(), clock=clock, rebuilder=rebuilder
    ).executor
    plan = Plan("Rebuild", "r", (Rebuild("node1", "node3", "node2"),), PlanKind.REBUILD)
    done = await executor.run("rebuild-1", plan)
    assert rebuilder.asked[0] is None and "no longer holds a valid majority" in rebuilder.asked[1]
    assert not done.ok and done.lease_lost and not done.rolled_back
    assert executor.rebuild_status is not None and executor.rebuild_status[LEASE_LOST]
    assert "lease" in executor.rebuild_status["reason"]


@pytest.mark.parametrize(("candidate_read_only", "undone"), [(True, True), (False, False)])
async def test_a_failovers_failed_promotion_starts_no_io_thread_unless_its_candidate_is_read_only(
    rig: Rig, candidate_read_only: bool, undone: bool
):
    """Promote failed after read_only=OFF (a freeze before its status read, a timeout): the
    candidate may be writable. Starting the replicas' IO threads again would erase the trace a
    next leader's guard reads (it would promote node3 beside node2: review HIGH): the rollback
    goes on only once node2 is read read-only, and never starts node2's own IO thread."""
    rig.nodes.fail[("promote", "node2")] = FAILED
    rig.nodes.read_only["node2"] = candidate_read_only
    finished = await rig.executor.run("failover-1", failover_plan())
    assert not finished.ok and finished.failed_at == 3
    started_io = [node for call, node in rig.nodes.calls if call == "start_io"]
    assert started_io == (["node3"] if undone else [])
    if not undone:
        assert "node2 is writable" in finished.reason, finished.reason
