"""What the controller's loop shows of its model in the metrics (``ModelMetrics``): the
lease's gauges of an instance of a fleet, whose locks end with time alone."""

from __future__ import annotations

from hacontrol.events import Event, Tick
from hacontrol.metrics import Metrics
from hacontrol.model_metrics import ModelMetrics
from hacontrol.step import boot, step
from hacontrol.view import initial
from tests.factories import fleet, lock, primary, replica, router
from tests.support import samples, value

S = fleet()
OURS = 7


def held(metrics: Metrics) -> dict[str, float | None]:
    data = samples(metrics)
    return {
        n: value(data, "hacontrol_lease_lock_held", instance="i1", node=n)
        for n in ("node1", "node2", "node3")
    }


def run(events: list[tuple[float, Event]]) -> list[dict[str, float | None]]:
    """Each event stepped at its time, the lease's gauges read after each."""
    model, _ = boot(
        initial(S),
        S,
        kept=None,
        unfinished=None,
        acknowledge_block=False,
        paused=False,
        acting=True,
        wall_offset=0.0,
    )
    metrics = Metrics("t")
    shown = ModelMetrics(metrics, S)
    seen = []
    for now, event in events:
        before = model
        model, _ = step(before, event, S, now)
        shown.step(before, model, now)
        seen.append(held(metrics))
    return seen


def test_a_lock_shown_held_ends_with_time_alone_while_the_events_change_nothing():
    """Locks confirmed at t=1 (V 1.5 s: valid until 2.5); then probes, ticks and router
    reads that leave the lease and the locks as they were: the gauges say held until 2.5 and
    not held after it, with no lease event in between."""
    s = S.lease
    assert s.validity == 1.5
    confirm = [(1.0, lock(n, at=1.0, session=OURS, leader=OURS)) for n in ("node1", "node2")]
    quiet = [
        (1.2, primary(at=1.2)),
        (1.4, Tick(1.4)),
        (2.0, router(at=2.0)),
        (2.4, replica("node2", at=2.4)),
        (2.6, Tick(2.6)),  # past 2.5: the locks confirmed at 1.0 have ended
        (2.7, primary(at=2.7)),
    ]
    seen = run([*confirm, *quiet])
    assert seen[1]["node1"] == 1 and seen[1]["node2"] == 1 and seen[1]["node3"] == 0
    for index in range(2, 6):  # 1.2 .. 2.4: still held
        assert seen[index]["node1"] == 1 and seen[index]["node2"] == 1, index
    assert seen[6]["node1"] == 0 and seen[6]["node2"] == 0  # 2.6: ended, shown at once
    assert seen[7]["node1"] == 0 and seen[7]["node2"] == 0


def test_a_keepalive_that_extends_a_lock_keeps_it_shown_held():
    seen = run(
        [
            (1.0, lock("node1", at=1.0, session=OURS, leader=OURS)),
            (2.0, lock("node1", at=2.0, session=OURS, leader=OURS)),  # valid until 3.5
            (2.6, Tick(2.6)),
            (3.6, Tick(3.6)),
        ]
    )
    assert [s["node1"] for s in seen] == [1, 1, 1, 0]
