"""How long does stopping a replica's IO thread take once its source stopped answering?

    .venv/bin/python bench/io_thread_stop.py [--how stop,kill,twice,semi-off]
        [--after 0.5,1,1.5,2,2.5,3,4] [--kill-conn-timeout 5] [--fault freeze|partition]

For each way to stop (``stop``: ``STOP SLAVE IO_THREAD``; ``kill``: ``KILL`` of the IO thread's
own server thread first, then ``STOP SLAVE IO_THREAD``; ``twice``: a second ``STOP SLAVE
IO_THREAD`` 0.1 s after the first, on another connection; ``semi-off``: the replica's semi-sync
turned off first, then ``STOP SLAVE IO_THREAD``) and each delay after the fault, a new
3-node sandbox is started (with ``--netns`` for a partition), the primary is frozen (SIGSTOP)
or cut off from every other host, and both replicas' IO threads are stopped at the same time,
``--after`` seconds later. Printed: the seconds each stop took (until ``STOP SLAVE IO_THREAD``
returned), per replica. ``--kill-conn-timeout`` sets the replicas'
``rpl_semi_sync_slave_kill_conn_timeout`` first (MariaDB's default is 5). The replicas keep the
sandbox's heartbeat period and ``slave_net_timeout`` unless ``--slave-net-timeout`` is given.

What it showed is in docs/partitions.md ("Stopping an IO thread whose source is gone").
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port

REPLICAS = ("node2", "node3")


async def execute(conn, sql: str) -> list[tuple]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def stop_io(sandbox: Sandbox, node: str, how: str) -> float:
    conn = await sandbox.connect(node, "controller")
    try:
        started = time.monotonic()
        if how == "kill":
            rows = await execute(
                conn,
                "SELECT ID FROM information_schema.PROCESSLIST "
                "WHERE USER = 'system user' AND COMMAND = 'Slave_IO'",
            )
            for (thread,) in rows:
                await execute(conn, f"KILL {int(thread)}")
        if how == "semi-off":
            await execute(conn, "SET GLOBAL rpl_semi_sync_slave_enabled = OFF")
        if how == "twice":
            second = asyncio.create_task(stop_again(sandbox, node))
        await execute(conn, "STOP SLAVE IO_THREAD")
        if how == "twice":
            await second
        return time.monotonic() - started
    finally:
        conn.close()


async def stop_again(sandbox: Sandbox, node: str) -> None:
    """A second STOP SLAVE IO_THREAD 0.1 s after the first, on a connection of its own."""
    await asyncio.sleep(0.1)
    conn = await sandbox.connect(node, "controller")
    try:
        await execute(conn, "STOP SLAVE IO_THREAD")
    except Exception as exc:  # shown: the first stop is what is measured
        print(f"second stop on {node}: {exc}", flush=True)
    finally:
        conn.close()


async def prepare(sandbox: Sandbox, args: argparse.Namespace) -> None:
    for node in REPLICAS:
        conn = await sandbox.connect(node, "controller")
        try:
            await execute(conn, "STOP SLAVE")
            await execute(
                conn, f"SET GLOBAL rpl_semi_sync_slave_kill_conn_timeout = {args.kill_conn_timeout}"
            )
            if args.slave_net_timeout is not None:
                await execute(conn, f"SET GLOBAL slave_net_timeout = {args.slave_net_timeout}")
            await execute(conn, "START SLAVE")
        finally:
            conn.close()


async def one(args: argparse.Namespace, how: str, after: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="hacontrol-iostop-") as tmp:
        spec = SandboxSpec(
            dir=Path(tmp) / "sandbox",
            base_port=find_free_base_port(8),
            router="haproxy",
            netns=args.fault == "partition",
        )
        sandbox = Sandbox(spec)
        await sandbox.up()
        try:
            await prepare(sandbox, args)
            await asyncio.sleep(1.0)  # heartbeats flowing
            if args.fault == "freeze":
                sandbox.kill_node("node1", signal.SIGSTOP)
            else:
                sandbox.network().partition(
                    (("node1",), ("node2", "node3", "router", "controller"))
                )
            await asyncio.sleep(after)
            took = await asyncio.gather(*(stop_io(sandbox, n, how) for n in REPLICAS))
            if args.fault == "freeze":
                sandbox.kill_node("node1", signal.SIGCONT)
            return list(took)
        finally:
            await sandbox.down()


async def main(args: argparse.Namespace) -> None:
    print(
        f"fault {args.fault}, rpl_semi_sync_slave_kill_conn_timeout {args.kill_conn_timeout}, "
        f"slave_net_timeout {args.slave_net_timeout or 'the sandbox'}s",
        flush=True,
    )
    for how in args.how.split(","):
        every: list[float] = []
        for after in (float(a) for a in args.after.split(",")):
            took = await one(args, how, after)
            every += took
            shown = " ".join(f"{t:.3f}" for t in took)
            when = f"{after:4.1f} s after the {args.fault}"
            print(f"{how:4s} {when}: stopped in {shown} s", flush=True)
        print(
            f"{how}: median {statistics.median(every):.3f} s, max {max(every):.3f} s "
            f"over {len(every)} stops",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--how", default="stop,kill")
    parser.add_argument("--after", default="0.5,1,1.5,2,2.5,3,4")
    parser.add_argument("--kill-conn-timeout", type=int, default=5)
    parser.add_argument("--slave-net-timeout", type=int)
    parser.add_argument("--fault", choices=("freeze", "partition"), default="freeze")
    asyncio.run(main(parser.parse_args()))
