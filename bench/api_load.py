"""Hostile API load against a running controller, and what it does to probes and the main loop.

    .venv/bin/python bench/api_load.py measure [--seconds 20] [--interval 0.5] [--get-rate 1200]
                                               [--idle 20000] [--json FILE]
    .venv/bin/python bench/api_load.py flood --url http://127.0.0.1:8008 [--get-rate 1200]
                                             [--path /metrics] [--idle 0] [--seconds 10]
                                             [--source 127.0.0.2] [--json FILE]
    .venv/bin/python bench/api_load.py drill [--runs 10] [--get-rate 1200] [--idle 20000]
                                             [--out DIR] [--flood-nice 19] [--api-nice 10]

``measure`` starts a sandbox of its own (removed afterwards), runs the controller in this
process with the API on, and measures three phases side by side: no load, a flood of
unauthenticated GETs, and a flood of idle connections (re-opened as soon as the server closes
them). It reports, per phase: the main event loop's lag (a 10 ms sleep's overshoot, sampled on
the loop that probes and decides), the gaps between two probes of one node, the probe round
trip, ``/health`` answers and their latency (asked every 0.25 s from another address), an
operator command's round trip through the API (pause then resume, every second), the
controller's CPU, and what the flood got (answers by status, connections the server closed).

``drill`` measures failovers under the same floods: ``hacontrol drill --fault kill`` (the
controller in the bench's process, its API in the API process of its own that ``hacontrol
run`` uses, on the sandbox's port) with no load, then with the GET flood, then with the
idle-connection flood running from other processes the whole time; each drill's figures go to
``DIR/kill-<load>.json`` and the three are printed side by side, with the CPU the controller
and its API process spent. ``--api-nice`` overrides the API process's niceness
(``api_process.API_NICE``).

``flood`` is the load generator alone, a separate process so that it never shares the
controller's interpreter: GETs at a fixed rate on keep-alive connections, and/or ``--idle``
connections that send nothing. It binds to ``--source`` (a loopback address of its own, so
that the per-client rate limit sees one client) and prints a JSON summary on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
FLOOD_NICE = 0
"""``measure``: niceness of the flood processes (``--flood-nice``)."""
PER_PROCESS = 9000
"""Idle connections one flood process holds at most (it needs a descriptor for each)."""


# ---------------------------------------------------------------------------------------------
# The flood (its own process)


class Flood:
    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.statuses: Counter[str] = Counter()
        self.closed_by_server = 0
        self.connect_errors: Counter[str] = Counter()
        self.open = 0
        self.connected = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(
                self.host, self.port, local_addr=(self.source, 0), limit=1 << 20
            )
        except OSError as exc:
            self.connect_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            return None

    async def getter(self, path: str, period: float, start: float) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        due = start
        while True:
            conn = await self._connect()
            if conn is None:
                continue
            reader, writer = conn
            try:
                while True:
                    due += period
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    match = STATUS.match(head)
                    self.statuses[match.group(1).decode() if match else "?"] += 1
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    if length:
                        await reader.readexactly(int(length.group(1)))
                    if b"connection: close" in head.lower():
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.closed_by_server += 1
            finally:
                writer.close()

    async def idler(self) -> None:
        while True:
            conn = await self._connect()
            if conn is None:
                continue
            reader, writer = conn
            self.open += 1
            self.connected += 1
            try:
                await reader.read(1)  # b"" when the server closes it
                self.closed_by_server += 1
            except OSError:
                self.closed_by_server += 1
            finally:
                self.open -= 1
                writer.close()
            await asyncio.sleep(0.05)


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    match = re.fullmatch(r"http://([^:/]+):(\d+)/?", args.url)
    if not match:
        raise SystemExit(f"--url must be http://HOST:PORT, got {args.url!r}")
    f = Flood(match.group(1), int(match.group(2)), args.source)
    tasks = []
    start = time.monotonic()
    if args.get_rate > 0:
        workers = max(1, min(64, int(args.get_rate // 50)))
        period = workers / args.get_rate
        tasks += [
            asyncio.create_task(f.getter(args.path, period, start + i * period / workers))
            for i in range(workers)
        ]
    for i in range(args.idle):
        tasks.append(asyncio.create_task(f.idler()))
        if i % 500 == 499:
            await asyncio.sleep(0.01)  # let the first ones connect before opening more
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds)
    seconds = time.monotonic() - start
    held = f.open
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    answered = sum(f.statuses.values())
    return {
        "seconds": round(seconds, 2),
        "get_answers": dict(f.statuses),
        "get_per_second": round(answered / seconds, 1),
        "idle_connections_opened": f.connected,
        "idle_connections_held_at_end": held,
        "connections_closed_by_server": f.closed_by_server,
        "connect_errors": dict(f.connect_errors),
    }


def run_flood(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(flood(args))
    text = json.dumps(result)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


def start_flood(
    url: str,
    *,
    get_rate: float,
    idle: int,
    seconds: float,
    source: str,
    path: str = "/metrics",
    nice: int = 0,
) -> list[tuple[subprocess.Popen[str], Path]]:
    """Flood processes (one per PER_PROCESS idle connections); stop_flood() sums them up."""
    procs = []
    shares = [PER_PROCESS] * (idle // PER_PROCESS) + (
        [idle % PER_PROCESS] if idle % PER_PROCESS else []
    )
    shares = shares or [0]
    for i, share in enumerate(shares):
        out = Path(tempfile.mkstemp(prefix="api-flood-", suffix=".json")[1])
        argv = [
            *(["nice", "-n", str(nice)] if nice else []),
            sys.executable, __file__, "flood", "--url", url, "--path", path,
            "--get-rate", str(get_rate if i == 0 else 0), "--idle", str(share),
            "--seconds", str(seconds), "--source", source, "--json", str(out),
        ]  # fmt: skip
        procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, text=True), out))
    return procs


def stop_flood(procs: list[tuple[subprocess.Popen[str], Path]]) -> dict[str, Any]:
    total: dict[str, Any] = {"get_answers": Counter(), "get_per_second": 0.0}
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, out in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists() and out.stat().st_size:
            part = json.loads(out.read_text())
            total["get_answers"].update(part["get_answers"])
            total["get_per_second"] += part["get_per_second"]
            for key in (
                "idle_connections_opened",
                "idle_connections_held_at_end",
                "connections_closed_by_server",
            ):
                total[key] = total.get(key, 0) + part[key]
        out.unlink(missing_ok=True)
    total["get_answers"] = dict(total["get_answers"])
    return total


# ---------------------------------------------------------------------------------------------
# What the controller sees (in this process)


class Observer:
    """Main-loop lag, probe gaps and round trips, /health answers, command round trips."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.lags: list[float] = []
        self.probe_starts: dict[str, list[float]] = {}
        self.rtts: list[float] = []
        self.failed_probes = 0
        self.health: list[tuple[int, float]] = []
        self.commands: list[tuple[int, float]] = []
        self._stop = threading.Event()

    def reset(self) -> None:
        self.lags.clear()
        self.probe_starts.clear()
        self.rtts.clear()
        self.failed_probes = 0
        self.health.clear()
        self.commands.clear()

    def on_event(self, event: Any) -> None:
        from hacontrol.events import ProbeResult

        if isinstance(event, ProbeResult):
            self.probe_starts.setdefault(event.node, []).append(event.at)
            if event.ok and event.rtt is not None:
                self.rtts.append(event.rtt)
            elif not event.ok:
                self.failed_probes += 1

    async def sample_lag(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append(time.monotonic() - asked - 0.01)

    def _http(self, method: str, path: str) -> tuple[int, float]:
        headers = {"Authorization": f"Bearer {self.token}"} if method == "POST" else {}
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        return status, time.monotonic() - started

    def clients(self) -> list[threading.Thread]:
        """Two threads (blocking HTTP, off the main loop): /health every 0.25 s, and a
        pause+resume command pair every second."""

        def health() -> None:
            while not self._stop.wait(0.25):
                self.health.append(self._http("GET", "/health"))

        def commands() -> None:
            while not self._stop.wait(1.0):
                for path in ("/pause", "/resume"):
                    self.commands.append(self._http("POST", path))

        threads = [threading.Thread(target=t, daemon=True) for t in (health, commands)]
        for t in threads:
            t.start()
        return threads

    def stop_clients(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for t in threads:
            t.join(15)
        self._stop.clear()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(obs: Observer, interval: float, cpu: float, seconds: float) -> dict[str, Any]:
    gaps = [b - a for starts in obs.probe_starts.values() for a, b in itertools.pairwise(starts)]
    ms = 1000.0
    health_ok = [t for s, t in obs.health if s == 200]
    command_ok = [t for s, t in obs.commands if s == 200]
    return {
        "loop_lag_p50_ms": round(pct(obs.lags, 0.5) * ms, 2),
        "loop_lag_p99_ms": round(pct(obs.lags, 0.99) * ms, 2),
        "loop_lag_max_ms": round(max(obs.lags, default=float("nan")) * ms, 2),
        "probe_gap_p50_s": round(pct(gaps, 0.5), 3),
        "probe_gap_max_s": round(max(gaps, default=float("nan")), 3),
        "probe_interval_s": interval,
        "probes": sum(len(s) for s in obs.probe_starts.values()),
        "probes_failed": obs.failed_probes,
        "probe_rtt_p50_ms": round(pct(obs.rtts, 0.5) * ms, 2),
        "probe_rtt_p99_ms": round(pct(obs.rtts, 0.99) * ms, 2),
        "health_answered": f"{len(health_ok)}/{len(obs.health)}",
        "health_p50_ms": round(pct(health_ok, 0.5) * ms, 1),
        "health_max_ms": round(max(health_ok, default=float("nan")) * ms, 1),
        "commands_answered": f"{len(command_ok)}/{len(obs.commands)}",
        "command_p50_ms": round(pct(command_ok, 0.5) * ms, 1),
        "command_max_ms": round(max(command_ok, default=float("nan")) * ms, 1),
        "controller_cpu_percent": round(100 * cpu / seconds, 1),
    }


async def phase(
    name: str, obs: Observer, api_url: str, seconds: float, interval: float, **load: Any
) -> dict[str, Any]:
    procs = (
        start_flood(api_url, seconds=seconds + 30, source="127.0.0.2", nice=FLOOD_NICE, **load)
        if load
        else []
    )
    await asyncio.sleep(3.0 if load else 0.5)  # the flood reaches its pace
    obs.reset()
    threads = obs.clients()
    t0, cpu0 = time.monotonic(), os.times()
    await asyncio.sleep(seconds)
    t1, cpu1 = time.monotonic(), os.times()
    await asyncio.to_thread(obs.stop_clients, threads)
    result = summary(obs, interval, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), t1 - t0)
    result["load"] = load or "none"
    if procs:
        result["flood"] = await asyncio.to_thread(stop_flood, procs)
    print(f"phase {name}: {json.dumps(result)}", file=sys.stderr)
    return result


async def measure(settings_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import io

    from hacontrol.jsonlog import JsonLog
    from hacontrol.service import Service
    from hacontrol.settings import load_settings

    settings = load_settings(settings_path).settings
    settings = settings.model_copy(
        update={
            "probes": settings.probes.model_copy(
                update={"interval": args.interval, "timeout": min(0.5, args.interval * 0.8)}
            ),
            "api": settings.api.model_copy(update={"port": 0}),
        }
    )
    token = settings.api.token.get_secret_value() if settings.api.token else None
    service = Service(
        (settings,), JsonLog(settings.cluster.name, stream=io.StringIO(), level="info")
    )
    runtime = service.runtime(None)
    original = runtime.controller.handle
    obs: Observer | None = None

    def handle(event: Any) -> Any:
        if obs is not None:
            obs.on_event(event)
        return original(event)

    runtime.controller.handle = handle  # type: ignore[method-assign]
    async with service:
        assert service.api is not None and service.api.address is not None
        host, port = service.api.address
        api_url = f"http://{host}:{port}"
        obs = Observer(api_url, token)
        sampler = asyncio.create_task(obs.sample_lag())
        await asyncio.sleep(2)  # connections opened, first probes done
        phases = {
            "no load": await phase("none", obs, api_url, args.seconds, args.interval),
            f"{args.get_rate:g} GET/s of /metrics": await phase(
                "get", obs, api_url, args.seconds, args.interval, get_rate=args.get_rate, idle=0
            ),
            f"{args.idle} idle connections": await phase(
                "idle", obs, api_url, args.seconds, args.interval, get_rate=0, idle=args.idle
            ),
        }
        sampler.cancel()
    return phases


def print_table(phases: dict[str, dict[str, Any]]) -> None:
    rows = [k for k in next(iter(phases.values())) if k not in ("load", "flood")]
    names = list(phases)
    width = max(len(r) for r in rows) + 2
    print("".ljust(width) + "".join(n[:26].rjust(28) for n in names))
    for row in rows:
        print(row.ljust(width) + "".join(str(phases[n][row]).rjust(28) for n in names))
    for name, result in phases.items():
        if "flood" in result:
            print(f"flood during '{name}': {json.dumps(result['flood'])}")


async def measure_on_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port

    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        spec = SandboxSpec(dir=Path(tmp) / "sandbox", nodes=3, base_port=find_free_base_port(6))
        sandbox = Sandbox(spec)
        info = await sandbox.up()
        try:
            return await measure(Path(info.settings), args)
        finally:
            await sandbox.down()


def run_measure(args: argparse.Namespace) -> None:
    import uvloop

    from hacontrol import api_process

    if args.api_nice is not None:
        api_process.API_NICE = args.api_nice
    global FLOOD_NICE
    FLOOD_NICE = args.flood_nice

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        phases = runner.run(measure_on_sandbox(args))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print_table(phases)
    if args.json:
        Path(args.json).write_text(json.dumps(phases, indent=2))


# ---------------------------------------------------------------------------------------------
# Failovers under the floods (hacontrol drill, in this process)

FIGURES = ("detection", "promotion", "router_updated", "write_outage", "read_outage")


def drill(*argv: str) -> int:
    """``hacontrol drill ARGV`` in this process (the same code path as the command)."""
    from hacontrol.drill import register_cli

    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["drill", *argv])
    return int(args.func(args))


API_CPU: list[float] = []
"""CPU seconds of each API process, read as it is stopped (``measure_api_cpu``)."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_api_cpu() -> None:
    """Make every ApiProcess note its process's CPU in API_CPU as it stops."""
    from hacontrol import api_process

    stop = api_process.ApiProcess.stop

    async def measured_stop(self: Any) -> None:
        if self.pid is not None:
            API_CPU.append(cpu_seconds(self.pid))
        await stop(self)

    api_process.ApiProcess.stop = measured_stop  # type: ignore[method-assign]


class DecoyHandle:
    """The controller handle of a decoy API: serves, knows nothing, refuses every command."""

    def alive(self) -> tuple[bool, str]:
        return True, "decoy"

    def ready(self) -> tuple[bool, str]:
        return True, "decoy"

    def status(self) -> dict[str, Any]:
        return {"decoy": True}

    def metrics_text(self) -> bytes:
        return b""

    async def command(self, cmd: Any) -> Any:
        from hacontrol.events import CommandResult

        return CommandResult(False, "a decoy")


async def decoy() -> None:
    """An API process (the same server, limits and niceness) with nothing behind it, until
    SIGTERM: a flood aimed at it costs the machine what it would, but not the controller."""
    import io

    from hacontrol.api_process import ApiProcess
    from hacontrol.jsonlog import JsonLog
    from hacontrol.settings import ApiSettings

    log = JsonLog("decoy", stream=io.StringIO(), level="warning")
    api = ApiProcess(ApiSettings(host="127.0.0.1", port=0), DecoyHandle(), log)  # type: ignore[arg-type]
    _, port = await api.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await api.stop()


def start_decoy() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "decoy"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def drill_phase(
    name: str, directory: Path, api_url: str, args: argparse.Namespace, **load: Any
) -> dict[str, Any]:
    target = start_decoy() if name == "decoy" else None
    url = target[1] if target is not None else api_url
    procs = (
        start_flood(url, seconds=36000, source="127.0.0.2", nice=args.flood_nice, **load)
        if load
        else []
    )
    try:
        time.sleep(3.0 if load else 0.0)
        out = args.out / f"kill-{name}.json"
        print(f"== {args.runs} x kill, load: {name}", flush=True)
        cpu0 = os.times()
        API_CPU.clear()
        code = drill("--fault", "kill", "--runs", str(args.runs), "--dir", str(directory),
                     "--json", str(out))  # fmt: skip
        cpu1 = os.times()
    finally:
        flood = stop_flood(procs) if procs else None
        if target is not None:
            target[0].terminate()
            target[0].wait(10)
    doc = json.loads(out.read_text())
    return {
        "exit": code,
        "summary": doc["summary"],
        "lost_writes": doc["lost_writes"],
        "seconds": doc["seconds"],
        "controller_cpu_seconds": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
        "api_process_cpu_seconds": round(sum(API_CPU), 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "flood": flood,
    }


def run_drill(args: argparse.Namespace) -> None:
    from hacontrol import api_process
    from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port
    from hacontrol.settings import load_settings

    if args.api_nice is not None:
        api_process.API_NICE = args.api_nice
    measure_api_cpu()

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        directory = Path(tmp) / "sandbox"
        sandbox = Sandbox(SandboxSpec(dir=directory, base_port=find_free_base_port(7)))
        info = asyncio.run(sandbox.up())
        try:
            api = load_settings(info.settings).settings.api
            url = f"http://127.0.0.1:{api.port}"
            loads = {
                "none": ("no load", {}),
                "get": (f"{args.get_rate:g} GET/s", {"get_rate": args.get_rate, "idle": 0}),
                "idle": (f"{args.idle} idle connections", {"get_rate": 0, "idle": args.idle}),
                "decoy": (f"{args.idle} idle, at a decoy", {"get_rate": 0, "idle": args.idle}),
            }
            phases = {
                loads[key][0]: drill_phase(key, directory, url, args, **loads[key][1])
                for key in args.loads.split(",")
            }
        finally:
            asyncio.run(Sandbox.at(directory).down())
    print_drill_table(phases, args.runs)
    (args.out / "summary.json").write_text(json.dumps(phases, indent=2) + "\n")


def print_drill_table(phases: dict[str, dict[str, Any]], runs: int) -> None:
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{runs} x kill -9 per load; seconds p50 / p90 / max")
    names = list(phases)
    print("".ljust(16) + "".join(n.rjust(30) for n in names))
    for figure in FIGURES:
        cells = []
        for name in names:
            s = phases[name]["summary"].get(figure)
            cells.append(f"{s['p50']:.3f} / {s['p90']:.3f} / {s['max']:.3f}" if s else "-")
        print(figure.ljust(16) + "".join(c.rjust(30) for c in cells))
    print("lost writes".ljust(16) + "".join(str(phases[n]["lost_writes"]).rjust(30) for n in names))
    for key, label in (
        ("controller_cpu_seconds", "controller CPU"),
        ("seconds", "drill seconds"),
        ("api_process_cpu_seconds", "API CPU"),
        ("load_average", "load average"),
    ):
        print(label.ljust(16) + "".join(str(phases[n][key]).rjust(30) for n in names))  # fmt: skip
    for name, result in phases.items():
        if result["flood"]:
            print(f"flood during '{name}': {json.dumps(result['flood'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="sandbox + controller, three phases side by side")
    m.add_argument("--seconds", type=float, default=20.0)
    m.add_argument("--interval", type=float, default=0.5)
    m.add_argument("--get-rate", type=float, default=1200.0)
    m.add_argument("--idle", type=int, default=20000)
    m.add_argument("--json", metavar="FILE")
    m.add_argument(
        "--api-nice", type=int, default=None, help="the API process's niceness (default: as run)"
    )
    m.add_argument(
        "--flood-nice", type=int, default=0, help="run the flood under nice(1) (0: as is)"
    )
    f = sub.add_parser("flood", help="the load generator alone")
    f.add_argument("--url", required=True)
    f.add_argument("--path", default="/metrics")
    f.add_argument("--get-rate", type=float, default=1200.0)
    f.add_argument("--idle", type=int, default=0)
    f.add_argument("--seconds", type=float, default=10.0)
    f.add_argument("--source", default="127.0.0.2")
    f.add_argument("--json", metavar="FILE")
    d = sub.add_parser("drill", help="failovers (hacontrol drill) with and without the floods")
    d.add_argument("--runs", type=int, default=10)
    d.add_argument("--get-rate", type=float, default=1200.0)
    d.add_argument("--idle", type=int, default=20000)
    d.add_argument("--out", type=Path, default=Path("/tmp/api-load-drill"))
    d.add_argument(
        "--loads",
        default="none,get,idle",
        help="which phases, in order (decoy: the idle flood aimed at another API process)",
    )
    d.add_argument(
        "--flood-nice", type=int, default=0, help="run the flood under nice(1) (0: as is)"
    )
    d.add_argument(
        "--api-nice", type=int, default=None, help="the API process's niceness (default: as run)"
    )
    sub.add_parser("decoy", help="an API process with nothing behind it (prints its port)")
    args = parser.parse_args()
    if args.command == "flood":
        run_flood(args)
    elif args.command == "decoy":
        import uvloop

        uvloop.run(decoy())
    elif args.command == "drill":
        run_drill(args)
    else:
        run_measure(args)


if __name__ == "__main__":
    main()
