"""Hiding a node takes it out of routing and promotion, never out of the quorum (view.py
``_quorum``): a hidden node that does not answer still counts in the majority's denominator; a
hidden node that answers counts as reachable and is still never promoted."""

from __future__ import annotations

import pytest

from hacontrol.decide import decide
from hacontrol.effects import Reply
from hacontrol.events import OperatorCommand
from hacontrol.flavors.base import IoState, SemiSync
from hacontrol.model import ControllerState, Model
from hacontrol.plan import Notify, Promote, Route
from hacontrol.rules.commands import command
from hacontrol.status import to_json
from hacontrol.view import Code, serves, with_maintenance
from tests.factories import DEAD_IO, S, down, primary, replica, router, settings, view_of
from tests.support import fold_all

NAMES = ("node2", "node3", "node4", "node5")
S5 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
)
EVERY5 = {"readers": ("node1", *NAMES)}


def falling_back(clients: int) -> SemiSync:
    """node1's semi-sync with ``clients`` clients, falling back to asynchronous after 10 s:
    nothing promised, so no replica in doubt makes a failover wait; only the quorum holds it."""
    return SemiSync(True, clients, True, True, 10.0, True)


def hide(model: Model, node: str, at: float) -> Model:
    """``hacontrol maintenance NODE on`` through the command path."""
    model, effects = command(model, OperatorCommand(at, "maintenance", node, True), S5, at)
    refused = [e.result for e in effects if isinstance(e, Reply) and not e.result.ok]
    assert not refused and model.running is not None, refused
    return model


def alert_of(plan) -> Notify:
    return next(a for a in plan.actions if isinstance(a, Notify))


def five_nodes(hidden: tuple[str, ...] = (), lost: tuple[str, ...] = ()):
    """Five nodes healthy until t=3 (node1's semi-sync falling back after 10 s, so nothing is
    promised and only the quorum can hold a failover); from t=4 node1 and ``lost`` do not
    answer, the other replicas lost their link to node1. ``hidden``: in the router's hidden
    group."""
    every = {**EVERY5, "hidden": hidden}
    rounds = [
        [
            primary(at=t, semi_sync=falling_back(4)),
            *(replica(n, t) for n in NAMES),
            router(**every, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [
            down("node1", t),
            *(down(n, t) if n in lost else replica(n, t, **DEAD_IO) for n in NAMES),
            router(**every, at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(S5, *rounds)


def minority_side(hidden: tuple[str, ...] = ()):
    """The reviewer's partition: the controller with node2 and node3; node1 with node4 and
    node5 on the far side."""
    return five_nodes(hidden, lost=("node4", "node5"))


def test_hiding_the_unreachable_majority_by_maintenance_never_lifts_the_quorum():
    view = minority_side()
    d = decide(view, ControllerState(), S5, 7.0)
    assert d.plan.rule == "NoQuorum" and "2 of 5 recognized nodes reachable" in d.plan.reason
    model = Model(view, d.state)
    for node in ("node4", "node5"):  # as the runbook says for nodes being worked on
        model = hide(Model(model.view, model.state), node, 7.5)
    view, state = model.view, model.state
    assert view.maintenance == {"node4", "node5"}
    assert view.quorum.recognized == ("node1", *NAMES)
    after = decide(view, state, S5, 8.0)
    assert after.plan.rule == "NoQuorum", after.plan.reason  # main: DeadPrimary, node2 promoted
    assert not any(isinstance(a, Promote) for a in after.plan.actions)
    assert "2 of 5 recognized nodes reachable" in after.plan.reason
    assert "node4, node5 are hidden and not answering: counted all the same" in after.plan.reason


def test_hiding_them_in_the_routers_hidden_group_by_hand_does_not_lift_it_either():
    view = minority_side(hidden=("node4", "node5"))
    d = decide(view, ControllerState(), S5, 7.0)
    assert d.plan.rule == "NoQuorum", d.plan.reason
    assert view.quorum.hidden_unreachable == ("node4", "node5")


def three_nodes_node3_hidden(node3_back: bool = False):
    """Three nodes; node3 hidden (maintenance) and stopped for an upgrade from t=2; node1 dies
    at t=4. ``node3_back``: node3 started again at t=7 (replication not started yet)."""
    hide = {"readers": ("node1", "node2"), "hidden": ("node3",)}
    rounds = [[primary(at=1.0), replica("node2", 1.0), replica("node3", 1.0), router(at=1.0)]]
    rounds += [
        [primary(at=t), replica("node2", t), down("node3", t), router(**hide, at=t)]
        for t in (2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), replica("node2", t, **DEAD_IO), down("node3", t), router(**hide, at=t)]
        for t in (4.0, 5.0, 6.0)
    ]
    if node3_back:
        rounds.append([replica("node3", 7.0, io_state=IoState.STOPPED, sql_running=False)])
    return with_maintenance(view_of(*rounds), frozenset({"node3"}), S)


def test_three_nodes_one_hidden_and_stopped_then_the_primary_dies_halts_and_says_the_way_on():
    view = three_nodes_node3_hidden()
    assert view.has(Code.DEAD_PRIMARY)
    d = decide(view, ControllerState(), S, 8.0)
    assert d.plan.rule == "NoQuorum", d.plan.reason
    assert "1 of 3 recognized nodes reachable" in d.plan.reason
    alert = alert_of(d.plan)
    for said in (alert.reason, d.plan.reason):  # the mail and the decision's log line
        assert "node3 is hidden and not answering: counted all the same" in said
        assert "start it again" in said and "counts as reachable and is never promoted" in said
        assert "promote by hand following every step of docs/runbook.md, 'No quorum" in said
        assert "the replica applies what it received first" in said
    status = to_json(view)["quorum"]
    assert status == {
        "ok": False,
        "reachable": ["node2"],
        "recognized": ["node1", "node2", "node3"],
    }


def test_the_hidden_node_started_again_lets_the_failover_go_on_to_another_node():
    view = three_nodes_node3_hidden(node3_back=True)
    assert view.quorum.ok and view.quorum.reachable == ("node2", "node3")
    d = decide(view, ControllerState(), S, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert [a.node for a in d.plan.actions if isinstance(a, Promote)] == ["node2"]


def test_a_hidden_node_that_answers_counts_as_reachable_and_is_never_a_candidate():
    # Three nodes, node3 hidden while it answers (a backup): node1 dies. Counted without
    # node3, 1 of 2 was no majority (NoQuorum before); node3 proves the controller's link: 2 of 3.
    hide = {"readers": ("node1", "node2"), "hidden": ("node3",)}
    rounds = [
        [primary(at=t), replica("node2", t), replica("node3", t), router(**hide, at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), replica("node2", t, **DEAD_IO), replica("node3", t, **DEAD_IO)]
        for t in (4.0, 5.0, 6.0)
    ]
    view = view_of(*rounds)
    assert view.quorum.reachable == ("node2", "node3") and view.quorum.hidden_unreachable == ()
    d = decide(view, ControllerState(), S, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert [a.node for a in d.plan.actions if isinstance(a, Promote)] == ["node2"]


@pytest.mark.parametrize("node5_answers", [True, False])
def test_a_hidden_node_never_blocks_a_failover_it_did_not_block_before(node5_answers):
    # Five nodes, node5 hidden (maintenance), answering or stopped; node1 dies. Before: node5
    # left out, 3 of 4 reachable; now node5 counted: 4 of 5 (it answers) or 3 of 5 (it does
    # not): the failover goes on either way, never to node5.
    lost = () if node5_answers else ("node5",)
    view = with_maintenance(five_nodes(("node5",), lost), frozenset({"node5"}), S5)
    assert len(view.quorum.reachable) == (4 if node5_answers else 3)
    d = decide(view, ControllerState(), S5, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    promoted = [a.node for a in d.plan.actions if isinstance(a, Promote)]
    assert promoted == ["node2"]


def test_the_advice_never_promises_a_failover_that_starting_the_hidden_node_cannot_make():
    # Review LOW #4: five nodes, node5 hidden and stopped, node3 and node4 lost with node1:
    # node5 back would make 2 of 5, still no majority: the advice says so.
    view = five_nodes(hidden=("node5",), lost=("node3", "node4", "node5"))
    d = decide(view, ControllerState(), S5, 7.0)
    assert d.plan.rule == "NoQuorum", d.plan.reason
    said = alert_of(d.plan).reason
    assert "node5 is hidden and not answering" in said
    assert "starting it again is not enough (2 of 5 would answer: still no majority)" in said
    assert "the failover then goes on" not in said


F4 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 5)],
    controller={"fleet": True, "instance_id": "i1"},
)


def four_nodes_node4_hidden_stopped(lost: tuple[str, ...]):
    """A fleet's four nodes, node4 hidden and stopped (an upgrade); then ``lost`` stop
    answering while node1 stays the healthy primary, the others following it live; nobody
    leads (no lock majority), nobody publishes."""
    every = {"readers": ("node1", "node2", "node3"), "hidden": ("node4",)}
    live = {"heartbeats_received": 0, "received_gtid": "0-1-100"}

    def node(name: str, t: float, gone: bool):
        beat = {**live, "heartbeats_received": int(t * 10)}
        return down(name, t) if gone else replica(name, t, **beat)

    rounds = [
        [
            primary(at=t),
            *(node(n, t, n == "node4" or (t > 6.0 and n in lost)) for n in NAMES[:3]),
            router(**every, at=t),
        ]
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    ]
    return with_maintenance(fold_all(F4, *rounds), frozenset({"node4"}), F4)


def test_a_tie_keeps_a_fleets_writer_and_readiness_while_the_primary_serves():
    # Review MEDIUM #3: node4 hidden and stopped, node3 lost: 2 of 4, no majority anywhere
    # (no leader can fail over on any side): node1 stays the writer, the pod stays ready.
    view = four_nodes_node4_hidden_stopped(lost=("node3",))
    assert not view.quorum.ok and view.quorum.tied
    d = decide(view, ControllerState(), F4, 10.0, leads=False)
    assert d.plan.rule == "NoQuorum", d.plan.reason
    assert not any(isinstance(a, Route) for a in d.plan.actions), d.plan.reason  # kept
    assert serves(view) == (True, "2 of 4 recognized nodes reachable (a tie; node1 still the "
                            "writable primary)")  # fmt: skip
    # One more lost: 1 of 4, another side could hold a majority: no writer, not ready.
    view = four_nodes_node4_hidden_stopped(lost=("node2", "node3"))
    d = decide(view, ControllerState(), F4, 10.0, leads=False)
    (route,) = [a for a in d.plan.actions if isinstance(a, Route)]
    assert route.desired.writers == frozenset() and route.no_writer
    assert serves(view) == (False, "no quorum: 1 of 4 recognized nodes reachable")


def test_serves_only_with_quorum_or_a_tie_with_the_primary_writable_here():
    assert serves(three_nodes_node3_hidden())[0] is False  # 1 of 3, node1 dead
    assert serves(three_nodes_node3_hidden(node3_back=True))[0] is True  # 2 of 3


F5 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)],
    controller={"fleet": True, "instance_id": "i1"},
)


def cut_side(s, hidden: tuple[str, ...], node2: dict, following: tuple[str, ...] = ()):
    """An asymmetric cut seen by a fleet instance that is not the leader: it reaches node1
    (writable, its router's writer) and the hidden replicas only; node2 (hidden) answers with
    ``node2``'s channel; ``following`` (hidden) still replicate from node1 live; the other
    nodes are cut off (with them, the leader on the far side may fail node1 over)."""
    names = tuple(n.name for n in s.nodes)
    every = {"readers": tuple(n for n in names if n not in hidden), "hidden": hidden}

    def beat(t: float) -> dict:
        return {"heartbeats_received": int(t * 10), "received_gtid": "0-1-100"}

    rounds = [
        [primary(at=t), *(replica(n, t, **beat(t)) for n in names[1:]), router(**every, at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    for t in (4.0, 5.0, 6.0, 7.0, 8.0):
        them = [
            replica(n, t, **node2)
            if n == "node2"
            else replica(n, t, **beat(t))
            if n in following
            else down(n, t)
            for n in names[1:]
        ]
        rounds.append([primary(at=t), *them, router(**every, at=t)])
    return fold_all(s, *rounds)


@pytest.mark.parametrize(
    ("s", "hidden", "node2", "following"),
    [
        (F4, ("node2",), DEAD_IO, ()),  # a tie, 2 of 4: node2 lost node1
        (F5, ("node2", "node5"), DEAD_IO, ("node5",)),  # 3 of 5, node5 still follows node1
        (F4, ("node2",), {"io_state": IoState.STOPPED}, ()),  # node2 can testify nothing
    ],
    ids=["tie-node2-lost-node1", "majority-node2-lost-node1", "tie-node2-io-stopped"],
)
def test_hidden_replicas_testify_for_a_fleets_writer_never_two_writers(s, hidden, node2, following):
    # Review HIGH #8: the instance reaches node1 through hidden replicas only; the leader on
    # the far side (node3, node4 and node2 or more: a majority) may be failing node1 over. A
    # hidden replica that lost node1 testifies like any replica, and one whose IO thread is
    # stopped vouches for nothing: the router writes to nobody, never to node1.
    view = cut_side(s, hidden, node2, following)
    assert view.published is None and view.primary == "node1"
    d = decide(view, ControllerState(), s, 10.0, leads=False)
    routes = [a for a in d.plan.actions if isinstance(a, Route)]
    assert routes and routes[0].desired.writers == frozenset(), (d.plan.rule, d.plan.reason)


def test_a_hidden_replica_of_an_outside_source_says_nothing_about_the_writer():
    # Review LOW #9: nobody publishes (a leader takeover); node3 hidden, replicating from an
    # outside source (a migration): it neither vouches for node1 nor takes the writer away.
    f3 = settings(controller={"fleet": True, "instance_id": "i1"})
    hide = {"readers": ("node1", "node2"), "hidden": ("node3",)}
    beat = {"received_gtid": "0-1-100"}
    rounds = [
        [
            primary(at=t),
            replica("node2", t, heartbeats_received=int(t * 10), **beat),
            replica("node3", t, source="elsewhere", heartbeats_received=int(t * 10), **beat),
            router(**hide, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    view = fold_all(f3, *rounds)
    d = decide(view, ControllerState(), f3, 3.5, leads=False)
    emptied = [a for a in d.plan.actions if isinstance(a, Route) and not a.desired.writers]
    assert not emptied, (d.plan.rule, d.plan.reason)
