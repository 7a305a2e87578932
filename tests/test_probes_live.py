"""Observation against a real sandbox: probes, view and controller, with real faults.

Probe interval 0.3 s, timeout 0.25 s, threshold 3. Waits are generous; the timing assertion
(no stall of healthy nodes while one is frozen) compares gaps with the interval, not with a
tight absolute number.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from datetime import datetime

import pytest

from hacontrol.view import Code, Health, Problem
from tests.live import runtime, sandbox_settings, sql
from tests.sandbox_fixtures import run_sync
from tests.support import eventually

pytestmark = pytest.mark.integration

INTERVAL = 0.3
FROZEN_INTERVAL = 0.5


def health(rt, node: str) -> Health:
    return rt.controller.view.nodes[node].health


def probe_times(capture, node: str) -> list[float]:
    return [datetime.fromisoformat(r["ts"]).timestamp() for r in capture.of("probe", node)]


async def test_frozen_replica_does_not_stall_the_others(fresh_sandbox):
    # 0.5 s interval, 0.4 s timeout: probes run one after another would add the frozen node's
    # 0.4 s timeout to every cycle (gaps of 1.8 intervals); concurrent probes keep the gaps
    # near one interval. The bound sits between the two, with room for a loaded CI machine.
    settings = sandbox_settings(fresh_sandbox, interval=FROZEN_INTERVAL, timeout=0.4)
    rt, capture = runtime(settings)
    async with rt:
        await eventually(
            lambda: rt.controller.view.quorum.ok and not rt.controller.view.problems,
            10,
            "a healthy view",
        )
        assert fresh_sandbox.kill_node("node3", signal.SIGSTOP)
        try:
            await eventually(
                lambda: health(rt, "node3") is Health.UNREACHABLE, 10, "node3 unreachable"
            )
            frozen_at = len(capture.records)
            await asyncio.sleep(6 * FROZEN_INTERVAL)  # healthy nodes keep being probed meanwhile
            reason = rt.controller.view.nodes["node3"].reason
            assert "consecutive failed probes: timed out" in reason
            assert health(rt, "node1") is Health.HEALTHY
            assert health(rt, "node2") is Health.HEALTHY
            assert rt.controller.view.has(Code.NODE_UNREACHABLE)
        finally:
            fresh_sandbox.kill_node("node3", signal.SIGCONT)
        await eventually(lambda: health(rt, "node3") is Health.HEALTHY, 15, "node3 healthy again")
    assert frozen_at > 0
    for node in ("node1", "node2"):
        times = probe_times(capture, node)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) > 10
        # Each probe of a healthy node waits its interval; a frozen neighbour adds nothing.
        assert max(gaps) < 1.6 * FROZEN_INTERVAL, f"{node}: largest gap {max(gaps):.3f} s"


async def test_killed_replica_unreachable_then_healthy_after_restart(fresh_sandbox):
    settings = sandbox_settings(fresh_sandbox, interval=INTERVAL)
    rt, capture = runtime(settings)
    async with rt:
        await eventually(lambda: health(rt, "node2") is Health.HEALTHY, 10, "node2 healthy")
        assert fresh_sandbox.kill_node("node2", signal.SIGKILL)
        await eventually(lambda: health(rt, "node2") is Health.UNREACHABLE, 10, "node2 unreachable")
        # The watch connection saw the crash: a re-probe came before the next interval.
        assert capture.of("connection_lost", "node2")
        assert "Can't connect" in rt.controller.view.nodes["node2"].reason
        await asyncio.to_thread(run_sync, lambda: fresh_sandbox.start_node("node2"))
        await eventually(lambda: health(rt, "node2") is Health.HEALTHY, 20, "node2 healthy again")
        assert not rt.controller.view.has(Code.NODE_UNREACHABLE)


async def run_sql(sandbox, node: str, *statements: str, role: str = "root") -> None:
    await sql(sandbox, node, statements[0], role=role, then=statements[1:])


async def broken_on(rt, node: str) -> Problem:
    """Until the view names ReplicationBroken on ``node``: that problem."""
    return await eventually(
        lambda: next(
            (
                p
                for p in rt.controller.view.problems
                if p.code is Code.REPLICATION_BROKEN and p.node == node
            ),
            None,
        ),
        10,
        f"ReplicationBroken on {node}",
    )


async def test_replication_error_and_writable_replica_are_named(fresh_sandbox):
    settings = sandbox_settings(fresh_sandbox, interval=INTERVAL)
    rt, _ = runtime(settings)
    async with rt:
        await eventually(
            lambda: rt.controller.view.quorum.ok and not rt.controller.view.problems,
            10,
            "a healthy view",
        )
        # A row written on the replica alone, then the same key on the primary: the SQL
        # thread stops with a duplicate-key error, exactly as an errant write would do.
        await run_sql(
            fresh_sandbox,
            "node2",
            "SET SESSION sql_log_bin = 0",
            "INSERT INTO app.writes (id, node) VALUES (424242, 2)",
        )
        await run_sql(
            fresh_sandbox,
            "writer",
            "INSERT INTO app.writes (id, node) VALUES (424242, 1)",
            role="app",
        )
        problem = await broken_on(rt, "node2")
        assert "SQL thread stopped" in problem.reason and "1062" in problem.reason
        assert "Duplicate entry" in problem.reason

        # Plain STOP SLAVE on another replica: broken too, without an error number.
        await run_sql(fresh_sandbox, "node3", "STOP SLAVE")
        problem = await broken_on(rt, "node3")
        assert "IO thread No" in problem.reason
        await run_sql(fresh_sandbox, "node3", "START SLAVE")
        await eventually(lambda: health(rt, "node3") is Health.HEALTHY, 10, "node3 healthy")

        await run_sql(fresh_sandbox, "node3", "SET GLOBAL read_only = OFF")
        problem = await eventually(
            lambda: next(
                (p for p in rt.controller.view.problems if p.code is Code.TWO_WRITABLE_NODES), None
            ),
            10,
            "TwoWritableNodes",
        )
        assert "node1" in problem.reason and "node3" in problem.reason
        assert rt.controller.view.primary == "node1"  # node3 still replicates: not a primary
        await run_sql(fresh_sandbox, "node3", "SET GLOBAL read_only = ON")
        await eventually(
            lambda: not rt.controller.view.has(Code.TWO_WRITABLE_NODES),
            10,
            "TwoWritableNodes cleared",
        )
