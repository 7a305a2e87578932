"""A divergence below the last GTID, made on real mariadbd: the old primary wrote one
transaction nobody received, the new primary then wrote past its seq. Positions say
"contained"; the binlog states do not. The controller quarantines it before any rejoin."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.live import healthy_and_idle, runtime, sandbox_settings, sql
from tests.sandbox_fixtures import run_sync
from tests.support import eventually

pytestmark = pytest.mark.integration


async def test_divergence_below_the_last_gtid_is_quarantined_before_any_rejoin(fresh_sandbox):
    sandbox = fresh_sandbox
    settings = sandbox_settings(sandbox, io_stall=1.5, apply_timeout=10.0, action_timeout=3.0)
    rt, capture = runtime(settings)
    async with rt:
        await healthy_and_idle(rt)
        # A write on node1 alone: semi-sync must fall back to asynchronous after a short wait
        # (a sandbox may be configured never to fall back).
        await sql(sandbox, "node1", "SET GLOBAL rpl_semi_sync_master_timeout = 200")
        for node in ("node2", "node3"):
            await sql(sandbox, node, "STOP SLAVE IO_THREAD")
        await sql(sandbox, "node1", "INSERT INTO app.writes (id, node) VALUES (7, 1)")
        lost = (await sql(sandbox, "node1", "SELECT @@gtid_binlog_pos"))[0][0]
        sandbox.kill_node("node1", signal.SIGKILL)
        for node in ("node2", "node3"):
            await sql(sandbox, node, "START SLAVE IO_THREAD")
        (failover,) = await eventually(
            lambda: [r for r in capture.of("plan_finished") if r["kind"] == "failover"],
            30,
            "failover",
        )
        assert failover["ok"], failover
        # The view names the new primary once its probe after the promotion has landed (under
        # load that may be a moment after the plan's end).
        # Until then it may still name node1 (killed, its failures not yet past the threshold).
        new = await eventually(
            lambda: rt.controller.view.primary in ("node2", "node3") and rt.controller.view.primary,
            10,
            "the view naming the promoted replica as the primary",
        )
        # The new primary writes well past the lost seq: positions now look "contained".
        for row in range(100, 120):
            await sql(sandbox, new, f"INSERT INTO app.writes (id, node) VALUES ({row}, 2)")
        new_pos = (await sql(sandbox, new, "SELECT @@gtid_binlog_pos"))[0][0]
        assert int(new_pos.rsplit("-", 1)[1]) > int(lost.rsplit("-", 1)[1])
        await asyncio.to_thread(run_sync, lambda: sandbox.start_node("node1"))
        alert = await eventually(
            lambda: next(
                (r for r in capture.of("alert") if r.get("kind") == "errant_transactions"), None
            ),
            30,
            "errant alert",
        )
        await asyncio.sleep(1.5)  # a rejoin, if one were planned, would start now
        quarantined = rt.controller.state.quarantined["node1"]
    assert lost in alert["summary"], alert
    assert quarantined.errant == lost
    assert not any(r["rule"] == "RejoinOldPrimary" for r in capture.of("plan_started"))
    assert (await sql(sandbox, "node1", "SELECT @@read_only"))[0][0] == 1
    # never attached: no replication configured, so no error 1236 was needed to find it
    assert not await sql(sandbox, "node1", "SHOW SLAVE STATUS")
    state = (await sql(sandbox, new, "SELECT @@gtid_binlog_state"))[0][0]
    assert lost not in state.split(",")
