"""The chaos drill on a real sandbox: a short soak (random faults of every kind, the
controller as a process) that must end with no violation, no lost write and equal checksums;
and the checker proven able to fail: invariants broken by hand are reported."""

from __future__ import annotations

import asyncio
import time

import pytest

from hacontrol.drill import sandbox_access
from hacontrol.drill.chaos import CATALOGUE, ChaosPlan
from hacontrol.drill.chaos_cli import checker_for, soak
from hacontrol.drill.chaos_report import verdict
from hacontrol.drill.load import WriteLoad, ensure_table
from tests.live import sql
from tests.sandbox_fixtures import running_sandbox
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def chaos_sandbox(tmp_path_factory):
    with running_sandbox(tmp_path_factory.mktemp("chaos") / "sb") as sb:
        yield sb


async def test_a_short_chaos_soak_keeps_every_invariant(chaos_sandbox, tmp_path):
    lines: list[str] = []
    doc = await soak(
        chaos_sandbox,
        sandbox_access(chaos_sandbox),
        ChaosPlan(duration=120, seed=15),
        tmp_path,
        progress=lines.append,
    )
    report = "\n".join(lines)
    assert verdict(doc) == [], report
    assert doc["violations"] == [] and doc["unconverged"] is None
    assert doc["final"]["lost"] == 0 and doc["final"]["checksums_equal"] is True
    assert doc["final"]["acknowledged"] > 1000
    assert doc["faults"] >= 4, report
    assert set(doc["by_kind"]) <= set(CATALOGUE)
    assert all(r["converged_after"] is not None for r in doc["records"]), report
    assert doc["samples"] > 1000 and doc["router_samples"] > 300


async def test_the_checker_reports_invariants_broken_by_hand(chaos_sandbox):
    sb = chaos_sandbox
    access = sandbox_access(sb)
    await ensure_table(access)
    checker = checker_for(sb).start()
    writes = WriteLoad(access, start_id=int(time.time() * 1000) * 1000).start()
    try:
        await eventually(lambda: len(writes.acknowledged) >= 30, 20, "writes acknowledged")
        assert checker.invariants.violations == []

        # two writable nodes: a replica made writable by hand for half a second
        await sql(sb, "node2", "SET GLOBAL read_only = OFF")
        await eventually(
            lambda: any(v.kind == "two-writable" for v in checker.invariants.violations),
            5,
            "the checker to report two writable nodes",
        )
        await sql(sb, "node2", "SET GLOBAL read_only = ON")
        if sb.status().router.kind == "proxysql":
            await _second_writer_in_proxysql(sb, checker)
        await eventually(checker.convergence_ok, 10, "the cluster converged again")
    finally:
        await writes.stop()
        await checker.stop()

    # a row deleted on a replica only, and an acknowledged write deleted on the primary only
    acked = writes.acknowledged
    await asyncio.sleep(0.5)
    await sql(
        sb, "node3", "SET sql_log_bin = 0", then=(f"DELETE FROM app.drill WHERE id = {acked[3]}",)
    )
    await sql(
        sb, "node1", "SET sql_log_bin = 0", then=(f"DELETE FROM app.drill WHERE id = {acked[5]}",)
    )
    final = await checker.final_check(access.table, acked)
    assert final["checksums_equal"] is False
    assert final["lost"] == 1 and final["lost_ids"] == [acked[5]]
    kinds = {v.kind for v in checker.invariants.violations}
    assert "two-writable" in kinds


async def _second_writer_in_proxysql(sb, checker) -> None:
    """A second server put in ProxySQL's writer hostgroup by hand, then taken out."""
    node2 = sb.status().node("node2")
    admin = sb.status().router
    import aiomysql

    conn = await aiomysql.connect(
        host=admin.host, port=admin.admin_port, user="admin", password=sb.password("proxysql")
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO mysql_servers (hostgroup_id, hostname, port) VALUES (10, %s, %s)",
                (node2.host, node2.port),
            )
            await cur.execute("LOAD MYSQL SERVERS TO RUNTIME")
        await eventually(
            lambda: (
                {"router-two-writers", "router-writer-read-only"}
                <= {v.kind for v in checker.invariants.violations}
            ),
            5,
            "the checker to report two writers in the router, one read-only",
        )
        async with conn.cursor() as cur:
            await cur.execute(
                "DELETE FROM mysql_servers WHERE hostgroup_id = 10 AND port = %s", (node2.port,)
            )
            await cur.execute("LOAD MYSQL SERVERS TO RUNTIME")
    finally:
        conn.close()
