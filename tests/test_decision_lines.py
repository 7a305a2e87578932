"""One decision line when a decision starts or its reason changes in substance, not one per
probe: a reason that embeds a count or a time ("8 consecutive failed probes") used to defeat
the suppression of unchanged idle decisions (review s6-s6-promote #7: 68 lines in 25 s)."""

from __future__ import annotations

from hacontrol.effects import Log
from hacontrol.flavors.base import IoState
from hacontrol.model import Model
from hacontrol.rules.lifecycle import substance
from hacontrol.step import step
from tests.factories import S, down, healthy_round, replica, view_of


def decision_lines(effects: list, rule: str) -> list[Log]:
    return [
        e
        for e in effects
        if isinstance(e, Log) and e.event == "decision" and e.fields["rule"] == rule
    ]


STOPPED = {"io_state": IoState.STOPPED, "last_io_errno": 0, "last_io_error": ""}


def cut_off(
    model: Model, times, gone: tuple[str, ...] = (), stopped: bool = False
) -> tuple[Model, list]:
    """The primary unreachable from the controller: its replicas still receive its heartbeats
    (``gone``: replicas that stop answering too; ``stopped``: their IO threads stopped, as a
    failover cut after its SetIOThreads leaves them: no replica can confirm it)."""
    effects: list = []
    for i, t in enumerate(times):
        events = [down("node1", t)]
        for name in ("node2", "node3"):
            link = STOPPED if stopped else {"heartbeats_received": 20 + i}
            events.append(down(name, t) if name in gone else replica(name, t, **link))
        for event in events:
            model, more = step(model, event, S, t)
            effects += more
    return model, effects


def test_unreachable_primary_is_one_line_not_one_per_probe():
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    rounds += [
        [down("node1", t), replica("node2", t, **STOPPED), replica("node3", t, **STOPPED)]
        for t in (4.0, 5.0, 6.0)
    ]
    model, effects = cut_off(Model(view_of(*rounds)), [7.0 + i for i in range(20)], stopped=True)
    lines = decision_lines(effects, "UnreachablePrimary")
    reasons = [line.fields["reason"] for line in lines]
    # The first, and the one that carries the alert once it lasted failover.io_stall.
    assert len(lines) == 2, reasons
    assert lines[0].fields["actions"] == [] and lines[1].fields["actions"] == ["Notify"]
    # The count in the reason moved on all the while: the suppression held through it.
    assert "(4 consecutive failed probes" in reasons[0]
    assert model.view.nodes["node1"].reason.startswith("23 consecutive failed probes")
    assert model.decisions[-1]["reason"] == reasons[-1]


def test_a_reason_that_changes_in_substance_is_logged_again():
    model = Model(view_of(*(healthy_round(t) for t in (1.0, 2.0, 3.0))))
    model, effects = cut_off(model, [4.0 + i for i in range(8)])
    before = decision_lines(effects, "UnreachablePrimary")
    model, effects = cut_off(model, [12.0 + i for i in range(8)], gone=("node3",))
    after = decision_lines(effects, "UnreachablePrimary")
    assert len(after) == 1, [line.fields["reason"] for line in after]
    assert "node2, node3 still replicate" in before[-1].fields["reason"]
    assert "replica(s) node2 still replicate" in after[0].fields["reason"]


def test_substance_drops_counts_and_times_only():
    one = "node1 unreachable (8 consecutive failed probes: timed out after 2 s); waited 12.5 s"
    other = "node1 unreachable (9 consecutive failed probes: timed out after 2 s); waited 13.0 s"
    assert substance(one) == substance(other)
    assert substance("node2 (probe failed 1/3: x) 300ms") == substance(
        "node2 (probe failed 2/3: x) 20ms"
    )
    for a, b in [
        ("node1 is gone", "node2 is gone"),
        ("node2 holds 0-1-100 node1 lacks", "node2 holds 0-1-101 node1 lacks"),
        ("at 127.0.0.1:3301", "at 127.0.0.1:3302"),
        ("c001n2 cannot be read", "c001n3 cannot be read"),
        ("4 cannot be read", "5 cannot be read"),  # node names may be digits only
        ("2 of 5 nodes reachable", "3 of 5 nodes reachable"),
    ]:
        assert substance(a) != substance(b), (a, b)
