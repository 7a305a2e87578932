"""What the fleet's lease costs at rest: controller CPU and queries per second on each node.

    .venv/bin/python bench/lease_overhead.py [--instances 3] [--seconds 60] [--warmup 5]
                                             [--default-lease]

On a fresh sandbox, ``--instances`` ``hacontrol run --paused`` processes (no router, no API:
observing only, so that the comparison holds nothing but the lease) run twice: with
``controller.fleet = false`` (probes only), then with the fleet on (probes and lease
keepalives, the default timings). For each pass: the CPU of each controller (utime + stime from
/proc/<pid>/stat) as % of one core, and the statements each node received per second
(``Questions``, read at the start and the end of the window through root's unix socket). The
difference between the two passes is the lease. The lease is timed as the sandbox's settings
say (K 0.25 s), or with ``--default-lease`` as the product's defaults (W 2, K 0.5, V 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomysql

from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def questions(sandbox: Sandbox) -> dict[str, int]:
    out = {}
    for node in sandbox.status().nodes:
        conn = await aiomysql.connect(
            unix_socket=node.socket, user="root", password=sandbox.password("root")
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
                out[node.name] = int((await cur.fetchone())[1])
        finally:
            conn.close()
    return out


DEFAULT_LEASE = {
    "HACONTROL_LEASE__WAIT_TIMEOUT": "2",
    "HACONTROL_LEASE__KEEPALIVE": "0.5",
    "HACONTROL_LEASE__VALIDITY": "1.5",
    "HACONTROL_LEASE__MARGIN": "0.3",
}


def start(
    settings: str, fleet: bool, instances: int, lease: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    procs = []
    for i in range(1, instances + 1):
        env = {
            **base,
            "HACONTROL_CONTROLLER__FLEET": "true" if fleet else "false",
            "HACONTROL_CONTROLLER__INSTANCE_ID": f"c{i}",
            "HACONTROL_CONTROLLER__JOURNAL": str(Path(tempfile.mkdtemp()) / "journal.jsonl"),
            "HACONTROL_ROUTER__KIND": "none",
            "HACONTROL_API__ENABLED": "false",
            "HACONTROL_LOG__LEVEL": "info",
            **lease,
        }
        argv = [sys.executable, "-m", "hacontrol", "run", "--paused", "--config", settings]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL))
    return procs


async def one_pass(sandbox: Sandbox, fleet: bool, args: argparse.Namespace) -> dict[str, object]:
    settings = sandbox.status().settings
    lease = DEFAULT_LEASE if args.default_lease else {}
    procs = await asyncio.to_thread(start, settings, fleet, args.instances, lease)
    try:
        await asyncio.sleep(args.warmup)
        q0, t0 = await questions(sandbox), time.monotonic()
        c0 = [cpu_seconds(p.pid) for p in procs]
        await asyncio.sleep(args.seconds)
        q1, t1 = await questions(sandbox), time.monotonic()
        c1 = [cpu_seconds(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        await asyncio.to_thread(lambda: [p.wait(10) for p in procs])
    span = t1 - t0
    return {
        "cpu_percent": [round(100 * (b - a) / span, 2) for a, b in zip(c0, c1, strict=True)],
        "qps": {n: round((q1[n] - q0[n] - 1) / span, 1) for n in q0},  # -1: our own SHOW
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = SandboxSpec(
            dir=Path(tmp) / "sandbox", router="haproxy", base_port=find_free_base_port(6)
        )
        sandbox = Sandbox(spec)
        await sandbox.up()
        try:
            off = await one_pass(sandbox, False, args)
            on = await one_pass(sandbox, True, args)
        finally:
            await sandbox.down()
    print(f"{args.instances} instances, {args.seconds} s each pass, {platform.machine()}")
    for name, result in (("fleet off (probes only)", off), ("fleet on (probes + lease)", on)):
        print(
            f"{name}: CPU % of one core per instance {result['cpu_percent']}, "
            f"statements/s per node {result['qps']}"
        )
    cpu = [b - a for a, b in zip(off["cpu_percent"], on["cpu_percent"], strict=True)]  # type: ignore[arg-type]
    qps = {n: round(on["qps"][n] - off["qps"][n], 1) for n in on["qps"]}  # type: ignore[index]
    print(
        f"the lease: CPU +{[round(c, 2) for c in cpu]} % of one core per instance, "
        f"+{qps} statements/s per node"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--default-lease",
        action="store_true",
        help="the product's lease timings, not the sandbox's",
    )
    asyncio.run(main(parser.parse_args()))
