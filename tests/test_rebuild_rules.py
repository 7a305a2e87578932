"""The rebuild as a plan of the pure core: its refusals (table), the command's answers, what
its outcome changes. Plain values: no database, no loop, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.effects import CancelPlan, EndIntent, Log, SendAlert, StartPlan
from hacontrol.events import OperatorCommand, PlanFinished, Tick
from hacontrol.flavors.base import IoState
from hacontrol.model import ControllerState, Intent, Lease, LeaseMode, Model, Quarantined, Running
from hacontrol.plan import Plan, PlanKind, Rebuild
from hacontrol.rules.commands import command
from hacontrol.rules.rebuild import plan_rebuild
from hacontrol.step import step
from tests.factories import NOW, S, down, primary, replica, replies, router, status
from tests.support import fold_all

QUARANTINE = ControllerState(
    quarantined={"node1": Quarantined("node1", "node2", 50.0, errant="0-1-101..103")}
)


def after_failover(node1=None, node3=None, membership=None):
    """node2 primary, node3 its replica, node1 the quarantined old primary (read-only, in
    broken, with an errant transaction), over three probe rounds; ``node1`` / ``node3``
    replace a node's probe."""
    rounds = []
    errant = status(1, read_only=True, gtid="0-1-103")
    for t in (1.0, 2.0, 3.0):
        n1 = node1(t) if node1 else replace(primary("node1", t), status=errant)
        n3 = node3(t) if node3 else replica("node3", t, source="node2")
        groups = membership or {"writers": ("node2",), "readers": ("node2", "node3"),
                                "broken": ("node1",)}  # fmt: skip
        rounds.append([primary("node2", t), n3, n1, router(at=t, **groups)])
    return fold_all(S, *rounds)


CASES = [
    # (name, view, state, target, source, the plan's source or the refusal's words)
    ("the old primary, from the best replica", after_failover(), QUARANTINE, "node1", None,
     "node3"),
    ("the old primary, from a named replica", after_failover(), QUARANTINE, "node1", "node3",
     "node3"),
    ("unknown node", after_failover(), QUARANTINE, "node9", None, "unknown node 'node9'"),
    ("unknown source", after_failover(), QUARANTINE, "node1", "nodeX", "unknown node 'nodeX'"),
    ("the primary", after_failover(), QUARANTINE, "node2", None, "node2 is the primary"),
    ("a healthy replica in service", after_failover(), QUARANTINE, "node3", None,
     "node3 is a healthy replica in service"),
    ("the primary as the source", after_failover(), QUARANTINE, "node1", "node2",
     "source node2 is the primary"),
    ("a lagging source", after_failover(node3=lambda t: replica("node3", t, source="node2",
     seconds_behind=50)), QUARANTINE, "node1", "node3", "lagging 50 s behind the primary"),
    ("a source whose IO thread stopped", after_failover(node3=lambda t: replica(
        "node3", t, source="node2", io_state=IoState.CONNECTING, last_io_errno=2003,
        last_io_error="refused")), QUARANTINE, "node1", "node3",
     "source node3 is not a healthy replica: not replicating"),
    ("no healthy source left", after_failover(node3=lambda t: down("node3", t)), QUARANTINE,
     "node1", None, "no healthy replica other than node1"),
    ("the last healthy replica", after_failover(
        node1=lambda t: replica("node1", t, source="node2"), node3=lambda t: down("node3", t)),
     QUARANTINE, "node1", None, "node1 is the last healthy replica"),
    ("a target the controller has not fenced (still a reader)", after_failover(
        node3=lambda t: replica("node3", t, source="node2", seconds_behind=50)),
     QUARANTINE, "node3", None, "in the router's reader group: the controller has not fenced"),
    ("a writable target", after_failover(node1=lambda t: primary("node1", t)), QUARANTINE,
     "node1", None, "node1 is writable: fence it first"),
    ("no quorum", after_failover(node1=lambda t: down("node1", t),
     node3=lambda t: down("node3", t)), QUARANTINE, "node1", None, "no quorum"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "view", "state", "target", "source", "expected"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_plan_rebuild(name, view, state, target, source, expected):
    plan = plan_rebuild(view, state, S, target, source)
    if isinstance(plan, str):
        assert expected in plan, plan
        return
    assert plan.kind is PlanKind.REBUILD and plan.kind.journaled
    assert plan.actions == (Rebuild(target, expected, "node2"),), plan


def rebuild_cmd(node="node1", source=None, dry_run=False) -> OperatorCommand:
    return OperatorCommand(NOW, "rebuild", node, source=source, dry_run=dry_run)


def test_the_command_starts_the_plan_and_is_answered_at_once():
    m, effects = step(Model(after_failover(), QUARANTINE), rebuild_cmd(), S, NOW)
    (started,) = [e for e in effects if isinstance(e, StartPlan)]
    assert started.running.plan.actions == (Rebuild("node1", "node3", "node2"),)
    assert started.running.command is None  # not kept waiting for hours
    (answer,) = replies(effects)
    assert answer.ok and "rebuild of node1 from node3 started" in answer.message
    assert answer.detail["plan"] == started.running.plan_id == m.running.plan_id


def test_a_dry_run_names_the_source_and_starts_nothing():
    m, effects = step(Model(after_failover(), QUARANTINE), rebuild_cmd(dry_run=True), S, NOW)
    assert m.running is None and not [e for e in effects if isinstance(e, StartPlan)]
    (answer,) = replies(effects)
    assert answer.ok and answer.detail["source"] == "node3"
    assert "node1 may be rebuilt from node3" in answer.message


def test_a_refusal_is_answered_and_changes_nothing():
    before = Model(after_failover(), QUARANTINE)
    m, effects = step(before, rebuild_cmd("node2"), S, NOW)
    (answer,) = replies(effects)
    assert not answer.ok and answer.message.startswith("refused: node2 is the primary")
    assert m.running is None and m.state.quarantined == before.state.quarantined


def test_one_plan_at_a_time_the_command_waits_for_the_running_plan():
    running = Running("route-1", Plan("RouteReconcile", "r", kind=PlanKind.ROUTE))
    m, effects = step(Model(after_failover(), QUARANTINE, running=running), rebuild_cmd(), S, NOW)
    assert replies(effects) == [] and m.deferred and m.running is running


def test_only_the_leader_rebuilds():
    following = Lease(fleet=True, mode=LeaseMode.HOLD, reason="following: another instance leads")
    follower = Model(after_failover(), QUARANTINE, lease=following)
    m, effects = step(follower, rebuild_cmd(), S, NOW)
    (answer,) = replies(effects)
    assert (
        not answer.ok and "not the leader" in answer.message and "ask the leader" in answer.message
    )
    assert m.running is None and not m.deferred


def test_a_new_leader_still_taking_over_defers_the_rebuild():
    waiting = Lease(fleet=True, mode=LeaseMode.ACQUIRE, leader_since=NOW - 0.1, ready_at=NOW + 1)
    m, effects = command(Model(after_failover(), QUARANTINE, lease=waiting), rebuild_cmd(), S, NOW)
    assert replies(effects) == [] and m.deferred and m.running is None


def finished_rebuild(ok: bool) -> tuple[Model, PlanFinished]:
    m, _ = step(Model(after_failover(), QUARANTINE), rebuild_cmd(), S, NOW)
    assert m.running is not None
    reason = "all steps done" if ok else "Rebuild failed: rebuild of node1 failed at copy: ..."
    event = PlanFinished(NOW + 5, m.running.plan_id, "Rebuild", PlanKind.REBUILD, ok, reason,
                         None if ok else 0, (), 5.0, touched=frozenset({"node1"}))  # fmt: skip
    return m, event


def test_a_rebuilt_node_leaves_quarantine():
    m, event = finished_rebuild(ok=True)
    m, effects = step(m, event, S, NOW + 5)
    assert "node1" not in m.state.quarantined and m.running is None
    assert not [e for e in effects if isinstance(e, SendAlert)]


def test_a_failed_rebuild_keeps_the_node_out_and_alerts():
    m, event = finished_rebuild(ok=False)
    m, effects = step(m, event, S, NOW + 5)
    assert "node1" in m.state.quarantined
    (alert,) = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert alert.kind == "rebuild_failed" and alert.node == "node1"
    assert "kept out of service" in alert.reason


# -- a failover never waits for a rebuild --------------------------------------------------------

REBUILDING = Running(
    "rebuild-1",
    Plan("Rebuild", "operator", (Rebuild("node3", "node2", "node1"),), kind=PlanKind.REBUILD),
)


def primary_dies(running: Running) -> Model:
    healthy = [[primary(at=t), replica("node2", t), replica("node3", t), router(at=t)]
               for t in (1.0, 2.0, 3.0)]  # fmt: skip
    dead = {"io_state": IoState.CONNECTING, "last_io_errno": 2003, "last_io_error": "refused"}
    rounds = [[down("node1", t), replica("node2", t, **dead), replica("node3", t, **dead)]
              for t in (4.0, 5.0, 6.0)]  # fmt: skip
    return Model(fold_all(S, *healthy, *rounds[:-1]), running=running)


def test_a_dead_primary_preempts_a_running_rebuild_then_fails_over():
    m = primary_dies(REBUILDING)
    m, effects = step(m, down("node1", 6.0), S, NOW)
    (cancel,) = [e for e in effects if isinstance(e, CancelPlan)]
    assert cancel.plan_id == "rebuild-1" and "preempted by DeadPrimary" in cancel.reason
    assert m.running is not None and m.running.preempted == cancel.reason
    m, again = step(m, down("node1", 6.2), S, NOW + 0.2)
    assert not [e for e in again if isinstance(e, CancelPlan)]  # asked once
    stopped = PlanFinished(NOW + 1, "rebuild-1", "Rebuild", PlanKind.REBUILD, False,
                           cancel.reason, None, (), 1.0)  # fmt: skip
    m, effects = step(m, stopped, S, NOW + 1)
    (started,) = [e for e in effects if isinstance(e, StartPlan)]
    assert started.running.plan.kind is PlanKind.FAILOVER


@pytest.mark.parametrize(
    "running",
    [
        REBUILDING,  # on a healthy cluster
        Running("failover-1", Plan("DeadPrimary", "x", kind=PlanKind.FAILOVER)),
    ],
)
def test_nothing_else_is_preempted(running):
    healthy = Model(after_failover(), QUARANTINE, running=running)
    if running.plan.kind is PlanKind.FAILOVER:
        healthy = primary_dies(running)
    _, effects = step(healthy, down("node1", 6.0), S, NOW)
    assert not [e for e in effects if isinstance(e, CancelPlan)]


def test_a_rebuild_cut_by_a_restart_is_abandoned_never_rerun():
    """The controller stopped in the middle of a rebuild: at its next start the journal's
    rebuild is ended and logged as abandoned; the node stays quarantined (rebuild again)."""
    intent = Intent("rebuild-1", REBUILDING.plan)
    m = replace(Model(after_failover(), QUARANTINE), resume=intent)
    m, effects = step(m, Tick(NOW), S, NOW)
    assert m.resume is None and "node1" in m.state.quarantined
    assert not [e for e in effects if isinstance(e, StartPlan) and e.running.plan_id == "rebuild-1"]
    (ended,) = [e for e in effects if isinstance(e, EndIntent)]
    assert ended.plan_id == "rebuild-1"
    assert [e for e in effects if isinstance(e, Log) and e.event == "plan_abandoned"]


def test_in_a_fleet_a_rebuild_cut_by_a_restart_is_closed_and_its_node_stays_quarantined():
    """A fleet's journal plan is never resumed (another instance may have acted since): the
    rebuild is ended, never rerun, and its node stays out until a leader rebuilds it."""
    from tests.factories import fleet

    following = Lease(fleet=True, mode=LeaseMode.HOLD, reason="following: another instance leads")
    plan = Plan("Rebuild", "operator", (Rebuild("node1", "node3", "node2"),), PlanKind.REBUILD)
    m = replace(
        Model(after_failover(), QUARANTINE, lease=following), resume=Intent("rebuild-1", plan)
    )
    m, effects = step(m, Tick(NOW), fleet(), NOW)
    assert m.resume is None and "node1" in m.state.quarantined and m.running is None
    (ended,) = [e for e in effects if isinstance(e, EndIntent)]
    assert ended.plan_id == "rebuild-1" and ended.reason == "fleet: the live topology decides"
    assert not [e for e in effects if isinstance(e, StartPlan)]
