"""Scale benchmark: ``hacontrol run`` against a fake fleet of MariaDB nodes (tests/fakefleet).

    .venv/bin/python bench/scale.py single --nodes 3 --seconds 120 [--kill-primary 60]
    .venv/bin/python bench/scale.py single --nodes 64 --seconds 600
    .venv/bin/python bench/scale.py multi --clusters 30 --size 3 --seconds 600 [--kill-primary 300]
    .venv/bin/python bench/scale.py one --nodes 1000 --seconds 600 [--kill-primary 300]
    .venv/bin/python bench/scale.py fleet --nodes 1000 --seconds 120

``single``: one cluster of ``--nodes`` nodes (today's settings allow 64) and one controller.
``multi``: ``--clusters`` clusters of ``--size`` nodes and one controller process per cluster
(the way before ``[[clusters]]``). ``one``: ``--nodes`` nodes in clusters of ``--sizes``
(1,000 in sizes 3,3,4: 300 clusters) and ONE ``hacontrol run`` managing them all
(``[[clusters]]`` settings). ``fleet``: no controller; the real probe code
(``NodeProbe``, with its watch connection) probes every node of a ``--nodes`` fleet from one
process, to show what the fake itself costs at that scale.

The fake fleet runs in its own process; controllers are ``hacontrol run`` subprocesses with
the sandbox's probe settings (interval 1 s, timeout 0.5 s, io_stall 1.5 s), no router, no API,
``log.level`` from ``--log-level`` (info). Once every controller has logged that its cluster
is as desired, and ``--warmup`` seconds more, the window opens:

- controller CPU: user+system from /proc/<pid>/stat over the window, summed over the
  controllers, as % of one core; per probe: that CPU divided by the probes the fake received;
- RSS: /proc/<pid>/status VmRSS sampled every second (largest per process, and the sum);
- probe cadence: from the fake's own record of every probe it answered (it costs the
  controller nothing): per node the largest gap between two consecutive probes, then
  p50/p99/max over the nodes; and every gap's p50/p99/max. Stamped with the time the
  kernel received each probe on the node's socket (``SO_TIMESTAMPNS``,
  tests/fakefleet/stamps.py): the fake's own lateness in reading it is not the
  controller's. The same figures by the time the fake read them:
  ``probe_cadence_as_the_fake_read_them``;
- log volume: the controllers' lines with a timestamp inside the window, per node per hour;
- the fake's own CPU from /proc, as % of one core;
- ``--kill-primary S``: S seconds into the window, the fake kills the first cluster's primary
  (listener and connections closed at once); detection, promotion and end of the failover
  are read from that controller's log (as the drill does; with ``one``, that cluster's lines).
  The killed node is left out of the cadence figures. Compare with a lone cluster:
  ``single --nodes 3 --kill-primary S``.
- ``--gc``: (``one``) the controller notes every garbage collection (``gc.callbacks``; nothing
  else changed): by generation, count, total and longest pause (and the process time it
  used), and which slow seconds of the cadence had a pause of 0.1 s or more; and how late
  each probe started against the time it was due (``probe_start_lateness``), with what the
  late ones overlapped (a collection, log lines). The controller applies its own collector policy
  (``hacontrol/gcpolicy.py``) once every cluster has started; ``--gc-freeze`` and
  ``--gc-threshold`` are the experiment that came before it (a second freeze at the window's
  start, and other thresholds).
- ``--py-spy FILE``: (``one``) py-spy samples the controller's stacks over the window (raw
  collapsed stacks in FILE); the functions with the most own and inclusive time go into the
  figures (``profile``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacontrol.drill.report import log_figures
from hacontrol.sandbox import find_free_base_port
from tests.fakefleet.control import FleetControl
from tests.fakefleet.spec import (
    FleetSpec,
    cluster_sizes,
    clusters_settings_text,
    fleet,
    settings_data,
    toml_text,
)

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 60.0


# ---- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds a process ran and seconds it waited, runnable, for a core (/proc/<pid>/schedstat:
    both in nanoseconds)."""
    ran, waited, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Processes:
    """Every subprocess this bench started, stopped (by pid) when the bench ends."""

    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[Any]:
        with log.open("w") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_env()
            )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def set_gc_threshold(text: str | None) -> None:
    """--gc-threshold for the controller (read by ``gc_watched``)."""
    if text:
        os.environ["SCALE_GC_THRESHOLD"] = text


def start_fleet(procs: Processes, spec: FleetSpec, tmp: Path) -> tuple[int, FleetControl]:
    (tmp / "fleet.json").write_text(spec.to_json())
    log = tmp / "fleet.log"
    proc = procs.spawn(
        [sys.executable, "-m", "tests.fakefleet", "--spec", str(tmp / "fleet.json"),
         "--kernel-stamps"],
        log,
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text()
        if text.startswith("ready "):
            return proc.pid, FleetControl(text.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"the fake fleet exited: {text}")
        time.sleep(0.1)
    raise RuntimeError("the fake fleet did not become ready")


def start_one_controller(
    procs: Processes, spec: FleetSpec, tmp: Path, level: str, gc_log: Path | None = None
) -> dict[str, tuple[int, Path]]:
    """ONE ``hacontrol run`` for every cluster (``[[clusters]]``): {"all": (pid, log file)}.
    ``gc_log``: the controller notes there every garbage collection (``gc_watched``)."""
    settings = tmp / "clusters.toml"
    text = clusters_settings_text(spec, journal=str(tmp / "journal.jsonl"), level=level)
    settings.write_text("# written by bench/scale.py\n" + text)
    log = tmp / "controller.log"
    argv = [sys.executable, "-m", "hacontrol", "run", "--config", str(settings)]
    if gc_log is not None:
        argv = [sys.executable, str(Path(__file__)), "gc-watch", str(gc_log), *argv[3:]]
    return {"all": (procs.spawn(argv, log).pid, log)}


def start_controllers(
    procs: Processes, spec: FleetSpec, tmp: Path, level: str
) -> dict[str, tuple[int, Path]]:
    """One ``hacontrol run`` per cluster: cluster name -> (pid, log file)."""
    out = {}
    for cluster in spec.clusters:
        settings = tmp / f"{cluster.name}.toml"
        journal = str(tmp / f"{cluster.name}.journal")
        data = settings_data(cluster, spec, journal=journal, level=level)
        settings.write_text("# written by bench/scale.py\n" + toml_text(data))
        log = tmp / f"{cluster.name}.log"
        argv = [sys.executable, "-m", "hacontrol", "run", "--config", str(settings)]
        out[cluster.name] = (procs.spawn(argv, log).pid, log)
    return out


def wait_settled(logs: dict[str, Path], timeout: float, spec: FleetSpec) -> None:
    """Until every cluster's controller has decided once that its cluster is as desired."""
    deadline = time.monotonic() + timeout
    pending = {c.name for c in spec.clusters}
    while pending and time.monotonic() < deadline:
        for log in logs.values():
            pending -= {r["cluster"] for r in log_records(log) if r.get("rule") == "Nothing"}
        time.sleep(0.5)
    if pending:
        some = sorted(pending)[:10]
        raise RuntimeError(f"{len(pending)} clusters not settled after {timeout} s: {some}")


# ---- measuring ------------------------------------------------------------------------------


@dataclass
class Window:
    mono: tuple[float, float]
    wall: tuple[float, float]
    cpu: dict[int, float]
    rss_max: dict[int, int]
    kill: tuple[str, float, float] | None = None  # node, monotonic, wall
    load: list[float] = field(default_factory=list)  # the machine's 1-minute load, each second
    sched: list[tuple[float, float, float]] = field(default_factory=list)
    """Each second, the first controller's (monotonic time, CPU seconds, seconds runnable but
    waiting for a core: /proc/<pid>/schedstat's run delay)."""


def observe(pids: list[int], seconds: float, kill_at: float | None, kill: Any) -> Window:
    """CPU of every pid over ``seconds``, RSS sampled each second, the kill done on time."""
    cpu0 = {pid: cpu_seconds(pid) for pid in pids}
    mono0, wall0 = time.monotonic(), time.time()
    rss_max = dict.fromkeys(pids, 0)
    killed, load, sched = None, [], []
    while (now := time.monotonic()) < mono0 + seconds:
        load.append(os.getloadavg()[0])
        sched.append((now, *schedstat(pids[-1])))
        for pid in pids:
            rss_max[pid] = max(rss_max[pid], rss_kib(pid))
        if kill_at is not None and killed is None and now >= mono0 + kill_at:
            killed = (kill(), time.monotonic(), time.time())
        time.sleep(min(1.0, max(0.0, mono0 + seconds - time.monotonic())))
    mono1, wall1 = time.monotonic(), time.time()
    cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in pids}
    return Window((mono0, mono1), (wall0, wall1), cpu, rss_max, killed, load, sched)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 4),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
        "max": round(ordered[-1], 4),
    }


def cadence_figures(cadence: dict[str, Any]) -> dict[str, Any]:
    nodes = cadence["nodes"]
    largest = [v["max_gap"] for v in nodes.values() if v["max_gap"] is not None]
    never = sorted(k for k, v in nodes.items() if v["probes"] < 2)
    per_second = cadence["per_second"]
    return {
        "nodes": len(nodes),
        "probes": sum(v["probes"] for v in nodes.values()),
        "probes_per_second": per_second["summary"],
        "seconds_below_half_the_median": per_second["slow_seconds"],
        "largest_gap_per_node": percentiles(largest),
        "all_gaps": {
            k: round(v, 4) if isinstance(v, float) else v for k, v in cadence["gaps"].items()
        },
        "nodes_with_fewer_than_2_probes": never,
    }


def log_records(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError, KeyError):
            record = json.loads(line)
            record["_mono"] = datetime.fromisoformat(record["ts"]).timestamp()
            yield record


def log_figures_of(logs: dict[str, Path], wall: tuple[float, float], nodes: int) -> dict[str, Any]:
    """Lines in the window; the most frequent events, the plans started (by kind) and the
    problems raised (by code): at rest there should be none of either."""
    lines, events = 0, collections.Counter()
    plans: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    for path in logs.values():
        for record in log_records(path):
            if wall[0] <= record["_mono"] < wall[1]:
                lines += 1
                events[record["event"]] += 1
                if record["event"] == "plan_started":
                    plans[str(record.get("kind"))] += 1
                if record["event"] == "problem":
                    problems[str(record.get("code"))] += 1
                if record["event"] == "probe" and not record.get("ok", True):
                    failures[str(record.get("error"))[:60]] += 1
    hours = (wall[1] - wall[0]) / 3600
    return {
        "lines": lines,
        "lines_per_node_per_hour": round(lines / nodes / hours, 1),
        "events": dict(events.most_common(8)),
        "plans_started": dict(plans),
        "problems": dict(problems.most_common(8)),
        "failed_probes_by_error": dict(failures.most_common(6)),
    }


def failover_of(log: Path, at_wall: float, cluster: str) -> dict[str, Any]:
    records = [r for r in log_records(log) if r.get("cluster") == cluster]
    figures = log_figures(records, at_wall)
    return {k: (round(v, 3) if v is not None else None) for k, v in figures.items()}


# ---- the runs -------------------------------------------------------------------------------


def run(spec: FleetSpec, args: argparse.Namespace, *, drive: bool = False) -> dict[str, Any]:
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="hacontrol-scale-") as name:
        tmp = Path(name)
        try:
            fleet_pid, control = start_fleet(procs, spec, tmp)
            resolved = _resolved(spec, control)
            if drive:
                (tmp / "resolved.json").write_text(resolved.to_json())
                argv = [sys.executable, str(Path(__file__)), "drive", str(tmp / "resolved.json")]
                clients = {"driver": (procs.spawn(argv, tmp / "driver.log").pid, None)}
            elif args.mode == "one":
                gc_log = tmp / "gc.log" if args.gc else None
                clients = start_one_controller(procs, resolved, tmp, args.log_level, gc_log)
            else:
                clients = start_controllers(procs, resolved, tmp, args.log_level)
            if not drive:
                logs = {n: log for n, (_, log) in clients.items() if log is not None}
                wait_settled(logs, args.ready_timeout, resolved)
            time.sleep(args.warmup)
            victim = resolved.clusters[0].primary

            def kill() -> str:
                control.act(victim, "kill")
                return victim

            pids = [pid for pid, _ in clients.values()]
            if getattr(args, "gc_freeze", False):
                os.kill(pids[0], signal.SIGUSR2)
            spy = getattr(args, "py_spy", None)
            sampler = sample_stacks(pids[0], args.seconds, spy) if spy else None
            window = observe([fleet_pid, *pids], args.seconds, args.kill_primary, kill)
            if sampler is not None:
                stop_sampling(sampler)
            skip = [window.kill[0]] if window.kill else []
            cadence = control.cadence(*window.mono, skip=skip, stamp="kernel")
            result = report(resolved, clients, fleet_pid, window, cadence, args)
            read = control.cadence(*window.mono, skip=skip, stamp="loop")
            result["probe_cadence_as_the_fake_read_them"] = cadence_figures(read)
            if getattr(args, "gc", False):
                result["gc"] = gc_figures(tmp / "gc.log", window.mono, cadence)
                logs = {n: log for n, (_, log) in clients.items() if log is not None}
                result["probe_start_lateness"] = lateness_figures(
                    tmp / "timers.log", tmp / "gc.log", logs, window
                )
            if spy:
                result["profile"] = {"py_spy": str(spy), **stack_summary(spy)}
            return result
        finally:
            procs.stop_all()
            if args.keep is not None:  # the logs, settings and journals, for a closer look
                shutil.copytree(tmp, args.keep, dirs_exist_ok=True)


def _resolved(spec: FleetSpec, control: FleetControl) -> FleetSpec:
    """The spec with the ports the fake bound (they are fixed here, so unchanged)."""
    ports = {n["name"]: n["port"] for n in control.nodes()}
    for _cluster, node in spec.nodes():
        if ports[node.name] != node.port:
            raise RuntimeError(f"{node.name} listens on {ports[node.name]}, not {node.port}")
    return spec


def report(
    spec: FleetSpec,
    clients: dict[str, tuple[int, Path | None]],
    fleet_pid: int,
    window: Window,
    cadence: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    seconds = window.mono[1] - window.mono[0]
    pids = [pid for pid, _ in clients.values()]
    cpu = sum(window.cpu[pid] for pid in pids)
    figures = cadence_figures(cadence)
    nodes = sum(len(c.nodes) for c in spec.clusters)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "load_average_1min_in_window": percentiles(window.load),
        "client": "probe driver (NodeProbe only)" if "driver" in clients else "hacontrol run",
        "processes": len(pids),
        "clusters": len(spec.clusters),
        "nodes": nodes,
        "seconds": round(seconds, 1),
        "cpu_percent_of_one_core": round(100 * cpu / seconds, 2),
        "cpu_ms_per_probe": round(1000 * cpu / max(1, figures["probes"]), 3),
        "rss_max_mib_per_process": round(max(window.rss_max[p] for p in pids) / 1024, 1),
        "rss_sum_mib": round(sum(window.rss_max[p] for p in pids) / 1024, 1),
        "probe_cadence": figures,
        "fake_cpu_percent_of_one_core": round(100 * window.cpu[fleet_pid] / seconds, 2),
        "fake_rss_mib": round(window.rss_max[fleet_pid] / 1024, 1),
    }
    logs = {name: log for name, (_, log) in clients.items() if log is not None}
    if logs:
        result["log"] = log_figures_of(logs, window.wall, nodes)
    if window.kill is not None:
        cluster = spec.clusters[0].name
        log = logs.get(cluster) or logs["all"]
        figures = failover_of(log, window.kill[2], cluster)
        result["failover"] = {"cluster": cluster, "node": window.kill[0], **figures}
    return result


# ---- the probe driver (fleet mode) ---------------------------------------------------------


def drive(spec_path: Path) -> None:
    """Probe every node of a fleet with the real probe code until terminated."""
    import uvloop

    from hacontrol.mysqlconn import Endpoint
    from hacontrol.probes.mysql import NodeProbe

    spec = FleetSpec.load(spec_path)
    failures = collections.Counter()

    def emit(event: Any) -> None:
        if not getattr(event, "ok", True):
            failures[event.node] += 1

    async def main() -> None:
        probes = [
            NodeProbe(
                node.name,
                Endpoint(node.host, node.port, spec.user, spec.password),
                interval=1.0,
                timeout=0.5,
                emit=emit,
            )
            for _cluster, node in spec.nodes()
        ]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(p.run(), name=p.name) for p in probes]
            await stop.wait()
            for task in tasks:
                task.cancel()
        print(f"failed probes: {sum(failures.values())} on {len(failures)} nodes", flush=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def sample_stacks(pid: int, seconds: float, out: Path) -> subprocess.Popen[Any]:
    """py-spy (a sampling profiler, outside the process: it costs the controller nothing but
    its own CPU) records the controller's stacks over the window, as collapsed stacks."""
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", "50", "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def gc_watched(log: Path, argv: list[str]) -> None:
    """``python -m hacontrol ARGV`` with every garbage collection noted in ``log`` (generation,
    monotonic start, seconds): a collection of the oldest generation stops the event loop for
    as long as it walks every object."""
    import gc
    import runpy

    out = log.open("w", buffering=1)
    started: dict[str, float] = {}

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"], started["cpu"] = time.monotonic(), time.process_time()
        else:
            t, cpu = started.get("t", time.monotonic()), started.get("cpu", time.process_time())
            took, ran = time.monotonic() - t, time.process_time() - cpu
            out.write(f"{info['generation']} {t:.4f} {took:.4f} {ran:.4f}\n")

    gc.callbacks.append(note)
    note_timer_lateness(log.with_name("timers.log"))
    # SIGUSR2: gc.freeze(), every object alive now out of the collector's walks (what the
    # bench's --gc-freeze tries: start-up's settings, views, metrics are long-lived).
    thresholds = os.environ.get("SCALE_GC_THRESHOLD")

    def tune(_sig: int, _frame: Any) -> None:
        gc.freeze()
        if thresholds:
            gc.set_threshold(*(int(t) for t in thresholds.split(",")))

    signal.signal(signal.SIGUSR2, tune)
    sys.argv = ["hacontrol", *argv]
    runpy.run_module("hacontrol", run_name="__main__", alter_sys=True)


def note_timer_lateness(log: Path) -> None:
    """Each probe's start against the time it was due (its slot on the probe's grid; before
    the grid, the start before it plus the interval), written to ``log`` as "start lateness"
    (monotonic seconds): how late the controller's own loop ran it. Only in this bench: the
    product logs nothing per probe."""
    from hacontrol.probes import mysql

    out = log.open("w")  # buffered; flushed about once a second
    original = mysql.NodeProbe.probe
    last: dict[int, float] = {}
    flushed = [time.monotonic()]

    async def probe(self: mysql.NodeProbe) -> Any:
        start, before = self._last_start, last.get(id(self))
        last[id(self)] = start
        due = getattr(self, "_due", None)
        due = (before + self._interval if before is not None else None) if due is None else due
        if due is not None and due > float("-inf"):
            out.write(f"{start:.4f} {start - due:.4f}\n")
            if start - flushed[0] >= 1.0:
                out.flush()
                flushed[0] = start
        return await original(self)

    mysql.NodeProbe.probe = probe  # type: ignore[method-assign]


def gc_figures(log: Path, mono: tuple[float, float], cadence: dict[str, Any]) -> dict[str, Any]:
    """Collections in the window by generation (count, total and longest pause), and which of
    the cadence's slow seconds had a collection of 0.1 s or more in them."""
    by_gen: dict[str, list[float]] = collections.defaultdict(list)
    cpu_by_gen: dict[str, list[float]] = collections.defaultdict(list)
    long_at: list[float] = []
    for line in log.read_text().splitlines():
        gen, at, took, ran = line.split()
        if mono[0] <= float(at) < mono[1]:
            by_gen[gen].append(float(took))
            cpu_by_gen[gen].append(float(ran))
            if float(took) >= 0.1:
                long_at.append(float(at) - mono[0])
    slow = cadence["per_second"]["slow_seconds"]
    return {
        "by_generation": {
            g: {
                "count": len(v),
                "total_s": round(sum(v), 3),
                "max_s": round(max(v), 4),
                "process_time_total_s": round(sum(cpu_by_gen[g]), 3),
            }
            for g, v in sorted(by_gen.items())
        },
        "pauses_of_0.1s_or_more_at": [round(t, 1) for t in long_at],
        "slow_seconds_with_such_a_pause": [
            s for s in slow if any(s - 1 <= t < s + 1 for t in long_at)
        ],
    }


LATE = 0.02
"""A probe that started this much (seconds) after it was due counts as late in the figures."""


def lateness_figures(
    timers: Path, gc_log: Path, logs: dict[str, Path], window: Window
) -> dict[str, Any]:
    """How late the controller started its probes (``note_timer_lateness``), and what the late
    ones (``LATE`` or more) overlapped: a garbage collection (its wall time against the
    process time it used: a collection that used less CPU than it took was not scheduled
    meanwhile), the controller's log lines (``cluster_summary`` or other: bursts of events)."""
    mono = window.mono
    pauses = sorted(
        (float(at), float(at) + float(took), float(took) - float(ran))
        for gen, at, took, ran in (line.split() for line in gc_log.read_text().splitlines())
    )
    starts = [p[0] for p in pauses]
    offset = window.wall[0] - mono[0]
    lines = sorted(
        (r["_mono"] - offset, r["event"])
        for path in logs.values()
        for r in log_records(path)
        if window.wall[0] <= r["_mono"] < window.wall[1]
    )
    line_times = [t for t, _ in lines]
    late: list[float] = []
    every: list[float] = []
    kinds: collections.Counter[str] = collections.Counter()
    for row in timers.read_text().splitlines():
        start, lateness = (float(v) for v in row.split())
        if not mono[0] <= start < mono[1]:
            continue
        every.append(lateness)
        if lateness < LATE:
            continue
        late.append(lateness)
        due = start - lateness
        kinds.update(_overlaps(due, start, pauses, starts, lines, line_times))
    figures = {"every_probe": percentiles(every), "late_probes": len(late)}
    figures["late_probes_lateness"] = percentiles(late)
    figures["late_probes_overlapping"] = dict(kinds.most_common())
    figures["seconds_by_late_probes"] = _late_seconds(timers, window)
    return figures


def _late_seconds(timers: Path, window: Window) -> dict[str, Any]:
    """The window's seconds with 100 or more late probes against the others: the controller's
    CPU and its wait for a core in them (ms per second, mean), from ``Window.sched``."""
    late: collections.Counter[int] = collections.Counter()
    for row in timers.read_text().splitlines():
        start, lateness = (float(v) for v in row.split())
        if window.mono[0] <= start < window.mono[1] and lateness >= LATE:
            late[int(start - window.mono[0])] += 1
    groups: dict[str, list[tuple[float, float]]] = {"100_or_more_late": [], "others": []}
    for (t0, ran0, wait0), (_t1, ran1, wait1) in itertools.pairwise(window.sched):
        key = "100_or_more_late" if late[int(t0 - window.mono[0])] >= 100 else "others"
        groups[key].append((ran1 - ran0, wait1 - wait0))
    return {
        key: {
            "seconds": len(rows),
            "cpu_ms_mean": round(1000 * sum(r for r, _ in rows) / max(1, len(rows)), 1),
            "waiting_for_a_core_ms_mean": round(
                1000 * sum(w for _, w in rows) / max(1, len(rows)), 1
            ),
            "waiting_for_a_core_ms_max": round(1000 * max((w for _, w in rows), default=0), 1),
        }
        for key, rows in groups.items()
    }


def _overlaps(
    due: float,
    start: float,
    pauses: list[tuple[float, float, float]],
    starts: list[float],
    lines: list[tuple[float, str]],
    line_times: list[float],
) -> list[str]:
    """What happened between a late probe's due time and its start."""
    found = []
    i = bisect.bisect_right(starts, start)
    during = [p for p in pauses[max(0, i - 50) : i] if p[1] > due]
    if during:
        found.append("a collection")
        if any(unscheduled > 0.01 for _s, _e, unscheduled in during):
            found.append("a collection with 10 ms or more not scheduled")
    else:
        found.append("no collection")
    lo, hi = bisect.bisect_left(line_times, due - 0.05), bisect.bisect_right(line_times, start)
    events = {event for _t, event in lines[lo:hi]}
    if "cluster_summary" in events:
        found.append("cluster_summary lines")
    if events - {"cluster_summary"}:
        found.append("other log lines")
    return found


def stop_sampling(sampler: subprocess.Popen[Any]) -> None:
    """py-spy ends by itself after its duration, late when it fell behind on a loaded machine;
    SIGINT makes it write what it has."""
    try:
        sampler.wait(15)
    except subprocess.TimeoutExpired:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)


def stack_summary(raw: Path, top: int = 25) -> dict[str, Any]:
    """Where the controller's time goes, from py-spy's collapsed stacks ("frame;frame;... n"):
    per function its share of all samples on top of the stack (own time) and anywhere in it
    (inclusive time), in percent."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)

    def share(counter: collections.Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / max(1, total), 1) for k, v in counter.most_common(top)}

    return {"samples": total, "own_percent": share(own), "inclusive_percent": share(inclusive)}


def _frame(frame: str) -> str:
    """'probe (hacontrol/probes/mysql.py:120)' -> 'probe (hacontrol/probes/mysql.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/hacontrol/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) :].lstrip("/")
            break
    return f"{name} ({path})"


# ---- command line ---------------------------------------------------------------------------


def fleet_spec(sizes: list[int]) -> FleetSpec:
    return fleet(sizes, base_port=find_free_base_port(sum(sizes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("single", "multi", "one", "fleet"):
        p = sub.add_parser(mode)
        p.add_argument("--seconds", type=float, default=60.0)
        p.add_argument("--warmup", type=float, default=5.0)
        p.add_argument(
            "--ready-timeout",
            type=float,
            default=READY_TIMEOUT,
            help="seconds for every cluster to settle before the window",
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info"])
        p.add_argument("--kill-primary", type=float, metavar="S", help="kill after S seconds")
        p.add_argument("--json", type=Path, help="write every figure here")
        p.add_argument("--keep", type=Path, metavar="DIR", help="copy the logs etc. here")
    sub.choices["single"].add_argument("--nodes", type=int, default=3)
    sub.choices["multi"].add_argument("--clusters", type=int, default=30)
    sub.choices["multi"].add_argument("--size", type=int, default=3)
    for mode in ("fleet", "one"):
        sub.choices[mode].add_argument("--nodes", type=int, default=1000)
        sub.choices[mode].add_argument("--sizes", default="3,3,4")
    sub.choices["one"].add_argument(
        "--py-spy", type=Path, metavar="FILE", help="sample the controller's stacks (py-spy)"
    )
    sub.choices["one"].add_argument(
        "--gc", action="store_true", help="note the controller's garbage collections"
    )
    sub.choices["one"].add_argument(
        "--gc-freeze",
        action="store_true",
        help="with --gc: gc.freeze() again in the controller when the window opens (the "
        "experiment before hacontrol/gcpolicy.py)",
    )
    sub.choices["one"].add_argument(
        "--gc-threshold",
        metavar="G0,G1,G2",
        help="with --gc-freeze: and gc.set_threshold(G0, G1, G2) then",
    )
    p = sub.add_parser("gc-watch", help="(internal) hacontrol with its collections noted")
    p.add_argument("log", type=Path)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("drive", help="(internal) probe every node of a fleet spec")
    p.add_argument("spec", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally: stop what it started
    set_gc_threshold(getattr(args, "gc_threshold", None))
    if args.mode == "drive":
        drive(args.spec)
        return
    if args.mode == "gc-watch":
        gc_watched(args.log, args.argv)
        return
    if args.mode == "single":
        result = run(fleet_spec([args.nodes]), args)
    elif args.mode == "multi":
        result = run(fleet_spec([args.size] * args.clusters), args)
    else:
        sizes = cluster_sizes(args.nodes, [int(s) for s in args.sizes.split(",")])
        result = run(fleet_spec(sizes), args, drive=args.mode == "fleet")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
