"""How long does stopping a replica's IO thread take once its source stopped answering?

    .venv/bin/python bench/io_thread_stop.py [--how stop,kill,twice,semi-off,stop-kill]
        [--after 0.5,1,1.5,2,2.5,3,4] [--kill-conn-timeout 5] [--fault freeze|partition]
        [--first-write sequential,early]

For each way to stop (``stop``: ``STOP SLAVE IO_THREAD``; ``kill``: ``KILL`` of the IO thread's
own server thread first, then ``STOP SLAVE IO_THREAD``; ``twice``: a second ``STOP SLAVE
IO_THREAD`` 0.1 s after the first, on another connection; ``semi-off``: the replica's semi-sync
turned off first, then ``STOP SLAVE IO_THREAD``; ``stop-kill``: the ``KILL`` 0.05 s after the
``STOP``) and each delay after the fault, a new
3-node sandbox is started (with ``--netns`` for a partition), the primary is frozen (SIGSTOP)
or cut off from every other host, and both replicas' IO threads are stopped at the same time,
``--after`` seconds later. Printed: the seconds each stop took (until ``STOP SLAVE IO_THREAD``
returned), per replica. ``--kill-conn-timeout`` sets the replicas'
``rpl_semi_sync_slave_kill_conn_timeout`` first (MariaDB's default is 5). The replicas keep the
sandbox's heartbeat period and ``slave_net_timeout`` unless ``--slave-net-timeout`` is given.

``--first-write sequential,early`` measures instead what a client sees: the seconds from the
start of the failover's IO-thread stop to the first write acknowledged by the new primary node2
(semi-sync on it, without fallback: the write waits until the repointed node3 acknowledges it).
``sequential`` is the failover's order (both IO threads stopped and waited for, node2 applies,
is promoted, then node3 is repointed); ``early`` kills both IO threads without waiting for
their end, stops node2's SQL thread, checks it applied all it received and makes it writable
(semi-sync source on) at once, while node3's STOP SLAVE waits for its IO thread and node3 is
then repointed. Freeze only.

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

from hacontrol.actions.mysql import MySQLActions
from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port
from hacontrol.settings import load_settings

REPLICAS = ("node2", "node3")


async def execute(conn, sql: str) -> list[tuple]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def stop_io(sandbox: Sandbox, node: str, how: str) -> float:
    conn = await sandbox.connect(node, "controller")
    try:
        started = time.monotonic()
        if how == "action":  # what the failover does: MySQLActions.set_io_thread
            actions = MySQLActions(load_settings(sandbox.status().settings).settings)
            result = await actions.set_io_thread(node, False)
            print(f"  {node}: {result.reason} {result.detail}", flush=True)
            return time.monotonic() - started
        if how in ("kill", "kill-settle"):
            await kill_io(sandbox, node)
        if how == "kill-settle":
            await asyncio.sleep(0.05)
        if how == "semi-off":
            await execute(conn, "SET GLOBAL rpl_semi_sync_slave_enabled = OFF")
        if how == "twice":
            second = asyncio.create_task(stop_again(sandbox, node))
        if how == "stop-kill":
            second = asyncio.create_task(kill_io(sandbox, node, 0.05))
        await execute(conn, "STOP SLAVE IO_THREAD")
        if how in ("twice", "stop-kill"):
            await second
        return time.monotonic() - started
    finally:
        conn.close()


async def semi_sync_off(sandbox: Sandbox, node: str) -> None:
    conn = await sandbox.connect(node, "controller")
    try:
        await execute(conn, "SET GLOBAL rpl_semi_sync_slave_enabled = OFF")
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


async def first_write(sandbox: Sandbox, how: str) -> list[float]:
    """[seconds until node2 is writable, until its first write is acknowledged]."""
    actions = MySQLActions(load_settings(sandbox.status().settings).settings)
    node1, node2 = (sandbox.status().node(n) for n in ("node1", "node2"))
    started = time.monotonic()
    if how == "sequential":
        await asyncio.gather(*(actions.set_io_thread(n, False) for n in REPLICAS))
        applied = await actions.wait_applied("node2", 5.0)
        promoted = await actions.promote("node2", node1.host, node1.port)
        assert applied.ok and promoted.ok, (applied.reason, promoted.reason)
        writable = time.monotonic() - started
        repoint = actions.repoint("node3", node2.host, node2.port)
    else:
        await asyncio.gather(*(kill_io(sandbox, n) for n in REPLICAS))
        conn = await sandbox.connect("node2", "controller")
        try:
            await execute(conn, "STOP SLAVE SQL_THREAD")
            (row,) = await execute(conn, "SELECT @@gtid_slave_pos")
            await execute(conn, "SET GLOBAL rpl_semi_sync_master_enabled = ON")
            await execute(conn, "SET GLOBAL read_only = OFF")
        finally:
            conn.close()
        print(f"  node2 applied {row[0]} and is writable", flush=True)
        writable = time.monotonic() - started
        repoint = actions.repoint("node3", node2.host, node2.port)
    write = asyncio.create_task(write_once(sandbox))
    repointed = await repoint
    await write
    assert repointed.ok, repointed.reason
    return [writable, time.monotonic() - started]


async def kill_io(sandbox: Sandbox, node: str, after: float = 0.0) -> None:
    """KILL of the IO thread's own server thread, ``after`` seconds from now."""
    await asyncio.sleep(after)
    conn = await sandbox.connect(node, "controller")
    try:
        rows = await execute(
            conn,
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE USER = 'system user' AND COMMAND = 'Slave_IO'",
        )
        for (thread,) in rows:
            await execute(conn, f"KILL {int(thread)}")
    finally:
        conn.close()


async def write_once(sandbox: Sandbox) -> None:
    conn = await sandbox.connect("node2", "app")
    try:
        await execute(conn, "INSERT INTO app.writes (id, node) VALUES (1, 2)")
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
            if how == "semi-off-early":  # at the fault: the IO threads reconnect meanwhile
                await asyncio.gather(*(semi_sync_off(sandbox, n) for n in REPLICAS))
            await asyncio.sleep(after)
            if args.first_write:
                took = await first_write(sandbox, how)
            else:
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
    for how in (args.first_write or args.how).split(","):
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
    parser.add_argument("--first-write", help="sequential,early: see the module doc")
    parser.add_argument("--fault", choices=("freeze", "partition"), default="freeze")
    asyncio.run(main(parser.parse_args()))
