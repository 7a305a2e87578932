"""The cluster view: pure folding of events, named problems, quorum, holistic detection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest

from hacontrol.events import Event, ProbeResult, RouterProbeResult
from hacontrol.flavors.base import IoState
from hacontrol.view import ClusterView, Code, Health, changes, fold, initial
from tests.factories import S, down, primary, replica, router, settings
from tests.support import fold_all


def run(events: Iterable[Event], s=S) -> ClusterView:
    return fold_all(s, list(events))


def healthy(at: float = 1.0) -> list[Event]:
    return [primary(at=at), replica("node2", at), replica("node3", at), router(at=at)]


def codes(view: ClusterView) -> set[tuple[str, str | None]]:
    return {(p.code.value, p.node) for p in view.problems}


def test_initial_view_is_unknown_without_quorum():
    view = initial(S)
    assert {n.health for n in view.nodes.values()} == {Health.UNKNOWN}
    assert not view.quorum.ok
    assert codes(view) == {("NoQuorum", None)}


def test_healthy_cluster_has_no_problems():
    view = run(healthy())
    assert view.primary == "node1"
    assert view.sources == {"node2": "node1", "node3": "node1"}
    assert view.writable == ("node1",)
    assert view.quorum.ok
    assert view.problems == ()
    assert view.nodes["node2"].health is Health.HEALTHY


def test_unreachable_only_after_threshold():
    events = healthy()
    view = run([*events, down("node3", 2.0), down("node3", 3.0)])
    assert view.nodes["node3"].health is Health.HEALTHY  # 2 of 3
    assert "probe failed 2/3" in view.nodes["node3"].reason
    view = fold(view, down("node3", 4.0), S)
    assert view.nodes["node3"].health is Health.UNREACHABLE
    assert ("NodeUnreachable", "node3") in codes(view)
    # Its last successful status is kept: the last known position matters for promotion.
    assert view.nodes["node3"].status is not None
    view = fold(view, replica("node3", 5.0), S)
    assert view.nodes["node3"].health is Health.HEALTHY
    assert view.nodes["node3"].failures == 0


def replace_ro(result: ProbeResult, read_only: bool):
    assert result.status is not None
    return replace(result.status, read_only=read_only)


# Table: (name, extra events after a healthy cluster, expected problems, expected health)
CASES = [
    (
        "replication stopped with error text",
        [
            replica(
                "node2",
                2.0,
                io_state=IoState.STOPPED,
                last_io_errno=1236,
                last_io_error="Could not find GTID state",
            )
        ],
        {("ReplicationBroken", "node2"), ("RouterReaderUnhealthy", "node2")},
        {"node2": Health.REPLICATION_BROKEN},
    ),
    (
        "sql thread stopped",
        [replica("node3", 2.0, sql_running=False, last_sql_errno=1062, last_sql_error="Duplicate")],
        {("ReplicationBroken", "node3"), ("RouterReaderUnhealthy", "node3")},
        {"node3": Health.REPLICATION_BROKEN},
    ),
    (
        "lagging beyond max_lag",
        [replica("node2", 2.0, seconds_behind=11)],
        {("ReplicaLagging", "node2"), ("RouterReaderUnhealthy", "node2")},
        {"node2": Health.LAGGING},
    ),
    (
        "NULL lag is not lag and not zero: health from the threads",
        [replica("node2", 2.0, seconds_behind=None)],
        set(),
        {"node2": Health.HEALTHY},
    ),
    (
        "replica made writable",
        [ProbeResult("node2", 2.0, 0.001, replace_ro(replica("node2", 2.0), False))],
        {("TwoWritableNodes", None)},
        {"node2": Health.HEALTHY},
    ),
    (
        "replica replicating from another replica",
        [replica("node3", 2.0, source="node2")],
        {("ReplicaNotReplicatingFromPrimary", "node3")},
        {},
    ),
    (
        "router writer is not the primary",
        [router(writers=("node2",), at=2.0)],
        {("RouterWriterIsNotPrimary", "node1")},
        {},
    ),
    (
        "router with two writers",
        [router(writers=("node1", "node2"), at=2.0)],
        {("RouterHasTwoWriters", None), ("RouterWriterIsNotPrimary", "node1")},
        {},
    ),
    (
        "router unreachable keeps last membership",
        [RouterProbeResult("haproxy", 2.0, None, "connection refused")],
        {("RouterUnreachable", None)},
        {},
    ),
    (
        "two of three down: no quorum",
        [down(n, t) for t in (2.0, 3.0, 4.0) for n in ("node2", "node3")],
        {
            ("NoQuorum", None),
            ("NodeUnreachable", "node2"),
            ("NodeUnreachable", "node3"),
            ("RouterReaderUnhealthy", "node2"),
            ("RouterReaderUnhealthy", "node3"),
        },
        {"node2": Health.UNREACHABLE, "node3": Health.UNREACHABLE},
    ),
]


@pytest.mark.parametrize(("name", "events", "problems", "health"), CASES, ids=[c[0] for c in CASES])
def test_problem_table(name, events, problems, health):
    view = run([*healthy(), *events])
    assert codes(view) == problems
    for node, expected in health.items():
        assert view.nodes[node].health is expected, view.nodes[node].reason
    for problem in view.problems:
        assert problem.reason  # every problem explains itself


def test_replication_broken_reason_carries_error_text():
    view = run(
        [
            *healthy(),
            replica(
                "node2",
                2.0,
                io_state=IoState.CONNECTING,
                last_io_errno=2003,
                last_io_error="Can't connect to server on '127.0.0.1'",
            ),
        ]
    )
    problem = next(p for p in view.problems if p.code is Code.REPLICATION_BROKEN)
    assert "IO thread Connecting" in problem.reason
    assert "2003" in problem.reason and "Can't connect" in problem.reason


def primary_down(at_values, **replica_kw) -> list[Event]:
    events: list[Event] = []
    for at in at_values:
        events += [
            down("node1", at),
            replica("node2", at, **replica_kw),
            replica("node3", at, **replica_kw),
        ]
    return events


def test_dead_primary_confirmed_by_replicas_io_threads():
    view = run(
        [
            *healthy(),
            *primary_down(
                (2.0, 3.0, 4.0),
                io_state=IoState.CONNECTING,
                last_io_errno=2003,
                last_io_error="refused",
            ),
        ]
    )
    assert view.primary == "node1"  # as the replicas see it
    assert ("DeadPrimary", "node1") in codes(view)
    assert "none of its reachable replicas" in next(
        p.reason for p in view.problems if p.code is Code.DEAD_PRIMARY
    )


LOST = {"io_state": IoState.CONNECTING, "last_io_errno": 2013, "last_io_error": "lost"}


def alive_rounds(times, beat=0) -> list[Event]:
    """Healthy rounds whose heartbeat counters advance: the replicas' links work."""
    return [
        e
        for i, at in enumerate(times)
        for e in (
            primary(at=at),
            replica("node2", at, heartbeats_received=beat + i),
            replica("node3", at, heartbeats_received=beat + i),
            router(at=at),
        )
    ]


def test_one_failed_probe_is_enough_when_every_replica_lost_its_link_since():
    # Two vantage points: the controller's probe timed out, and each replica's IO thread gave
    # up on the primary (its own slave_net_timeout), seen on probes after node1's last answer.
    events = [*alive_rounds((1.0, 2.0, 3.0)), down("node1", 4.0)]
    view = run(events)
    assert view.nodes["node1"].health is Health.HEALTHY  # 1 of 3 failures
    assert not view.has(Code.DEAD_PRIMARY)  # the replicas have not been probed since
    view = run([*events, replica("node2", 4.01, **LOST)])
    assert not view.has(Code.DEAD_PRIMARY)  # node3 may still have its link
    view = run([*events, replica("node2", 4.01, **LOST), replica("node3", 4.01, **LOST)])
    problem = next(p for p in view.problems if p.code is Code.DEAD_PRIMARY)
    assert problem.reason.startswith("node1's last probe failed (timeout after 0.8 s)")
    assert "every replica that can testify (node2, node3) lost its link" in problem.reason


def test_one_failed_probe_is_not_enough_while_a_replica_still_receives():
    events = [*alive_rounds((1.0, 2.0, 3.0)), down("node1", 4.0)]
    view = run(
        [*events, replica("node2", 4.01, **LOST), replica("node3", 4.01, heartbeats_received=9)]
    )
    assert not view.has(Code.DEAD_PRIMARY) and not view.has(Code.UNREACHABLE_PRIMARY)


def test_links_lost_long_before_the_primary_failed_confirm_nothing_early():
    # Both replicas lost their link an hour ago (a purged binlog, say) and the primary answered
    # all along: one failed probe of it is a hiccup, not a second vantage point. It takes
    # failure_threshold failures, as for any other node.
    broken = {**LOST, "last_io_errno": 1236, "last_io_error": "purged", "heartbeats_received": 0}
    events = [*alive_rounds((1.0,))]
    events += [
        e
        for at in (3600.0, 3601.0, 3602.0)
        for e in (primary(at=at), replica("node2", at, **broken), replica("node3", at, **broken))
    ]
    view = run([*events, down("node1", 3603.0), *primary_down((3603.01,), **broken)])
    assert not view.has(Code.DEAD_PRIMARY)
    view = run([*events, *primary_down((3603.0, 3604.0, 3605.0), **broken)])
    assert view.has(Code.DEAD_PRIMARY)  # at the threshold, as before


def test_replica_evidence_older_than_the_primarys_last_answer_confirms_nothing():
    events = [
        *alive_rounds((1.0, 2.0)),
        replica("node2", 2.5, **LOST),
        replica("node3", 2.5, **LOST),
    ]
    events += [primary(at=3.0), down("node1", 4.0)]
    assert not run(events).has(Code.DEAD_PRIMARY)


def test_one_failed_probe_confirms_nothing_when_the_rest_is_no_majority_without_the_primary():
    # The controller and node2 on one side, node1 and node3 on the other: node3's probes fail
    # first and reach failure_threshold while node1 has failed only once, so node1 still counts
    # as reachable and the quorum looks whole (2 of 3). node2 lost its link to node1, but node3
    # still replicates from it and acknowledges its semi-sync commits: a failover now would make
    # a second writer. Without node1 the controller reaches 1 of 3: wait for the threshold,
    # where the quorum is missing too.
    events = [*alive_rounds((1.0, 2.0, 3.0)), down("node3", 3.3), down("node3", 3.6)]
    events += [down("node1", 4.0), down("node3", 4.0), replica("node2", 4.01, **LOST)]
    view = run(events)
    assert view.nodes["node3"].health is Health.UNREACHABLE
    assert view.nodes["node1"].failures == 1 and view.quorum.ok
    assert not view.has(Code.DEAD_PRIMARY)


def test_a_long_transaction_streaming_to_the_replicas_is_a_working_link():
    # A busy primary writes one big transaction to its binlog: its dump threads send its
    # events for seconds, no heartbeat (the source sends those only while idle) and no new
    # received GTID (Gtid_IO_Pos moves at the end of the event group), but the read position
    # moves with every event. One probe of the loaded primary times out: no failover.
    events = [*alive_rounds((1.0, 2.0, 3.0), beat=0)]
    for i, at in enumerate((4.0, 5.0, 6.0)):
        pos = ("bin.000001", 10_000_000 * (i + 1))
        events += [primary(at=at)]
        events += [
            replica(n, at, heartbeats_received=2, received_pos=pos) for n in ("node2", "node3")
        ]
    pos = ("bin.000001", 40_000_000)
    events += [down("node1", 7.0)]
    events += [
        replica(n, 7.01, heartbeats_received=2, received_pos=pos) for n in ("node2", "node3")
    ]
    view = run(events)
    assert not view.has(Code.DEAD_PRIMARY)


def test_controller_only_partition_is_unreachable_primary_not_dead():
    # The replicas' IO threads run and their heartbeat counters advance: they still see node1.
    events: list[Event] = [*healthy()]
    for i, at in enumerate((2.0, 3.0, 4.0)):
        events += [
            down("node1", at),
            replica("node2", at, heartbeats_received=20 + i),
            replica("node3", at, heartbeats_received=20 + i),
        ]
    view = run(events)
    assert ("UnreachablePrimary", "node1") in codes(view)
    assert ("DeadPrimary", "node1") not in codes(view)
    reason = next(p.reason for p in view.problems if p.code is Code.UNREACHABLE_PRIMARY)
    assert "still replicate from it" in reason


def test_frozen_primary_confirmed_when_heartbeats_stall():
    # IO threads still say Yes (a frozen source closes nothing), but nothing arrives any more.
    stall = S.failover.io_stall
    events: list[Event] = [*healthy()]
    for at in (2.0, 3.0, 4.0):
        events += [down("node1", at), replica("node2", at), replica("node3", at)]
    view = run(events)
    assert ("UnreachablePrimary", "node1") in codes(view)  # stalled only 3 s so far
    later = 1.0 + stall + 0.5
    view = fold(fold(view, replica("node2", later), S), replica("node3", later), S)
    assert ("DeadPrimary", "node1") in codes(view)


def test_unprobed_primary_is_not_reported_lost_at_startup():
    view = run([replica("node2"), replica("node3")])
    assert view.primary == "node1"
    assert not view.has(Code.DEAD_PRIMARY) and not view.has(Code.UNREACHABLE_PRIMARY)


def test_hidden_node_stays_recognized_for_quorum_hidden_from_routing_only():
    events = [*healthy(), router(readers=("node1", "node2"), hidden=("node3",), at=2.0)]
    events += [down("node3", t) for t in (3.0, 4.0, 5.0)]
    view = run(events)
    assert view.quorum.recognized == ("node1", "node2", "node3")
    assert view.quorum.reachable == ("node1", "node2") and view.quorum.ok
    assert view.quorum.hidden_unreachable == ("node3",)


def test_no_primary_when_nothing_is_writable_and_no_replica_points_anywhere():
    view = run(
        [
            replica("node1", source="elsewhere"),
            replica("node2", source="elsewhere"),
            replica("node3", source="elsewhere"),
        ]
    )
    assert view.primary is None
    assert ("NoPrimary", None) in codes(view)


def test_changes_report_transitions_once():
    before = run(healthy())
    after = fold(before, replica("node2", 2.0, sql_running=False), S)
    listed = changes(before, after)
    assert [(c.event, c.node) for c in listed] == [
        ("node_state", "node2"),
        ("problem", "node2"),
        ("problem", "node2"),
    ]
    assert {c.fields["code"] for c in listed[1:]} == {"ReplicationBroken", "RouterReaderUnhealthy"}
    assert listed[0].fields["to"] == "replication_broken"
    assert changes(after, fold(after, replica("node2", 3.0, sql_running=False), S)) == []


def test_unknown_node_events_are_ignored():
    view = run([*healthy(), down("node9", 2.0)])
    assert set(view.nodes) == {"node1", "node2", "node3"}


def test_a_stall_of_the_controller_is_not_the_replicas_testimony_of_a_lost_link():
    # Everything healthy, then the controller's own event loop starves (CPU, garbage
    # collection): every probe times out, every node goes unreachable. The replicas' probes
    # sent just before an 11.8 s stall are read after it, with the heartbeat counter the
    # replicas had then; a fresh probe 0.05 s later reads the same counter (one heartbeat per
    # 0.5 s). That is 0.05 s of silence, not 11.8 s: the link was alive when the answer was
    # read, not only when the question was sent. Nobody touched node1: no failover.
    s = settings(failover={"io_stall": 1.5})
    events = [*alive_rounds((1.0, 2.0, 3.0))]
    for at in (4.0, 5.0, 6.0):
        events += [down("node1", at), down("node2", at), down("node3", at)]
    events += [down("node1", at) for at in (7.0, 8.0, 9.0)]
    sent, read = 6.2, 18.0
    events += [
        replace(replica(n, sent, heartbeats_received=40), rtt=read - sent)
        for n in ("node2", "node3")
    ]
    view = run(events, s)
    assert view.has(Code.UNREACHABLE_PRIMARY) and not view.has(Code.DEAD_PRIMARY)
    events += [down("node1", read)]
    events += [
        replace(replica(n, read + 0.05, heartbeats_received=40), rtt=0.005)
        for n in ("node2", "node3")
    ]
    view = run(events, s)
    assert view.has(Code.UNREACHABLE_PRIMARY), codes(view)
    assert not view.has(Code.DEAD_PRIMARY)
    # The counter really stops from then on (node1 froze after all): DeadPrimary once the
    # replicas have heard nothing for io_stall since that answer was read.
    later = read + 1.5 + 0.1
    events += [down("node1", later)]
    events += [replica(n, later, heartbeats_received=40) for n in ("node2", "node3")]
    assert run(events, s).has(Code.DEAD_PRIMARY)
