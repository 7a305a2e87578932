"""Probe overhead: run the real probes + controller against a 3-node sandbox and measure.

    .venv/bin/python bench/probe_overhead.py [--seconds 60] [--interval 1.0] [--loop uvloop|asyncio]
        [--log-level info|debug] [--no-router] [--fleet|--no-fleet] [--lease-defaults]
        [--keepalive K] [--profile FILE] [--edges-only] [--floor idle|io]

Starts its own sandbox (removed afterwards), runs the controller for the given time with the
default probe settings, and reports the controller process's CPU time per node probe (user+system,
from time.process_time(); the mariadbd processes are not counted) and the probe round-trip p50/p99
(the status query's time on the kept connection, as the probe measures it), the events per
second the decision task took in and its own CPU per node probe. ``--edges-only``: the probes,
the lease and the router probe alone (events dropped after the warm-up); ``--floor``: the same
sockets open with nothing running (``idle``) or the same round trips in bare loops (``io``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacontrol.events import ProbeResult, Stop
from hacontrol.jsonlog import JsonLog
from hacontrol.mysqlconn import BoundedConnection, ColumnCache, connect, endpoint_for, fetch_text
from hacontrol.probes.lease import LeaseKeeper
from hacontrol.runtime import node_probes
from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port
from hacontrol.service import Runtime
from hacontrol.settings import load_settings
from hacontrol.settings_rules import check


async def settled(runtime: Runtime, timeout: float = 60.0) -> None:
    """Until the controller's last decision is "Nothing" (the start-up grace is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        decisions = runtime.controller.decisions
        if decisions and decisions[-1]["rule"] == "Nothing":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the controller did not settle")


async def measure(
    settings_path: Path,
    seconds: float,
    interval: float,
    level: str,
    profile: Path | None,
    router: bool = True,
    fleet: bool | None = None,
    lease_defaults: bool = False,
    keepalive: float | None = None,
    edges_only: bool = False,
) -> dict[str, object]:
    settings = load_settings(settings_path).settings
    if fleet is not None:  # the lease on (a fleet of one, the default) or off (alone)
        settings = settings.model_copy(
            update={"controller": settings.controller.model_copy(update={"fleet": fleet})}
        )
    if lease_defaults:  # the settings' defaults (K 0.5 s), not the sandbox's fast lease
        settings = settings.model_copy(update={"lease": type(settings.lease)()})
    if keepalive is not None:  # another K, refused where check-config refuses it
        fields = {**settings.lease.model_dump(), "keepalive": keepalive}
        try:  # validated like the settings file (a copy skips the field checks)
            lease = type(settings.lease).model_validate(fields)
        except ValueError as exc:
            raise SystemExit(f"--keepalive {keepalive}: {exc}") from None
        settings = settings.model_copy(update={"lease": lease})
        errors = [e for e in check(settings)[0] if e.startswith("lease.")]
        if errors:
            raise SystemExit("; ".join(errors))
    settings = settings.model_copy(
        update={"probes": settings.probes.model_copy(update={"interval": interval})}
    )
    if not router:  # the nodes' probes alone: what the router's probe adds is the difference
        settings = settings.model_copy(
            update={"router": settings.router.model_copy(update={"kind": "none"})}
        )
    log = JsonLog(settings.cluster.name, stream=io.StringIO(), level=level)
    runtime = Runtime(settings, log)
    rtts: list[float] = []
    failed = 0
    original = runtime.controller.handle
    kinds: collections.Counter[str] = collections.Counter()
    decision_cpu = 0.0

    decide = True

    def handle(event):  # count probe results and every event as the decision task sees them
        nonlocal failed, decision_cpu
        if not decide and not isinstance(event, Stop):  # --edges-only: counted, dropped
            if isinstance(event, ProbeResult) and event.ok and event.rtt is not None:
                rtts.append(event.rtt)
            kinds[type(event).__name__] += 1
            return
        if isinstance(event, ProbeResult):
            if event.ok and event.rtt is not None:
                rtts.append(event.rtt)
            elif not event.ok:
                failed += 1
        kinds[type(event).__name__] += 1
        started = time.thread_time()
        original(event)
        decision_cpu += time.thread_time() - started

    runtime.controller.handle = handle  # type: ignore[method-assign]
    async with runtime:
        await settled(runtime)
        await asyncio.sleep(2)  # warm-up: connections opened, first probes done
        decide = not edges_only
        rtts.clear()
        kinds.clear()
        decision_cpu = 0.0
        log._stream = io.StringIO()  # type: ignore[attr-defined]  # drop warm-up lines
        profiler = cProfile.Profile(time.process_time) if profile is not None else None
        t0, cpu0, times0 = time.monotonic(), time.process_time(), os.times()
        if profiler is not None:
            profiler.enable()
        await asyncio.sleep(seconds)
        if profiler is not None:
            profiler.disable()
        t1, cpu, times1 = time.monotonic(), time.process_time() - cpu0, os.times()
        text = log._stream.getvalue()  # type: ignore[attr-defined]
    events = collections.Counter(json.loads(line)["event"] for line in text.splitlines())
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    probes = len(rtts) + failed
    ms = sorted(r * 1000 for r in rtts)
    return {
        "fleet": settings.controller.fleet,
        "lease_keepalive": settings.lease.keepalive if settings.controller.fleet else None,
        "seconds": round(t1 - t0, 2),
        "probes": probes,
        "failed": failed,
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_probe": round(cpu * 1000 / max(probes, 1), 3),
        "cpu_percent": round(100 * cpu / (t1 - t0), 2),
        "cpu_user_system_s": (
            round(times1.user - times0.user, 3),
            round(times1.system - times0.system, 3),
        ),
        "log_lines": sum(events.values()),
        "log_lines_per_node_per_hour": round(
            sum(events.values()) / len(settings.nodes) * 3600 / (t1 - t0), 2
        ),
        "log_events": dict(events),
        "events_per_second": {
            k: round(n / (t1 - t0), 2) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])
        },
        "decision_cpu_ms_per_probe": round(decision_cpu * 1000 / max(probes, 1), 3),
        "rtt_p50_ms": round(statistics.median(ms), 3),
        "rtt_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "rtt_max_ms": round(ms[-1], 3),
    }


async def floor(
    settings_path: Path, seconds: float, interval: float, io: bool, fleet: bool | None = None
) -> dict[str, object]:
    """The runtime's floor with the same sockets open: the node probes' and (as a fleet) the
    lease's connections to each node and the ProxySQL admin's. ``io``: the same round trips at
    the same rates (each node's status every interval, its lease read every K, the router's
    membership every interval), each in a bare loop through the one-pass reader
    (``fetch_text``), answers dropped: no probe object, no event, no decision task. Not ``io``:
    nothing runs."""
    settings = load_settings(settings_path).settings
    leased = settings.controller.fleet if fleet is None else fleet
    keeper = LeaseKeeper(settings, lambda event: None)
    probes = node_probes(settings, lambda event: None, watch=False)
    loops: list[tuple[BoundedConnection, str, ColumnCache, float]] = []
    for name, probe in probes.items():
        conn = await probe._connection()
        assert probe._columns is not None
        loops.append((conn, probe._sql, probe._columns, interval))
        if leased:
            lconn, sql, columns = await keeper._connection(keeper._sessions[name])
            loops.append((lconn, sql.read, columns, settings.lease.keepalive))
    proxysql = settings.router.proxysql
    if settings.router.kind == "proxysql":
        secret = proxysql.password.get_secret_value() if proxysql.password else ""
        admin = endpoint_for(proxysql.host, proxysql.port, proxysql.user, secret, proxysql.tls)
        aconn = await connect(admin, 2.0, multi_statements=True)
        membership = "SELECT hostgroup_id, hostname, port, status FROM runtime_mysql_servers"
        loops.append((aconn, membership, ColumnCache(aconn.encoding), interval))
    trips = 0

    async def bare(conn: BoundedConnection, sql: str, columns: ColumnCache, every: float) -> None:
        nonlocal trips
        while True:
            started = time.monotonic()
            await fetch_text(conn, sql, columns, timeout=1.0)
            trips += 1
            await asyncio.sleep(max(0.0, started + every - time.monotonic()))

    tasks = [asyncio.create_task(bare(*loop)) for loop in loops] if io else []
    await asyncio.sleep(2)
    trips, t0, cpu0 = 0, time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    t1, cpu = time.monotonic(), time.process_time() - cpu0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn, *_ in loops:
        conn.close()
    node_probes_done = len(probes) * (t1 - t0) / interval
    return {
        "floor": "round trips" if io else "idle",
        "fleet": leased,
        "sockets": len(loops),
        "seconds": round(t1 - t0, 2),
        "round_trips_per_second": round(trips / (t1 - t0), 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_node_probe": round(cpu * 1000 / node_probes_done, 3),
        "cpu_us_per_round_trip": round(cpu * 1e6 / trips, 1) if trips else None,
        "cpu_percent": round(100 * cpu / (t1 - t0), 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        spec = SandboxSpec(dir=Path(tmp) / "sandbox", nodes=3, base_port=find_free_base_port(7))
        sandbox = Sandbox(spec)
        info = await sandbox.up()
        try:
            if args.floor is not None:
                return await floor(
                    Path(info.settings),
                    args.seconds,
                    args.interval,
                    args.floor == "io",
                    args.fleet,
                )
            return await measure(
                Path(info.settings),
                args.seconds,
                args.interval,
                args.log_level,
                args.profile,
                router=not args.no_router,
                fleet=args.fleet,
                lease_defaults=args.lease_defaults,
                keepalive=args.keepalive,
                edges_only=args.edges_only,
            )
        finally:
            await sandbox.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--log-level", choices=["debug", "info"], default="info")
    parser.add_argument("--no-router", action="store_true", help="leave the router unprobed")
    parser.add_argument(
        "--fleet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="controller.fleet on (the lease, a fleet of one) or off; default: the settings'",
    )
    parser.add_argument(
        "--lease-defaults",
        action="store_true",
        help="the lease's default timing (keepalive 0.5 s) instead of the sandbox's (0.25 s)",
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        help="lease.keepalive (K) in seconds instead of the settings' (the lease rules apply)",
    )
    parser.add_argument(
        "--edges-only",
        action="store_true",
        help="after the warm-up, events are counted and dropped: the probes, lease and router"
        " probe without the decision task",
    )
    parser.add_argument(
        "--floor",
        choices=["idle", "io"],
        help="no controller: the same sockets open and idle, or the same round trips in bare"
        " loops (the runtime's floor)",
    )
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the window here")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(main_async(args))
    else:
        result = asyncio.run(main_async(args))
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}, loop {args.loop}")
    for key, value in result.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
