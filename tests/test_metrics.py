"""Metrics: plain events and views in, Prometheus text out, parsed back and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.events import PlanFinished
from hacontrol.metrics import Metrics, failover_phases, plan_outcome, render_all
from hacontrol.plan import ActionResult
from tests.factories import down, primary, replica, settings
from tests.support import Samples, fold_all, samples, value


def step(index: int, action: str, seconds: float, ok: bool = True) -> ActionResult:
    reason = "done" if ok else "failed"
    return ActionResult(action, None, ok, True, reason, index=index, seconds=seconds)


def failover(ok: bool = True, steps: tuple[ActionResult, ...] | None = None) -> PlanFinished:
    steps = steps or (
        step(0, "RouteFence", 0.2),
        step(1, "WaitApplied", 0.3),
        step(2, "Promote", 0.1),
        step(3, "Repoint", 0.4),
        step(4, "Route", 0.25),
        step(5, "Notify", 0.01),
    )
    return PlanFinished(
        at=10.0,
        plan_id="failover-1",
        rule="DeadPrimary",
        kind="failover",
        ok=ok,
        reason="all steps done" if ok else "WaitApplied failed: timeout",
        failed_at=None if ok else 1,
        steps=steps,
        seconds=round(sum(s.seconds for s in steps), 3),
    )


def test_view_gives_up_lag_and_primary_and_null_lag_is_nan_not_zero():
    s = settings()
    view = fold_all(
        s, [primary(), replica("node2", seconds_behind=None), replica("node3", seconds_behind=4)]
    )
    m = Metrics("t")
    m.observe_view(view)
    data = samples(m)

    assert value(data, "hacontrol_node_up", node="node1") == 1
    assert value(data, "hacontrol_node_up", node="node2") == 1
    assert value(data, "hacontrol_node_is_primary", node="node1") == 1
    assert value(data, "hacontrol_node_is_primary", node="node2") == 0
    lag2 = value(data, "hacontrol_replica_lag_seconds", node="node2")
    assert lag2 is not None and math.isnan(lag2)  # NULL lag: unknown, never 0
    assert value(data, "hacontrol_replica_lag_seconds", node="node3") == 4
    assert value(data, "hacontrol_replica_lag_seconds", node="node1") is None  # not a replica
    assert value(data, "hacontrol_quorum") == 1
    assert value(data, "hacontrol_problems", code="NoQuorum") == 0


def test_unreachable_replica_loses_its_lag_series_and_is_down():
    s = settings()
    view = fold_all(s, [primary(), replica("node2"), replica("node3", seconds_behind=7)])
    m = Metrics("t")
    m.observe_view(view)
    assert value(samples(m), "hacontrol_replica_lag_seconds", node="node3") == 7

    failed = [down("node3", at=2.0 + i) for i in range(s.probes.failure_threshold)]
    view = fold_all(s, failed, view=view)
    m.observe_view(view)
    data = samples(m)
    assert value(data, "hacontrol_node_up", node="node3") == 0
    assert value(data, "hacontrol_replica_lag_seconds", node="node3") is None  # stale: absent
    assert value(data, "hacontrol_replica_lag_seconds", node="node2") == 0
    assert value(data, "hacontrol_problems", code="NodeUnreachable") == 1


def test_probe_histogram_and_probe_results():
    m = Metrics("t")
    m.observe_probe(primary(at=1.0))  # rtt 0.001
    m.observe_probe(primary(at=2.0))
    m.observe_probe(down("node1", at=3.0))
    data = samples(m)
    assert value(data, "hacontrol_probe_rtt_seconds_count", node="node1") == 2
    assert value(data, "hacontrol_probe_rtt_seconds_sum", node="node1") == pytest.approx(0.002)
    assert value(data, "hacontrol_probe_rtt_seconds_bucket", node="node1", le="0.001") == 2
    assert value(data, "hacontrol_probe_rtt_seconds_bucket", node="node1", le="0.0005") == 0
    assert value(data, "hacontrol_probes_total", node="node1", result="ok") == 2
    assert value(data, "hacontrol_probes_total", node="node1", result="failed") == 1


def test_failover_phases_from_step_timings():
    m = Metrics("t")
    m.observe_plan(failover(), detect_seconds=1.5)
    data = samples(m)
    assert value(data, "hacontrol_failovers_total", outcome="ok") == 1
    assert value(data, "hacontrol_failovers_total", outcome="failed") == 0
    phase = {
        p: value(data, "hacontrol_last_failover_phase_seconds", phase=p)
        for p in ("detect", "fence", "promote", "repoint", "route", "total")
    }
    assert phase == {
        "detect": 1.5,
        "fence": pytest.approx(0.2),
        "promote": pytest.approx(0.4),  # WaitApplied 0.3 + Promote 0.1
        "repoint": pytest.approx(0.4),
        "route": pytest.approx(0.25),
        "total": pytest.approx(1.5 + 1.26),
    }


def test_a_later_failed_failover_replaces_all_phases():
    m = Metrics("t")
    m.observe_plan(failover(), detect_seconds=1.5)
    partial = failover(
        ok=False, steps=(step(0, "RouteFence", 0.1), step(1, "WaitApplied", 30.0, ok=False))
    )
    m.observe_plan(partial, detect_seconds=None)
    data = samples(m)
    assert value(data, "hacontrol_failovers_total", outcome="ok") == 1
    assert value(data, "hacontrol_failovers_total", outcome="failed") == 1
    assert value(data, "hacontrol_last_failover_phase_seconds", phase="promote") == 30.0
    assert value(data, "hacontrol_last_failover_phase_seconds", phase="route") is None
    assert value(data, "hacontrol_last_failover_phase_seconds", phase="detect") is None
    assert value(data, "hacontrol_last_failover_phase_seconds", phase="total") == 30.1


def test_switchover_outcomes_and_other_plans_are_not_counted():
    def switchover(ok: bool, reason: str) -> PlanFinished:
        return PlanFinished(1.0, "s-1", "Switchover", "switchover", ok, reason, None, (), 2.0)

    assert plan_outcome(switchover(False, "deadline passed; rolled back to node1")) == (
        "rolled_back"
    )
    m = Metrics("t")
    m.observe_plan(switchover(True, "all steps done"))
    m.observe_plan(switchover(False, "deadline passed: rolled back, node1 is writer again"))
    m.observe_plan(switchover(False, "CatchUp failed"))
    m.observe_plan(switchover(False, "whatever"), outcome="rolled_back")
    m.observe_plan(PlanFinished(1.0, "r-1", "RouteReconcile", "route", True, "ok", None, (), 0.1))
    data = samples(m)
    assert value(data, "hacontrol_switchovers_total", outcome="ok") == 1
    assert value(data, "hacontrol_switchovers_total", outcome="rolled_back") == 2
    assert value(data, "hacontrol_switchovers_total", outcome="failed") == 1
    assert value(data, "hacontrol_failovers_total", outcome="ok") == 0
    assert value(data, "hacontrol_last_failover_phase_seconds", phase="total") is None
    with pytest.raises(ValueError, match="outcome"):
        m.observe_plan(switchover(True, "x"), outcome="maybe")


def test_loop_queue_and_halt():
    m = Metrics("t")
    data = samples(m)
    assert value(data, "hacontrol_halt_active") == 0
    assert value(data, "hacontrol_queue_depth") == 0
    m.observe_loop(0.003, 5)
    m.observe_loop(-0.001, 2)  # a clock step backwards is not a negative lag
    m.set_halt(True)
    data = samples(m)
    assert value(data, "hacontrol_decision_loop_lag_seconds_count") == 2
    assert value(data, "hacontrol_decision_loop_lag_seconds_sum") == pytest.approx(0.003)
    assert value(data, "hacontrol_queue_depth") == 2
    assert value(data, "hacontrol_halt_active") == 1
    m.set_halt(False)
    assert value(samples(m), "hacontrol_halt_active") == 0


@dataclass
class Counters:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0


def test_mail_counters_are_read_at_scrape_time():
    notifier = Counters()
    m = Metrics("t", mail=notifier)
    assert value(samples(m), "hacontrol_mails_total", state="sent") == 0
    notifier.queued, notifier.sent, notifier.failed, notifier.dropped = 3, 2, 4, 1
    data = samples(m)
    assert value(data, "hacontrol_mails_total", state="queued") == 3
    assert value(data, "hacontrol_mails_total", state="sent") == 2
    assert value(data, "hacontrol_mails_total", state="failed") == 4
    assert value(data, "hacontrol_mails_total", state="dropped") == 1


def test_mail_counters_set_by_the_caller():
    m = Metrics("t")
    m.set_mail(queued=5, sent=4, failed=1, dropped=0)
    data = samples(m)
    assert value(data, "hacontrol_mails_total", state="queued") == 5
    assert value(data, "hacontrol_mails_total", state="failed") == 1


def test_each_cluster_has_its_own_registry():
    a, b = Metrics("t"), Metrics("other")
    a.set_halt(True)
    assert value(samples(a), "hacontrol_halt_active") == 1
    other = samples(b)
    assert other[("hacontrol_halt_active", frozenset({"cluster": "other"}.items()))] == 0
    assert all(dict(labels).get("cluster") == "other" for _, labels in other)


def test_failover_phases_is_pure():
    finished = failover()
    assert failover_phases(finished, None) == {
        "fence": pytest.approx(0.2),
        "promote": pytest.approx(0.4),
        "repoint": pytest.approx(0.4),
        "route": pytest.approx(0.25),
        "total": pytest.approx(1.26),
    }


def test_the_lease_leader_its_changes_and_the_locks_held():
    metrics = Metrics("t")
    metrics.observe_lease("c1", False, 0, {"node1": False, "node2": False})
    metrics.observe_lease("c1", True, 1, {"node1": True, "node2": True})
    metrics.observe_lease("c1", True, 1, {"node1": True, "node2": False})
    data = samples(metrics)
    assert value(data, "hacontrol_lease_leader", instance="c1") == 1
    assert value(data, "hacontrol_lease_changes_total", instance="c1") == 1  # counted once
    assert value(data, "hacontrol_lease_lock_held", instance="c1", node="node1") == 1
    assert value(data, "hacontrol_lease_lock_held", instance="c1", node="node2") == 0
    metrics.observe_lease("c1", False, 2, {"node1": False, "node2": False})
    data = samples(metrics)
    assert value(data, "hacontrol_lease_leader", instance="c1") == 0
    assert value(data, "hacontrol_lease_changes_total", instance="c1") == 2


def test_several_clusters_in_one_exposition_each_family_once():
    s = settings()
    orders, users = Metrics("orders"), Metrics("users")
    orders.observe_view(fold_all(s, [primary(), replica("node2"), replica("node3")]))
    users.observe_view(fold_all(s, [primary(), replica("node2"), down("node3")]))
    users.observe_plan(failover())
    text = render_all([orders, users]).decode()
    for family in ("hacontrol_node_up", "hacontrol_failovers_total", "hacontrol_mails_total"):
        assert text.count(f"# TYPE {family} ") == 1 and text.count(f"# HELP {family} ") == 1
    data: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in data, key  # no sample twice
            data[key] = sample.value
    up = "hacontrol_node_up"
    assert data[(up, frozenset({"cluster": "orders", "node": "node3"}.items()))] == 1.0
    assert data[(up, frozenset({"cluster": "users", "node": "node3"}.items()))] == 0.0
    for cluster, count in (("users", 1.0), ("orders", 0.0)):
        labels = frozenset({"cluster": cluster, "outcome": "ok"}.items())
        assert data[("hacontrol_failovers_total", labels)] == count
    assert render_all([orders]) == orders.render()  # one cluster: as before
