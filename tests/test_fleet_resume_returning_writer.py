"""A fleet's leader killed between its failover's Promote and its Repoint, restarted while the
dead old primary came back writable (a server restarted with read_only=OFF in its
configuration): the old primary must still be fenced. Found by the chaos soak under load
(kill-controller-mid-plan: "NOT CONVERGED ... writable nodes: ['node1', 'node2']")."""

from __future__ import annotations

import pytest

from hacontrol.events import Tick
from hacontrol.flavors.base import IoState
from hacontrol.model import Intent, Model
from hacontrol.plan import Fence, Plan, PlanKind, Promote, Repoint
from hacontrol.step import step
from tests.factories import NOW, failed_over, fleet, leader_lease, lock, primary, replica, router
from tests.support import fold_all

F = fleet()
LEADER = leader_lease(F)
STOPPED = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}
"""node3's IO thread as the failover's SetIOThreads left it, still pointing at node1."""
CUT = Intent(
    "failover-1",
    Plan(
        "DeadPrimary",
        "r",
        (Promote("node2", "node1"), Repoint(("node3",), "node2")),
        PlanKind.FAILOVER,
    ),
    frozenset({0}),
    frozenset({0}),
)
"""Its Promote done, its Repoint not begun."""


def both_writable(resume: Intent | None) -> Model:
    rounds = [
        [
            primary("node1", t),  # came back writable
            primary("node2", t),  # promoted
            replica("node3", t, source="node1", **STOPPED),
            router(("node2",), at=t),
        ]
        for t in (4.0, 5.0, 6.0)
    ]
    leader_locks = [lock(n, NOW - 0.1, leader=7) for n in ("node1", "node2", "node3")]
    view = fold_all(F, *rounds, leader_locks)
    return Model(view, lease=LEADER, resume=resume, state=failed_over(NOW))


def fences(m: Model, ticks: int = 3) -> list[Plan]:
    plans = []
    for i in range(ticks):
        m, effects = step(m, Tick(NOW + i), F, NOW + i)
        plans += [e.running.plan for e in effects if hasattr(e, "running")]
    return [p for p in plans if any(isinstance(a, Fence) for a in p.actions)]


@pytest.mark.parametrize("resume", [CUT, None], ids=["journal-plan-settled", "quarantine-kept"])
def test_a_returning_writable_old_primary_beside_the_promoted_node_is_fenced(resume):
    m = both_writable(resume)
    assert m.view.primary is None and sorted(m.view.writable) == ["node1", "node2"]
    found = fences(m)
    assert found, "nothing fences node1: two writable nodes until an operator acts"
    assert found[0].actions == (Fence("node1"),)


def test_a_promotion_that_never_began_keeps_no_quarantine_behind_the_other_writable_node():
    """Killed before its Promote began: the other writable node (e.g. a replica restarted with
    read_only=OFF) was not promoted by this plan, so the dead primary is not kept behind it."""
    from hacontrol.rules.resume import promoted_beside

    not_begun = Intent(CUT.plan_id, CUT.plan, frozenset(), frozenset())
    assert promoted_beside(both_writable(not_begun), not_begun) is None
    assert promoted_beside(both_writable(CUT), CUT) == "node2"


def test_a_stale_router_reading_fences_nothing():
    """The router's writer group read before the nodes' last probes (its probe failing since)
    may predate an operator's switch back: no fence on it."""
    rounds = [
        [primary("node1", t), primary("node2", t), replica("node3", t, source="node1", **STOPPED)]
        for t in (4.0, 5.0, 6.0)
    ]
    view = fold_all(
        F,
        [router(("node2",), at=3.0)],
        *rounds,
        [lock(n, NOW - 0.1, leader=7) for n in ("node1", "node2", "node3")],
    )
    m = Model(view, lease=LEADER, resume=None, state=failed_over(NOW))
    assert m.view.primary is None and fences(m) == []
