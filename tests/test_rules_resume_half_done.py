"""A fleet's leader killed inside its failover's Promote, after the candidate's replication
was reset and before it was made writable: node2 read-only and replicating from nobody, node3
stopped on the dead node1, no writer. Restarted, the journal's plan used to be closed ("the
live topology decides"), and the live topology then failed node1 over again to node3, passing
over node2, which may hold acknowledged writes node3 lacks, and leaving node2 stranded. The
leader now finishes the half-done promotion as a single instance does; a follower keeps the
intent until it leads or the view changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.effects import EndIntent, Log, PersistState, SendAlert, StartPlan
from hacontrol.events import PlanFinished, ProbeResult, Tick
from hacontrol.flavors.base import IoState
from hacontrol.model import Intent, Lease, LeaseMode, Model, Running, Settle
from hacontrol.plan import (
    Drain,
    Fence,
    Plan,
    PlanKind,
    Promote,
    Publish,
    Rejoin,
    Repoint,
    RequireReadOnly,
    Route,
    SetIOThreads,
    SetWritable,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.rules.planned import plan_maintenance
from hacontrol.rules.resume import fenced_not_promoted, half_done_promotion
from hacontrol.step import step
from hacontrol.view import with_maintenance
from tests.factories import (
    channel,
    cmd,
    down,
    failed_over,
    fleet,
    leader_lease,
    lock,
    primary,
    replica,
    replies,
    router,
    settings,
    status,
)
from tests.support import fold_all

F = fleet()
NOW = 100.0
LEADER = leader_lease(F)
FOLLOWER = Lease(fleet=True, mode=LeaseMode.ACQUIRE)
STOPPED = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}
PLAN = Plan(
    "DeadPrimary",
    "r",
    (
        SetIOThreads(("node2", "node3"), running=False),
        WaitApplied("node2", 10.0),
        Promote("node2", "node1"),
        Publish("node2"),
        Repoint(("node3",), "node2"),
    ),
    PlanKind.FAILOVER,
)
CUT = Intent("failover-1", PLAN, done=frozenset({0, 1}), started=frozenset({0, 1, 2}))
"""Its Promote begun, not done."""


def after_cut(node2: ProbeResult | None = None, node1_back: bool = False, leader: int = 7):
    rounds = [
        [
            primary("node1", t) if node1_back else down("node1", t),
            node2 or ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            replica("node3", t, source="node1", **STOPPED),
            router(writers=(), readers=("node2", "node3"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(F, *rounds, [lock(n, NOW - 0.1, leader=leader) for n in ("node2", "node3")])


def run(m: Model, ticks: int = 2) -> list:
    effects: list = []
    for i in range(ticks):
        m, more = step(m, Tick(NOW + i), F, NOW + i)
        effects += more
    return effects


def test_the_leader_finishes_a_half_done_promotion():
    m = Model(after_cut(), lease=LEADER, resume=CUT, state=failed_over(NOW - 1))
    assert half_done_promotion(m, CUT)
    (started,) = [e.running for e in run(m) if isinstance(e, StartPlan)]
    assert started.plan_id == "failover-1" and started.skip == {0, 1}
    promote = started.plan.actions[2]
    assert promote == Promote("node2", "node1", finish_half_done=True)
    assert not any(isinstance(e, EndIntent) for e in run(m))


@pytest.mark.parametrize("holder", [9, 7], ids=["another-instance-leads", "not-acting-yet"])
def test_an_instance_that_may_not_act_keeps_the_intent_and_promotes_nothing(holder):
    m = Model(after_cut(leader=holder), lease=FOLLOWER, resume=CUT, state=failed_over(NOW - 1))
    effects = run(m)
    assert not any(isinstance(e, (StartPlan, EndIntent)) for e in effects), effects


def test_a_promotion_that_is_not_half_done_in_the_view_is_left_to_the_fleet():
    """The candidate still replicates (the Promote stopped before its reset), or the dead
    primary is back: the journal's plan is closed and the live topology decides, as before."""
    still_replica = replica("node2", 6.0, source="node1", **STOPPED)
    for view in (after_cut(node2=still_replica), after_cut(node1_back=True)):
        m = Model(view, lease=LEADER, resume=CUT, state=failed_over(NOW - 1))
        assert not half_done_promotion(m, CUT)
        ended = [e for e in run(m, 1) if isinstance(e, EndIntent)]
        assert ended and ended[0].reason == "fleet: the live topology decides"


def test_a_promotion_begun_and_done_is_no_half_done_one():
    done = Intent(CUT.plan_id, PLAN, done=CUT.started, started=CUT.started)
    m = Model(after_cut(), lease=LEADER, resume=done, state=failed_over(NOW - 1))
    assert not half_done_promotion(m, done)


# A switchover node1 -> node2 cut after its fence, before its promotion: node1 read-only, its
# replicas still following it, nobody writable. A single instance rolls it back; a fleet's
# instance that cut it now does too, once it leads.
SWITCHOVER = Plan(
    "Switchover",
    "r",
    (Drain("node1", 1.0), Fence("node1"), Promote("node2", "node1"), Publish("node2")),
    PlanKind.SWITCHOVER,
    rollback=(SetWritable("node1", True),),
)
FENCED = Intent("switchover-1", SWITCHOVER, done=frozenset({0, 1}), started=frozenset())


def fenced(node2: ProbeResult | None = None, leader: int = 7):
    rounds = [
        [
            ProbeResult("node1", t, 0.001, status(1, read_only=True)),
            node2 or replica("node2", t),
            replica("node3", t),
            router(writers=(), readers=("node2", "node3"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(F, *rounds, [lock(n, NOW - 0.1, leader=leader) for n in ("node1", "node2")])


def test_the_leader_rolls_back_a_switchover_cut_after_its_fence():
    m = Model(fenced(), lease=LEADER, resume=FENCED)
    assert fenced_not_promoted(m, FENCED)
    (started,) = [e.running for e in run(m) if isinstance(e, StartPlan)]
    assert started.plan.kind is PlanKind.ROLLBACK
    assert started.plan.actions == (SetWritable("node1", True),)


def test_a_switchover_cut_after_its_fence_waits_for_the_lead():
    m = Model(fenced(leader=9), lease=FOLLOWER, resume=FENCED)
    assert not any(isinstance(e, (StartPlan, EndIntent)) for e in run(m))


def test_a_switchover_whose_candidate_is_writable_now_is_left_to_the_fleet():
    promoted = ProbeResult("node2", 6.0, 0.001, status(2, read_only=False))
    m = Model(fenced(node2=promoted), lease=LEADER, resume=FENCED)
    assert not fenced_not_promoted(m, FENCED)
    assert any(isinstance(e, EndIntent) for e in run(m, 1))


# Review findings: "no node writable" in this instance's own view proves nothing when a node it
# cannot reach may be the writer another leader made since; and a single instance must not
# finish the promotion beside an old primary that came back writable.
F5 = fleet(nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)])


def test_a_half_done_promotion_is_not_finished_while_another_leaders_primary_is_out_of_reach():
    """5 nodes: after the cut another leader promoted node3 and repointed node4 and node5
    under it; this instance leads again but cannot reach node3."""
    rounds = [
        [
            down("node1", t),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            down("node3", t),
            replica("node4", t, source="node3"),
            replica("node5", t, source="node3"),
            router(writers=(), readers=("node2",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    locks = [lock(n, NOW - 0.1, leader=7) for n in ("node2", "node4", "node5")]
    view = fold_all(F5, *rounds, locks)
    assert view.quorum.ok and view.primary == "node3" and not view.writable
    m = Model(view, lease=leader_lease(F5), resume=CUT, state=failed_over(NOW - 1))
    assert not half_done_promotion(m, CUT)
    for i in range(2):
        m, effects = step(m, Tick(NOW + i), F5, NOW + i)
        started = [e.running.plan for e in effects if isinstance(e, StartPlan)]
        assert not any(isinstance(a, Promote) for p in started for a in p.actions), started


def single_cut(node1, node2=None):
    """A single instance's view of a cut failover: node1 and node2 as given (node2 half
    promoted by default), node3 stopped on node1, no writer routed."""
    node2 = node2 or (lambda t: ProbeResult("node2", t, 0.001, status(2, read_only=True)))
    rounds = [
        [
            node1(t),
            node2(t),
            replica("node3", t, source="node1", **STOPPED),
            router(writers=(), readers=("node3",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(settings(), *rounds)


def test_a_single_instance_does_not_finish_a_promotion_beside_a_writable_old_primary():
    s = settings()
    back = single_cut(lambda t: primary("node1", t))  # writable (its configuration said so)
    m = Model(back, resume=CUT, state=failed_over(NOW - 1))
    m, effects = step(m, Tick(NOW), s, NOW)
    started = [e.running.plan for e in effects if isinstance(e, StartPlan)]
    assert not any(isinstance(a, Promote) for p in started for a in p.actions), started
    assert any(isinstance(e, EndIntent) for e in effects)


def test_a_single_instance_does_not_finish_a_promotion_while_another_primary_is_out_of_reach():
    """5 nodes, no fleet: while the controller was down an operator failed over by hand to
    node3 and repointed node4 and node5 under it; the controller's own link to node3 is
    broken. node3 is the primary its replicas follow: finishing node2's promotion would make
    a second writer without node3's writes."""
    rounds = [
        [
            down("node1", t),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            down("node3", t),
            replica("node4", t, source="node3"),
            replica("node5", t, source="node3"),
            router(writers=(), readers=("node4", "node5"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    m = Model(fold_all(S5, *rounds), resume=CUT5, state=failed_over(NOW - 1))
    assert m.view.primary == "node3" and not m.view.writable
    for i in range(2):
        m, effects = step(m, Tick(NOW + i), S5, NOW + i)
        started = [e.running.plan for e in effects if isinstance(e, StartPlan)]
        assert not any(isinstance(a, Promote) for p in started for a in p.actions), started


def test_a_single_instance_finishes_its_own_half_done_promotion():
    """No fleet, nothing but the cut plan in the view (node1 dead, node2 reset and read-only,
    node3 stopped on node1): the promotion is finished, then node3 repointed."""
    s = settings()
    m = Model(single_cut(lambda t: down("node1", t)), resume=CUT, state=failed_over(NOW - 1))
    m, effects = step(m, Tick(NOW), s, NOW)
    (started,) = [e.running for e in effects if isinstance(e, StartPlan)]
    promote = started.plan.actions[2]
    assert isinstance(promote, Promote) and promote.finish_half_done, started.plan.actions
    assert 2 not in started.skip


# Review finding 9: the old primary restarted read-only (as the runbook says) while the leader
# was down: reachable, but no part of the cluster. Left to the fleet, nobody took writes until
# an operator acted (PrimaryIsReadOnly); the half-done promotion is now finished.
def node1_read_only(gtid: str = "0-1-100", replication: tuple = ()):
    return lambda t: ProbeResult(
        "node1", t, 0.001, status(1, read_only=True, gtid=gtid, replication=replication)
    )


def back_read_only(node1=None, leader: int = 7):
    node1 = node1 or node1_read_only()
    rounds = [
        [
            node1(t),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            replica("node3", t, source="node1", **STOPPED),
            router(writers=(), readers=("node2", "node3"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    locks = [lock(n, NOW - 0.1, leader=leader) for n in ("node1", "node2", "node3")]
    return fold_all(F, *rounds, locks)


def test_the_leader_finishes_a_half_done_promotion_beside_an_old_primary_back_read_only():
    m = Model(back_read_only(), lease=LEADER, resume=CUT, state=failed_over(NOW - 1))
    assert m.view.primary == "node1" and not m.view.writable  # its replica still points at it
    assert half_done_promotion(m, CUT)
    effects = run(m, 1)
    (started,) = [e.running for e in effects if isinstance(e, StartPlan)]
    assert started.plan.actions[2] == Promote("node2", "node1", finish_half_done=True)
    assert started.skip == {0, 1} and not any(isinstance(e, EndIntent) for e in effects)
    (decision,) = [e for e in effects if isinstance(e, Log) and e.event == "decision"]
    assert decision.fields["reason"] == (
        "resuming failover-1 after a controller restart, cut inside its promotion: finishing "
        "it; now node1 is read-only and replicates from nobody and node2 is read-only and "
        "replicates from nobody; it began as: r"
    )
    assert started.plan.reason == decision.fields["reason"]  # plan_started's too (finding 13)


def test_once_finished_the_old_primary_back_read_only_is_rejoined_under_the_new_one():
    rounds = [
        [
            node1_read_only()(t),
            primary("node2", t),
            replica("node3", t, source="node2"),
            router(writers=("node2",), readers=("node3",), broken=("node1",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    locks = [lock("node1", NOW - 0.1, leader=7), lock("node2", NOW - 0.1, leader=7, primary=7)]
    m = Model(fold_all(F, *rounds, locks), lease=LEADER, state=failed_over(NOW - 1))
    started = [e.running.plan for e in run(m, 1) if isinstance(e, StartPlan)]
    assert [(p.rule, p.actions) for p in started] == [
        ("RejoinOldPrimary", (Rejoin("node1", "node2"),))
    ]


@pytest.mark.parametrize(
    "node1",
    [
        node1_read_only(gtid="0-1-101"),  # it took a write the candidate lacks: someone let it
        node1_read_only(replication=(channel(source="node3"),)),  # someone pointed it elsewhere
    ],
    ids=["holds-more-than-the-candidate", "replicates"],
)
def test_an_old_primary_back_read_only_that_moved_is_left_to_the_fleet(node1):
    """Not what this instance's plan left: another instance (or an operator) acted on it. The
    plan is closed; its reason says what comes next, never "as desired" before an alert."""
    m = Model(back_read_only(node1), lease=LEADER, resume=CUT, state=failed_over(NOW - 1))
    assert not half_done_promotion(m, CUT)
    m, effects = step(m, Tick(NOW), F, NOW)
    assert not any(isinstance(e, StartPlan) for e in effects)
    (ended,) = [e for e in effects if isinstance(e, EndIntent)]
    assert ended.reason == "fleet: the live topology decides"
    (abandoned,) = [e for e in effects if isinstance(e, Log) and e.event == "plan_abandoned"]
    reason = abandoned.fields["reason"]
    assert "as desired" not in reason and abandoned.fields["began"] == "r"
    m, effects = step(m, Tick(NOW + 1), F, NOW + 1)
    (then,) = [e.fields for e in effects if isinstance(e, Log) and e.event == "decision"]
    assert then["rule"] != "Nothing"
    assert reason.endswith(f"; next: {then['rule']} ({then['reason']})"), (reason, then)


# Second review of the single-instance resume (s6-revfix findings 1-3): the resume reached a
# roll-back or an abandon for plans cut inside their Promote that it used to finish.
S3 = settings()
FAILOVER_RB = replace(PLAN, rollback=(SetIOThreads(("node2", "node3"), running=True),))
CUT_RB = Intent("failover-1", FAILOVER_RB, done=frozenset({0, 1}), started=frozenset({0, 1, 2}))


def started_plans(m: Model, s, ticks: int = 2) -> tuple[Model, list, list]:
    effects: list = []
    for i in range(ticks):
        m, more = step(m, Tick(NOW + i), s, NOW + i)
        effects += more
    return m, [e.running.plan for e in effects if isinstance(e, StartPlan)], effects


SWITCHOVER_CUT = Intent(
    "switchover-1",
    Plan(
        "Switchover",
        "r",
        (
            Drain("node1", 1.0),
            Fence("node1"),
            Promote("node2", "node1"),
            Repoint(("node3",), "node2"),
        ),
        PlanKind.SWITCHOVER,
        rollback=(SetWritable("node1", True),),
    ),
    done=frozenset({0, 1}),
    started=frozenset({0, 1, 2}),
)
"""A switchover node1 -> node2 cut inside its Promote: node1 fenced (read-only)."""


def switchover_cut(node2, node3=None):
    rounds = [
        [
            ProbeResult("node1", t, 0.001, status(1, read_only=True)),
            node2(t),
            (node3 or (lambda t: replica("node3", t, source="node1")))(t),
            router(writers=("node1",), readers=("node1", "node3"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(S3, *rounds)


def test_a_plan_cut_inside_its_promote_waits_while_its_candidate_cannot_be_read():
    """s6-revfix finding 1 (HIGH): Promote may have made node2 writable before the cut and
    node2 cannot be read at the restart: rolling back blind made node1 writable beside it; a
    guarded rollback stopped silently (a failover's replicas then kept their IO threads
    stopped: no writer, for ever). The plan waits for node2, with one halt alert."""
    m = Model(switchover_cut(lambda t: down("node2", t)), resume=SWITCHOVER_CUT)
    m, started, effects = started_plans(m, S3)
    assert started == [] and m.resume == SWITCHOVER_CUT
    (alert,) = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert alert.node == "node2" and "node2 cannot be read: it may be writable" in alert.reason
    writable = switchover_cut(lambda t: ProbeResult("node2", t, 0.001, status(2, read_only=False)))
    m, started, _ = started_plans(replace(m, view=writable), S3, 1)
    (finished,) = started  # promoted, nobody follows it yet: finished, node1 stays fenced
    assert finished.kind is PlanKind.SWITCHOVER
    assert finished.actions[2] == Promote("node2", "node1", finish_half_done=True)
    assert not any(isinstance(a, SetWritable) for a in finished.actions)


def test_a_switchover_cut_inside_its_promote_is_rolled_back_once_its_candidate_reads_read_only():
    """node2 still a replica (the Promote stopped before its reset), node3 unreachable: rolled
    back, node2 read first (the reason says where it was cut)."""
    m = Model(
        switchover_cut(lambda t: replica("node2", t), lambda t: down("node3", t)),
        resume=SWITCHOVER_CUT,
    )
    _, started, _ = started_plans(m, S3)
    (rollback,) = [p for p in started if p.kind is PlanKind.ROLLBACK]
    assert rollback.actions == (RequireReadOnly("node2"), SetWritable("node1", True))
    assert "cut inside its promotion of node2: rolled back only if node2 is read-only" in (
        rollback.reason
    )
    assert "before its promotion" not in rollback.reason


def test_a_promotion_done_beside_an_old_primary_back_writable_is_finished_kept_quarantined():
    """Finding 2: node2 writable (the Promote done on the server, not in the journal), node1
    back writable: finished (the promotion is a no-op), node1 kept quarantined to be fenced."""
    view = single_cut(
        lambda t: primary("node1", t),
        lambda t: ProbeResult("node2", t, 0.001, status(2, read_only=False)),
    )
    m = Model(view, resume=CUT_RB, state=failed_over(NOW - 1))
    m, started, effects = started_plans(m, S3, 1)
    (resumed,) = started
    assert resumed.kind is PlanKind.FAILOVER and resumed.promote is not None
    assert "node1" in m.state.quarantined
    assert not any(isinstance(e, EndIntent) for e in effects)


S5 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
)
PLAN5 = Plan(
    "DeadPrimary",
    "node1 is dead",
    (
        SetIOThreads(("node2", "node3", "node4", "node5"), running=False),
        WaitApplied("node2", 10.0),
        Promote("node2", "node1"),
        Repoint(("node3", "node4", "node5"), "node2"),
    ),
    PlanKind.FAILOVER,
    rollback=(SetIOThreads(("node2", "node3", "node4", "node5"), running=True),),
)
CUT5 = Intent("failover-1", PLAN5, done=frozenset({0, 1}), started=frozenset({0, 1, 2}))


def five(node5: ProbeResult | None = None, node2=None, hidden: tuple[str, ...] = (), s=S5):
    node2 = node2 or (lambda t: ProbeResult("node2", t, 0.001, status(2, read_only=True)))
    rounds = [
        [
            down("node1", t),
            node2(t),
            replica("node3", t, source="node1", **STOPPED),
            replica("node4", t, source="node1", **STOPPED),
            node5 or down("node5", t),
            replace(
                router(writers=(), readers=("node3", "node4"), hidden=hidden, at=t),
                kind=s.router.kind,
            ),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(s, *rounds)


def test_a_half_done_promotion_waits_while_a_node_cannot_be_read_and_is_finished_once_it_answers():
    """Finding 3: node5 unreachable at the restart (it may be a writer made since): the half
    promoted node2 is neither finished nor rolled back (the rollback stranded it, read-only,
    with no writer); the intent is kept, one alert names it, and it is finished once node5
    answers (still a replica of node1)."""
    m = Model(five(), resume=CUT5, state=failed_over(NOW - 1))
    m, started, effects = started_plans(m, S5, 3)
    assert started == [] and m.resume == CUT5 and "node1" in m.state.quarantined
    alerts = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert len(alerts) == 1 and alerts[0].node == "node2", alerts
    assert "node5 cannot be read" in alerts[0].reason
    assert "`hacontrol maintenance node5 on`: the operator's consent" in alerts[0].reason
    assert "hostgroup" not in alerts[0].reason  # behind HAProxy (no hidden group there)
    hid = fold_all(
        S5, router(writers=(), readers=("node3", "node4"), hidden=("node5",), at=6.5), view=m.view
    )
    _, consented, _ = started_plans(replace(m, view=hid), S5, 1)
    assert [p.actions[2] for p in consented] == [Promote("node2", "node1", finish_half_done=True)]
    (decision,) = [e for e in effects if isinstance(e, Log) and e.event == "decision"]
    assert decision.fields["rule"] == "HalfDonePromotion"
    back = fold_all(
        S5,
        *[[replica("node5", t, source="node1", **STOPPED)] for t in (7.0, 8.0, 9.0)],
        view=m.view,
    )
    m, started, _ = started_plans(replace(m, view=back), S5, 1)
    (resumed,) = started
    assert resumed.actions[2] == Promote("node2", "node1", finish_half_done=True)


# Review of this branch (s6-s6-promote): findings 1, 3 and 5.
def test_a_failover_cut_inside_its_promote_waits_for_its_unread_candidate_then_finishes():
    """Finding 1: node2 cannot be read at the restart (5 nodes, node5 readable): the guarded
    rollback stopped at once and left node3/node4's IO threads stopped for ever. The plan
    waits, node1 stays quarantined; node2 answering half done or writable, it is finished."""
    unread = five(
        replica("node5", 6.0, source="node1", **STOPPED), node2=lambda t: down("node2", t)
    )
    m = Model(unread, resume=CUT5, state=failed_over(NOW - 1))
    m, started, effects = started_plans(m, S5, 2)
    assert started == [] and m.resume == CUT5 and "node1" in m.state.quarantined
    (alert,) = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert alert.summary == "HALT: the half-done promotion of node2 waits: node2 cannot be read"
    for node2 in (
        ProbeResult("node2", 7.0, 0.001, status(2, read_only=True)),
        ProbeResult("node2", 7.0, 0.001, status(2, read_only=False)),
    ):
        back = fold_all(S5, *[[replace(node2, at=t)] for t in (7.0, 8.0, 9.0)], view=m.view)
        _, started, _ = started_plans(replace(m, view=back), S5, 1)
        (resumed,) = started
        assert resumed.actions[2] == Promote("node2", "node1", finish_half_done=True)


def test_a_switchover_cut_halfway_beside_an_unread_replica_is_rolled_back_not_left_waiting():
    """Finding 3 (5 nodes): node1 fenced and reachable, node2 half promoted, node3/node4 on
    node1, node5 unreachable: the old answer (rolled back, node2 read first) gives a writer
    back at once; waiting for node5 left none."""
    rounds = [
        [
            ProbeResult("node1", t, 0.001, status(1, read_only=True)),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            replica("node3", t, source="node1"),
            replica("node4", t, source="node1"),
            down("node5", t),
            router(writers=("node1",), readers=("node3", "node4"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    _, started, _ = started_plans(Model(fold_all(S5, *rounds), resume=SWITCHOVER_CUT), S5)
    (rollback,) = started
    assert rollback.actions == (RequireReadOnly("node2"), SetWritable("node1", True))


def test_a_half_done_promotion_does_not_wait_for_a_node_in_maintenance():
    """Finding 5: node5 hidden by an operator (down for an upgrade): consent to go on without
    it, as for the failover's doubt; the promotion is finished."""
    m = Model(five(hidden=("node5",)), resume=CUT5, state=failed_over(NOW - 1))
    _, started, _ = started_plans(m, S5, 1)
    (resumed,) = started
    assert resumed.actions[2] == Promote("node2", "node1", finish_half_done=True)


@pytest.mark.parametrize("fleet_of_one", [False, True], ids=["single", "fleet-leader"])
def test_a_switchover_cut_right_after_its_read_only_off_is_finished(fleet_of_one):
    """Review finding 11: node2 writable and replicating from nobody, node1 fenced, node3 still
    on node1, every node read: abandoned, nobody followed node2 and no writer was routed
    (NoPrimary, "topology split") until an operator acted. Finished, in a fleet by the
    leader that cut it."""
    rounds = [
        [
            ProbeResult("node1", t, 0.001, status(1, read_only=True)),
            ProbeResult("node2", t, 0.001, status(2, read_only=False)),
            replica("node3", t, source="node1"),
            router(writers=(), readers=("node3",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    s = F if fleet_of_one else S3
    locks = [[lock(n, NOW - 0.1, leader=7) for n in ("node1", "node2", "node3")]]
    view = fold_all(s, *rounds, *(locks if fleet_of_one else []))
    m = Model(view, resume=SWITCHOVER_CUT, lease=LEADER if fleet_of_one else Lease())
    _, started, effects = started_plans(m, s, 1)
    (finished,) = started
    assert finished.kind is PlanKind.SWITCHOVER, finished
    assert finished.actions[2] == Promote("node2", "node1", finish_half_done=True)
    assert not any(isinstance(e, EndIntent) for e in effects)


FLEET5 = fleet(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
)


def fleet5_node2_unread(holder: int):
    """Five nodes, a fleet: node1 dead, node2 unread, node3-5 stopped on node1, the leader lock
    held by ``holder`` (7: this instance)."""
    rounds = [
        [
            down("node1", t),
            down("node2", t),
            replica("node3", t, source="node1", **STOPPED),
            replica("node4", t, source="node1", **STOPPED),
            replica("node5", t, source="node1", **STOPPED),
            router(writers=(), readers=("node3", "node4", "node5"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    locks = [lock(n, NOW - 0.1, leader=holder) for n in ("node3", "node4", "node5")]
    return fold_all(FLEET5, *rounds, locks)


@pytest.mark.parametrize("leads", [True, False], ids=["leader", "follower"])
def test_a_fleet_keeps_a_plan_cut_inside_its_promote_while_its_candidate_cannot_be_read(leads):
    """Review finding 12 (HIGH, the default configuration): closed ('the live topology
    decides'), the replicas' IO threads were started again and the next failover promoted
    node3 while node2, unread, was writable: two writers. The leader waits for node2 (one halt
    alert); a follower keeps the record."""
    view = fleet5_node2_unread(7 if leads else 9)
    lease = leader_lease(FLEET5) if leads else FOLLOWER
    m = Model(view, lease=lease, resume=CUT5, state=failed_over(NOW - 1))
    m, started, effects = started_plans(m, FLEET5, 3)
    assert started == [] and m.resume == CUT5, started
    assert not any(isinstance(e, EndIntent) for e in effects)
    alerts = [e.alert.summary for e in effects if isinstance(e, SendAlert)]
    waiting = ["HALT: the half-done promotion of node2 waits: node2 cannot be read"]
    assert alerts == (waiting if leads else []), alerts


def test_a_rollback_never_restarts_the_io_thread_of_a_candidate_the_promote_reset():
    """Review finding 9: node2 reset and read-only, node1 back writable (single instance):
    rolled back, node2 read first, node3's IO thread started again, never node2's."""
    view = single_cut(lambda t: primary("node1", t))
    m = Model(view, resume=CUT_RB, state=failed_over(NOW - 1))
    _, started, _ = started_plans(m, S3, 1)
    (rollback,) = started
    assert rollback.actions == (RequireReadOnly("node2"), SetIOThreads(("node3",), running=True))


def test_in_a_fleet_a_node_hidden_on_this_instance_only_is_no_consent():
    """Review finding 13: maintenance is per instance; a node hidden here may be the primary
    another leader made: the fleet's leader does not finish beside it unread."""
    rounds = [
        [
            down("node1", t),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            replica("node3", t, source="node1", **STOPPED),
            replica("node4", t, source="node1", **STOPPED),
            down("node5", t),
            router(writers=(), readers=("node3", "node4"), hidden=("node5",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    locks = [lock(n, NOW - 0.1, leader=7) for n in ("node2", "node3", "node4")]
    m = Model(fold_all(FLEET5, *rounds, locks), lease=leader_lease(FLEET5), resume=CUT5)
    assert not half_done_promotion(m, CUT5)
    _, started, _ = started_plans(replace(m, state=failed_over(NOW - 1)), FLEET5, 1)
    assert not any(isinstance(a, Promote) for p in started for a in p.actions), started


def test_a_fleet_instance_closes_a_journaled_plan_without_a_promote():
    """Review of this branch, 17: a journaled rejoin (no Promote) is closed at once on any
    instance of a fleet, leader or not; it was kept for ever (and maintenance refused)."""
    rejoin = Intent(
        "rejoin-1",
        Plan("RejoinOldPrimary", "r", (Rejoin("node1", "node2"),), PlanKind.REJOIN),
        done=frozenset(),
        started=frozenset({0}),
    )
    for lease, holder in ((LEADER, 7), (FOLLOWER, 9)):
        m = Model(after_cut(leader=holder), lease=lease, resume=rejoin)
        m, effects = step(m, Tick(NOW), F, NOW)
        assert m.resume is None and any(isinstance(e, EndIntent) for e in effects), effects


def test_a_fleet_closes_a_failover_cut_before_its_promote_even_with_its_candidate_unread():
    """Only a Promote that began is waited for: cut before it, the fleet's rule holds (closed,
    the live topology decides)."""
    before = Intent("failover-1", PLAN5, done=frozenset({0}), started=frozenset({0, 1}))
    m = Model(fleet5_node2_unread(7), lease=leader_lease(FLEET5), resume=before)
    m, effects = step(m, Tick(NOW), FLEET5, NOW)
    ended = [e for e in effects if isinstance(e, EndIntent)]
    assert ended and ended[0].reason == "fleet: the live topology decides", effects


# s7: findings 5 and 18 of the review of s6-promote: `maintenance NODE on` while the wait names
# NODE is the operator's consent; the refusals name what the plan waits for.
def waiting5(s=S5) -> tuple[Model, list]:
    """A single instance waits (HalfDonePromotion) for node5, down and not hidden."""
    m = Model(five(), resume=CUT5, state=failed_over(NOW - 1))
    m, started, effects = started_plans(m, s, 1)
    assert started == [] and m.resume == CUT5
    return m, effects


def finished(running: Running, at: float) -> PlanFinished:
    plan = running.plan
    return PlanFinished(at, running.plan_id, plan.rule, plan.kind, True, "done", None, (), 0.1)


def test_maintenance_on_a_node_the_half_done_promotion_waits_for_is_consent_and_it_finishes():
    m, _ = waiting5()
    m, effects = step(m, cmd("maintenance", "node5", True), S5, NOW + 2)
    (reply,) = replies(effects)  # at once: the consent, and the routing's plan
    assert reply.ok and reply.message.startswith("node5 hidden; consent: node5 is taken as")
    assert m.running is not None and m.running.plan_id in reply.message
    assert m.running.plan.rule == "Maintenance" and "node5" in m.view.maintenance
    assert "consent: node5 is taken as down or read-only" in m.running.plan.reason
    (route,) = m.running.plan.actions  # the router has no writer while the plan waits
    assert isinstance(route, Route) and route.no_writer and route.desired.hidden == {"node5"}
    (kept,) = [e.state for e in effects if isinstance(e, PersistState)]
    assert kept.maintenance == frozenset({"node5"})  # journaled before the routing starts
    assert m.resume == CUT5  # the journal's plan is not settled by the command itself
    m, effects = step(m, finished(m.running, NOW + 3), S5, NOW + 3)  # decided at once
    assert replies(effects) == []
    (resumed,) = [e.running.plan for e in effects if isinstance(e, StartPlan)]
    assert resumed.actions[2] == Promote("node2", "node1", finish_half_done=True)
    assert m.resume is None and "node1" in m.state.quarantined


def test_while_the_half_done_promotion_waits_other_commands_are_refused_naming_the_wait():
    m, _ = waiting5()
    asked = [
        cmd("switchover", "node3"),
        cmd("rebuild", "node4"),
        cmd("maintenance", "node4", True),  # read: the wait does not name it
        cmd("maintenance", "node5", False),
    ]
    for c in asked:
        after, effects = step(m, c, S5, NOW + 2)
        (reply,) = replies(effects)
        assert not reply.ok and after.running is None and after.view == m.view, c
        assert "it waits for node5 to answer: HalfDonePromotion" in reply.message, reply
        assert "it goes first" not in reply.message


def test_no_consent_while_the_plan_is_not_decided_and_the_refusal_says_why():
    """In start-up grace a node not probed yet cannot be read either, and without quorum
    nothing is decided: no consent is taken, and the refusal says why the plan waits (review
    s7-s7-lows #4: it said "it goes first")."""
    rounds = [[down("node1", 4.0), down("node5", 4.0)]]
    early = Model(fold_all(S5, *rounds), resume=CUT5, state=failed_over(NOW - 1))
    m, effects = step(early, cmd("maintenance", "node5", True), S5, NOW)
    (reply,) = replies(effects)
    assert not reply.ok and "not decided yet, start-up grace: waiting for" in reply.message
    assert "node5" not in m.view.maintenance and m.running is None
    lost = fold_all(S5, *[[down("node4", t)] for t in (7.0, 8.0, 9.0)], view=five())
    m = Model(lost, resume=CUT5, state=failed_over(NOW - 1))
    m, effects = step(m, cmd("maintenance", "node5", True), S5, NOW)
    (reply,) = replies(effects)
    assert not reply.ok and "not decided yet, no quorum: 2 of 5" in reply.message, reply


S7 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 8)]
)
CUT7 = replace(
    CUT5,
    plan=replace(
        PLAN5,
        actions=(
            SetIOThreads(tuple(f"node{i}" for i in range(2, 8)), running=False),
            *PLAN5.actions[1:3],
            Repoint(tuple(f"node{i}" for i in range(3, 8)), "node2"),
        ),
    ),
)


def test_a_second_consent_sent_while_the_first_is_routed_waits_for_it():
    """Seven nodes, node4 and node5 down: both consents sent back to back; the second waits
    for the first one's routing (review s7-s7-lows #3: refused "it goes first"), then the
    promotion is finished."""
    rounds = [
        [
            down("node1", t),
            ProbeResult("node2", t, 0.001, status(2, read_only=True)),
            *[replica(f"node{i}", t, source="node1", **STOPPED) for i in (3, 6, 7)],
            down("node4", t),
            down("node5", t),
            router(writers=(), readers=("node3", "node6", "node7"), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    m = Model(fold_all(S7, *rounds), resume=CUT7, state=failed_over(NOW - 1))
    m, started, _ = started_plans(m, S7, 1)
    assert started == [] and m.last_logged[0] == "HalfDonePromotion"
    m, effects = step(m, cmd("maintenance", "node4", True), S7, NOW + 2)
    assert [r.ok for r in replies(effects)] == [True]
    m, effects = step(m, cmd("maintenance", "node5", True), S7, NOW + 2.1)
    assert replies(effects) == [] and len(m.deferred) == 1  # waits for node4's routing
    m, effects = step(m, finished(m.running, NOW + 3), S7, NOW + 3)
    (reply,) = replies(effects)
    assert reply.ok and "consent: node5" in reply.message
    assert m.view.maintenance == {"node4", "node5"}
    m, effects = step(m, finished(m.running, NOW + 4), S7, NOW + 4)
    (resumed,) = [e.running.plan for e in effects if isinstance(e, StartPlan)]
    assert resumed.actions[2] == Promote("node2", "node1", finish_half_done=True)


def test_maintenance_of_an_unread_candidate_is_no_consent():
    """The candidate may be writable (read_only=OFF is its promotion's last statement):
    hiding it says nothing of that; the wait stands and the refusal says why."""
    unread = five(
        replica("node5", 6.0, source="node1", **STOPPED), node2=lambda t: down("node2", t)
    )
    m, started, _ = started_plans(Model(unread, resume=CUT5, state=failed_over(NOW - 1)), S5, 1)
    assert started == [] and m.resume == CUT5
    m, effects = step(m, cmd("maintenance", "node2", True), S5, NOW + 2)
    (reply,) = replies(effects)
    assert not reply.ok and "node2" not in m.view.maintenance
    assert "it waits to read its candidate node2, which may be writable" in reply.message


@pytest.mark.parametrize("kind", ["proxysql", "haproxy"])
def test_the_way_out_of_the_wait_is_worded_for_the_router(kind):
    router_settings = {
        "proxysql": {"kind": "proxysql", "proxysql": {"password": "z"}},
        "haproxy": {"kind": "haproxy", "haproxy": {"socket": "/tmp/none.sock"}},
    }[kind]
    s = settings(nodes=S5.model_dump()["nodes"], router=router_settings)
    m = Model(five(s=s), resume=CUT5, state=failed_over(NOW - 1))
    _, started, effects = started_plans(m, s, 1)
    (alert,) = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert started == [] and "`hacontrol maintenance node5 on`" in alert.reason
    assert ("ProxySQL's hidden hostgroup" in alert.reason) is (kind == "proxysql"), alert.reason


def test_a_fleet_leader_waiting_for_its_candidate_names_it_in_the_refusal():
    """In a fleet the leader waits only for an unread candidate (a node hidden on this
    instance only is no consent there: review s6-s6-promote #13); maintenance is refused, and
    the refusal says what the plan waits for."""
    m = Model(fleet5_node2_unread(7), lease=leader_lease(FLEET5), resume=CUT5, state=failed_over(0))
    m, started, _ = started_plans(m, FLEET5, 1)
    assert started == [] and m.resume == CUT5 and m.last_logged[0] == "HalfDonePromotion"
    _, effects = step(m, cmd("maintenance", "node5", True), FLEET5, NOW + 2)
    (reply,) = replies(effects)
    assert not reply.ok and "it waits to read its candidate node2" in reply.message


def test_a_resumed_route_keeps_the_nodes_hidden_since_the_plan_was_made():
    """Review s7-s7-lows #1: the journal's Route said hidden=[] (from before the restart);
    after the consent (node5 in maintenance) ProxySQL refused it ("it would change the hidden
    nodes") and a false "router not updated" was mailed. The resumed Routes are re-based on
    the nodes hidden now; one shown again since is broken until healthy."""
    journaled = Membership.of(["node2"], ["node3"], ["node1", "node5"], ["node4"])
    routed = replace(PLAN5, actions=(*PLAN5.actions[:3], Route(journaled), *PLAN5.actions[3:]))
    intent = replace(CUT5, plan=routed)
    m = Model(five(hidden=("node5",)), resume=intent, state=failed_over(NOW - 1))
    _, started, _ = started_plans(m, S5, 1)
    (resumed,) = started
    assert resumed.actions[3] == Route(
        Membership.of(["node2"], ["node3"], ["node1", "node4"], ["node5"])
    )
    # The consent's own hiding failed (a ProxySQL blip): node5 in maintenance, not in the
    # router's hidden group. The resumed Route adds it (review s7-s7-lows #9: refused for good).
    view = with_maintenance(five(), frozenset({"node5"}), S5)
    m = Model(view, resume=intent, state=failed_over(NOW - 1))
    _, started, _ = started_plans(m, S5, 1)
    (resumed,) = started
    assert resumed.actions[3].hidden_change and resumed.actions[3].desired.hidden == {"node5"}


def test_only_the_consent_routes_a_hiding_with_no_writer():
    """Review s7-s7-lows #7 (HIGH, a regression fixed before merging): a maintenance planned
    from a router reading with no writer (read during a failover that has routed one since:
    a command deferred behind it) must not empty the writers: outside the consent (no plan
    ran since the restart, the reading is current) the Route still needs one writer and the
    router refuses it otherwise."""
    plan, _ = plan_maintenance(five(), S5, "node3", True)
    (route,) = plan.actions
    assert isinstance(route, Route) and not route.no_writer and not route.desired.writers


def test_a_consent_right_after_a_plan_waits_for_the_routers_next_reading():
    """Review s7-s7-lows #11/#12: planned on the reading from before the last plan's Route, a
    consent's Route was refused (node4 broken and hidden at once). It waits for the router's
    next (good) reading, then is planned on it."""
    m, _ = waiting5()
    m = replace(m, settle=Settle(frozenset({"router"}), since=NOW + 1, until=NOW + 3))
    m, effects = step(m, cmd("maintenance", "node5", True), S5, NOW + 2)
    assert replies(effects) == [] and len(m.deferred) == 1 and m.running is None
    read = router(writers=(), readers=("node3", "node4"), at=NOW + 2.5)
    m, effects = step(m, read, S5, NOW + 2.5)
    (reply,) = replies(effects)
    assert reply.ok and "consent: node5" in reply.message and m.running is not None
