"""Switchover write window: how long an application writing every 10 ms cannot write.

    .venv/bin/python bench/switchover_window.py [--runs 6] [--interval 1.0] [--router R]

Starts its own 3-node sandbox (ProxySQL in front when on PATH, else HAProxy; ``--router``
picks), runs the controller in-process with the
sandbox's settings (probe interval as given), drives a writer through the router's writer port
inserting a row every 10 ms, and switches over node1 -> node2 -> node1 ... ``--runs`` times
through the same command path as the API. For each switchover it reports the write window
(last acknowledged write before -> first acknowledged write after), the plan's own duration,
the client errors by kind, and checks that every acknowledged write is on the final primary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from hacontrol.events import OperatorCommand
from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port
from tests.live import WriteLoop, runtime, sandbox_settings, sql, wait_for


def window(ack_times: list[float], started: float, ended: float) -> float:
    """Largest gap between consecutive acknowledged writes around [started, ended]."""
    around = [t for t in ack_times if started - 1.0 <= t <= ended + 2.0]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return max(gaps) if gaps else float("nan")


async def run(runs: int, interval: float, router: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        spec = SandboxSpec(dir=Path(tmp) / "sb", base_port=find_free_base_port(7), router=router)
        sandbox = Sandbox(spec)
        await sandbox.up()
        try:
            settings = sandbox_settings(sandbox, interval=interval, timeout=interval * 0.8)
            rt, _ = runtime(settings)
            async with rt:
                await wait_for(
                    lambda: (
                        rt.controller.decisions and rt.controller.decisions[-1]["rule"] == "Nothing"
                    ),
                    30,
                    "idle",
                )
                writes = WriteLoop(sandbox).start()
                await asyncio.sleep(2)
                rows = []
                for i in range(runs):
                    target = "node2" if i % 2 == 0 else "node1"
                    errors_before = dict(writes.errors)
                    t0 = time.monotonic()
                    result = await rt.command(OperatorCommand(t0, "switchover", target))
                    t1 = time.monotonic()
                    if not result.ok:
                        print(f"run {i + 1}: REFUSED/FAILED {result.message}")
                        continue
                    await asyncio.sleep(2.5)  # writes flow again; idle before the next run
                    errors = {
                        k: v - errors_before.get(k, 0)
                        for k, v in writes.errors.items()
                        if v - errors_before.get(k, 0)
                    }
                    rows.append(
                        (
                            target,
                            window(writes.ack_times, t0, t1),
                            result.detail.get("seconds", t1 - t0),
                            errors,
                        )
                    )
                    w, plan = rows[-1][1], rows[-1][2]
                    print(
                        f"run {i + 1}: -> {target}  write window {w:.3f} s  plan {plan:.3f} s"
                        f"  errors {errors}",
                        flush=True,
                    )
                await writes.stop()
                primary = rt.controller.view.primary
            present = {
                r[0]
                for r in await sql(
                    sandbox, primary, "SELECT id FROM app.writes WHERE id >= 1000000"
                )
            }
            lost = [i for i in writes.acknowledged if i not in present]
        finally:
            await sandbox.down()
    windows = [r[1] for r in rows]
    print(
        f"\nmachine: {platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; probe interval {interval} s"
    )
    if windows:
        print(
            f"switchovers: {len(windows)}  write window p50 {statistics.median(windows):.3f} s"
            f"  max {max(windows):.3f} s"
        )
    print(f"acknowledged writes: {len(writes.acknowledged)}, lost: {len(lost)}")
    return 1 if lost else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--router", choices=["proxysql", "haproxy"])
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.runs, args.interval, args.router)))


if __name__ == "__main__":
    main()
