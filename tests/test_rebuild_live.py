"""Rebuild on real mariadbd: mariadb-backup streamed through hacontrol, the sandbox's local
commands (the default), a steady writer on the primary while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hacontrol import gtid
from hacontrol.actions.rebuild import RebuildResult, SandboxControl
from hacontrol.flavors import IoState, NodeStatus
from hacontrol.mariabackup import Progress
from hacontrol.sandbox import Sandbox
from tests.live import leftovers, probe, rebuilder, reset_datadir, sql, state_of
from tests.sandbox_fixtures import NEEDS_MARIADB_BACKUP

pytestmark = [
    pytest.mark.integration,
    NEEDS_MARIADB_BACKUP,
]

PHASES = ["check", "copy", "prepare", "stop", "swap", "start", "replicate", "catch-up",
          "cleanup", "done"]  # fmt: skip


async def make_errant(sandbox: Sandbox, node: str, row: int) -> str:
    """A write on a replica by hand, read_only off for a moment: its errant GTID."""
    await sql(
        sandbox,
        node,
        "SET GLOBAL read_only = OFF",
        then=(f"INSERT INTO app.writes (id, node) VALUES ({row}, 0)", "SET GLOBAL read_only = ON"),
    )
    return (await sql(sandbox, node, "SELECT @@gtid_binlog_pos"))[0][0]


@asynccontextmanager
async def writer(sandbox: Sandbox, first: int = 1) -> AsyncIterator[list[int]]:
    """Rows written to the primary every few ms while the block runs; the ids acknowledged."""
    acked: list[int] = []
    stop = asyncio.Event()

    async def loop() -> None:
        conn = await sandbox.connect("node1", "app")
        try:
            async with conn.cursor() as cur:
                row = first
                while not stop.is_set():
                    await cur.execute("INSERT INTO app.writes (id, node) VALUES (%s, 1)", (row,))
                    acked.append(row)
                    row += 1
                    await asyncio.sleep(0.005)
        finally:
            conn.close()

    task = asyncio.create_task(loop())
    try:
        yield acked
    finally:
        stop.set()
        await task


async def converged(sandbox: Sandbox) -> dict[str, tuple[int, int]]:
    """Every node at the primary's position; (row count, CHECKSUM TABLE) per node."""
    position = (await sql(sandbox, "node1", "SELECT @@gtid_binlog_pos"))[0][0]
    out = {}
    for node in ("node1", "node2", "node3"):
        if node != "node1":
            reached = await sql(sandbox, node, "SELECT MASTER_GTID_WAIT(%s, 60)", (position,))
            assert reached[0][0] == 0, f"{node} did not reach {position}"
        count = (await sql(sandbox, node, "SELECT COUNT(*) FROM app.writes"))[0][0]
        checksum = (await sql(sandbox, node, "CHECKSUM TABLE app.writes"))[0][1]
        out[node] = (count, checksum)
    return out


def replicates_from(status: NodeStatus, port: int) -> bool:
    channel = status.replication[0] if status.replication else None
    return (
        channel is not None
        and channel.source_port == port
        and channel.io_state is IoState.RUNNING
        and channel.sql_running
    )


async def check_rebuilt(sandbox: Sandbox, result: RebuildResult, acked: list[int]) -> None:
    assert result.ok, result.reason
    node1 = sandbox.status().node("node1")
    node3, primary = await probe(sandbox, "node3"), await probe(sandbox, "node1")
    assert replicates_from(node3, node1.port) and node3.read_only
    assert gtid.errant_by_state(state_of(node3), state_of(primary)).is_empty()
    assert state_of(node3).seq(0, 3) == 0  # node3's own errant GTID is gone
    assert state_of(node3).seq(0, 1) > 0  # and it knows server 1's history (state seeded)
    sums = await converged(sandbox)
    assert len(set(sums.values())) == 1, sums  # CHECKSUM TABLE equal on every node
    present = {r[0] for r in await sql(sandbox, "node3", "SELECT id FROM app.writes")}
    assert set(acked) <= present
    assert leftovers(sandbox) == []


async def test_rebuild_replica_with_errant_transactions(fresh_sandbox: Sandbox) -> None:
    sandbox = fresh_sandbox
    errant = await make_errant(sandbox, "node3", 1_000_000)
    assert errant.startswith("0-3-")
    primary = await probe(sandbox, "node1")
    assert str(gtid.errant_by_state(state_of(await probe(sandbox, "node3")), state_of(primary)))
    reports: list[Progress] = []
    async with writer(sandbox) as acked:
        result = await rebuilder(sandbox).rebuild("node3", "node2", "node1", reports.append)
    await check_rebuilt(sandbox, result, acked)
    phases = [p.phase for p in reports if p.message]
    assert phases == PHASES
    copies = [p for p in reports if p.phase == "copy" and not p.message]
    assert copies[-1].copied == result.detail["copied"] > 1_000_000
    assert copies[-1].total == result.detail["estimate"] and copies[-1].rate
    assert result.detail["position"] and result.detail["gtid_binlog_state"]


@pytest.mark.parametrize("datadir", ["empty", "missing"])
async def test_rebuild_node_with_empty_or_missing_datadir(
    fresh_sandbox: Sandbox, datadir: str
) -> None:
    sandbox = fresh_sandbox
    await SandboxControl(sandbox).stop("node3")
    reset_datadir(sandbox, datadir)
    async with writer(sandbox) as acked:
        result = await rebuilder(sandbox).rebuild("node3", "node2", "node1")
    await check_rebuilt(sandbox, result, acked)


BROKEN_COPIES = [
    ({"backup_options": ("--user=root", "--socket=/nonexistent/mysqld.sock")},
     "Failed to connect to MariaDB server"),
    ({"mariadb_backup": "/nonexistent/mariadb-backup"}, "cannot run /nonexistent/mariadb-backup"),
    ({"mbstream": "false"}, "mbstream on node3 failed"),
]  # fmt: skip


async def test_failed_copy_leaves_target_and_source_untouched(fresh_sandbox: Sandbox) -> None:
    sandbox = fresh_sandbox
    errant = await make_errant(sandbox, "node3", 1_000_000)
    pid = sandbox.node_pid("node3")
    for changes, why in BROKEN_COPIES:
        result = await rebuilder(sandbox, **changes).rebuild("node3", "node2", "node1")
        assert not result.ok and result.detail["failed_phase"] == "copy"
        assert why in result.reason and "untouched" in result.reason
        assert sandbox.node_pid("node3") == pid  # never stopped
        assert (await sql(sandbox, "node3", "SELECT @@gtid_binlog_pos"))[0][0] == errant
        assert leftovers(sandbox) == []
        node2 = await probe(sandbox, "node2")
        assert replicates_from(node2, sandbox.status().node("node1").port)


class FailingStart(SandboxControl):
    """Starts the node with an option mariadbd refuses: a real failed start."""

    async def start(self, node: str) -> None:
        await self.sandbox.start_node(node, "--no-such-option-for-this-test")


async def test_failed_start_puts_the_old_datadir_back(fresh_sandbox: Sandbox) -> None:
    sandbox = fresh_sandbox
    errant = await make_errant(sandbox, "node3", 1_000_000)
    control = FailingStart(sandbox)
    result = await rebuilder(sandbox, control).rebuild("node3", "node2", "node1")
    assert not result.ok and result.detail["failed_phase"] == "start"
    assert "old datadir back in place" in result.reason
    assert sandbox.node_pid("node3") is None  # left stopped
    assert leftovers(sandbox) == []
    await sandbox.start_node("node3", "--read-only=ON", "--skip-slave-start")
    # The old datadir, errant transaction included.
    assert (await sql(sandbox, "node3", "SELECT @@gtid_binlog_pos"))[0][0] == errant


async def test_leftovers_of_an_earlier_rebuild_are_refused(fresh_sandbox: Sandbox) -> None:
    sandbox = fresh_sandbox
    pid = sandbox.node_pid("node3")
    leftover = sandbox.status().node("node3").datadir + ".before-rebuild"
    await asyncio.to_thread(Path(leftover).mkdir)
    result = await rebuilder(sandbox).rebuild("node3", "node2", "node1")
    assert not result.ok and result.detail["failed_phase"] == "check"
    assert "left by a previous rebuild" in result.reason and "nothing was changed" in result.reason
    assert sandbox.node_pid("node3") == pid and leftovers(sandbox) == [leftover]


async def test_cancelled_after_the_swap_puts_the_old_datadir_back(fresh_sandbox: Sandbox) -> None:
    """A controller shutting down cancels the rebuild: it is undone before the cancel ends."""
    sandbox = fresh_sandbox
    errant = await make_errant(sandbox, "node3", 1_000_000)
    work = rebuilder(sandbox)
    task: asyncio.Task[RebuildResult] | None = None

    def cancel_at_replicate(report: Progress) -> None:
        if report.phase == "replicate" and report.message and task is not None:
            task.cancel()

    task = asyncio.create_task(work.rebuild("node3", "node2", "node1", cancel_at_replicate))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sandbox.node_pid("node3") is None and leftovers(sandbox) == []
    await sandbox.start_node("node3", "--read-only=ON", "--skip-slave-start")
    assert (await sql(sandbox, "node3", "SELECT @@gtid_binlog_pos"))[0][0] == errant
