"""The fleet's lease rules with plain values: who leads, what the lease edge is asked to do,
and the timing argument that keeps two instances from acting at once. No database, no loop.

A node's lock is written as one letter: ``M`` held by this instance and confirmed just now,
``e`` held by this instance but last confirmed longer ago than the validity V, ``o`` held by
another instance, ``-`` free, ``x`` unreadable (the node or the session is gone).
"""

from __future__ import annotations

from dataclasses import replace
from itertools import product

import pytest

from hacontrol.effects import Reprobe, SetLeaseMode
from hacontrol.model import Lease, LeaseMode
from hacontrol.rules.lease import (
    attainable,
    holds_majority,
    leader_seen,
    lease_step,
    majority,
    majority_until,
)
from hacontrol.settings import Settings
from hacontrol.view import ClusterView
from tests.factories import NOW, fleet, lock
from tests.support import fold_all

MINE, OTHER = 7, 99


def fleet_of(n: int) -> Settings:
    nodes = [{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, n + 1)]
    return fleet(nodes=nodes)


F = fleet_of(3)
V, K, BACKOFF = F.lease.validity, F.lease.keepalive, F.lease.backoff


def locks(spec: str, s: Settings = F, now: float = NOW, jitter: float = 0.0) -> ClusterView:
    """The view after one round trip to each node, as ``spec`` says (one letter a node)."""
    events = []
    for i, code in enumerate(spec.replace(" ", ""), start=1):
        node = f"node{i}"
        events.append(
            {
                "M": lock(node, now - 0.1, leader=MINE, jitter=jitter),
                "e": lock(node, now - V - 0.1, leader=MINE, jitter=jitter),
                "o": lock(node, now - 0.1, leader=OTHER, jitter=jitter),
                "-": lock(node, now - 0.1, jitter=jitter),
                "x": lock(node, now - 0.1, error="2003: cannot connect", jitter=jitter),
            }[code]
        )
    return fold_all(s, events)


# ---------------------------------------------------------------------------------------------
# Who leads: every combination of locks held, reachable nodes and configured count


@pytest.mark.parametrize("n", [3, 4, 5])
def test_who_leads_for_every_combination_of_locks_and_reachable_nodes(n):
    s = fleet_of(n)
    needed = {3: 2, 4: 3, 5: 3}[n]  # a strict majority of ALL configured nodes
    assert majority(s) == needed
    for spec in product("Meo-x", repeat=n):
        view = locks("".join(spec), s)
        mine = spec.count("M")
        assert holds_majority(view, s, NOW) == (mine >= needed), spec
        # Unreachable nodes never count, whatever is reachable: 2 of 3 reachable nodes of 5
        # are no majority.
        free = spec.count("-")
        assert attainable(view, s) == (mine + spec.count("e") + free >= needed), spec
        assert leader_seen(view, s) == (spec.count("o") >= needed), spec


@pytest.mark.parametrize("n", [3, 5])
def test_never_two_leaders_whatever_the_servers_say(n):
    """Each node's lock has one holder at a time: from the same server state, seen by each
    instance through its own sessions, at most one instance leads."""
    s = fleet_of(n)
    for owners in product("ABC-x", repeat=n):
        leaders = []
        for me in "ABC":
            spec = "".join("M" if o == me else ("o" if o in "ABC" else o) for o in owners)
            if holds_majority(locks(spec, s), s, NOW):
                leaders.append(me)
        assert len(leaders) <= 1, (owners, leaders)


def test_a_lock_counts_until_v_after_the_keepalive_that_confirmed_it_was_sent():
    view = fold_all(F, [lock("node1", 10.0, leader=MINE), lock("node2", 10.4, leader=MINE)])
    assert majority_until(view, F) == 10.0 + V  # the m-th latest end
    assert holds_majority(view, F, 10.0 + V - 0.01)
    assert not holds_majority(view, F, 10.0 + V)
    assert holds_majority(view, F, 10.0, seconds=V - 0.01)
    assert not holds_majority(view, F, 10.0, seconds=V)


def test_a_broken_session_holds_nothing_at_once():
    view = locks("MMM")
    broken = fold_all(F, lock("node2", NOW, error="2013: lost connection"), view=view)
    assert holds_majority(broken, F, NOW)  # node1 and node3 still
    broken = fold_all(F, lock("node3", NOW, error="2013: lost connection"), view=broken)
    assert not holds_majority(broken, F, NOW)


# ---------------------------------------------------------------------------------------------
# What the lease becomes, and what the edge is asked to do

STEPS = [
    # (what, locks, lease before, expected mode, leads afterwards, reason contains)
    ("all free: try", "---", Lease(fleet=True), LeaseMode.ACQUIRE, False, "trying"),
    ("a majority taken: leader", "MM-", Lease(fleet=True), LeaseMode.ACQUIRE, True, "node1, node2"),
    ("all taken: leader", "MMM", Lease(fleet=True), LeaseMode.ACQUIRE, True, "3 of 3"),
    (
        "another holds a majority: follow",
        "oo-",
        Lease(fleet=True),
        LeaseMode.HOLD,
        False,
        "another",
    ),
    ("another holds all: follow", "ooo", Lease(fleet=True), LeaseMode.HOLD, False, "another"),
    ("a majority is free: try", "o--", Lease(fleet=True), LeaseMode.ACQUIRE, False, "trying"),
    (
        "too few free to reach one: wait",
        "o-x",
        Lease(fleet=True),
        LeaseMode.HOLD,
        False,
        "no major",
    ),
    (
        "backing off: wait even though all is free",
        "---",
        Lease(fleet=True, backoff_until=NOW + 0.4),
        LeaseMode.HOLD,
        False,
        "backing off",
    ),
    (
        "a minority just taken: wait for the round",
        "M--",
        Lease(fleet=True, mode=LeaseMode.ACQUIRE),
        LeaseMode.ACQUIRE,
        False,
        "",
    ),
    (
        "a minority held a whole round: let go",
        "Mo-",
        Lease(fleet=True, mode=LeaseMode.ACQUIRE, partial_since=NOW - K),
        LeaseMode.RELEASE,
        False,
        "letting go",
    ),
    (
        "letting go: not a leader again while it still holds",
        "MMM",
        Lease(fleet=True, mode=LeaseMode.RELEASE),
        LeaseMode.RELEASE,
        False,
        "",
    ),
    (
        "the leader's keepalives stopped: lost",
        "eeM",
        Lease(fleet=True, mode=LeaseMode.ACQUIRE, leader_since=10.0, ready_at=10.0 + V),
        LeaseMode.RELEASE,
        False,
        "lost the majority",
    ),
    (
        "the leader keeps a majority without one node: stays, takes it back",
        "Mx M",
        Lease(fleet=True, mode=LeaseMode.ACQUIRE, leader_since=10.0, ready_at=10.0 + V),
        LeaseMode.ACQUIRE,
        True,
        "",
    ),
]


@pytest.mark.parametrize(
    ("what", "spec", "before", "mode", "leads", "why"), STEPS, ids=[s[0] for s in STEPS]
)
def test_lease_step(what, spec, before, mode, leads, why):
    lease, effects = lease_step(replace(before, reason=before.reason), locks(spec), F, NOW)
    assert lease.mode is mode
    assert lease.leader == leads
    assert why in lease.reason
    mode_effects = [e for e in effects if isinstance(e, SetLeaseMode)]
    assert mode_effects == ([SetLeaseMode(mode)] if mode is not before.mode else [])


def test_a_new_leader_acts_only_v_later_and_after_fresh_probes():
    lease, effects = lease_step(Lease(fleet=True), locks("MM-"), F, NOW)
    assert lease.leader_since == NOW and lease.ready_at == NOW + V
    assert lease.unprobed == {"node1", "node2", "node3"}
    assert not lease.acting(NOW + V + 1)  # no node probed since
    assert not [e for e in effects if isinstance(e, Reprobe)]
    later = locks("MM-", now=NOW + V)
    lease, effects = lease_step(lease, later, F, NOW + V)
    assert [e for e in effects if isinstance(e, Reprobe)] == [
        Reprobe(frozenset({"node1", "node2", "node3"}))
    ]
    assert lease.reprobed and not lease.acting(NOW + V)
    assert replace(lease, unprobed=frozenset()).acting(NOW + V)
    assert not replace(lease, unprobed=frozenset()).acting(NOW + V - 0.01)


def test_letting_go_backs_off_for_a_random_while():
    before = Lease(fleet=True, mode=LeaseMode.ACQUIRE, partial_since=NOW - K)
    for jitter in (0.0, 0.25, 0.99):
        lease, _ = lease_step(replace(before, jitter=jitter), locks("M-o"), F, NOW)
        assert lease.mode is LeaseMode.RELEASE
        assert lease.backoff_until == pytest.approx(NOW + jitter * BACKOFF)


def test_a_stopped_plan_steps_the_leader_down_even_with_its_majority():
    leader = Lease(fleet=True, mode=LeaseMode.ACQUIRE, leader_since=10.0, ready_at=10.0 + V)
    lease, effects = lease_step(leader, locks("MMM"), F, NOW, step_down="stepping down: X")
    assert lease.mode is LeaseMode.RELEASE and not lease.leader
    assert lease.reason == "stepping down: X" and lease.changes == 1
    assert SetLeaseMode(LeaseMode.RELEASE) in effects


def test_a_single_instance_is_always_the_leader_and_takes_no_lock():
    lease, effects = lease_step(Lease(), locks("ooo"), F, NOW)
    assert lease == Lease() and effects == ()
    assert lease.acting(NOW) and lease.leader


# ---------------------------------------------------------------------------------------------
# The timing argument (docs/fleet.md): never two instances acting at once


def acting_at(lease: Lease, view: ClusterView, t: float) -> bool:
    after, _ = lease_step(lease, view, F, t)
    return after.acting(t) if after.leader_since is not None else False


@pytest.mark.parametrize(
    ("what", "freed_after_keepalive"),
    [
        (
            "the old leader frozen: the server frees its idle sessions after W",
            float(F.lease.wait_timeout),
        ),
        ("the old leader's sessions killed (node restarts) just after a keepalive", 0.01),
    ],
)
def test_the_old_leader_stops_acting_before_the_new_one_starts(what, freed_after_keepalive):
    t0 = 50.0  # the old leader's last keepalives were sent then
    old_view = fold_all(F, [lock(n, t0, leader=MINE) for n in ("node1", "node2", "node3")])
    old = Lease(fleet=True, mode=LeaseMode.ACQUIRE, leader_since=0.0, ready_at=V)
    taken = t0 + freed_after_keepalive + 0.001  # the new leader's GET_LOCK answered then
    new_view = fold_all(F, [lock(n, taken, leader=MINE) for n in ("node2", "node3")])
    new, _ = lease_step(Lease(fleet=True, mode=LeaseMode.ACQUIRE), new_view, F, taken)
    new = replace(new, unprobed=frozenset())  # fresh probes arrived: only the clock matters
    assert new.leader_since == taken
    t = t0
    while t < taken + 2 * V:
        assert not (acting_at(old, old_view, t) and new.acting(t)), t
        t += 0.01
    assert acting_at(old, old_view, t0) and new.acting(taken + V)
