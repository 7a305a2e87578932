"""`hacontrol rebuild` through the running controller, on real mariadbd, mariadb-backup and the
sandbox's router: a plan of the controller (journaled, one at a time), started from the API by
the command line, its progress read back from /status."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from hacontrol import gtid
from hacontrol.actions.rebuild import SandboxControl
from hacontrol.drill import sandbox_access
from hacontrol.drill.faults import SandboxFaults
from hacontrol.drill.runner import Drill, DrillPlan
from hacontrol.events import OperatorCommand
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.sandbox import Sandbox
from hacontrol.service import Runtime, Service
from tests.live import (
    LogCapture,
    hacontrol,
    healthy_and_idle,
    leftovers,
    probe,
    rebuilder,
    reset_datadir,
    sandbox_settings,
    service,
    sql,
)
from tests.sandbox_fixtures import NEEDS_MARIADB_BACKUP, run_sync
from tests.support import eventually

pytestmark = [
    pytest.mark.integration,
    NEEDS_MARIADB_BACKUP,
]

TOKEN = "rebuild-live-api-token"


def controller(sandbox: Sandbox, **rebuild_changes) -> tuple[Service, Runtime, LogCapture]:
    """A service (its one runtime, and the API with a token) whose executor rebuilds through
    the sandbox's processes."""
    settings = sandbox_settings(sandbox, io_stall=1.5, apply_timeout=10.0, action_timeout=3.0)
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"token": SecretStr(TOKEN)})}
    )
    svc, capture = service(settings)
    rt = svc.runtime(None)
    rt.executor.rebuilder = rebuilder(sandbox, **rebuild_changes)
    return svc, rt, capture


def cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    assert svc.api is not None and svc.api.address is not None
    host, port = svc.api.address
    return hacontrol(
        *args, "--url", f"http://{host}:{port}", "--poll", "0.2",
        env={"HACONTROL_API__TOKEN": TOKEN}, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def run_cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, svc, *args)


async def make_errant_old_primary(sandbox: Sandbox, rt: Runtime) -> str:
    """node1 writes what nobody receives, dies, a replica is promoted, node1 comes back: the
    controller keeps it quarantined with its errant GTID. Returns the new primary."""
    await healthy_and_idle(rt)
    # A write on node1 alone: semi-sync must fall back to asynchronous after a short wait
    # (a sandbox may be configured never to fall back).
    await sql(sandbox, "node1", "SET GLOBAL rpl_semi_sync_master_timeout = 200")
    for node in ("node2", "node3"):
        await sql(sandbox, node, "STOP SLAVE IO_THREAD")
    await sql(sandbox, "node1", "INSERT INTO app.writes (id, node) VALUES (7, 1)")
    sandbox.kill_node("node1", signal.SIGKILL)
    for node in ("node2", "node3"):
        await sql(sandbox, node, "START SLAVE IO_THREAD")
    # The failover's end too: node1 comes back to a finished failover, not in the middle of
    # one (the view names the promoted node while the plan still repoints the other).
    new = await eventually(
        lambda: (
            rt.controller.view.primary not in (None, "node1")
            and rt.controller.running_plan is None
            and rt.controller.view.primary
        ),
        30,
        "the new primary in the view, the failover over",
    )
    for row in range(100, 110):
        await sql(sandbox, new, f"INSERT INTO app.writes (id, node) VALUES ({row}, 2)")
    await asyncio.to_thread(run_sync, lambda: sandbox.start_node("node1"))
    await eventually(
        lambda: (
            (rt.controller.state.quarantined.get("node1") or None)
            and rt.controller.state.quarantined["node1"].errant
        ),
        30,
        "node1 quarantined with its errant GTID",
    )
    return new


async def in_readers(rt: Runtime, node: str) -> None:
    """Out of quarantine and in the router's readers (it caught up)."""

    def back() -> bool:
        membership = rt.controller.view.router.membership
        return (
            node not in rt.controller.state.quarantined
            and membership is not None
            and node in membership.readers
        )

    await eventually(back, 60, f"{node} back in the readers")


async def checksums(sandbox: Sandbox, primary: str) -> dict[str, tuple[int, int]]:
    position = (await sql(sandbox, primary, "SELECT @@gtid_binlog_pos"))[0][0]
    out = {}
    for node in ("node1", "node2", "node3"):
        if node != primary:
            reached = await sql(sandbox, node, "SELECT MASTER_GTID_WAIT(%s, 60)", (position,))
            assert reached[0][0] == 0, f"{node} did not reach {position}"
        count = (await sql(sandbox, node, "SELECT COUNT(*) FROM app.writes"))[0][0]
        checksum = (await sql(sandbox, node, "CHECKSUM TABLE app.writes"))[0][1]
        out[node] = (count, checksum)
    return out


async def replica_of(sandbox: Sandbox, node: str, primary: str) -> None:
    """``node`` replicates from ``primary``, read-only, no errant GTID by binlog state."""
    mine, theirs = await probe(sandbox, node), await probe(sandbox, primary)
    channel = mine.replication[0]
    assert channel.source_port == sandbox.status().node(primary).port
    assert channel.sql_running and mine.read_only
    assert gtid.errant_by_state(binlog_state_of(mine), binlog_state_of(theirs)).is_empty()


async def test_rebuild_of_a_quarantined_old_primary_with_errant_transactions(fresh_sandbox):
    sandbox = fresh_sandbox
    svc, rt, capture = controller(sandbox)
    async with svc:
        new = await make_errant_old_primary(sandbox, rt)
        refused = await run_cli(svc, "rebuild", new, "--yes")
        assert refused.returncode == 1 and f"{new} is the primary" in refused.stdout
        unconfirmed = await run_cli(svc, "rebuild", "node1")  # no terminal, no --yes
        assert unconfirmed.returncode == 1 and "confirm with --yes" in unconfirmed.stderr
        assert not [r for r in capture.of("plan_started") if r["kind"] == "rebuild"]
        done = await run_cli(svc, "rebuild", "node1", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        await in_readers(rt, "node1")
        await replica_of(sandbox, "node1", new)
        status = rt.status()["rebuild"]
    other = {"node2", "node3"} - {new}
    assert f"may be rebuilt from {other.pop()}" in done.stdout
    assert "copy: " in done.stderr  # progress from /status
    # An ETA while the copy is under its estimate; a copy faster than the polling may only be
    # seen at its end, and one that passed its estimate has no ETA (mariabackup.copy_progress).
    assert "ETA" in done.stderr or status["copied"] > status["estimate"], done.stderr
    assert status["ok"] and status["copied"] > 1_000_000 and status["phase"] == "done"
    (started,) = [r for r in capture.of("plan_started") if r["kind"] == "rebuild"]
    assert started["actions"] == ["Rebuild"]
    sums = await checksums(sandbox, new)
    assert len(set(sums.values())) == 1, sums
    assert (await sql(sandbox, "node1", "SELECT COUNT(*) FROM app.writes WHERE id = 7"))[0][0] == 0
    assert leftovers(sandbox, "node1") == []


@pytest.mark.parametrize("datadir", ["missing", "empty"])
async def test_rebuild_of_a_node_whose_datadir_is_gone(fresh_sandbox, datadir):
    sandbox = fresh_sandbox
    svc, rt, _ = controller(sandbox)
    async with svc:
        await healthy_and_idle(rt)
        await SandboxControl(sandbox).stop("node3")
        reset_datadir(sandbox, datadir)
        await eventually(
            lambda: "node3" in (rt.controller.view.router.membership or set()).broken
            if rt.controller.view.router.membership else False,
            30, "node3 in broken",
        )  # fmt: skip
        answer = await rt.command(rebuild_cmd("node3"))
        assert answer.ok, answer.message
        await in_readers(rt, "node3")
        await replica_of(sandbox, "node3", "node1")
    assert "from node2" in answer.message
    sums = await checksums(sandbox, "node1")
    assert len(set(sums.values())) == 1, sums


async def test_failed_rebuild_leaves_the_node_out_and_the_cluster_untouched(fresh_sandbox):
    sandbox = fresh_sandbox
    svc, rt, capture = controller(sandbox, mbstream="false")  # the receiver fails: a broken copy
    async with svc:
        await healthy_and_idle(rt)
        await SandboxControl(sandbox).stop("node3")
        await eventually(
            lambda: "node3" in (rt.controller.view.router.membership or set()).broken
            if rt.controller.view.router.membership else False,
            30, "node3 in broken",
        )  # fmt: skip
        before = rt.controller.view.router.membership
        answer = await rt.command(rebuild_cmd("node3"))
        assert answer.ok, answer.message
        finished = await eventually(
            lambda: [r for r in capture.of("plan_finished") if r["kind"] == "rebuild"], 60, "end"
        )
        alert = await eventually(
            lambda: [r for r in capture.of("alert") if r.get("kind") == "rebuild_failed"], 10, "!"
        )
        await asyncio.sleep(1)
        assert rt.controller.view.primary == "node1"
        assert rt.controller.view.router.membership == before
    assert not finished[0]["ok"] and "failed at copy" in finished[0]["reason"]
    assert "untouched" in finished[0]["reason"] and alert[0]["node"] == "node3"
    datadir = Path(sandbox.status().node("node3").datadir)
    assert (datadir / "mysql").is_dir() and leftovers(sandbox, "node3") == []


def rebuild_cmd(node: str, source: str | None = None) -> OperatorCommand:
    return OperatorCommand(0.0, "rebuild", node, source=source)


async def test_the_drills_restore_rebuilds_through_the_controller(fresh_sandbox):
    """The drill's restore of an old primary with errant transactions is the controller's
    rebuild (no private dump path): asked as an operator command, followed to its end."""
    sandbox = fresh_sandbox
    settings = sandbox_settings(sandbox, io_stall=1.5, apply_timeout=10.0, action_timeout=3.0)
    drill = Drill(settings, sandbox_access(sandbox), SandboxFaults(sandbox), DrillPlan("kill"))
    assert drill.runtime.executor.rebuilder is not None
    async with drill.runtime:
        new = await make_errant_old_primary(sandbox, drill.runtime)
        note = await drill._rebuild("node1", new)
        await eventually(lambda: drill._rejoined("node1", new), 60, "node1 rejoined")
    assert f"node1 rebuilt by the controller from {({'node2', 'node3'} - {new}).pop()}" in note
    await replica_of(sandbox, "node1", new)


async def test_a_failover_does_not_wait_for_a_rebuild(fresh_sandbox, tmp_path):
    """A rebuild whose copy hangs (a receiver that never reads) is stopped and undone the
    moment the primary dies; the failover runs at once."""
    sandbox = fresh_sandbox
    hang = tmp_path / "mbstream-that-hangs"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    svc, rt, capture = controller(sandbox, mbstream=str(hang))
    async with svc:
        new = await make_errant_old_primary(sandbox, rt)
        assert (await rt.command(OperatorCommand(0.0, "ack"))).ok  # re-arm automatic failover
        answer = await rt.command(rebuild_cmd("node1"))
        assert answer.ok, answer.message
        await eventually(
            lambda: (rt.executor.rebuild_status or {}).get("phase") == "copy", 30, "copying"
        )
        sandbox.kill_node(new, signal.SIGKILL)
        failovers = lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"]  # noqa: E731
        await eventually(lambda: len(failovers()) == 2, 60, "the second failover")
        (preempted,) = capture.of("plan_preempted")
        (rebuild,) = [r for r in capture.of("plan_finished") if r["kind"] == "rebuild"]
        assert failovers()[1]["ok"], failovers()[1]["reason"]
        assert rebuild["_mono"] <= failovers()[1]["_mono"]
        status = rt.executor.rebuild_status
    assert "preempted by DeadPrimary" in preempted["reason"] and not rebuild["ok"]
    assert status is not None and not status["running"] and "untouched" in status["reason"]
    assert leftovers(sandbox, "node1") == []
    assert (await sql(sandbox, "node1", "SELECT @@read_only"))[0][0] == 1  # still fenced


def hacontrol_cli(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return hacontrol(*args, "--config", config, timeout=300, stdin=subprocess.DEVNULL)


async def test_the_sandbox_settings_rebuild_through_a_controller_process(fresh_sandbox):
    """What a user of `make run` does: the controller as its own process with the sandbox's
    settings ([rebuild] stops and starts nodes through `hacontrol sandbox`), a replica taken
    out with maintenance, rebuilt, and brought back."""
    config = str(fresh_sandbox.status().settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "hacontrol", "run", "--config", config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        step = lambda *a: asyncio.to_thread(hacontrol_cli, config, *a)  # noqa: E731

        async def maintenance_on() -> bool:
            return (await step("maintenance", "node3", "on")).returncode == 0

        await eventually(maintenance_on, 60, "the API answering maintenance on", poll=0.5)
        done = await step("rebuild", "node3", "--from", "node2", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert (await step("maintenance", "node3", "off")).returncode == 0
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
    assert "node3 rebuilt from node2" in done.stdout and "copy: " in done.stderr
    await replica_of(fresh_sandbox, "node3", "node1")
    assert fresh_sandbox.node_pid("node3") is not None  # the sandbox knows its new process
