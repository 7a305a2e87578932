"""decide(): every rule with plain values. No database, no event loop, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.decide import decide
from hacontrol.events import ProbeResult, RouterProbeResult
from hacontrol.flavors.base import IoState, SemiSync
from hacontrol.model import AlertKey, Condition, ControllerState, Halt, Quarantined
from hacontrol.plan import (
    Fence,
    Notify,
    PlanKind,
    Promote,
    Rejoin,
    Repoint,
    Route,
    RouteFence,
    SetIOThreads,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.view import ClusterView, Code, with_maintenance
from tests.factories import (
    DEAD_IO,
    NOW,
    QUARANTINE,
    S,
    down,
    healthy_round,
    old_primary_view,
    primary,
    replica,
    router,
    settings,
    status,
    view_of,
)


def healthy(**r2) -> ClusterView:
    return view_of(*(healthy_round(t, **r2) for t in (1.0, 2.0, 3.0)))


def dead_primary(n2: dict | None = None, n3: dict | None = None, s=S) -> ClusterView:
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    for t in (4.0, 5.0, 6.0):
        rounds.append(
            [
                down("node1", t),
                replica("node2", t, **{**DEAD_IO, **(n2 or {})}),
                replica("node3", t, **{**DEAD_IO, **(n3 or {})}),
            ]
        )
    return view_of(*rounds, s=s)


def kinds(plan) -> list[str]:
    return [type(a).__name__ for a in plan.actions]


def test_healthy_cluster_nothing_to_do():
    d = decide(healthy(), ControllerState(), S, NOW)
    assert d.plan.rule == "Nothing" and d.plan.actions == ()


def test_startup_grace_before_every_node_was_probed_enough():
    view = view_of(healthy_round(1.0))
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "StartupGrace"
    assert "waiting for 3 probes" in d.plan.reason


def test_no_quorum_changes_nothing_and_alerts_once():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [[down("node2", t), down("node3", t)] for t in (4.0, 5.0, 6.0)]
    view = view_of(*rounds)
    first = decide(view, ControllerState(), S, NOW)
    assert first.plan.rule == "NoQuorum"
    assert kinds(first.plan) == ["Notify"] and not first.plan.changes_cluster
    assert "1 of 3 recognized nodes reachable" in first.plan.reason
    second = decide(view, first.state, S, NOW + 1)
    assert second.plan.rule == "NoQuorum" and second.plan.actions == ()
    # Quorum back: the alert key is forgotten, so a new loss alerts again.
    back = decide(healthy(), second.state, S, NOW + 2)
    assert AlertKey(Condition.NO_QUORUM) not in back.state.alerted


ROUTING = [
    # (name, view, expected writers, expected readers)
    (
        # A switchover's drain left behind (ProxySQL: OFFLINE_SOFT, HAProxy: DRAIN; read back
        # as no writer) by a rollback that could not reach the router: routed again.
        "drained writer left by a switchover that did not happen",
        view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), [router(writers=(), at=4.0)]),
        {"node1"},
        {"node1", "node2", "node3"},
    ),
    (
        "router writer is not the primary",
        view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), [router(writers=("node2",), at=4.0)]),
        {"node1"},
        {"node1", "node2", "node3"},
    ),
    (
        "lagging replica leaves the readers",
        healthy(seconds_behind=30),
        {"node1"},
        {"node1", "node3"},
    ),
    (
        "broken replica leaves the readers",
        healthy(sql_running=False),
        {"node1"},
        {"node1", "node3"},
    ),
    (
        "NULL lag but behind the primary by GTID leaves the readers",
        view_of(
            *(
                [
                    primary(at=t, gtid="0-1-120"),
                    replica("node2", t, seconds_behind=None),
                    replica("node3", t),
                    router(at=t),
                ]
                for t in (1.0, 2.0, 3.0)
            )
        ),
        {"node1"},
        {"node1", "node3"},
    ),
]


@pytest.mark.parametrize(
    ("name", "view", "writers", "readers"), ROUTING, ids=[r[0] for r in ROUTING]
)
def test_route_reconcile(name, view, writers, readers):
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "RouteReconcile", d.plan.reason
    (action,) = d.plan.actions
    assert isinstance(action, Route)
    assert action.desired.writers == writers and action.desired.readers == readers
    assert action.desired.broken == {"node1", "node2", "node3"} - readers - writers


def test_null_lag_caught_up_by_gtid_stays_reader():
    view = healthy(seconds_behind=None)
    assert decide(view, ControllerState(), S, NOW).plan.rule == "Nothing"


def test_route_retry_waits_after_a_failure():
    view = view_of(
        *(healthy_round(t) for t in (1.0, 2.0, 3.0)), [router(writers=("node2",), at=4.0)]
    )
    d = decide(view, ControllerState(route_retry_at=NOW + 5), S, NOW)
    assert d.plan.rule == "Nothing"


def test_two_writable_nodes_halt_and_alert_once_then_clear():
    writable_replica = ProbeResult(
        "node2", 4.0, 0.001, replace(replica("node2", 4.0).status, read_only=False)
    )
    view = view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), [writable_replica])
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "TwoWritableNodes" and d.plan.kind == "halt"
    assert kinds(d.plan) == ["Notify"]
    assert d.state.halt is not None and d.state.halt.code == "TwoWritableNodes"
    again = decide(view, d.state, S, NOW + 1)
    assert again.plan.actions == () and again.state.halt == d.state.halt
    cleared = decide(healthy(), again.state, S, NOW + 2)
    assert cleared.state.halt is None and cleared.plan.rule == "Nothing"


def test_router_with_two_writers_halts():
    view = view_of(
        *(healthy_round(t) for t in (1.0, 2.0, 3.0)), [router(writers=("node1", "node2"), at=4.0)]
    )
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "RouterHasTwoWriters"
    assert not d.plan.changes_cluster


def test_dead_primary_failover_plan_in_order():
    view = dead_primary(n3={"received_gtid": "0-1-101"})  # node3 received more
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "DeadPrimary" and d.plan.kind == "failover"
    assert "promoting node3" in d.plan.reason
    assert kinds(d.plan) == [
        "RouteFence",
        "SetIOThreads",
        "WaitApplied",
        "Promote",
        "Route",
        "Repoint",
        "Notify",
    ]
    fence, stop_io, wait, promote, route, repoint, notify = d.plan.actions
    assert stop_io == SetIOThreads(("node3", "node2"), running=False)
    assert d.plan.rollback == (SetIOThreads(("node3", "node2"), running=True),)
    assert fence == RouteFence("node1", required=True)
    # node3 must hold what node2 received once both stopped (checked before the promotion).
    assert wait == WaitApplied("node3", S.failover.apply_timeout, peers=("node2",))
    assert promote == Promote("node3", "node1")
    assert repoint == Repoint(("node2",), "node3")
    assert route.desired.writers == {"node3"} and "node1" in route.desired.broken
    # Past the promotion a router that cannot be updated stops nothing (rules/outcomes.py).
    assert not route.required
    assert notify.kind == "failover" and "candidates" in dict(notify.sections)
    assert d.state.blocked_until == NOW + S.failover.recovery_block
    assert d.state.quarantined["node1"] == Quarantined("node1", "node3", NOW)


def semi_sync(enabled=True, timeout=None, wait=None) -> SemiSync:
    return SemiSync(enabled, 2, enabled, True, timeout, wait)


def test_a_replica_that_could_not_be_checked_makes_the_failover_wait():
    s5 = settings(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
    )
    never = semi_sync(True, 4294967.295, True)
    names = ("node2", "node3", "node4", "node5")
    every = {"readers": ("node1", *names)}
    rounds = [
        [primary(at=t, semi_sync=never), *(replica(n, t) for n in names), router(**every, at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [
            down("node1", t),
            down("node5", t),
            *(replica(n, t, **DEAD_IO) for n in names[:3]),
            router(**every, at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    # node5 went away with node1: it may hold a write it alone acknowledged. The failover
    # waits for it (tests/test_rules_unreachable_replica.py has every branch).
    d = decide(view_of(*rounds, s=s5), ControllerState(), s5, 7.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "node5" in d.plan.reason and not d.plan.actions


@pytest.mark.parametrize(
    ("name", "semi", "at_risk"),
    [
        ("never falls back", semi_sync(True, 4294967.295, True), "none: node1's semi-sync never"),
        ("falls back after 2 s", semi_sync(True, 2.0, True), "4.0 s so far: node1's semi-sync "),
        ("no replica: at once", semi_sync(True, 4294967.295, False), "6.0 s so far: node1's"),
        ("asynchronous", semi_sync(False), "6.0 s so far: node1 replicated asynchronously"),
        ("never read", semi_sync(True), "unknown: node1's semi-sync settings were never read"),
    ],
)
def test_failover_alert_says_how_long_acknowledged_writes_may_be_at_risk(name, semi, at_risk):
    # The replicas last received from node1 at their first probe (t=1, the marker never moved
    # after it); the failover is decided at t=7: 6 s without a replica receiving anything.
    rounds = [[*healthy_round(t)[1:], primary(at=t, semi_sync=semi)] for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), replica("node2", t, **DEAD_IO), replica("node3", t, **DEAD_IO)]
        for t in (4.0, 5.0, 6.0)
    ]
    d = decide(view_of(*rounds), ControllerState(), S, 7.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    notify = next(a for a in d.plan.actions if isinstance(a, Notify))
    assert dict(notify.sections)["acknowledged writes at risk"].startswith(at_risk)
    # In the alert's own line too, unless nothing can be at risk.
    assert (at_risk in notify.reason) is not at_risk.startswith("none")


CANDIDATES = [
    # (name, node2 overrides, node3 overrides, settings overrides, expected winner or rule)
    ("equal positions: higher priority wins", {}, {}, {"node3": {"priority": 5}}, "node3"),
    (
        "equal positions and priority: lower lag wins",
        {"seconds_behind": 3},
        {"seconds_behind": 1},
        {},
        "node3",
    ),
    (
        "more advanced received GTID beats priority",
        {"received_gtid": "0-1-105"},
        {},
        {"node3": {"priority": 9}},
        "node2",
    ),
    ("no_promote is never chosen", {}, {}, {"node2": {"no_promote": True}}, "node3"),
    ("stopped SQL thread is not a candidate", {"sql_running": False}, {}, {}, "node3"),
    # A replica that cannot be promoted but holds more: promoting another would lose what only
    # it holds (possibly acknowledged under semi-sync). No failover; an operator decides.
    (
        "a no_promote replica holding more blocks the failover",
        {"received_gtid": "0-1-105"},
        {},
        {"node2": {"no_promote": True}},
        "CandidateIncomplete",
    ),
    (
        "a stopped replica holding more blocks the failover",
        {"received_gtid": "0-1-105", "sql_running": False},
        {},
        {},
        "CandidateIncomplete",
    ),
]


@pytest.mark.parametrize(
    ("name", "n2", "n3", "nodes", "winner"), CANDIDATES, ids=[c[0] for c in CANDIDATES]
)
def test_candidate_ranking(name, n2, n3, nodes, winner):
    s = settings(
        nodes=[
            {"name": n, "host": "127.0.0.1", "port": p, **nodes.get(n, {})}
            for n, p in (("node1", 3301), ("node2", 3302), ("node3", 3303))
        ]
    )
    d = decide(dead_primary(n2, n3, s=s), ControllerState(), s, NOW)
    if winner == "CandidateIncomplete":
        assert d.plan.rule == winner and not d.plan.changes_cluster
        assert "node2 has 0-1-101..105" in d.plan.reason
        return
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert next(a for a in d.plan.actions if isinstance(a, Promote)).node == winner


def test_errant_replica_is_not_a_candidate():
    # node2 executed a transaction of its own (server 2) that nobody else has.
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    for t in (4.0, 5.0, 6.0):
        errant = replica("node2", t, **DEAD_IO)
        errant = replace(errant, status=replace(errant.status, gtid_executed="0-2-101"))
        rounds.append([down("node1", t), errant, replica("node3", t, **DEAD_IO)])
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert next(a for a in d.plan.actions if isinstance(a, Promote)).node == "node3"
    table = dict(next(a for a in d.plan.actions if isinstance(a, Notify)).sections)["candidates"]
    assert "errant transactions 0-2-101..101" in table


def test_no_candidate_halts_with_the_table():
    view = dead_primary({"sql_running": False}, {"sql_running": False})
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "NoCandidate" and d.plan.kind == "halt"
    (alert,) = d.plan.actions
    table = dict(alert.sections)["candidates"]
    assert "node2" in table and "node3" in table and "SQL thread not running" in table
    assert d.state.halt is None  # re-evaluated at every decision, not latched
    assert decide(view, d.state, S, NOW + 1).plan.actions == ()  # alerted once
    # A replica becomes eligible (its SQL thread restarted): the failover goes ahead.
    eligible = dead_primary({"sql_running": False}, {})
    assert decide(eligible, d.state, S, NOW + 2).plan.rule == "DeadPrimary"


def test_controller_only_partition_alerts_without_failover():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    for i, t in enumerate((4.0, 5.0, 6.0)):
        rounds.append(
            [
                down("node1", t),
                replica("node2", t, heartbeats_received=20 + i),
                replica("node3", t, heartbeats_received=20 + i),
            ]
        )
    view = view_of(*rounds)
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "UnreachablePrimary" and "no failover" in d.plan.reason
    # Not alerted at once: right after a crash the replicas may not have noticed yet.
    assert d.plan.actions == ()
    soon = decide(view, d.state, S, NOW + 1)
    assert soon.plan.actions == ()
    lasting = decide(view, soon.state, S, NOW + S.failover.io_stall)
    assert kinds(lasting.plan) == ["Notify"]
    assert lasting.plan.actions[0].kind == "unreachable_primary"
    assert decide(view, lasting.state, S, NOW + 10).plan.actions == ()  # once


def test_recovery_block_then_expiry():
    view = dead_primary()
    blocked = ControllerState(blocked_until=NOW + 10, last_failover_at=NOW - 5)
    d = decide(view, blocked, S, NOW)
    assert d.plan.rule == "FailoverBlocked" and not d.plan.changes_cluster
    assert "anti-flapping" in d.plan.reason
    (alert,) = d.plan.actions
    assert "happened 5 s ago: blocked for 10 s more" in alert.reason
    # The decision's reason does not move with the clock: one log line while it lasts.
    assert decide(view, d.state, S, NOW + 3).plan.reason == d.plan.reason
    assert decide(view, blocked, S, NOW + 11).plan.rule == "DeadPrimary"


def test_failed_failover_halt_holds_while_the_primary_is_dead():
    state = ControllerState(halt=Halt("FailoverFailed", "WaitApplied timed out", NOW))
    d = decide(dead_primary(), state, S, NOW)
    assert d.plan.rule == "Halted" and d.plan.actions == ()


# After a failover node1 -> node2 (tests.factories.old_primary_view): node2 is primary, node3
# replicates from it.
def test_returning_old_primary_is_fenced_first():
    view = old_primary_view(status(1, read_only=False, gtid="0-1-100"))
    d = decide(view, QUARANTINE, S, NOW)
    assert d.plan.rule == "FenceReturningPrimary" and d.plan.actions == (Fence("node1"),)


def test_clean_old_primary_is_rejoined():
    view = old_primary_view(status(1, read_only=True, gtid="0-1-100"))
    d = decide(view, QUARANTINE, S, NOW)
    assert d.plan.rule == "RejoinOldPrimary" and d.plan.actions == (Rejoin("node1", "node2"),)


def test_errant_old_primary_stays_quarantined_with_the_gtids():
    view = old_primary_view(status(1, read_only=True, gtid="0-1-103"))
    d = decide(view, QUARANTINE, S, NOW)
    assert d.plan.rule == "ErrantOldPrimary"
    (alert,) = d.plan.actions
    assert alert.kind == "errant_transactions" and "0-1-101..103" in alert.summary
    assert d.state.quarantined["node1"].errant == "0-1-101..103"
    assert decide(view, d.state, S, NOW + 1).plan.actions == ()  # once


def test_rejoined_old_primary_leaves_quarantine_then_returns_to_readers():
    rejoined = replica("node1", 1.0, source="node2").status
    view = old_primary_view(rejoined)
    d = decide(view, QUARANTINE, S, NOW)
    assert d.plan.rule == "OldPrimaryRejoined" and d.state.quarantined == {}
    nxt = decide(view, d.state, S, NOW)
    assert nxt.plan.rule == "RouteReconcile"
    assert nxt.plan.actions[0].desired.readers == {"node1", "node2", "node3"}


def test_hidden_node_is_never_routed_or_promoted():
    s4 = settings(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in (1, 2, 3, 4)]
    )
    membership = {"readers": ("node1", "node2", "node4"), "hidden": ("node3",)}
    rounds = [
        [
            primary(at=t),
            replica("node2", t),
            replica("node3", t),
            replica("node4", t),
            router(**membership, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    assert decide(view_of(*rounds, s=s4), ControllerState(), s4, NOW).plan.rule == "Nothing"
    for t in (4.0, 5.0, 6.0):
        rounds.append(
            [
                down("node1", t),
                replica("node2", t, **DEAD_IO),
                replica("node3", t, **DEAD_IO),
                replica("node4", t, **DEAD_IO),
                router(**membership, at=t),
            ]
        )
    view = view_of(*rounds, s=s4)
    assert view.quorum.recognized == ("node1", "node2", "node3", "node4")  # hidden: counted
    assert view.quorum.reachable == ("node2", "node3", "node4")  # it answers: reachable
    d = decide(view, ControllerState(), s4, NOW)
    assert next(a for a in d.plan.actions if isinstance(a, Promote)).node == "node2"
    route = next(a for a in d.plan.actions if isinstance(a, Route))
    assert route.desired.hidden == {"node3"} and "node3" not in route.desired.broken
    table = dict(next(a for a in d.plan.actions if isinstance(a, Notify)).sections)["candidates"]
    assert "hidden by an operator" in table
    # Its IO thread is stopped with the others' and what it received is compared: it too may
    # acknowledge a write of a primary that answers again.
    stop = next(a for a in d.plan.actions if isinstance(a, SetIOThreads))
    wait = next(a for a in d.plan.actions if isinstance(a, WaitApplied))
    assert "node3" in stop.nodes and "node3" in wait.peers
    # Hidden but holding more than every candidate: no failover (it would lose those).
    ahead = [replica("node3", 7.0, **{**DEAD_IO, "received_gtid": "0-1-200"})]
    d = decide(view_of(*rounds, ahead, s=s4), ControllerState(), s4, NOW)
    assert d.plan.rule == "CandidateIncomplete" and "node3 has 0-1-101..200" in d.plan.reason


def test_hidden_node_counts_for_the_quorum_reachable_while_it_answers_never_promoted():
    # Counted without node3, 1 of 2 was no majority (NoQuorum); node3 answers: 2 of 3, and the
    # failover goes on to node2. Stopped, node3 is counted unreachable: 1 of 3, NoQuorum.
    hidden = router(readers=("node1", "node2"), hidden=("node3",), at=3.0)
    rounds = [[*healthy_round(t)[:3], hidden] for t in (1.0, 2.0, 3.0)]
    lost = [[down("node1", t), replica("node2", t, **DEAD_IO)] for t in (4.0, 5.0, 6.0)]
    answers = [[*r, replica("node3", r[0].at, **DEAD_IO)] for r in lost]
    d = decide(view_of(*rounds, *answers), ControllerState(), S, NOW)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert [a.node for a in d.plan.actions if isinstance(a, Promote)] == ["node2"]
    stopped = [[*r, down("node3", r[0].at)] for r in lost]
    assert decide(view_of(*rounds, *stopped), ControllerState(), S, NOW).plan.rule == "NoQuorum"


def test_every_plan_explains_itself():
    for view in (healthy(), dead_primary(), healthy(seconds_behind=30)):
        assert decide(view, ControllerState(), S, NOW).plan.reason


def test_membership_values_are_exact():
    view = healthy(seconds_behind=30)
    (route,) = decide(view, ControllerState(), S, NOW).plan.actions
    assert route.desired == Membership.of(["node1"], ["node1", "node3"], ["node2"])


# ---------------------------------------------------------------------------------------------
# Operator commands


def test_switchover_plan_order_rollback_and_deadline():
    from hacontrol.plan import CatchUp, CheckTransactions, Drain, SetWritable
    from hacontrol.rules.planned import plan_switchover

    plan = plan_switchover(healthy(), ControllerState(), S, "node2", NOW)
    assert not isinstance(plan, str), plan
    assert plan.kind == "switchover" and plan.deadline == S.failover.switchover_deadline
    assert kinds(plan) == [
        "CheckTransactions",
        "Drain",
        "Fence",
        "CatchUp",
        "Promote",
        "Route",
        "Repoint",
        "Rejoin",
        "Notify",
    ]
    assert plan.actions[0] == CheckTransactions("node1", S.failover.max_transaction_age)
    # Drained, not cut: no new write starts on node1, what runs there may finish.
    assert plan.actions[1] == Drain("node1", S.failover.drain_timeout)
    assert plan.actions[1].required
    assert plan.actions[3] == CatchUp("node2", "node1", S.failover.switchover_deadline)
    assert plan.actions[6] == Repoint(("node3",), "node2")
    route = plan.actions[5]
    assert route.desired == Membership.of(["node2"], ["node1", "node2", "node3"])
    assert not route.required  # past the promotion: Repoint and Rejoin go on without it
    # The fence turned node1's semi-sync source off: the rollback restores it as it was.
    assert plan.rollback[0] == SetWritable("node1", True, semi_sync_source=True)
    assert plan.rollback[1] == Route(Membership.of(["node1"], ["node1", "node2", "node3"]))


def test_switchover_without_target_picks_the_best_candidate():
    from hacontrol.rules.planned import plan_switchover

    s = settings(
        nodes=[
            {"name": n, "host": "127.0.0.1", "port": p, "priority": pr}
            for n, p, pr in (("node1", 3301, 0), ("node2", 3302, 0), ("node3", 3303, 7))
        ]
    )
    view = view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), s=s)
    plan = plan_switchover(view, ControllerState(), s, None, NOW)
    assert "to node3" in plan.reason


SWITCHOVER_REFUSALS = [
    (
        "lagging candidate",
        healthy(seconds_behind=30),
        ControllerState(),
        "node2",
        "node2 is lagging",
    ),
    ("unknown node", healthy(), ControllerState(), "node9", "unknown node 'node9'"),
    ("already primary", healthy(), ControllerState(), "node1", "already the primary"),
    (
        "halted",
        healthy(),
        ControllerState(halt=Halt("TwoWritableNodes", "two", NOW)),
        "node2",
        "halted: two",
    ),
    (
        "broken candidate",
        healthy(sql_running=False),
        ControllerState(),
        "node2",
        "cannot be promoted: SQL thread not running",
    ),
    (
        "no quorum",
        view_of(
            *[healthy_round(t) for t in (1.0, 2.0, 3.0)],
            *[[down("node2", t), down("node3", t)] for t in (4.0, 5.0, 6.0)],
        ),
        ControllerState(),
        "node2",
        "no quorum",
    ),
    # The drain needs the router's writer to be the primary, and the rollback routes it back.
    (
        "router writes elsewhere",
        view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), router(["node3"], at=3.5)),
        ControllerState(),
        "node2",
        "the router sends writes to node3, not to the primary node1",
    ),
    (
        "router writer drained and left",
        view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), router([], at=3.5)),
        ControllerState(),
        "node2",
        "the router sends writes to no node, not to the primary node1",
    ),
    (
        "router unreachable now",
        view_of(
            *(healthy_round(t) for t in (1.0, 2.0, 3.0)),
            [RouterProbeResult("haproxy", 3.5, None, "connection refused")],
        ),
        ControllerState(),
        "node2",
        "the router is unreachable: connection refused",
    ),
    (
        "router never read",
        view_of(*([primary(at=t), replica("node2", t), replica("node3", t)] for t in (1, 2, 3))),
        ControllerState(),
        "node2",
        "the router's state is unknown (not read yet)",
    ),
]


@pytest.mark.parametrize(
    ("name", "view", "state", "target", "reason"),
    SWITCHOVER_REFUSALS,
    ids=[r[0] for r in SWITCHOVER_REFUSALS],
)
def test_switchover_refusals_say_why(name, view, state, target, reason):
    from hacontrol.rules.planned import plan_switchover

    refusal = plan_switchover(view, state, S, target, NOW)
    assert isinstance(refusal, str) and reason in refusal, refusal


def test_switchover_refuses_no_promote_candidate():
    from hacontrol.rules.planned import plan_switchover

    s = settings(
        nodes=[
            {"name": n, "host": "127.0.0.1", "port": p, "no_promote": n == "node2"}
            for n, p in (("node1", 3301), ("node2", 3302), ("node3", 3303))
        ]
    )
    view = view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), s=s)
    refusal = plan_switchover(view, ControllerState(), s, "node2", NOW)
    assert refusal == "node2 cannot be promoted: no_promote is set"


def test_maintenance_hides_a_replica_and_brings_it_back():
    from hacontrol.rules.planned import plan_maintenance

    plan, view = plan_maintenance(healthy(), S, "node3", True)
    (route,) = plan.actions
    assert route.hidden_change and route.desired.hidden == {"node3"}
    assert "node3" not in route.desired.readers
    assert view.maintenance == {"node3"}
    # While hidden: excluded from the desired routing and from promotion.
    assert desired_after(view) == Membership.of(["node1"], ["node1", "node2"], [], ["node3"])
    plan, view = plan_maintenance(view, S, "node3", False)
    assert view.maintenance == frozenset()
    assert plan.actions[0].desired.hidden == frozenset()


def test_maintenance_off_from_a_reading_that_still_routes_the_node_is_a_valid_state():
    """The router reading may predate the hiding (node3 still a reader): back from
    maintenance, node3 is broken until healthy, never a reader and broken at once (the router
    would refuse the state and the command fail)."""
    from hacontrol.routing import desired_state_problem
    from hacontrol.rules.planned import plan_maintenance

    _, hidden = plan_maintenance(healthy(), S, "node3", True)
    assert "node3" in hidden.router.membership.readers  # the reading taken before the hiding
    plan, _ = plan_maintenance(hidden, S, "node3", False)
    (route,) = plan.actions
    assert desired_state_problem(route.desired) is None
    assert route.desired == Membership.of(["node1"], ["node1", "node2"], ["node3"], [])


def desired_after(view):
    from hacontrol.rules.routing import desired_membership

    return desired_membership(view, ControllerState(), S)


def test_maintenance_refusals():
    from hacontrol.rules.planned import plan_maintenance

    assert plan_maintenance(healthy(), S, "node1", True) == (
        "node1 is the primary: switch over first"
    )
    assert "unknown node" in plan_maintenance(healthy(), S, "nodeX", True)
    assert "not in maintenance" in plan_maintenance(healthy(), S, "node2", False)


def test_paused_controller_changes_nothing():
    view = view_of(
        *(healthy_round(t) for t in (1.0, 2.0, 3.0)), [router(writers=("node2",), at=4.0)]
    )
    d = decide(view, ControllerState(paused=True), S, NOW)
    assert d.plan.rule == "Paused" and not d.plan.changes_cluster
    assert "not doing RouteReconcile" in d.plan.reason
    # A dead primary while paused: no failover, no quarantine taken, but the alert goes out.
    paused = decide(dead_primary(), ControllerState(paused=True), S, NOW)
    assert paused.plan.rule == "Paused" and kinds(paused.plan) == ["Notify"]
    assert paused.state.quarantined == {} and paused.state.blocked_until is None
    assert decide(dead_primary(), paused.state, S, NOW + 1).plan.actions == ()  # alerted once


def test_paused_controller_still_alerts_on_two_writers():
    writable_replica = ProbeResult(
        "node2", 4.0, 0.001, replace(replica("node2", 4.0).status, read_only=False)
    )
    view = view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)), [writable_replica])
    d = decide(view, ControllerState(paused=True), S, NOW)
    assert d.plan.rule == "TwoWritableNodes" and kinds(d.plan) == ["Notify"]


def test_witness_must_have_a_fresh_probe_of_its_own():
    # The controller loses every node at once; the primary crosses its threshold first. The
    # replicas' last good answers must not read as "their link to the primary stopped".
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [[down("node1", t), down("node2", t), down("node3", t)] for t in (4.0, 5.0)]
    rounds += [[down("node1", 6.0)]]
    view = view_of(*rounds)
    assert view.nodes["node1"].health.value == "unreachable"
    assert not view.has(Code.DEAD_PRIMARY)
    assert decide(view, ControllerState(), S, NOW).plan.rule != "DeadPrimary"


# ---------------------------------------------------------------------------------------------
# Regressions from the safety review


def test_stray_writable_node_never_becomes_the_writer_when_the_controller_is_cut_off():
    # node3: a detached, writable, nearly empty server. The controller loses node1, but node2
    # still replicates from it (heartbeats advance): a topology split, not a new primary.
    def stray(t):
        return ProbeResult("node3", t, 0.001, status(3, read_only=False, gtid="0-3-5"))

    membership = {"readers": ("node1", "node2"), "broken": ("node3",)}
    rounds = [
        [
            primary(at=t),
            replica("node2", t, heartbeats_received=int(t)),
            stray(t),
            router(**membership, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [
            down("node1", t),
            replica("node2", t, heartbeats_received=int(t)),
            stray(t),
            router(**membership, at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    view = view_of(*rounds)
    assert view.primary is None and "topology split" in view.primary_reason
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "NoPrimary" and not d.plan.changes_cluster


def test_idle_primary_with_a_long_heartbeat_period_is_not_declared_dead():
    # MASTER_HEARTBEAT_PERIOD 30 s (the server default): 5 s without progress proves nothing.
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [
            down("node1", t),
            replica("node2", t, heartbeat_period=30.0),
            replica("node3", t, heartbeat_period=30.0),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert d.plan.rule == "UnreachablePrimary" and not d.plan.changes_cluster


def test_unknown_heartbeats_leave_only_the_io_thread_as_evidence():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [
            down("node1", t),
            replica("node2", t, heartbeats_received=None),
            replica("node3", t, heartbeat_period=None),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    assert decide(view_of(*rounds), ControllerState(), S, NOW).plan.rule == "UnreachablePrimary"


@pytest.mark.parametrize("errno", [0, 2013, 2003])
def test_replicas_stopped_by_an_operator_are_no_witnesses(errno):
    # Whatever error they last recorded (a failover's SetIOThreads leaves a reconnect
    # attempt's 2013 or 2003): it predates the stop, not the primary's state now.
    stopped = {"io_state": IoState.STOPPED, "last_io_errno": errno, "last_io_error": "x"}
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), replica("node2", t, **stopped), replica("node3", t, **stopped)]
        for t in (4.0, 5.0, 6.0)
    ]
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert d.plan.rule == "UnreachablePrimary"
    assert "no reachable replica can confirm" in d.plan.reason


def test_replica_whose_link_stalled_leaves_the_readers():
    # IO thread says Yes with lag 0, but nothing arrived for longer than io_stall.
    rounds = [
        [
            primary(at=t),
            replica("node2", t),
            replica("node3", t, heartbeats_received=int(t)),
            router(at=t),
        ]
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    ]
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert d.plan.rule == "RouteReconcile"
    assert d.plan.actions[0].desired.readers == {"node1", "node3"}


def test_read_only_primary_alerts_and_changes_nothing():
    rounds = [
        [
            ProbeResult("node1", t, 0.001, status(1, read_only=True)),
            replica("node2", t),
            replica("node3", t),
            router(at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert d.plan.rule == "PrimaryIsReadOnly" and kinds(d.plan) == ["Notify"]


def test_quarantine_is_ignored_when_its_new_primary_is_not_the_primary():
    # A failover that never promoted node2 must not fence or "rejoin" node1 to itself.
    view = view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0)))
    state = ControllerState(quarantined={"node1": Quarantined("node1", "node2", 50.0)})
    d = decide(view, state, S, NOW)
    assert d.plan.rule not in ("FenceReturningPrimary", "RejoinOldPrimary")
    assert not any(isinstance(a, (Fence, Rejoin)) for a in d.plan.actions)


def test_startup_grace_waits_for_the_router():
    rounds = [[primary(at=t), replica("node2", t), replica("node3", t)] for t in (1.0, 2.0, 3.0)]
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert d.plan.rule == "StartupGrace" and "the router" in d.plan.reason


def test_stray_replica_left_on_the_dead_primary_is_repointed():
    # After a failover node1 -> node2, node3 (down at the time) still replicates from node1.
    state = ControllerState(quarantined={"node1": Quarantined("node1", "node2", 50.0)})
    rounds = [
        [
            primary("node2", at=t),
            down("node1", t),
            replica("node3", t, source="node1", **DEAD_IO),
            router(writers=("node2",), readers=("node2",), broken=("node1", "node3"), at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    d = decide(view_of(*rounds), state, S, NOW)
    assert d.plan.rule == "RepointStray" and d.plan.actions == (Repoint(("node3",), "node2"),)
    backoff = replace(state, retry_at={(PlanKind.REPOINT, "node3"): NOW + 30})
    assert decide(view_of(*rounds), backoff, S, NOW).plan.rule != "RepointStray"


# A failover promoted node2 but its Route failed (the router was down): when the router
# answers again, the routing rule moves the writer without an operator; never to a node that
# could be a second writer.
AFTER_UNROUTED_FAILOVER = [
    # (name, what the router shows when it answers again)
    ("no writer: the failover's fence, saved to disk", router(writers=(), readers=(), at=4.0)),
    ("the dead old primary, from an older disk copy", router(writers=("node1",), at=4.0)),
]


@pytest.mark.parametrize(
    ("name", "back"), AFTER_UNROUTED_FAILOVER, ids=[a[0] for a in AFTER_UNROUTED_FAILOVER]
)
def test_the_router_is_routed_to_the_promoted_node_when_it_answers_again(name, back):
    state = ControllerState(
        blocked_until=NOW + 3600,
        last_failover_at=NOW - 5,
        quarantined={"node1": Quarantined("node1", "node2", NOW - 5)},
    )
    rounds = [
        [down("node1", t), primary("node2", at=t), replica("node3", t, source="node2")]
        for t in (1.0, 2.0, 3.0)
    ]
    d = decide(view_of(*rounds, [back]), state, S, NOW)
    assert d.plan.rule == "RouteReconcile", d.plan.reason
    (route,) = d.plan.actions
    assert route.desired == Membership.of(["node2"], ["node2", "node3"], ["node1"])
    assert d.state.quarantined == state.quarantined and d.state.blocked_until == NOW + 3600


def test_a_returning_old_primary_is_fenced_before_the_router_is_touched():
    # The same, but the old primary came back writable while the router still names it:
    # it is fenced first (quarantined), then the router follows.
    state = ControllerState(quarantined={"node1": Quarantined("node1", "node2", NOW - 5)})
    rounds = [
        [primary("node1", at=t), primary("node2", at=t), replica("node3", t, source="node2")]
        for t in (1.0, 2.0, 3.0)
    ]
    d = decide(view_of(*rounds, [router(writers=("node1",), at=4.0)]), state, S, NOW)
    assert d.plan.rule == "FenceReturningPrimary", d.plan.reason
    assert d.plan.actions == (Fence("node1"),)


def test_a_quarantined_dead_primary_is_never_ignored_silently():
    """A dead primary still quarantined by a failover whose new primary never showed up (a
    crash lost the state that released it, a promotion that did not take): no failover of a
    quarantined node, but an alert once the view had time to see the new primary."""
    view = dead_primary()
    state = ControllerState(quarantined={"node1": Quarantined("node1", "node2", NOW - 60)})
    first = decide(view, state, S, NOW)  # right after a failover the view may be stale
    assert first.plan.rule == "QuarantinedPrimaryDead" and first.plan.actions == ()
    later = decide(view, first.state, S, NOW + 5)
    assert kinds(later.plan) == ["Notify"] and not later.plan.changes_nodes
    (alert,) = later.plan.actions
    assert alert.kind == "failover_blocked" and alert.node == "node1"
    assert "quarantined by a failover to node2" in alert.reason
    assert decide(view, later.state, S, NOW + 6).plan.actions == ()  # once


def test_route_reconcile_adds_an_operators_maintenance_missing_from_the_hidden_group():
    """Review s7-s7-lows #9/#12: node3's maintenance Route failed (a router blip): node3 is in
    maintenance but not in the router's hidden group. Without leave to change that group the
    router refused every reconcile (no writer routed after a failover); the reconcile now
    adds it, and only it."""
    view = with_maintenance(
        view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0))), frozenset({"node3"}), S
    )
    d = decide(view, ControllerState(), S, NOW)
    assert d.plan.rule == "RouteReconcile", d.plan.reason
    (route,) = d.plan.actions
    assert route.hidden_change and route.desired.hidden == {"node3"}
    assert route.desired.writers == {"node1"} and "node3" not in route.desired.readers
    calm = decide(
        view_of(
            *(healthy_round(t) for t in (1.0, 2.0, 3.0)),
            [router(readers=("node1", "node2"), at=4.0)],
        ),
        ControllerState(),
        S,
        NOW,
    )
    assert all(not getattr(a, "hidden_change", False) for a in calm.plan.actions)
