"""A fleet instance that does not lead, right after a partition heals: its probes see the old
primary and the new one both writable before its lease sessions are open again, so it cannot
tell that another instance leads (and is about to fence the old primary). Its alert waits
W + the lease back-off; a leader, a single instance, or a follower that can read the locks
alerts at once as before (a follower that sees a leader leaves the alert to it: ``step``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.actions.notify import Alert, Notifier
from hacontrol.decide import decide
from hacontrol.events import ProbeResult
from hacontrol.model import AlertKey, Condition, ControllerState
from hacontrol.plan import Notify, PlanKind
from hacontrol.rules.alerts import leader_unknown
from hacontrol.settings import Settings
from hacontrol.view import ClusterView
from tests.factories import MemoryLog, fleet, lock, primary, replica, router, settings, status
from tests.support import fold_all

F = fleet()
BOUND = F.lease.wait_timeout + F.lease.backoff
KEY = AlertKey(Condition.HALT, "TwoWritableNodes")
NOW = 10.0


def two_writable(s: Settings, locks: str) -> ClusterView:
    """node1 (the old primary, back after heal) and node2 (promoted meanwhile) both writable,
    node3 a replica of node2; ``locks``: this instance's lock view of every node: "x" no lease
    session yet, "M" it holds the leader lock, "o" another instance does."""
    rounds = [
        [
            primary("node1", t),
            primary("node2", t),
            replica("node3", t, source="node2"),
            router(writers=("node2",), at=t),
        ]
        for t in (7.0, 8.0, 9.0)
    ]
    spec = {
        "x": lambda n: lock(n, 9.5, error="2003: cannot connect"),
        "M": lambda n: lock(n, 9.5, leader=7),
        "o": lambda n: lock(n, 9.5, leader=99),
    }
    events = [spec[code](f"node{i}") for i, code in enumerate(locks, start=1)] if locks else []
    return fold_all(s, *rounds, events)


def alerts(plan) -> list[Notify]:
    return [a for a in plan.actions if isinstance(a, Notify)]


def test_a_follower_that_cannot_see_the_locks_holds_its_halt_alert_for_a_bound():
    view = two_writable(F, "xxx")
    assert leader_unknown(view, F, NOW)
    first = decide(view, ControllerState(), F, NOW, leads=False)
    assert first.plan.rule == "TwoWritableNodes" and first.plan.kind is PlanKind.HALT
    assert alerts(first.plan) == [] and KEY not in first.state.alerted
    assert first.state.halt is not None  # this instance's own changes stop at once
    still = decide(view, first.state, F, NOW + BOUND - 0.1, leads=False)
    assert alerts(still.plan) == []
    late = decide(view, still.state, F, NOW + BOUND, leads=False)
    assert [a.summary for a in alerts(late.plan)] == ["HALT: TwoWritableNodes"]
    assert KEY in late.state.alerted
    assert alerts(decide(view, late.state, F, NOW + BOUND + 1, leads=False).plan) == []


@pytest.mark.parametrize(
    ("name", "s", "locks"),
    [
        ("the leader", F, "MMM"),
        ("a follower that reads every lock (another leads: step leaves it to it)", F, "ooo"),
        ("a single instance", settings(), ""),
    ],
)
def test_who_can_tell_alerts_at_once(name, s, locks):
    view = two_writable(s, locks)
    assert not leader_unknown(view, s, NOW)
    d = decide(view, ControllerState(), s, NOW, leads=locks == "MMM" or not locks)
    assert [a.summary for a in alerts(d.plan)] == ["HALT: TwoWritableNodes"], name


def test_a_condition_that_ends_within_the_bound_never_alerts():
    held = decide(two_writable(F, "xxx"), ControllerState(), F, NOW, leads=False)
    # The leader fenced node1: one writable node, the halt and its first sighting are gone.
    rounds = [
        [
            replica("node1", t, source="node2"),
            primary("node2", t),
            replica("node3", t, source="node2"),
        ]
        for t in (10.5, 11.0, 11.5)
    ]
    fenced = fold_all(F, *rounds, view=two_writable(F, "xxx"))
    d = decide(fenced, held.state, F, NOW + BOUND + 1, leads=False)
    assert d.plan.rule != "TwoWritableNodes" and alerts(d.plan) == []
    assert KEY not in d.state.first_seen and d.state.halt is None


def test_two_writers_in_this_instances_own_router_alert_at_once():
    # No leader fixes another instance's router: nothing to wait for.
    view = fold_all(
        F,
        *(
            [
                primary("node1", t),
                replica("node2", t),
                replica("node3", t),
                router(writers=("node1", "node2"), at=t),
            ]
            for t in (7.0, 8.0, 9.0)
        ),
        [lock(f"node{i}", 9.5, error="2003: cannot connect") for i in (1, 2, 3)],
    )
    assert leader_unknown(view, F, NOW)
    d = decide(view, ControllerState(), F, NOW, leads=False)
    assert d.plan.rule == "RouterHasTwoWriters", d.plan.reason
    assert [a.summary for a in alerts(d.plan)] == ["HALT: RouterHasTwoWriters"]


def fenced_old_primary(locks: str) -> ClusterView:
    """After heal: node1, the old primary, fenced read-only by the leader and replicating from
    nobody, holds 1-1-1..3 (written on it, never acknowledged) that node2, promoted meanwhile,
    lacks. ``locks``: "x" no lease session yet on any node; "o" another instance leads and
    published node2."""
    old = ProbeResult("node1", 0.0, 0.001, status(1, read_only=True, gtid="0-1-100,1-1-3"))
    rounds = [
        [
            replace(old, at=t),
            primary("node2", t, gtid="0-2-105"),
            replica("node3", t, source="node2", received_gtid="0-2-105"),
            router(writers=("node2",), at=t),
        ]
        for t in (7.0, 8.0, 9.0)
    ]
    spec = {
        "x": lambda n: lock(n, 9.5, error="2003: cannot connect"),
        "o": lambda n: lock(n, 9.5, leader=99, primary=99 if n == "node2" else None),
    }
    return fold_all(F, *rounds, [spec[locks](f"node{i}") for i in (1, 2, 3)])


def test_a_follower_that_cannot_see_the_locks_holds_the_primary_not_published_alert():
    # The leader fenced node1 and quarantined it; this follower cannot know that yet, and
    # node1 holds what node2 lacks: the leader's PublishRefused would be right, the follower's
    # at once is a false alarm (it failed the fleet partition test now and then).
    key = AlertKey(Condition.NO_PRIMARY, "node2 ahead node1")
    view = fenced_old_primary("x")
    assert leader_unknown(view, F, NOW) and view.primary == "node2"
    first = decide(view, ControllerState(), F, NOW, leads=False)
    assert first.plan.rule == "PublishRefused", first.plan.reason
    assert alerts(first.plan) == [] and key not in first.state.alerted
    late = decide(view, first.state, F, NOW + BOUND, leads=False)
    assert [(a.summary, a.node) for a in alerts(late.plan)] == [
        ("primary node2 not published (ahead):", "node1")
    ]
    # Once it reads the locks it sees node2 published: nothing to refuse (node1's errant
    # transactions are another rule's alert, which a follower leaves to the leader: step).
    seen = decide(fenced_old_primary("o"), first.state, F, NOW + 1, leads=False)
    assert seen.plan.rule != "PublishRefused" and key not in seen.state.first_seen
    assert not any("not published" in a.summary for a in alerts(seen.plan))


def test_the_leader_refuses_to_publish_with_one_alert_while_the_refusal_stands():
    # Its alert key lasts while the primary is not published: one mail, not one per decision.
    locked = [lock(f"node{i}", 9.5, leader=7) for i in (1, 2, 3)]
    view = fold_all(F, locked, view=fenced_old_primary("x"))
    assert not leader_unknown(view, F, NOW)
    first = decide(view, ControllerState(), F, NOW, leads=True)
    assert first.plan.rule == "PublishRefused"
    assert [(a.summary, a.node) for a in alerts(first.plan)] == [
        ("primary node2 not published (ahead):", "node1")
    ]
    again = decide(view, first.state, F, NOW + 1, leads=True)
    assert again.plan.rule == "PublishRefused" and alerts(again.plan) == []


def refusing_leader(node1_gtid: str, node3: ProbeResult | None = None) -> ClusterView:
    """The leader's view of ``fenced_old_primary`` with node1 at ``node1_gtid`` and node3 as
    given (default: a replica of node2)."""
    node1 = ProbeResult("node1", 9.2, 0.001, status(1, read_only=True, gtid=node1_gtid))
    locks = [lock(f"node{i}", 9.5, leader=7) for i in (1, 2, 3)]
    return fold_all(F, [node1, *([node3] if node3 else []), *locks], view=fenced_old_primary("x"))


def test_the_same_refusal_mails_once_and_another_refusal_mails_again():
    """Review of 044d0ab, #2: the key named the primary only, so a refusal for another node
    ahead was never mailed. The key and the summary now name the node that stops the
    publication: the same refusal (node1 ahead, taking more writes) is one alert, another node
    ahead is another alert."""
    first = decide(refusing_leader("0-1-100,1-1-3"), ControllerState(), F, NOW, leads=True)
    assert [(a.summary, a.node) for a in alerts(first.plan)] == [
        ("primary node2 not published (ahead):", "node1")
    ]
    more = decide(refusing_leader("0-1-100,1-1-5"), first.state, F, NOW + 1, leads=True)
    assert more.plan.rule == "PublishRefused" and alerts(more.plan) == []
    assert "1-1-5" in more.plan.reason  # the reason says what it holds now
    # node1 set right by an operator; node3, detached, holds a transaction node2 lacks.
    node3 = ProbeResult("node3", 9.2, 0.001, status(3, read_only=True, gtid="0-2-105,1-3-2"))
    other = decide(refusing_leader("0-1-100", node3), more.state, F, NOW + 2, leads=True)
    assert other.plan.rule == "PublishRefused", other.plan.reason
    assert [(a.summary, a.node) for a in alerts(other.plan)] == [
        ("primary node2 not published (ahead):", "node3")
    ]
    (mail,) = alerts(other.plan)
    assert "node3 has 1-3-2, which node2 lacks" in mail.reason
    # Mailed through the notifier too, within its dedup window (per kind and node): review
    # s7-s7-lows #2, the Notify named the primary and the second mail was deduplicated.
    clock, log = [1000.0], MemoryLog()
    smtp = settings(smtp={"host": "127.0.0.1", "port": 2525, "recipients": ["o@example.com"]})
    notifier = Notifier(smtp.smtp, log.log, clock=lambda: clock[0])
    sent = [alerts(first.plan)[0], alerts(first.plan)[0], mail]
    for at, alert in zip((1000.0, 1060.0, 1120.0), sent, strict=True):
        clock[0] = at
        notifier.alert(Alert(str(alert.kind), "t", alert.node, alert.summary, alert.reason))
    assert [line["mail"] for line in log.lines("alert")] == ["queued", "deduplicated", "queued"]
