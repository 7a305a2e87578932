"""The drill's figures, pure: outages from timestamp lists, lost writes, percentiles, phases
from log lines, the tables and the JSON document; and the pure helpers of the faults."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from hacontrol.drill import default_timing, report
from hacontrol.drill.faults import listening_inodes, partition_rules, socket_inode
from hacontrol.drill.load import Access, error_kind
from hacontrol.drill.rebuild import dump_position
from hacontrol.drill.report import RunResult
from hacontrol.settings import FailoverSettings, ProbeSettings, Settings


def test_outage_is_the_gap_around_the_fault():
    acks = [1.00, 1.01, 1.02, 1.03, 2.53, 2.54]
    assert report.outage(acks, 1.035) == pytest.approx(1.50)
    # A fault right on an acknowledgement: that one counts as before.
    assert report.outage(acks, 1.03) == pytest.approx(1.50)


def test_outage_of_a_switchover_is_the_longest_gap_until_the_plan_ended():
    # Command at 1.0; the plan fences the writer at 1.10 and finishes at 1.60.
    acks = [0.99, 1.00, 1.01, 1.02, 1.03, 1.10, 1.61, 1.62, 1.63]
    assert report.outage(acks, 1.0) == pytest.approx(0.01)  # the gap at the command only
    assert report.outage(acks, 1.0, 1.60) == pytest.approx(0.51)
    assert report.outage(acks, 1.0, 1.70) is None  # no success after the interval
    assert report.outage(acks, 1.0, 0.5) == report.outage(acks, 1.0)  # until before at


def test_outage_without_success_on_one_side_is_unknown():
    assert report.outage([1.0, 1.1], 1.5) is None  # nothing after the fault
    assert report.outage([2.0, 2.1], 1.5) is None  # nothing before it
    assert report.outage([], 1.0) is None


def test_outage_ignores_gaps_elsewhere():
    acks = [0.0, 5.0, 5.01, 5.02, 5.3, 9.0]  # a long gap before, one after
    assert report.outage(acks, 5.015) == pytest.approx(0.01)
    assert report.outage(acks, 5.1) == pytest.approx(0.28)


def test_lost_writes_are_acknowledged_ids_missing_from_the_new_primary():
    assert report.lost_writes([1, 2, 3, 4], [1, 2, 4, 99]) == [3]
    assert report.lost_writes([5, 6], [5, 6, 7]) == []
    # Unacknowledged writes that made it are not "lost", nor an error.
    assert report.lost_writes([], [1, 2]) == []
    assert report.lost_writes([3, 1, 2, 3], []) == [1, 2, 3]


def test_percentile_interpolates_like_numpy():
    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert report.percentile(values, 50) == pytest.approx(0.3)
    assert report.percentile(values, 90) == pytest.approx(0.46)
    assert report.percentile(values, 0) == pytest.approx(0.1)
    assert report.percentile(values, 100) == pytest.approx(0.5)
    assert report.percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError):
        report.percentile([], 50)
    with pytest.raises(ValueError):
        report.percentile([1.0], 101)


def rec(mono: float, event: str, **fields):
    return {"_mono": mono, "event": event, **fields}


FAILOVER_LOG = [
    rec(9.0, "problem", code="DeadPrimary", node="node0"),  # an older failover: ignored
    rec(10.05, "problem", code="ReplicationBroken", node="node2"),
    rec(10.21, "problem", code="DeadPrimary", node="node1"),
    rec(10.22, "plan_started", plan="p1", kind="failover", rule="DeadPrimary"),
    rec(10.23, "action", plan="p1", action="RouteFence", ok=True, node="node1"),
    rec(10.24, "plan_started", plan="x", kind="route", rule="RouteReconcile"),
    rec(10.24, "action", plan="x", action="Route", ok=True, node=None),
    rec(10.30, "action", plan="p1", action="Promote", ok=True, node="node2"),
    rec(10.45, "action", plan="p1", action="Repoint", ok=True, node="node3"),
    rec(10.47, "action", plan="p1", action="Route", ok=True, node=None),
    rec(10.48, "plan_finished", plan="p1", kind="failover", ok=True, reason="all steps done"),
]


def test_log_figures_of_a_failover():
    figures = report.log_figures(FAILOVER_LOG, 10.0)
    assert figures == pytest.approx(
        {"detection": 0.21, "promotion": 0.30, "router_updated": 0.47, "plan_finished": 0.48}
    )
    assert report.promoted_node(FAILOVER_LOG, 10.0) == "node2"
    assert report.finished_plan(FAILOVER_LOG, 10.0)["plan"] == "p1"
    # Plans counted after the fault (a storm shows here): the failover and a route change.
    assert [p["plan"] for p in report.plans_started(FAILOVER_LOG, 10.0)] == ["p1", "x"]
    assert [p["plan"] for p in report.plans_started(FAILOVER_LOG, 10.0, "failover")] == ["p1"]


def test_log_figures_of_a_switchover_detect_at_the_plan_start():
    log = [
        rec(5.02, "plan_started", plan="s", kind="switchover", rule="Switchover"),
        rec(5.30, "action", plan="s", action="Promote", ok=True, node="node2"),
        rec(5.40, "action", plan="s", action="Route", ok=True, node=None),
        rec(5.41, "plan_finished", plan="s", kind="switchover", ok=True, reason="all steps done"),
    ]
    figures = report.log_figures(log, 5.0)
    assert figures["detection"] == pytest.approx(0.02)
    assert figures["router_updated"] == pytest.approx(0.40)


def test_plan_steps_say_what_the_pause_is_made_of():
    log = [
        rec(5.01, "action", plan="old", action="Route", ok=True, seconds=0.01),  # before: no
        rec(5.02, "plan_started", plan="s", kind="switchover", rule="Switchover"),
        rec(5.03, "action", plan="s", action="Drain", ok=True, seconds=0.008),
        rec(5.04, "action", plan="x", action="Route", ok=True, seconds=0.005),  # another plan
        rec(5.06, "action", plan="s", action="Fence", ok=True, seconds=0.02),
        rec(5.10, "action", plan="s", action="Route", ok=False, seconds=0.03),
    ]
    steps = report.plan_steps(log, 5.0)
    assert steps == (
        report.StepTime("Drain", pytest.approx(0.03), 0.008),
        report.StepTime("Fence", pytest.approx(0.06), 0.02),
        report.StepTime("Route", pytest.approx(0.10), 0.03, ok=False),
    )
    result = replace(run(1, 0.1), steps=steps)
    assert (
        "steps (ended after the fault, own time): Drain +0.030 (0.008), Fence +0.060 (0.020), "
        "Route FAILED +0.100 (0.030)"
    ) in report.render_run(result)
    twice = [result, replace(result, run=2, steps=(report.StepTime("Drain", 0.05, 0.012),))]
    stats = report.step_summary(twice)
    assert list(stats) == ["Drain", "Fence", "Route"]
    assert stats["Drain"] == report.Stats(2, pytest.approx(0.01), pytest.approx(0.0116), 0.012)
    summary = report.render_summary(twice).splitlines()
    assert summary[-3].split() == ["step", "Drain", "2", "0.010", "0.012", "0.012"]
    doc = report.document(twice, {}, {})
    assert doc["runs"][0]["steps"][0] == {
        "action": "Drain",
        "ended": pytest.approx(0.03),
        "seconds": 0.008,
        "ok": True,
    }
    assert doc["steps"]["Fence"] == {"n": 1, "p50": 0.02, "p90": 0.02, "max": 0.02}
    assert report.plan_steps(log[:1], 5.0) == ()


def test_log_figures_without_a_plan_are_unknown():
    log = [rec(1.5, "problem", code="DeadPrimary", node="node1")]
    figures = report.log_figures(log, 1.0)
    assert figures["detection"] == pytest.approx(0.5)
    assert figures["promotion"] is None and figures["plan_finished"] is None
    assert report.finished_plan(log, 1.0) is None
    assert report.promoted_node(log, 1.0) is None


def test_a_failed_promotion_is_not_a_promotion():
    log = [
        rec(1.1, "plan_started", plan="p", kind="failover"),
        rec(1.2, "action", plan="p", action="Promote", ok=False, node="node2"),
        rec(1.3, "plan_finished", plan="p", kind="failover", ok=False, reason="Promote failed"),
    ]
    assert report.log_figures(log, 1.0)["promotion"] is None
    assert report.promoted_node(log, 1.0) is None


def run(n: int, outage: float | None, lost: int = 0, restored: bool = True) -> RunResult:
    return RunResult(
        run=n,
        fault="kill",
        old_primary="node1",
        new_primary="node2",
        fault_wall=1_700_000_000.0 + n,
        figures={
            "detection": 0.2,
            "promotion": 0.25,
            "router_updated": 0.45,
            "plan_finished": 0.46,
            "write_outage": outage,
            "read_outage": 0.1,
        },
        writes_acknowledged=70,
        reads_ok=80,
        write_errors={"OperationalError(2013)": 23},
        lost_writes=lost,
        lost_ids=tuple(range(lost)),
        restored=restored,
        restore="node1 restarted; node1 rejoined as a replica of node2",
        plans=3,
        failovers=1,
    )


def test_summary_and_exit_code():
    runs = [run(1, 0.5), run(2, 0.4), run(3, None)]
    stats = report.summary(runs)
    assert stats["write_outage"] == report.Stats(2, pytest.approx(0.45), pytest.approx(0.49), 0.5)
    assert stats["detection"].n == 3
    assert report.exit_code(runs) == 0
    assert report.exit_code([run(1, 0.5), run(2, 0.5, lost=1)]) == 1
    assert report.exit_code([run(1, 0.5, restored=False)]) == 1
    assert report.exit_code([]) == 1


def test_render_run_and_summary_tables():
    text = report.render_run(run(1, 0.5))
    lines = text.splitlines()
    assert lines[0] == "run 1: kill of node1 -> node2  OK"
    assert lines[1].split() == ["figure", "seconds", "meaning"]
    assert lines[6].split()[:2] == ["write_outage", "0.500"]
    assert "writes acknowledged 70, lost 0" in text
    assert "OperationalError(2013) x23" in text
    failed = report.render_run(run(2, None, lost=2))
    assert "FAILED" in failed.splitlines()[0]
    assert "lost ids: 0, 1" in failed
    summary = report.render_summary([run(1, 0.5), run(2, 0.3)])
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines()[3:]}
    assert rows["write_outage"] == ["2", "0.400", "0.480", "0.500"]
    assert summary.splitlines()[0].startswith("summary: 2 run(s) of kill, 2 ok")
    assert summary.splitlines()[1] == "failovers 2; plans per run max 3"
    assert summary.splitlines()[2] == (
        "client errors: writes OperationalError(2013) x46; reads none"
    )
    cut = replace(run(3, 2.5), fault="partition-primary", isolated_acks=0)
    assert "writes acknowledged by the cut-off old primary: 0" in report.render_run(cut)
    assert "acknowledged by the cut-off old primary 0" in report.render_summary([cut])


def test_json_document_shape():
    runs = [run(1, 0.5), run(2, 0.3, lost=1)]
    doc = json.loads(
        json.dumps(report.document(runs, {"probes.interval": 1.0}, {"machine": "x86_64"}))
    )
    assert doc["ok"] is False and doc["lost_writes"] == 1
    assert doc["write_errors"] == {"OperationalError(2013)": 46} and doc["read_errors"] == {}
    assert [r["run"] for r in doc["runs"]] == [1, 2]
    first = doc["runs"][0]
    assert set(first["figures"]) == set(report.FIGURE_NAMES)
    assert first["ok"] is True and first["lost_ids"] == []
    assert doc["runs"][1]["lost_ids"] == [0]
    assert doc["summary"]["write_outage"] == {"n": 2, "p50": 0.4, "p90": 0.48, "max": 0.5}
    assert doc["settings"] == {"probes.interval": 1.0}
    assert doc["machine"] == {"machine": "x86_64"}


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:5BA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:5BA0 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 5555 1
   2: 0100007F:5BA1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1
"""


def test_listening_inode_of_a_port():
    assert listening_inodes(PROC_NET_TCP, 0x5BA0) == {4242}  # the LISTEN row, not the client
    assert listening_inodes(PROC_NET_TCP, 0x5BA1) == {4343}
    assert listening_inodes(PROC_NET_TCP, 1) == set()
    assert socket_inode("socket:[4242]") == 4242
    assert socket_inode("/dev/null") is None


def test_partition_rules_cut_both_directions_and_are_marked():
    rules = partition_rules(23306)
    assert [r[r.index("-p") + 2 : r.index("-p") + 4] for r in rules] == [
        ["--dport", "23306"],
        ["--sport", "23306"],
    ]
    assert all("hacontrol-drill:23306" in r and r[-2:] == ["-j", "DROP"] for r in rules)


def test_error_kinds_carry_the_error_number():
    import pymysql

    assert error_kind(pymysql.err.OperationalError(2013, "Lost connection")) == (
        "OperationalError(2013)"
    )
    assert error_kind(TimeoutError()) == "TimeoutError"
    assert error_kind(ConnectionRefusedError(111, "refused")) == "ConnectionRefusedError(111)"


def test_access_rejects_a_table_name_that_is_not_schema_dot_name():
    with pytest.raises(ValueError):
        Access(("h", 1), ("h", 2), "app", "pw", table="app.drill; DROP TABLE x")
    assert Access(("h", 1), ("h", 2), "app", "pw").table == "app.drill"


def test_dump_position_is_read_from_the_dump_header():
    dump = b"-- MariaDB dump\n-- SET GLOBAL gtid_slave_pos='0-2-85';\nCREATE TABLE t;\n"
    assert dump_position(dump) == "0-2-85"


def test_default_timing_is_that_of_the_example_settings_toml():
    # `drill --settings defaults` measures what a new install gets: the [probes] and [failover]
    # of the example settings.toml, which are the model's defaults.
    example = tomllib.loads((Path(__file__).parent.parent / "settings.toml").read_text())
    assert ProbeSettings(**example["probes"]) == ProbeSettings()
    assert FailoverSettings(**example["failover"]) == FailoverSettings()
    tuned = Settings(
        nodes=[{"name": "a", "host": "127.0.0.1", "port": 3306}],
        probes={"interval": 1.0, "timeout": 0.5},
        failover={"io_stall": 1.5, "max_lag": 3.0},
        cluster={"name": "sandbox"},
    )
    defaults = default_timing(tuned)
    assert defaults.probes == ProbeSettings() and defaults.failover == FailoverSettings()
    assert defaults.nodes == tuned.nodes and defaults.cluster == tuned.cluster


def test_a_run_result_rounds_its_figures_and_keeps_the_first_20_lost_ids() -> None:
    from types import SimpleNamespace

    facts = SimpleNamespace(fault="freeze", old="node1", fault_wall=1_700_000_000.12345, error=None)
    result = report.run_result(
        2,
        facts,
        "node3",
        {"detection": 0.123456, "promotion": None},
        list(range(100, 130)),
        (False, "node1 not restarted"),
        reads_ok=5,
    )
    assert (result.run, result.fault, result.old_primary, result.new_primary) == (
        2,
        "freeze",
        "node1",
        "node3",
    )
    assert result.fault_wall == 1_700_000_000.123
    assert result.figures == {"detection": 0.1235, "promotion": None}
    assert (result.lost_writes, result.lost_ids) == (30, tuple(range(100, 120)))
    assert (result.restored, result.restore, result.reads_ok) == (False, "node1 not restarted", 5)
    assert not result.ok
