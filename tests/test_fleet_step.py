"""A fleet's instance, step by step with plain values: the leader gate on every plan that
changes nodes, followers routing from the leader's publication, the leader publishing, the
takeover wait, a failover seen by a follower, alerts left to the leader, commands refused,
a plan stopped by a lost lease. No database, no loop, no clock.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.effects import EndIntent, Reprobe, SendAlert, SetLeaseMode, StartPlan
from hacontrol.events import OperatorCommand, PlanFinished, ProbeResult, RouterProbeResult, Tick
from hacontrol.flavors.base import IoState
from hacontrol.model import Intent, Lease, LeaseMode, Model
from hacontrol.plan import (
    ActionResult,
    AlertKind,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Publish,
    Repoint,
    Route,
    SetIOThreads,
)
from hacontrol.routing import Membership
from hacontrol.rules.lease import lease_step
from hacontrol.step import boot, step
from hacontrol.view import Code, initial
from tests.factories import (
    DEAD_IO,
    NOW,
    QUARANTINE,
    dead_round,
    down,
    failed_over,
    fleet,
    lines,
    lock,
    primary,
    replica,
    router,
    settings,
    steps,
)
from tests.support import fold_all

F = fleet()
V = F.lease.validity
MINE, OTHER = 7, 99


def healthy_round(at: float, writers=("node1",)) -> list:
    return [primary(at=at), replica("node2", at), replica("node3", at), router(writers, at=at)]


def locks(at: float, leader: int | None, published: str | None = None, nodes=None) -> list:
    names = nodes or ("node1", "node2", "node3")
    return [lock(n, at, leader=leader, primary=leader if n == published else None) for n in names]


LEADER = Lease(
    fleet=True, mode=LeaseMode.ACQUIRE, leader_since=1.0, ready_at=1.0 + V, reprobed=True
)
FOLLOWER = Lease(fleet=True, mode=LeaseMode.HOLD, reason="following: another instance leads")


def model(*rounds, lease: Lease = FOLLOWER) -> Model:
    return Model(fold_all(F, *rounds), lease=lease)


def healthy(lease: Lease = FOLLOWER, held=OTHER, published="node1", writers=("node1",)) -> Model:
    rounds = [healthy_round(t, writers) for t in (1.0, 2.0, 3.0)]
    return model(*rounds, locks(NOW - 0.1, held, published), lease=lease)


def dead(lease: Lease = FOLLOWER, held=OTHER, published: str | None = None) -> Model:
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)] + [dead_round(t) for t in (4, 5, 6)]
    alive = ("node2", "node3")
    return model(*rounds, locks(NOW - 0.1, held, published, alive), lease=lease)


def run(m: Model, *events, now: float = NOW) -> tuple[Model, list]:
    return steps(m, *events, now=now, s=F)


def started(effects: list) -> list[Plan]:
    return [e.running.plan for e in effects if isinstance(e, StartPlan)]


# ---------------------------------------------------------------------------------------------
# Followers


def test_a_follower_never_fails_over_and_takes_the_dead_writer_out_of_its_router():
    m, effects = run(dead(), Tick(NOW))
    (plan,) = started(effects)
    assert plan.rule == "RouteReconcile" and not plan.changes_nodes
    (route,) = plan.actions
    assert isinstance(route, Route) and route.no_writer
    assert route.desired.writers == set() and "node1" in route.desired.broken
    assert route.desired.readers == {"node2", "node3"}  # reads go on
    assert "nobody publishes" in plan.reason
    _, effects = run(
        replace(
            m,
            running=None,
            view=replace(m.view, router=replace(m.view.router, membership=route.desired)),
        ),
        Tick(NOW + 1),
    )
    decision = lines(effects, "decision")[0].fields
    assert decision["rule"] == "NotLeader" and "DeadPrimary" in decision["reason"]


def test_a_follower_routes_its_writer_to_the_published_primary():
    m = healthy(published="node2", writers=("node1",))
    _, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    (route,) = plan.actions
    assert route.desired.writers == {"node2"} and not route.no_writer
    assert "the leader publishes node2" in plan.reason


def test_with_nobody_publishing_a_router_keeps_a_writer_that_is_still_the_primary():
    m = healthy(published=None)
    _, effects = run(m, Tick(NOW))
    assert not started(effects)  # routers keep routing through a takeover


def test_two_publications_at_once_route_to_nobody_new():
    m = model(
        *[healthy_round(t, writers=()) for t in (1.0, 2.0, 3.0)],
        [lock("node1", NOW, leader=OTHER, primary=OTHER), lock("node2", NOW, leader=5, primary=5)],
    )
    assert m.view.published is None
    _, effects = run(m, Tick(NOW))
    assert not started(effects)  # no writer before, none after


def test_a_follower_remembers_the_leaders_failover_as_the_leader_did():
    m = dead()
    promoted = [
        down("node1", 7.0),
        primary("node2", 7.0),
        replica("node3", 7.0, source="node2"),
    ]
    m, effects = run(m, *promoted)
    (seen,) = lines(effects, "failover_seen")
    assert seen.node == "node1" and seen.fields["new_primary"] == "node2"
    q = m.state.quarantined["node1"]
    assert q.new_primary == "node2" and m.state.blocked_until == NOW + F.failover.recovery_block


def test_a_follower_leaves_alerts_to_the_leader_but_alerts_when_nobody_leads():
    no_quorum = [healthy_round(t, writers=()) for t in (1.0, 2.0, 3.0)]  # no writer to take out
    no_quorum += [[down("node2", t), down("node3", t)] for t in (4, 5, 6)]
    seen = model(*no_quorum, locks(NOW, OTHER, "node1"))
    _, effects = run(seen, Tick(NOW))
    assert not [e for e in effects if isinstance(e, SendAlert)]
    assert lines(effects, "alert_left_to_leader")
    alone = model(*no_quorum, locks(NOW, None, None, ("node1",)))
    _, effects = run(alone, Tick(NOW))
    (alert,) = [e for e in effects if isinstance(e, SendAlert)]
    assert alert.alert.kind == "no_quorum"


def test_a_follower_refuses_a_switchover():
    _, effects = run(healthy(), OperatorCommand(NOW, "switchover", "node2"))
    (answer,) = lines(effects, "operator_answer")
    assert not answer.fields["ok"] and "not the leader" in answer.fields["message"]
    assert not started(effects)


# ---------------------------------------------------------------------------------------------
# The leader


def test_the_leader_publishes_the_primary_nobody_publishes():
    _, effects = run(healthy(LEADER, held=MINE, published=None), Tick(NOW))
    (plan,) = started(effects)
    assert plan.rule == "PublishPrimary" and plan.actions == (Publish("node1"),)
    assert plan.kind is PlanKind.PUBLISH


def test_the_leader_does_not_publish_a_primary_another_node_is_ahead_of():
    """A failover left half-done: node2 writable without a source, node3 still on the dead
    node1 and holding more than node2: publishing node2 would lose what node3 holds."""
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    ahead = {**DEAD_IO, "received_gtid": "0-1-105"}
    rounds += [
        [down("node1", t), primary("node2", t), replica("node3", t, **ahead), router(at=t)]
        for t in (4.0, 5.0, 6.0)
    ]
    m = model(*rounds, locks(NOW - 0.1, MINE, None, ("node2", "node3")), lease=LEADER)
    assert m.view.primary == "node2"
    m, effects = run(m, Tick(NOW))
    assert not [p for p in started(effects) if p.rule == "PublishPrimary"]
    (alert,) = [e for e in effects if isinstance(e, SendAlert)]
    assert "node3 has 0-1-101..105, which node2 lacks" in alert.alert.reason


def test_the_leader_publishes_though_a_replica_probed_later_shows_newer_transactions():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    later = replica("node3", 3.5, received_gtid="0-1-107")  # writes go on meanwhile
    m = model(*rounds, [later], locks(NOW - 0.1, MINE, None), lease=LEADER)
    _, effects = run(m, Tick(NOW))
    assert [p.rule for p in started(effects)] == ["PublishPrimary"]


def test_the_leaders_failover_publishes_the_new_primary_before_routing_to_it():
    _, effects = run(dead(LEADER, held=MINE), Tick(NOW))
    (plan,) = started(effects)
    kinds = [type(a).__name__ for a in plan.actions]
    assert kinds.index("Promote") < kinds.index("Publish") < kinds.index("Route")
    promote = next(a for a in plan.actions if isinstance(a, Promote))
    assert Publish(promote.node) in plan.actions


def test_a_new_leader_waits_v_then_fresh_probes_before_its_first_change():
    m = dead(Lease(fleet=True, mode=LeaseMode.ACQUIRE), held=MINE)
    unrouted = replace(
        m.view.router,
        membership=m.view.router.membership.__class__.of([], ["node2", "node3"], ["node1"]),
    )
    m = replace(m, view=replace(m.view, router=unrouted))  # as a follower had left it
    m, effects = run(m, Tick(NOW))
    assert m.lease.leader_since == NOW and not started(effects)
    assert "taking over: acting in" in lines(effects, "decision")[0].fields["reason"]
    m, _ = run(m, *locks(NOW + 0.5, MINE, None, ("node2", "node3")), now=NOW + 0.5)
    m, effects = run(m, *locks(NOW + 1.0, MINE, None, ("node2", "node3")), now=NOW + 1.0)
    assert not started(effects)
    m, effects = run(m, Tick(NOW + V), now=NOW + V)
    assert Reprobe(frozenset({"node1", "node2", "node3"})) in effects
    assert not started(effects) and m.lease.unprobed
    m, effects = run(m, *dead_round(NOW + V), now=NOW + V + 0.05)
    (plan,) = started(effects)
    assert plan.kind is PlanKind.FAILOVER


def test_a_plan_stopped_by_a_lost_lease_does_not_halt_and_steps_down():
    m, effects = run(dead(LEADER, held=MINE), Tick(NOW))
    (plan,) = started(effects)
    assert m.running is not None
    stopped = PlanFinished(
        NOW + 0.5,
        m.running.plan_id,
        plan.rule,
        plan.kind,
        False,
        "Promote: lease: holds no valid majority",
        5,
        (),
        0.5,
        lease_lost=True,
    )
    m, effects = run(m, stopped, now=NOW + 0.5)
    assert m.state.halt is None and "node1" not in m.state.quarantined
    assert m.lease.mode is LeaseMode.RELEASE and not m.lease.leader
    assert SetLeaseMode(LeaseMode.RELEASE) in effects
    assert "stepping down" in lines(effects, "lease")[0].fields["reason"]


def test_in_a_fleet_an_unfinished_journal_plan_is_left_to_the_live_topology():
    intent = Intent("failover-1", Plan("DeadPrimary", "r", (Promote("node2", "node1"),)))
    model_, effects = boot(
        initial(F),
        F,
        kept=None,
        unfinished=intent,
        acknowledge_block=False,
        paused=False,
        acting=True,
        wall_offset=0.0,
    )
    assert model_.resume == intent and not [e for e in effects if isinstance(e, EndIntent)]
    assert model_.lease.fleet and not model_.lease.leader


QUARANTINED = failed_over(NOW)
CUT = Intent(
    "failover-1",
    Plan("DeadPrimary", "r", (Promote("node2", "node1"),), PlanKind.FAILOVER),
    frozenset(),
    frozenset({0}),  # its Promote began: a lone instance would finish it
)


def test_a_fleet_closes_a_failover_that_promoted_nothing_and_releases_its_dead_primary():
    """The journal's failover is not finished here (the leader decides from the live
    topology), and its dead primary, still the view's primary, is no old primary: left
    quarantined it would never be failed over."""
    for lease in (LEADER, FOLLOWER):
        m = replace(dead(lease), resume=CUT, state=QUARANTINED)
        m, effects = run(m, Tick(NOW))
        assert EndIntent("failover-1", "fleet: the live topology decides", None) in effects
        assert m.resume is None and "node1" not in m.state.quarantined
        assert m.state.blocked_until is None
        assert not [p for p in started(effects) if p.kind is PlanKind.FAILOVER and p.reason == "r"]
        assert lines(effects, "plan_abandoned")


def test_a_fleet_keeps_the_quarantine_of_a_failover_another_node_took_over_from():
    """Another node is the primary now (this plan's candidate, or another instance's choice):
    the dead node is an old primary, quarantined until it is fenced."""
    for new in ("node2", "node3"):
        others = [n for n in ("node2", "node3") if n != new]
        rounds = [
            [
                down("node1", t),
                primary(new, t),
                *(replica(n, t, source=new) for n in others),
                router((new,), at=t),
            ]
            for t in (4.0, 5.0, 6.0)
        ]
        m = replace(model(*rounds, lease=FOLLOWER), resume=CUT, state=QUARANTINED)
        m, effects = run(m, Tick(NOW))
        assert EndIntent("failover-1", "fleet: the live topology decides", new) in effects
        assert "node1" in m.state.quarantined and m.state.blocked_until == NOW + 3600


def test_the_lease_rules_are_off_for_a_single_instance():
    lease, effects = lease_step(Lease(), fold_all(F, locks(NOW, OTHER)), F, NOW)
    assert lease.acting(NOW) and effects == ()


@pytest.mark.parametrize("errno", [0, 2013, 2003])
def test_a_new_leader_restarts_io_threads_a_dead_leader_stopped_for_its_failover(errno):
    # SetIOThreads leaves no error (stopped while reading) or the reconnect attempt's (a frozen
    # source's 2013, a dead one's 2003): either way no witness, and started again.
    stopped = {"io_state": IoState.STOPPED, "last_io_errno": errno, "last_io_error": "x"}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), replica("node2", t, **stopped), replica("node3", t, **stopped)]
        for t in (4, 5, 6)
    ]
    m = model(*rounds, locks(NOW - 0.1, MINE, None, ("node2", "node3")), lease=LEADER)
    assert m.view.primary == "node1" and not m.view.has(Code.DEAD_PRIMARY)
    _, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    assert plan.rule == "ReplicaIOStopped"
    assert plan.actions == (SetIOThreads(("node2", "node3"), running=True),)
    single = Model(fold_all(settings(), *rounds))  # alone: its journal resumes the plan instead
    _, effects = step(single, Tick(NOW), settings(), NOW)
    assert not started(effects)


def test_io_threads_stopped_on_a_replication_error_are_not_restarted_blindly():
    stopped = {"io_state": IoState.STOPPED, "last_io_errno": 1236, "last_io_error": "purged"}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), replica("node2", t, **stopped), replica("node3", t, **stopped)]
        for t in (4, 5, 6)
    ]
    m = model(*rounds, locks(NOW - 0.1, MINE, None, ("node2", "node3")), lease=LEADER)
    _, effects = run(m, Tick(NOW))
    assert all(p.rule != "ReplicaIOStopped" for p in started(effects))


def test_a_switchover_sent_to_a_new_leader_waits_for_its_takeover_then_runs():
    m = healthy(Lease(fleet=True, mode=LeaseMode.ACQUIRE), held=MINE, published="node1")
    m, _ = run(m, Tick(NOW))
    assert m.lease.leader_since == NOW and not m.lease.acting(NOW)
    m, effects = run(m, OperatorCommand(NOW, "switchover", "node2"))
    assert lines(effects, "operator_command_deferred") and not lines(effects, "operator_answer")
    m, _ = run(m, *locks(NOW + 0.5, MINE, "node1"), now=NOW + 0.5)
    m, _ = run(m, *locks(NOW + 1.0, MINE, "node1"), now=NOW + 1.0)
    m, _ = run(m, *locks(NOW + V, MINE, "node1"), now=NOW + V)
    at = NOW + V + 0.1  # fresh probes; the replicas' heartbeats went on meanwhile
    fresh = [primary(at=at), *(replica(n, at, heartbeats_received=11) for n in ("node2", "node3"))]
    m, effects = run(m, *fresh, now=at + 0.1)
    (plan,) = started(effects)
    assert plan.kind is PlanKind.SWITCHOVER and m.deferred == ()


def test_without_quorum_a_fleets_router_has_no_writer_even_a_published_one():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [[down("node2", t), down("node3", t)] for t in (4, 5, 6)]
    m = model(*rounds, locks(NOW, OTHER, "node1", ("node1",)))  # node1 still publishes
    assert m.view.published == "node1" and not m.view.quorum.ok
    _, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    alert, route = plan.actions  # the alert first: a Route that fails ends the plan
    assert isinstance(alert, Notify) and alert.kind is AlertKind.NO_QUORUM
    assert isinstance(route, Route) and route.no_writer and route.desired.writers == set()
    assert plan.rule == "NoQuorum" and "routes writes to nobody from a minority" in plan.reason


def test_with_nobody_publishing_a_writer_its_replicas_lost_is_not_kept():
    """An asymmetric cut: node1 is cut off from the leader and from node3 (the leader fails
    over to node2), yet this follower still reaches node1 and node3, a majority. The leader's
    publication on node1 ends (the server frees its idle session after W). Keeping node1 as
    the writer because this instance's own probes still see it writable would send this
    router's writes to node1 while the leader promotes node2: two writers. Without a
    publication, a writer is kept only while the replicas this instance reaches follow it
    with a live link."""
    cut = {"io_state": IoState.CONNECTING, "last_io_errno": 2013, "last_io_error": "lost"}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [[primary(at=t), down("node2", t), replica("node3", t, **cut)] for t in (4, 5, 6)]
    m = model(
        *rounds,
        [lock("node1", NOW), lock("node2", NOW, error="timeout"), lock("node3", NOW, leader=OTHER)],
    )
    assert m.view.published is None and m.view.quorum.ok and m.view.primary == "node1"
    _, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    (route,) = plan.actions
    assert isinstance(route, Route) and route.no_writer and route.desired.writers == set()


def test_a_publication_on_a_primary_its_replicas_lost_is_not_routed():
    """The leader lost node1 after the replicas had (the cut reached it last): it fails over
    at once, and its publication on node1 lingers up to W after that. This follower reaches
    node1 and node3, whose link to node1 is long dead, not node2: it must not route writes to
    node1 while node2 is promoted."""
    cut = {"io_state": IoState.CONNECTING, "last_io_errno": 2013, "last_io_error": "lost"}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [[primary(at=t), down("node2", t), replica("node3", t, **cut)] for t in (4, 5, 6)]
    m = model(*rounds, locks(NOW, OTHER, "node1", ("node1", "node3")))
    assert m.view.published == "node1" and m.view.quorum.ok
    _, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    (route,) = plan.actions
    assert isinstance(route, Route) and route.no_writer and route.desired.writers == set()


def test_replicas_an_operator_stopped_do_not_take_a_published_writer_away():
    """Replicas whose IO threads an operator stopped (no error: a backup, a maintenance) hear
    nothing from the primary, and testify nothing about it: the published primary stays the
    writer of every router."""
    stopped = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [primary(at=t), replica("node2", t, **stopped), replica("node3", t, **stopped)]
        for t in (4, 5, 6, 7, 8)
    ]
    m = model(*rounds, locks(NOW, OTHER, "node1"))
    assert m.view.published == "node1" and m.view.quorum.ok
    _, effects = run(m, Tick(NOW))
    routes = [a for p in started(effects) for a in p.actions if isinstance(a, Route)]
    assert all(r.desired.writers == {"node1"} for r in routes), routes


def test_without_quorum_a_router_change_is_not_repeated_before_the_router_is_read_back():
    """Without quorum, a fleet's instance takes the writer out of its router. The view's
    router still shows the writer until the router is probed again; with the primary dead,
    the wait for fresh facts after a plan is skipped (a failover must not wait), and the same
    Route was planned again at once, after every plan, back to back until the next router
    probe: a storm of router commands and log lines that starves the probes and keepalives."""
    dead_io = {**DEAD_IO}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), down("node2", t), replica("node3", t, **dead_io)] for t in (4, 5, 6)
    ]
    m = model(*rounds, locks(NOW, OTHER, None, ("node3",)))
    assert not m.view.quorum.ok and m.view.router.membership.writers
    m, effects = run(m, Tick(NOW))
    (plan,) = started(effects)
    assert plan.rule == "NoQuorum" and m.running is not None
    route = plan.actions[-1]  # after the alert
    done = ActionResult("route", None, True, False, "router: already so")
    finished = PlanFinished(
        NOW + 0.01,
        m.running.plan_id,
        plan.rule,
        plan.kind,
        True,
        "all steps done",
        None,
        (done,),
        0.0,
        routed=True,
    )
    m, effects = run(m, finished, now=NOW + 0.01)
    assert not started(effects), "the same Route again before the router was read back"
    seen = RouterProbeResult("haproxy", NOW + 0.3, route.desired)
    m, effects = run(m, seen, Tick(NOW + 0.3), now=NOW + 0.3)
    assert not started(effects)  # the router shows it now: nothing to do


def test_an_alert_left_to_the_leader_is_mailed_once_by_this_instance_when_it_takes_over():
    """A follower leaves the refusal's mail to the leader and keeps it as alerted; the leader
    dies before it mails (or saw otherwise). Taking over, this instance mails it, once."""
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    ahead = {**DEAD_IO, "received_gtid": "0-1-105"}
    rounds += [
        [down("node1", t), primary("node2", t), replica("node3", t, **ahead), router(at=t)]
        for t in (4.0, 5.0, 6.0)
    ]
    alive = ("node2", "node3")
    m = model(*rounds, locks(NOW - 0.1, OTHER, None, alive))
    m, effects = run(m, Tick(NOW))
    assert not [e for e in effects if isinstance(e, SendAlert)]
    assert lines(effects, "alert_left_to_leader")
    assert m.state.alerted  # kept: the follower does not log it again on every decision
    m, took = run(m, *locks(NOW + 0.5, MINE, None, alive), now=NOW + 0.5)
    assert m.lease.leader_since is not None
    later = NOW + 0.5 + V + 0.1
    fresh = [down("node1", later), primary("node2", later), replica("node3", later, **ahead)]
    m, kept = run(m, *locks(NOW + 1.2, MINE, None, alive), now=NOW + 1.2)
    m, effects = run(m, *locks(later, MINE, None, alive), *fresh, Tick(later), now=later)
    effects = [*kept, *effects]
    assert m.lease.acting(later)
    m, more = run(m, *locks(later + 0.5, MINE, None, alive), Tick(later + 0.5), now=later + 0.5)
    mails = [
        (e.alert.summary, e.alert.node)
        for e in (*took, *effects, *more)
        if isinstance(e, SendAlert)
    ]
    assert mails == [("primary node2 not published (ahead):", "node3")], mails


F5 = fleet(nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)])


def takeover_mid_failover(node2: str = "down", node5: str = "stopped") -> Model:
    """Five nodes; a failover's leader stopped the replicas' IO threads, promoted node2 (maybe
    halfway: made writable) and died; node2 then froze or was cut off (``node2``: "down"
    unreachable; "stale": two probes failed, its last good read from before the Promote).
    ``node5``: "stopped" like node3-4, or "witness": the failover never reached it (its IO
    thread runs, reconnecting to the dead node1). This instance holds the leader lock on
    node3-5 and acts."""
    stopped = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}
    five = ("node1", "node2", "node3", "node4", "node5")
    rounds = [
        [primary("node1", t), *(replica(n, t) for n in five[1:]), router(at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds.append([replica("node2", 3.5, **stopped)])  # read between the stop and the Promote
    last = {"stopped": stopped, "witness": DEAD_IO}[node5]
    failed = (4.0, 5.0, 6.0) if node2 == "down" else (5.5, 6.0)
    rounds += [
        [
            down("node1", t),
            *([down("node2", t)] if t in failed else []),
            replica("node3", t, **stopped),
            replica("node4", t, **stopped),
            replica("node5", t, **last),
            router(at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    held = [lock(n, NOW - 0.1, leader=MINE) for n in five[2:]]
    return Model(fold_all(F5, *rounds, held), lease=LEADER)


@pytest.mark.parametrize(
    ("node2", "node5"), [("down", "stopped"), ("down", "witness"), ("stale", "stopped")]
)
def test_a_new_leader_promotes_nobody_while_a_failover_under_way_has_a_node_unread(node2, node5):
    """Restarting the IO threads would let node3-5 testify node1 dead, or a replica the dead
    leader never stopped does already, and the next failover would promote node3 beside node2,
    which the dead leader may have made writable (review HIGH, reproduced on real mariadbd):
    an alert, once, and no change. "stale": node2's last good read shows it stopped and
    read-only (before the Promote); two probes failed since, not yet unreachable."""
    m = takeover_mid_failover(node2, node5)
    assert m.view.nodes["node2"].failures > 0
    m, effects = steps(m, Tick(NOW), s=F5, now=NOW)
    assert not started(effects), [p.rule for p in started(effects)]
    mails = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert [a.summary for a in mails] == [
        "HALT: IO threads stopped as a failover leaves them, a node unread"
    ]
    assert "`hacontrol maintenance node2 on`" in mails[0].reason
    m, effects = steps(m, Tick(NOW + 1), Tick(NOW + 2), s=F5, now=NOW + 2)
    assert not started(effects) and not [e for e in effects if isinstance(e, SendAlert)]


def test_a_dead_primary_with_a_replica_down_and_no_failover_under_way_still_fails_over():
    rounds = [
        [primary("node1", t), *(replica(f"node{i}", t) for i in (2, 3, 4, 5)), router(at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [
            down("node1", t),
            down("node5", t),
            *(replica(f"node{i}", t, **DEAD_IO) for i in (2, 3, 4)),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    held = [lock(n, NOW - 0.1, leader=MINE) for n in ("node2", "node3", "node4")]
    m = Model(fold_all(F5, *rounds, held), lease=LEADER)
    _, effects = steps(m, Tick(NOW), s=F5, now=NOW)
    assert [p.rule for p in started(effects)] == ["DeadPrimary"]


def test_once_the_unread_node_is_hidden_the_io_threads_start_again():
    m = takeover_mid_failover()
    m, _ = steps(m, Tick(NOW), s=F5, now=NOW)
    hidden = router(hidden=("node2",), readers=(), at=NOW + 0.5)
    m, effects = steps(m, hidden, Tick(NOW + 1), s=F5, now=NOW + 1)
    (plan,) = started(effects)
    assert plan.rule == "ReplicaIOStopped"
    assert plan.actions == (SetIOThreads(("node3", "node4", "node5"), running=True),)


STOPPED = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}


def after_a_blip(m: Model, nodes: tuple[str, ...], at: float) -> tuple[Model, list]:
    """One probe of each of ``nodes`` fails (below failure_threshold: still reachable), then a
    decision."""
    blip = [down(n, at) for n in nodes]
    return steps(m, *blip, Tick(at + 0.1), s=F5, now=at + 0.1)


@pytest.mark.parametrize(
    ("node5", "blipped"),
    [("stopped", ("node3", "node4", "node5")), ("witness", ("node3", "node4"))],
)
def test_one_failed_probe_of_the_stopped_replicas_does_not_lift_the_hold(node5, blipped):
    """During the hold one late probe round of the replicas the failover stopped (a blip, the
    controller's own lateness) must not make them "not stopped": their last good read shows
    the IO thread stopped as the failover left it. Before: ReplicaIOStopped started the IO
    threads (then DeadPrimary promoted node3 beside node2), or DeadPrimary at once with a
    witness (review HIGH, reproduced on real mariadbd)."""
    m = takeover_mid_failover("down", node5)
    m, effects = steps(m, Tick(NOW), s=F5, now=NOW)
    assert not started(effects)
    m, effects = after_a_blip(m, blipped, NOW + 0.4)
    assert all(m.view.nodes[n].failures > 0 and m.view.nodes[n].reachable for n in blipped)
    assert not started(effects), [(p.rule, p.actions) for p in started(effects)]
    assert m.decisions[-1]["rule"] == "FailoverUnderWayCandidateUnread"
    # the probes answer again: still held, no second mail
    answers = [replica(n, NOW + 1.0, **STOPPED) for n in ("node3", "node4", "node5")]
    m, effects = steps(m, *answers, Tick(NOW + 1.1), s=F5, now=NOW + 1.1)
    assert not started(effects) and not [e for e in effects if isinstance(e, SendAlert)]


def with_plans_done(m: Model, *events, now: float) -> tuple[Model, list]:
    """``events`` stepped, then the plan they started (a router reconcile) finished, ok."""
    m, effects = steps(m, *events, s=F5, now=now)
    if (r := m.running) is not None:
        done = PlanFinished(now, r.plan_id, r.plan.rule, r.plan.kind, True, "done", None, (), 0.0)
        m, more = steps(m, done, s=F5, now=now)
        effects = [*effects, *more]
    return m, effects


def follower_read_the_candidate_then_leads() -> Model:
    """This instance followed while the dead leader failed over node1 -> node2: it read the IO
    threads stopped, node2 writable once (after the Promote: failover_seen quarantines node1,
    no plan of its own), then node2 froze; now it holds the leader lock on node3-5."""
    five = ("node1", "node2", "node3", "node4", "node5")
    rounds = [
        [primary("node1", t), *(replica(n, t) for n in five[1:]), router(readers=five[1:], at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    m = Model(fold_all(F5, *rounds), lease=FOLLOWER)
    for t in (4.0, 4.5, 5.0):
        m, _ = with_plans_done(
            m, down("node1", t), *(replica(n, t, **STOPPED) for n in five[1:]), now=t
        )
    promoted = [down("node1", 5.5), primary("node2", 5.5)]
    m, _ = with_plans_done(m, *promoted, *(replica(n, 5.5, **STOPPED) for n in five[2:]), now=5.5)
    assert "node1" in m.state.quarantined and m.resume is None
    for t in (6.0, 6.5, 7.0):
        frozen = [down("node1", t), down("node2", t)]
        m, _ = with_plans_done(m, *frozen, *(replica(n, t, **STOPPED) for n in five[2:]), now=t)
    m, _ = with_plans_done(m, *[lock(n, NOW - 0.1, leader=MINE) for n in five[2:]], now=NOW - 0.1)
    return replace(m, lease=LEADER)


def frozen_round(t: float, node2: str = "down") -> list:
    five = ("node1", "node2", "node3", "node4", "node5")
    return [
        down("node1", t),
        down("node2", t) if node2 == "down" else primary("node2", t),
        *(replica(n, t, **STOPPED) for n in five[2:]),
        *(lock(n, t - 0.05, leader=MINE) for n in five[2:]),
        Tick(t),
    ]


def test_a_quarantine_a_follower_recorded_does_not_lift_the_hold():
    """The quarantine failover_seen left must not skip the hold: ReplicaIOStopped would start
    node3-5's IO threads beside the writable node2 and erase the trace the next leader reads
    (review HIGH, two writable nodes on real mariadbd)."""
    m = follower_read_the_candidate_then_leads()
    for t in (NOW, NOW + 1, NOW + 2):
        m, effects = with_plans_done(m, *frozen_round(t), now=t)
        assert m.lease.acting(t)
        assert not started(effects), [(p.rule, p.actions) for p in started(effects)]
    assert m.decisions[-1]["rule"] == "FailoverUnderWayCandidateUnread"
    # its way on says what follows it here: no automatic failover of node1
    assert "node1 stays quarantined, no automatic failover follows" in m.decisions[-1]["reason"]


class Thawed:
    """node1 dead, node2 answers writable after its freeze; node3-5 stay stopped on node1 until
    a plan repoints them; the locks and the router show what the plans did."""

    def __init__(self) -> None:
        self.published = False
        self.repointed: set[str] = set()
        self.routed: Membership | None = None

    def round(self, t: float) -> list:
        five = ("node1", "node2", "node3", "node4", "node5")
        published = "node2" if self.published else None
        events: list = locks(t - 0.05, MINE, published, five[1:])
        events += [down("node1", t), primary("node2", t)]
        events += [
            replica(n, t, source="node2", heartbeats_received=int(2 * t))
            if n in self.repointed
            else replica(n, t, **STOPPED)
            for n in five[2:]
        ]
        if self.routed is not None:
            events.append(RouterProbeResult("haproxy", t - 0.02, self.routed))
        return [*events, Tick(t)]

    def run(self, plan: Plan) -> None:
        for action in plan.actions:
            if isinstance(action, Publish):
                self.published = action.node == "node2"
            elif isinstance(action, Repoint) and action.new_primary == "node2":
                self.repointed |= set(action.nodes)
            elif isinstance(action, Route):
                self.routed = action.desired


def test_after_the_thaw_a_candidate_this_instance_read_writable_once_is_published_and_followed():
    """The way on "node2 answers", when this instance read node2 writable once before it froze:
    it must publish node2, route writes to it and repoint every replica to it. Before:
    failover_seen quarantined node2 when the view's primary fell back to the lost node1 (the
    replicas' votes): nothing published, the router without a writer, no alert (review, live)."""
    m = follower_read_the_candidate_then_leads()
    assert "node2" not in m.state.quarantined
    for t in (NOW, NOW + 1):
        m, effects = with_plans_done(m, *frozen_round(t), now=t)
        assert not started(effects)
    world, rules = Thawed(), []
    for t in range(2, 14):
        m, effects = steps(m, *world.round(NOW + t), s=F5, now=NOW + t)
        for _ in range(3):  # each plan done at once, and the one that follows it
            for plan in started(effects):
                rules.append(plan.rule)
                world.run(plan)
            m, effects = with_plans_done(m, now=NOW + t + 0.1)
    assert "PublishPrimary" in rules and world.published
    assert world.repointed == {"node3", "node4", "node5"}, rules
    assert world.routed is not None and world.routed.writers == frozenset({"node2"}), rules
    assert m.view.primary == "node2" and "node2" not in m.state.quarantined


@pytest.mark.parametrize("history", [True, False], ids=["seen-while-node1-answered", "fresh"])
def test_an_io_thread_an_operator_paused_is_no_failover_under_way(history):
    """No failover ever began: node5's IO thread was stopped by an operator (a backup, SQL
    running), node4 is down, node1 dies; node2 and node3 testify it dead. This instance read
    node5 stopped while node1 still answered for longer than a stall: an operator's stop (a
    failover stops IO threads only once the primary is lost): it fails over (before: a HALT
    saying a failover was under way). Without that history (started after node1's loss) it
    stays on the conservative side: it holds, and its alert does not assert a failover."""
    five = ("node1", "node2", "node3", "node4", "node5")
    paused = replica("node5", 0.0, **STOPPED)

    def running(n: str, t: float) -> ProbeResult:
        return replica(n, t, heartbeats_received=int(2 * t))

    rounds = [
        [primary("node1", t), *(running(n, t) for n in five[1:4]), paused, router(at=t)]
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    ]
    lost = [
        [
            down("node1", t),
            down("node4", t),
            *(replica(n, t, **DEAD_IO) for n in five[1:3]),
            replace(paused, at=t),
            router(at=t),
        ]
        for t in (7.0, 8.0, 9.0)
    ]
    held = [lock(n, NOW - 0.1, leader=MINE) for n in ("node2", "node3", "node5")]
    m = Model(fold_all(F5, *(rounds if history else []), *lost, held), lease=LEADER)
    assert m.view.has(Code.DEAD_PRIMARY)
    _, effects = steps(m, Tick(NOW), s=F5, now=NOW)
    mails = [e.alert for e in effects if isinstance(e, SendAlert)]
    if history:
        assert [p.rule for p in started(effects)] == ["DeadPrimary"]
        assert "under way" not in " ".join(a.summary for a in mails)
    else:
        assert not started(effects)
        (mail,) = mails
        assert "maybe a failover whose leader stopped, or an operator" in mail.reason
        assert "a failover under way" not in mail.summary


def test_io_threads_a_failover_stopped_after_a_long_healthy_run_still_hold_a_dead_primary():
    """The other side of the operator's stop: the replicas' links made progress until node1
    was lost (heartbeats every round for 10 s), the dead leader stopped node3 and node4 after
    that, node5 (a witness) testifies node1 dead, node2 unread: still held."""
    five = ("node1", "node2", "node3", "node4", "node5")
    rounds = [
        [
            primary("node1", t),
            *(replica(n, t, heartbeats_received=int(2 * t)) for n in five[1:]),
            router(at=t),
        ]
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    ]
    stopped = {**STOPPED, "heartbeats_received": 20}
    dead = {**DEAD_IO, "heartbeats_received": 20}
    assert not started(held_after_the_leader_died(rounds, stopped, dead))


def test_io_threads_a_failover_stopped_after_a_primary_turned_flaky_still_hold():
    """node1 turns flaky at 6 s: it still answers this instance until 10 s, but every replica's
    link to it is silent (the dead leader's early path confirms it dead from those links), its
    SetIOThreads stops node2-4 (read at 10.5 s), Promote(node2), it dies; node2 freezes, node1
    dies at 11 s; node5 (a witness) testifies it dead. Stops seen after every link fell silent
    are a failover's, however long node1 answered here: held (review HIGH: a stop measured
    against the link's last progress looked like an operator's, DeadPrimary promoted node3)."""
    five = ("node1", "node2", "node3", "node4", "node5")
    silent = {"io_state": IoState.CONNECTING, "last_io_errno": 2013, "heartbeats_received": 12}
    stopped = {**STOPPED, "last_io_errno": 2013, "heartbeats_received": 12}
    dead = {**DEAD_IO, "heartbeats_received": 12}
    rounds = [
        [
            primary("node1", t),
            *(replica(n, t, heartbeats_received=int(2 * t)) for n in five[1:]),
            router(at=t),
        ]
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    ]
    rounds += [
        [primary("node1", t), *(replica(n, t, **silent) for n in five[1:]), router(at=t)]
        for t in (7.0, 8.0, 9.0, 10.0)
    ]
    rounds.append([replica(n, 10.5, **stopped) for n in five[1:4]])
    assert not started(held_after_the_leader_died(rounds, stopped, dead))


def held_after_the_leader_died(rounds: list, stopped: dict, dead: dict) -> tuple:
    """``rounds``, then node1 and node2 (the frozen candidate) down, node3 and node4 stopped
    (``stopped``), node5 a witness (``dead``), this instance the leader of the five: the
    effects of its next decision, node1 confirmed dead."""
    rounds = rounds + [
        [
            down("node1", t),
            down("node2", t),
            *(replica(n, t, **stopped) for n in ("node3", "node4")),
            replica("node5", t, **dead),
            router(at=t),
        ]
        for t in (11.0, 12.0, 13.0)
    ]
    held = [lock(n, NOW - 0.1, leader=MINE) for n in ("node3", "node4", "node5")]
    m = Model(fold_all(F5, *rounds, held), lease=LEADER)
    assert m.view.has(Code.DEAD_PRIMARY)
    _, effects = steps(m, Tick(NOW), s=F5, now=NOW)
    return effects


def test_a_quarantined_dead_primary_is_mailed_once_across_a_late_probe_round():
    """QuarantinedPrimaryDead mails once while node1 stays lost: a late probe round of the
    replicas (no witness for a moment: UnreachablePrimary) must not forget that it was mailed
    (before: a second mail within seconds, seen live)."""
    five = ("node1", "node2", "node3", "node4", "node5")
    rounds = [
        [primary("node1", t), *(replica(n, t) for n in five[1:]), router(at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), *(replica(n, t, **DEAD_IO) for n in five[1:]), router(at=t)]
        for t in (4.0, 5.0, 6.0)
    ]
    m = Model(fold_all(F5, *rounds), lease=LEADER, state=QUARANTINE)
    summaries, kinds = [], []
    for t in range(12):
        now = NOW + t
        late = t == 6  # one round of the replicas' probes times out
        probes = [down(n, now) if late else replica(n, now, **DEAD_IO) for n in five[1:]]
        held = [lock(n, now - 0.05, leader=MINE) for n in five[1:]]
        m, effects = steps(m, *held, down("node1", now), *probes, Tick(now), s=F5, now=now)
        kinds.append(m.view.has(Code.DEAD_PRIMARY))
        summaries += [e.alert.summary for e in effects if isinstance(e, SendAlert)]
    assert not all(kinds), "the late round made no witness-less moment"
    assert summaries == ["primary dead and quarantined, no failover"], summaries


@pytest.mark.parametrize(("since", "ack"), [(NOW - 10, True), (NOW - 4000, False)])
def test_the_hold_asks_for_an_ack_only_within_the_recovery_block(since, ack):
    """A failover 10 s ago (the block runs): the way on needs `hacontrol ack` as well; one
    4000 s ago (the block expired, its time still recorded): it does not."""
    m = takeover_mid_failover()
    block = F5.failover.recovery_block
    state = replace(m.state, last_failover_at=since, blocked_until=since + block)
    _, effects = steps(replace(m, state=state), Tick(NOW), s=F5, now=NOW)
    (mail,) = [e.alert for e in effects if isinstance(e, SendAlert)]
    assert ("`hacontrol ack` as well" in mail.reason) is ack
