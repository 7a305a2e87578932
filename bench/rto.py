"""RTO/RPO benchmarks: failover and switchover as clients feel them, and the controller at rest.

    .venv/bin/python bench/rto.py failover   [--kill-runs 20] [--freeze-runs 10] [--out DIR]
                                              [--router proxysql|haproxy]
    .venv/bin/python bench/rto.py switchover [--runs 10] [--out DIR] [--router ...]
    .venv/bin/python bench/rto.py idle       [--seconds 60]

``failover`` and ``switchover`` are ``hacontrol drill`` runs (each on its own new sandbox, with
the sandbox's settings plus any HACONTROL_* overrides in the environment), through the router
given (default: ProxySQL when on PATH, else HAProxy); their tables go to stdout and every
figure to ``DIR/<fault>.json``. ``idle`` starts a sandbox, runs ``hacontrol run``
on it as a subprocess and samples the controller's /proc/<pid>/stat and status once a second
for ``--seconds``: CPU % of one core and resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacontrol.drill import register_cli


def drill(*argv: str) -> int:
    """``hacontrol drill ARGV`` in this process (the same code path as the command)."""
    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["drill", *argv])
    return int(args.func(args))


def router_args(args: argparse.Namespace) -> list[str]:
    return ["--router", args.router] if args.router else []


def cmd_failover(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    codes = []
    for fault, runs in (("kill", args.kill_runs), ("freeze", args.freeze_runs)):
        if runs:
            print(f"== {runs} x {fault}", flush=True)
            out = str(args.out / f"{fault}.json")
            codes.append(
                drill("--fault", fault, "--runs", str(runs), "--json", out, *router_args(args))
            )
    return max(codes, default=0)


def cmd_switchover(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    out = str(args.out / "switchover.json")
    return drill(
        "--fault", "switchover", "--runs", str(args.runs), "--json", out, *router_args(args)
    )


# ---- the controller at rest ---------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cmd_idle(args: argparse.Namespace) -> int:
    from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port

    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        sandbox = Sandbox(SandboxSpec(dir=Path(tmp) / "sb", base_port=find_free_base_port(7)))
        info = asyncio.run(sandbox.up())
        log = open(Path(tmp) / "controller.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "hacontrol", "run", "--config", info.settings],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(args.warmup)  # connections opened, first probes and decisions done
            samples: list[tuple[float, int, int]] = []
            t_end = time.monotonic() + args.seconds
            while time.monotonic() < t_end:
                samples.append((time.monotonic(), cpu_ticks(proc.pid), rss_kib(proc.pid)))
                time.sleep(1.0)
            samples.append((time.monotonic(), cpu_ticks(proc.pid), rss_kib(proc.pid)))
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
            asyncio.run(sandbox.down())
    (t0, c0, _), (t1, c1, _) = samples[0], samples[-1]
    per_second = [100 * (b[1] - a[1]) / hz / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    rss = [s[2] for s in samples]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"controller pid {proc.pid}, sandbox idle, {t1 - t0:.1f} s sampled after {args.warmup} s")
    print(
        f"cpu: {100 * (c1 - c0) / hz / (t1 - t0):.2f} % of one core on average "
        f"({(c1 - c0) / hz:.2f} s CPU), max over 1 s {max(per_second):.1f} %"
    )
    print(
        f"rss: start {rss[0] / 1024:.1f} MiB, end {rss[-1] / 1024:.1f} MiB, "
        f"max {max(rss) / 1024:.1f} MiB, median {statistics.median(rss) / 1024:.1f} MiB"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("failover", help="kill -9 and SIGSTOP of the primary under load")
    p.add_argument("--kill-runs", type=int, default=20)
    p.add_argument("--freeze-runs", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--router", choices=["proxysql", "haproxy"])
    p.set_defaults(func=cmd_failover)
    p = sub.add_parser("switchover", help="planned switchover under load")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--router", choices=["proxysql", "haproxy"])
    p.set_defaults(func=cmd_switchover)
    p = sub.add_parser("idle", help="controller CPU and memory at rest")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.set_defaults(func=cmd_idle)
    args = parser.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
