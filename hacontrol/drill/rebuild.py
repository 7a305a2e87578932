"""Rebuild a sandbox node that came back with errant transactions, from the new primary.

The controller rightly refuses to rejoin such a node (it never runs RESET MASTER on its own);
an operator rebuilds it from the primary. For the sandbox the drill does what an operator
would, with the server's own tools:

1. stop the node; give it a fresh datadir (the sandbox's template);
2. start it with networking off, so nothing (the controller included) sees it half-loaded;
3. load a consistent ``mariadb-dump --single-transaction --gtid`` of the new primary into it
   with the binary log off, and set ``gtid_slave_pos`` to the dump's position;
4. restart it read-only (its configuration says writable when it was created as the
   primary: a rebuilt copy of the primary is a replica to be, never a second writer); the
   controller sees a clean old primary and rejoins it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from hacontrol.drill.errors import FaultError

GTID_IN_DUMP = re.compile(rb"gtid_slave_pos\s*=\s*'([0-9,\-\s]*)'")


def dump_position(dump: bytes) -> str:
    """The GTID position a ``mariadb-dump --gtid --master-data=2`` was taken at."""
    found = GTID_IN_DUMP.search(dump)
    if found is None:
        raise FaultError("the dump carries no gtid_slave_pos (mariadb-dump too old?)")
    return found.group(1).decode().strip()


async def _run(argv: list[str], stdin: bytes | None, env: dict[str, str]) -> bytes:
    """A client tool, in a thread. Not asyncio's subprocess: under uvloop, a server started
    with posix_spawn after it died at once without a word (reproduced, not explained)."""
    done = await asyncio.to_thread(
        subprocess.run,
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=120,
    )
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace")[-500:]
        raise FaultError(f"{Path(argv[0]).name} failed: {err}")
    return done.stdout


def _exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def _gone(pid: int | None, timeout: float = 10.0) -> None:
    """Until the process has left /proc entirely. An exiting process loses its cmdline (so the
    sandbox already calls it dead) while it still holds its files: starting a new server on
    the same datadir and socket before then fails without a word in its logs."""
    from hacontrol.sandbox.procs import reap

    if pid is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _exists(pid) and loop.time() < deadline:
        reap(pid)
        await asyncio.sleep(0.02)


async def rebuild_sandbox_node(sandbox, node: str, source: str) -> str:
    from hacontrol.sandbox import procs

    tools = _server_tools(node)
    info = sandbox.status()
    target, origin = info.node(node), info.node(source)
    env = {**os.environ, "MYSQL_PWD": sandbox.password("root")}

    await procs.terminate(target.pid, target.config)
    await _gone(target.pid)
    dump = await _dump_all(tools, origin, env)
    position = dump_position(dump)
    await _fresh_datadir(tools, target)
    no_password = {k: v for k, v in env.items() if k != "MYSQL_PWD"}
    await _load_offline(tools, target, dump, position, no_password)
    sandbox.status().with_node_pid(node, None).save()
    await sandbox.start_node(node, "--read-only=ON")
    return f"{node} rebuilt from a dump of {source} at {position} and restarted"


def _server_tools(node: str) -> dict[str, str]:
    """The server and its dump and client tools, or a FaultError naming the missing ones."""
    from hacontrol.sandbox.cluster import find_binary

    tools = {b: find_binary(b) for b in ("mariadbd", "mariadb-dump", "mariadb")}
    if missing := [b for b, path in tools.items() if path is None]:
        raise FaultError(f"cannot rebuild {node}: not installed: {', '.join(missing)}")
    return {b: path for b, path in tools.items() if path is not None}


async def _dump_all(tools: dict[str, str], origin, env: dict[str, str]) -> bytes:
    """A consistent dump of every database of ``origin``, with its GTID position."""
    return await _run(
        [
            str(tools["mariadb-dump"]),
            f"--socket={origin.socket}",
            "--user=root",
            "--all-databases",
            "--single-transaction",
            "--gtid",
            "--master-data=2",
            "--ignore-table=mysql.gtid_slave_pos",
        ],
        None,
        env,
    )


async def _fresh_datadir(tools: dict[str, str], target) -> None:
    """The node's datadir replaced by a copy of the sandbox's template."""
    from hacontrol.sandbox.cluster import default_cache_dir, ensure_template

    template = await ensure_template(default_cache_dir(), str(tools["mariadbd"]))
    await asyncio.to_thread(shutil.rmtree, target.datadir, True)
    await asyncio.to_thread(shutil.copytree, template, target.datadir)


async def _load_offline(
    tools: dict[str, str], target, dump: bytes, position: str, env: dict[str, str]
) -> None:
    """Start the node with networking off, load the dump with the binary log off and
    ``gtid_slave_pos`` at ``position``, and stop it again."""
    from hacontrol.sandbox import procs
    from hacontrol.sandbox.cluster import wait_node_ready

    argv = [
        str(tools["mariadbd"]),
        f"--defaults-file={target.config}",
        "--skip-networking",
        "--skip-slave-start",
    ]
    pid = procs.spawn(argv, Path(target.node_dir) / "stdout.log")
    # Right after posix_spawn the child may not have exec'd yet: its cmdline is still ours, and
    # the sandbox's liveness check (which looks for the config in it) would call it dead.
    await asyncio.to_thread(procs.wait_state, pid, target.config, "running", 2.0)
    try:
        conn = await wait_node_ready(replace(target, pid=pid), "")  # fresh: root has no password
        conn.close()
        script = (
            b"SET SESSION sql_log_bin = 0;\n"
            + dump
            + f"\nSET GLOBAL gtid_slave_pos = '{position}';\nFLUSH PRIVILEGES;\n".encode()
        )
        await _run([str(tools["mariadb"]), f"--socket={target.socket}", "--user=root"], script, env)
    finally:
        await procs.terminate(pid, target.config)
        await _gone(pid)
