"""The chaos checker's judgement on hand-made timed samples (pure, no server), and the pieces
of the chaos drill that need none: the duration, the convergence rule, the report."""

from __future__ import annotations

import argparse

import pytest

from hacontrol.drill import register_cli
from hacontrol.drill.chaos_cli import parse_duration
from hacontrol.drill.chaos_report import by_kind, render, verdict
from hacontrol.drill.checker import Node, converged_reason
from hacontrol.drill.invariants import Invariants

PERIOD = 0.05


def feed(inv: Invariants, node: str, values: list[bool | None], start: float) -> float:
    """Samples of one node every 50 ms from ``start`` (each answered 5 ms after it was sent)."""
    t = start
    for value in values:
        inv.node(node, t, t + 0.005, value)
        t += PERIOD
    return t


def interleave(inv: Invariants, series: dict[str, list[bool | None]], start: float = 0.0) -> None:
    """Several nodes sampled in the same ticks, like the checker's tasks do."""
    for i in range(max(len(v) for v in series.values())):
        for offset, (node, values) in enumerate(sorted(series.items())):
            if i < len(values):
                sent = start + i * PERIOD + offset * 0.001
                inv.node(node, sent, sent + 0.005, values[i])


def test_one_writer_at_a_time_is_no_violation():
    inv = Invariants()
    interleave(inv, {"a": [False] * 10 + [True] * 10, "b": [True] * 11 + [False] * 9})
    assert inv.violations == [] and inv.returning_events == []


def test_a_switchover_faster_than_the_sampling_is_not_two_writers():
    inv = Invariants()
    # a fenced at ~0.502, b promoted at ~0.53: one sample of each straddles the change
    interleave(inv, {"a": [False] * 10 + [True] * 10, "b": [True] * 10 + [False] * 10})
    assert inv.violations == []


def test_two_writable_nodes_for_two_samples_is_a_violation():
    inv = Invariants()
    interleave(inv, {"a": [False] * 20, "b": [True] * 5 + [False] * 3 + [True] * 12})
    assert [v.kind for v in inv.violations] == ["two-writable"]
    assert "a and b" in inv.violations[0].detail or "b and a" in inv.violations[0].detail


def test_a_returning_node_fenced_in_time_is_an_event_not_a_violation():
    inv = Invariants(fence_bound=10.0)
    # a frozen (no answers), b promoted; a thawed writable, fenced 0.5 s later
    interleave(inv, {"a": [None] * 25 + [False] * 10 + [True] * 10, "b": [False] * 45})
    assert inv.violations == []
    (event,) = inv.returning_events
    assert event["node"] == "a" and event["writer"] == "b"
    assert 0.4 <= event["fenced_after"] <= 0.5


def test_a_returning_node_left_writable_too_long_is_a_violation():
    inv = Invariants(fence_bound=1.0)
    interleave(inv, {"a": [None] * 25 + [False] * 40, "b": [False] * 65})
    assert [v.kind for v in inv.violations] == ["returning-writable"]


def test_a_returning_node_routed_to_is_a_violation():
    inv = Invariants()
    interleave(inv, {"a": [None] * 25 + [False] * 6, "b": [False] * 31})
    inv.router("proxysql", 1.40, 1.41, frozenset({"a"}))
    interleave(inv, {"a": [True] * 4, "b": [False] * 4}, start=1.55)
    assert [v.kind for v in inv.violations] == ["returning-writable"]
    assert "router" in inv.violations[0].detail


def uptimes(inv: Invariants, node: str, values: list[bool], start: float, up: float) -> None:
    for i, value in enumerate(values):
        sent = start + i * PERIOD
        inv.node(node, sent, sent + 0.005, value, up + i * PERIOD)


def test_a_restarted_node_back_writable_beside_the_writer_returns():
    """Restarted in 0.3 s with read_only=OFF while another node was promoted: its uptime went
    down, so it is a returning old primary (fenced by the controller), not two writers."""
    inv = Invariants()
    uptimes(inv, "a", [False] * 10, 0.0, up=100.0)
    uptimes(inv, "b", [True] * 10 + [False] * 10, 0.001, up=100.0)
    for i in range(6):
        inv.node("a", 0.5 + i * PERIOD, 0.505 + i * PERIOD, None)
    uptimes(inv, "a", [False] * 6 + [True] * 4, 0.8, up=0.1)
    assert inv.violations == []
    assert [e["node"] for e in inv.returning_events] == ["a"]


def test_a_node_back_read_only_then_promoted_does_not_return():
    """b restarted read-only and was promoted later; a, the old writer, restarted writable
    beside it: a is the returning node, b the writer (seen in a soak: both had restarted)."""
    inv = Invariants()
    uptimes(inv, "a", [False] * 10, 0.0, up=100.0)
    uptimes(inv, "b", [True] * 2, 0.001, up=100.0)
    for i in range(4):
        inv.node("b", 0.101 + i * PERIOD, 0.106 + i * PERIOD, None)
    uptimes(inv, "b", [True] * 4 + [False] * 16, 0.301, up=0.1)
    for i in range(5):
        inv.node("a", 0.5 + i * PERIOD, 0.505 + i * PERIOD, None)
    uptimes(inv, "a", [False] * 6 + [True] * 4, 0.75, up=0.05)
    assert inv.violations == []
    assert [(e["node"], e["writer"]) for e in inv.returning_events] == [("a", "b")]


def test_the_writer_back_from_a_restart_may_be_routed_and_later_fenced():
    """A primary restarted writable with no other writer is the writer: routing writes to it
    is right, and a later switchover that fences it is no violation."""
    inv = Invariants()
    uptimes(inv, "a", [False] * 4, 0.0, up=100.0)
    uptimes(inv, "a", [False] * 20 + [True] * 10, 0.3, up=0.1)
    for i in range(30):
        inv.router("proxysql", 0.3 + i * PERIOD, 0.302 + i * PERIOD, frozenset({"a"}))
    uptimes(inv, "b", [True] * 20 + [False] * 10, 0.301, up=100.0)
    assert inv.violations == [] and inv.returning_events == []


def test_one_slow_answer_does_not_make_a_node_returning():
    """A writer that missed one sample (a busy machine) and a second node made writable: two
    writers, not a returning node."""
    inv = Invariants()
    interleave(inv, {"a": [False] * 5 + [None] + [False] * 10, "b": [True] * 8 + [False] * 8})
    assert [v.kind for v in inv.violations] == ["two-writable"]
    assert inv.returning_events == []


def test_two_writers_in_a_router():
    inv = Invariants()
    inv.router("proxysql", 1.0, 1.01, frozenset({"a", "b"}))
    inv.router("proxysql", 1.05, 1.06, frozenset({"a"}))
    assert [v.kind for v in inv.violations] == ["router-two-writers"]


def test_a_router_writer_read_only_before_and_after_is_a_violation():
    inv = Invariants()
    end = feed(inv, "a", [True] * 5, 0.0)
    inv.router("proxysql", end, end + 0.002, frozenset({"a"}))
    feed(inv, "a", [True] * 2, end + 0.01)
    assert [v.kind for v in inv.violations] == ["router-writer-read-only"]


def test_a_router_writer_made_writable_meanwhile_is_fine():
    inv = Invariants()
    end = feed(inv, "a", [True] * 5, 0.0)
    inv.router("proxysql", end, end + 0.002, frozenset({"a"}))
    feed(inv, "a", [False] * 2, end + 0.01)  # promoted while the router was read
    assert inv.violations == []


def test_no_answer_from_the_router_is_not_judged():
    inv = Invariants()
    inv.router("proxysql", 0.0, 0.3, None)
    assert inv.violations == [] and inv.router_samples == 0


NODES = [Node("n1", "h", 1), Node("n2", "h", 2), Node("n3", "h", 3)]


def state(read_only: bool, source_port: int | None, io: str = "Yes") -> dict:
    channels = (
        [] if source_port is None else [{"host": "h", "port": source_port, "io": io, "sql": "Yes"}]
    )
    return {"read_only": read_only, "binlog_pos": "0-1-5", "channels": channels}


def test_convergence_rule():
    good = {"n1": state(False, None), "n2": state(True, 1), "n3": state(True, 1)}
    assert converged_reason(NODES, good, {"r": frozenset({"n1"})}) is None
    assert "not answering" in converged_reason(NODES, {**good, "n3": None}, {})
    assert "writable nodes" in converged_reason(NODES, {**good, "n2": state(False, None)}, {})
    assert "IO Connecting" in converged_reason(
        NODES, {**good, "n3": state(True, 1, "Connecting")}, {}
    )
    assert "does not replicate from n1" in converged_reason(
        NODES, {**good, "n3": state(True, 2)}, {}
    )
    assert "router r" in converged_reason(NODES, good, {"r": frozenset({"n2"})})
    assert "router r" in converged_reason(NODES, good, {"r": None})


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("20m", 1200), ("1.5h", 5400)]
)
def test_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration():
    with pytest.raises(ValueError, match="--duration"):
        parse_duration("twenty minutes")


def test_report_fails_on_any_violation_loss_or_difference():
    records = [
        {"kind": "kill-primary", "write_outage": 2.0, "read_outage": 0.1, "converged_after": 3.0},
        {"kind": "kill-primary", "write_outage": 4.0, "read_outage": None, "converged_after": 5.0},
        {"kind": "switchover", "write_outage": 0.05, "read_outage": 0.01, "converged_after": 0.5},
    ]
    doc = {
        "seed": 1, "seconds": 60.0, "faults": 3, "router": "proxysql",
        "by_kind": by_kind(records), "violations": [], "returning": [],
        "returning_fenced": None, "unconverged": None, "halts": [], "rebuilt": [],
        "samples": 10, "router_samples": 5, "error": None,
        "final": {"lost": 0, "checksums_equal": True, "caught_up": {"n2": True},
                  "checksums": {}, "acknowledged": 100},
    }  # fmt: skip
    assert doc["by_kind"]["kill-primary"]["write_outage"] == {"n": 2, "p50": 3.0, "max": 4.0}
    assert verdict(doc) == [] and render(doc).endswith("RESULT: PASS")
    lost = {**doc, "final": {**doc["final"], "lost": 2}}
    assert verdict(lost) == ["2 acknowledged write(s) lost"]
    differ = {**doc, "final": {**doc["final"], "checksums_equal": False}}
    assert "checksums differ" in verdict(differ)[0]
    broken = {**doc, "violations": [{"t": 1.0, "kind": "two-writable", "detail": "x"}]}
    assert "FAIL: 1 violation(s)" in render(broken)


def drill_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["drill", *argv])
    return args.func(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--fault", "chaos", "--duration", "soon"), "--duration must be"),
        (("--fault", "chaos", "--duration", "0"), "--duration must be positive"),
        (("--fault", "chaos", "--dir", "/tmp/x"), "builds a sandbox of its own"),
        (("--fault", "chaos", "--config", "settings.toml"), "sandbox only"),
        (("--fault", "kill", "--seed", "3"), "go with --fault chaos"),
        (("--fault", "chaos", "--controllers", "3"), "runs one controller"),
    ],
)
def test_chaos_usage_errors_exit_2_before_anything_starts(argv, message, capsys):
    assert drill_cli(*argv) == 2
    assert message in capsys.readouterr().err
