"""The drill's figures: pure functions over timestamps and results, and their rendering.

Nothing here does I/O or reads a clock. Times are seconds on one monotonic clock; every figure
is "seconds after the fault" except the two outages, which are the gap a client saw between its
last success before the fault and its first success after it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

FIGURES: tuple[tuple[str, str], ...] = (
    ("detection", "fault -> DeadPrimary logged (switchover: command -> plan started)"),
    ("promotion", "fault -> Promote action done"),
    ("router_updated", "fault -> Route action done (writer moved)"),
    ("plan_finished", "fault -> plan finished"),
    ("write_outage", "longest time without an acknowledged write (from before the fault)"),
    ("read_outage", "longest time without a successful read (from before the fault)"),
)
FIGURE_NAMES = tuple(name for name, _ in FIGURES)

FLEET_FIGURES: tuple[tuple[str, str], ...] = (
    ("takeover", "fault -> another instance holds the lease (the leader killed or frozen)"),
    ("published", "fault -> the primary published by the leader acting after the fault"),
    ("write_outage_leader", "write outage through the router of the instance leading at the fault"),
    ("write_outage_followers", "the longest write outage through a follower's router"),
)
"""A fleet's figures (``hacontrol drill --controllers N``), beside one per router: the write and
read outage through it (``write_outage@c1`` ...)."""


def described(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """Every figure the runs observed, with its meaning: the classic ones, a fleet's, then one
    per router of a fleet."""
    names = {name for run in runs for name in run.figures}
    out = [(n, text) for n, text in FIGURES if n in names or not names - set(FIGURE_NAMES)]
    out += [(n, text) for n, text in FLEET_FIGURES if n in names]
    per_router = sorted(n for n in names if "@" in n)
    for name in per_router:
        which, router = name.split("@", 1)
        out.append((name, f"{which.replace('_', ' ')} through {router}'s router"))
    return out


def outage(times: Sequence[float], at: float, until: float | None = None) -> float | None:
    """The longest time without success that a client saw in [at, until], from sorted success
    times: the largest gap between consecutive successes among the gaps that overlap the
    interval. With ``until`` omitted (a crash): the gap around ``at``, from the last success
    at or before it to the first one after it. None when there is no success before ``at`` or
    none after ``until``.

    A switchover passes the command time and the plan's end: its write window opens when the
    plan fences the writer, some time after the command."""
    end = at if until is None else max(at, until)
    first = bisect.bisect_right(times, at)
    last = bisect.bisect_right(times, end)
    if first == 0 or last == len(times):
        return None
    return max(times[i] - times[i - 1] for i in range(first, last + 1))


def lost_writes(acknowledged: Iterable[int], present: Iterable[int]) -> list[int]:
    """Acknowledged ids missing from the new primary, sorted."""
    have = set(present)
    return sorted(i for i in set(acknowledged) if i not in have)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class StepTime:
    """One action of the plan, from the controller's log: when it ended (seconds after the
    fault) and how long it took itself. What a write pause is made of."""

    action: str
    ended: float
    seconds: float
    ok: bool = True


@dataclass(frozen=True)
class RunResult:
    """One fault injected and its consequences. Figures are seconds, None when not observed."""

    run: int
    fault: str
    old_primary: str
    new_primary: str | None
    fault_wall: float
    figures: Mapping[str, float | None]
    writes_acknowledged: int = 0
    reads_ok: int = 0
    write_errors: Mapping[str, int] = field(default_factory=dict)
    read_errors: Mapping[str, int] = field(default_factory=dict)
    lost_writes: int = 0
    lost_ids: tuple[int, ...] = ()
    """The first lost ids (at most 20), for the report."""
    restored: bool = False
    restore: str = ""
    """How the cluster was restored (or why it was not)."""
    error: str | None = None
    """Why the run did not complete (no failover, no writes after it ...)."""
    steps: tuple[StepTime, ...] = ()
    """The plan's actions in the order they ran."""
    leaders: tuple[str | None, str | None] | None = None
    """A fleet: the instance leading before the fault and after it."""
    plans: int = 0
    """Plans the controller started from the fault until the run ended (a storm shows here)."""
    failovers: int = 0
    isolated_acks: int | None = None
    """Writes a client on the cut-off old primary's own host got acknowledged after the cut
    (partition-primary; None for other faults): must be 0."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost_writes == 0 and self.restored

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["figures"] = dict(self.figures)
        out["write_errors"] = dict(self.write_errors)
        out["read_errors"] = dict(self.read_errors)
        out["lost_ids"] = list(self.lost_ids)
        out["steps"] = [asdict(step) for step in self.steps]
        out["ok"] = self.ok
        return out


class RunFacts(Protocol):
    """What a drill knows of one run when it reports it (runner's and fleet's ``_Run``)."""

    fault: str
    old: str
    fault_wall: float
    error: str | None


def run_result(
    index: int,
    run: RunFacts,
    new: str | None,
    figures: Mapping[str, float | None],
    lost: Sequence[int],
    restore: tuple[bool, str],
    **counts: Any,
) -> RunResult:
    """A run's result, its common part filled the one way (figures rounded, the first 20
    lost ids); ``counts``: the loads' counts and what only one kind of drill reports."""
    restored, how = restore
    return RunResult(
        run=index,
        fault=run.fault,
        old_primary=run.old,
        new_primary=new,
        fault_wall=round(run.fault_wall, 3),
        figures={k: (round(v, 4) if v is not None else None) for k, v in figures.items()},
        lost_writes=len(lost),
        lost_ids=tuple(lost[:20]),
        restored=restored,
        restore=how,
        error=run.error,
        **counts,
    )


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p90: float
    max: float


def summary(runs: Sequence[RunResult]) -> dict[str, Stats | None]:
    """p50 / p90 / max per figure over the runs that observed it."""
    out: dict[str, Stats | None] = {}
    for name, _ in described(runs):
        values = [v for r in runs if (v := r.figures.get(name)) is not None]
        out[name] = (
            Stats(len(values), percentile(values, 50), percentile(values, 90), max(values))
            if values
            else None
        )
    return out


def step_summary(runs: Sequence[RunResult]) -> dict[str, Stats]:
    """p50 / p90 / max of each action's own duration over the runs, in the order they ran."""
    seconds: dict[str, list[float]] = {}
    for run in runs:
        for step in run.steps:
            seconds.setdefault(step.action, []).append(step.seconds)
    return {
        action: Stats(len(v), percentile(v, 50), percentile(v, 90), max(v))
        for action, v in seconds.items()
    }


def exit_code(runs: Sequence[RunResult]) -> int:
    """0 when every run completed, restored the cluster and lost no acknowledged write."""
    return 0 if runs and all(r.ok for r in runs) else 1


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "none"


def error_totals(runs: Iterable[RunResult], which: str) -> dict[str, int]:
    """Client errors by kind over all runs; ``which`` is "write" or "read"."""
    totals: dict[str, int] = {}
    for run in runs:
        for kind, count in getattr(run, f"{which}_errors").items():
            totals[kind] = totals.get(kind, 0) + count
    return dict(sorted(totals.items()))


def render_run(run: RunResult) -> str:
    """The table printed after each run."""
    head = (
        f"run {run.run}: {run.fault} of {run.old_primary} -> "
        f"{run.new_primary or 'no new primary'}  "
        f"{'OK' if run.ok else 'FAILED'}"
    )
    if run.leaders is not None:
        head += f"  (leader {run.leaders[0] or '-'} -> {run.leaders[1] or 'none'})"
    rows = [("figure", "seconds", "meaning")]
    rows += [(name, _seconds(run.figures.get(name)), text) for name, text in described([run])]
    lines = [head, _table(rows)]
    if run.steps:
        lines.append("steps (ended after the fault, own time): " + _steps(run.steps))
    lines.append(f"writes acknowledged {run.writes_acknowledged}, lost {run.lost_writes}")
    lines.append(f"plans started {run.plans}, of which failovers {run.failovers}")
    if run.isolated_acks is not None:
        lines.append(f"writes acknowledged by the cut-off old primary: {run.isolated_acks}")
    if run.lost_ids:
        lines.append(f"lost ids: {', '.join(map(str, run.lost_ids))}")
    lines.append(f"write errors: {_errors(run.write_errors)}")
    lines.append(f"reads ok {run.reads_ok}; read errors: {_errors(run.read_errors)}")
    lines.append(f"restore: {run.restore or '-'}")
    if run.error:
        lines.append(f"error: {run.error}")
    return "\n".join(lines)


def _steps(steps: Sequence[StepTime]) -> str:
    return ", ".join(
        f"{s.action}{'' if s.ok else ' FAILED'} +{s.ended:.3f} ({s.seconds:.3f})" for s in steps
    )


def _stats_row(name: str, s: Stats | None) -> tuple[str, ...]:
    if s is None:
        return (name, "0", "-", "-", "-")
    return (name, str(s.n), _seconds(s.p50), _seconds(s.p90), _seconds(s.max))


def render_summary(runs: Sequence[RunResult]) -> str:
    """p50 / p90 / max per figure, each step's own time, and the totals."""
    stats = summary(runs)
    rows = [("figure", "n", "p50", "p90", "max")]
    rows += [_stats_row(name, stats[name]) for name, _ in described(runs)]
    rows += [_stats_row(f"step {a}", st) for a, st in step_summary(runs).items()]
    ok = sum(r.ok for r in runs)
    lost = sum(r.lost_writes for r in runs)
    acked = sum(r.writes_acknowledged for r in runs)
    faults = ", ".join(sorted({r.fault for r in runs})) or "-"
    plans = [r.plans for r in runs]
    isolated = [r.isolated_acks for r in runs if r.isolated_acks is not None]
    return "\n".join(
        [
            f"summary: {len(runs)} run(s) of {faults}, {ok} ok; "
            f"acknowledged writes {acked}, lost {lost}",
            f"failovers {sum(r.failovers for r in runs)}; plans per run max {max(plans, default=0)}"
            + (f"; acknowledged by the cut-off old primary {sum(isolated)}" if isolated else ""),
            f"client errors: writes {_errors(error_totals(runs, 'write'))}; "
            f"reads {_errors(error_totals(runs, 'read'))}",
            _table(rows),
        ]
    )


def document(
    runs: Sequence[RunResult], settings: Mapping[str, Any], machine: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``--json FILE`` writes: every run with every figure, the summary, the settings
    used and the machine."""
    stats = summary(runs)
    return {
        "version": 1,
        "figures": dict(described(runs)),
        "runs": [r.to_json() for r in runs],
        "summary": {k: (asdict(v) if v else None) for k, v in stats.items()},
        "steps": {k: asdict(v) for k, v in step_summary(runs).items()},
        "lost_writes": sum(r.lost_writes for r in runs),
        "write_errors": error_totals(runs, "write"),
        "read_errors": error_totals(runs, "read"),
        "ok": exit_code(runs) == 0,
        "settings": dict(settings),
        "machine": dict(machine),
    }


PLAN_KINDS = ("failover", "switchover")


def log_figures(records: Sequence[Mapping[str, Any]], at: float) -> dict[str, float | None]:
    """Detection, promotion, router-updated and plan-finished times (seconds after ``at``) from
    the controller's log lines written after the fault, each carrying its ``_mono`` time.

    Only the first failover/switchover plan started after ``at`` counts: its actions and end.
    Detection is the first DeadPrimary problem logged; for a switchover (no problem), the
    plan's start.
    """
    out: dict[str, float | None] = dict.fromkeys(
        ("detection", "promotion", "router_updated", "plan_finished")
    )
    after = [r for r in records if r["_mono"] >= at]
    started = next(
        (r for r in after if r["event"] == "plan_started" and r.get("kind") in PLAN_KINDS), None
    )
    dead = next(
        (r for r in after if r["event"] == "problem" and r.get("code") == "DeadPrimary"), None
    )
    if dead is not None:
        out["detection"] = dead["_mono"] - at
    elif started is not None and started["kind"] == "switchover":
        out["detection"] = started["_mono"] - at
    if started is None:
        return out
    plan = started["plan"]
    mine = [r for r in after if r.get("plan") == plan]
    promote = next(
        (r for r in mine if r["event"] == "action" and r["action"] == "Promote" and r["ok"]), None
    )
    if promote is not None:
        out["promotion"] = promote["_mono"] - at
        route = next(
            (
                r
                for r in mine
                if r["event"] == "action"
                and r["action"] == "Route"
                and r["ok"]
                and r["_mono"] >= promote["_mono"]
            ),
            None,
        )
        if route is not None:
            out["router_updated"] = route["_mono"] - at
    finished = next((r for r in mine if r["event"] == "plan_finished"), None)
    if finished is not None:
        out["plan_finished"] = finished["_mono"] - at
    return out


def _first_plan_started(
    records: Sequence[Mapping[str, Any]], at: float
) -> Mapping[str, Any] | None:
    """The plan_started line of the first failover/switchover started after ``at``, if any."""
    return next(
        (
            r
            for r in records
            if r["_mono"] >= at and r["event"] == "plan_started" and r.get("kind") in PLAN_KINDS
        ),
        None,
    )


def plan_steps(records: Sequence[Mapping[str, Any]], at: float) -> tuple[StepTime, ...]:
    """The actions of the first failover/switchover plan started after ``at``, as they ran."""
    started = _first_plan_started(records, at)
    if started is None:
        return ()
    return tuple(
        StepTime(r["action"], round(r["_mono"] - at, 4), float(r["seconds"]), bool(r["ok"]))
        for r in records
        if r["_mono"] >= at and r["event"] == "action" and r.get("plan") == started["plan"]
    )


def plans_started(
    records: Sequence[Mapping[str, Any]], at: float, kind: str | None = None
) -> list[Mapping[str, Any]]:
    """The plan_started lines after ``at`` (of one kind), to count failovers and storms."""
    return [
        r
        for r in records
        if r["_mono"] >= at
        and r["event"] == "plan_started"
        and (kind is None or r.get("kind") == kind)
    ]


def promoted_node(records: Sequence[Mapping[str, Any]], at: float) -> str | None:
    """The node the first successful Promote action after ``at`` promoted, if any."""
    return next(
        (
            r["node"]
            for r in records
            if r["_mono"] >= at and r["event"] == "action" and r["action"] == "Promote" and r["ok"]
        ),
        None,
    )


def finished_plan(records: Sequence[Mapping[str, Any]], at: float) -> Mapping[str, Any] | None:
    """The plan_finished line of the first failover/switchover started after ``at``, if any."""
    started = _first_plan_started(records, at)
    if started is None:
        return None
    return next(
        (r for r in records if r["event"] == "plan_finished" and r.get("plan") == started["plan"]),
        None,
    )
