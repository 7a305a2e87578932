"""Operator commands through the real command path (queue, controller, executor) on a sandbox."""

from __future__ import annotations

import asyncio
import time

import pytest

from hacontrol.events import OperatorCommand
from hacontrol.routing import Membership
from tests.live import WriteLoop, healthy_and_idle, runtime, sandbox_settings, sql
from tests.support import eventually

pytestmark = pytest.mark.integration


def command(name: str, node: str | None = None, on: bool | None = None) -> OperatorCommand:
    return OperatorCommand(time.monotonic(), name, node, on)


async def test_switchover_there_and_back_under_writes_loses_nothing(fresh_sandbox):
    rt, _ = runtime(sandbox_settings(fresh_sandbox, io_stall=1.5))
    async with rt:
        await healthy_and_idle(rt)
        writes = WriteLoop(fresh_sandbox, statement=WriteLoop.PLAIN).start()
        await eventually(lambda: len(writes.acknowledged) > 30, 10, "writes flowing")
        windows = []
        for target in ("node2", "node1"):
            before = len(writes.acknowledged)
            result = await rt.command(command("switchover", target))
            assert result.ok, result.message
            assert result.detail["plan"].startswith("switchover-")
            await eventually(
                lambda t=target: rt.controller.view.primary == t, 10, f"{target} primary"
            )
            since = time.monotonic()
            await eventually(lambda s=since: writes.acked_since(s) > 10, 15, "writes again")
            assert len(writes.acknowledged) > before
            windows.append(result.detail["seconds"])
            await healthy_and_idle(rt)
        await writes.stop()
        membership = await rt.router.read()
    assert membership.writers == {"node1"}
    roles = await fresh_sandbox.live_roles()
    assert roles == {"node1": "primary", "node2": "replica", "node3": "replica"}
    rows = await sql(fresh_sandbox, "node1", "SELECT id FROM app.writes WHERE id >= 1000000")
    present = {r[0] for r in rows}
    assert [i for i in writes.acknowledged if i not in present] == []
    # HAProxy: only the short read-only / reconnect window's errors: read-only (1290), lost or
    # refused connections (2013, 2003), nothing else.
    allowed = {
        "OperationalError(2013)",
        "OperationalError(2003)",
        "InternalError(1290)",
        "OperationalError(1290)",
        "TimeoutError",
    }
    assert set(writes.errors) <= allowed, writes.errors
    if rt.settings.router.kind == "proxysql":  # drained, not cut: a pause, never an error
        assert writes.errors == {}, writes.errors
    print(f"\nswitchover plan durations {windows} s; errors {writes.errors}")


async def test_switchover_refusals_through_the_command_path(fresh_sandbox):
    rt, _ = runtime(sandbox_settings(fresh_sandbox))
    async with rt:
        await healthy_and_idle(rt)
        result = await rt.command(command("switchover", "node9"))
        assert not result.ok and "unknown node 'node9'" in result.message
        await sql(fresh_sandbox, "node2", "STOP SLAVE SQL_THREAD")
        await eventually(
            lambda: rt.controller.view.has(
                __import__("hacontrol.view", fromlist=["Code"]).Code.REPLICATION_BROKEN
            ),
            10,
            "node2 broken",
        )
        result = await rt.command(command("switchover", "node2"))
        assert not result.ok and "SQL thread not running" in result.message, (
            result.message,
            rt.controller.running_plan,
            rt.controller.decisions[-3:],
        )
        await sql(fresh_sandbox, "node2", "START SLAVE SQL_THREAD")
    assert (await fresh_sandbox.live_roles())["node1"] == "primary"


async def test_switchover_deadline_rolls_back(fresh_sandbox):
    # The candidate cannot catch up (its SQL thread stops after pre-flight): the deadline
    # passes before promotion and the old primary is writable and the writer again.
    settings = sandbox_settings(fresh_sandbox, switchover_deadline=2.0)
    rt, capture = runtime(settings)
    async with rt:
        await healthy_and_idle(rt)
        original = await rt.router.read()
        await sql(fresh_sandbox, "node2", "STOP SLAVE IO_THREAD")  # receives nothing more
        await sql(fresh_sandbox, "node1", "INSERT INTO app.writes (id, node) VALUES (5, 1)")
        result = await rt.command(command("switchover", "node2"))
        assert not result.ok
        assert "rolled back" in result.message and "CatchUp" in result.message
        roles = await fresh_sandbox.live_roles()
        assert roles["node1"] == "primary" and roles["node2"] == "replica"
        assert (await rt.router.read()).writers == original.writers == {"node1"}
        assert any(r["kind"] == "switchover_rolled_back" for r in capture.of("alert"))
        await sql(fresh_sandbox, "node2", "START SLAVE IO_THREAD")
        # Writes through the router work again.
        await sql(
            fresh_sandbox, "writer", "INSERT INTO app.writes (id, node) VALUES (6, 1)", role="app"
        )


async def test_maintenance_hides_a_replica_from_readers_quorum_and_promotion(fresh_sandbox):
    rt, _ = runtime(sandbox_settings(fresh_sandbox))
    async with rt:
        await healthy_and_idle(rt)
        result = await rt.command(command("maintenance", "node3", True))
        assert result.ok, result.message
        await eventually(
            lambda: "node3" not in (rt.controller.view.router.membership or Membership()).readers,
            10,
            "node3 out",
        )
        view = rt.controller.view  # hidden from routing and promotion, never from the quorum
        assert view.quorum.recognized == ("node1", "node2", "node3")
        assert view.quorum.reachable == ("node1", "node2", "node3")
        status = rt.status()
        assert status["controller"]["maintenance"] == ["node3"]
        assert all(
            c["node"] != "node3" or not c["eligible"]
            for c in status["if_primary_died_now"]["candidates"]
        )
        refused = await rt.command(command("maintenance", "node1", True))
        assert not refused.ok and "primary" in refused.message
        await asyncio.sleep(1)  # the controller does not put it back by itself
        assert "node3" not in rt.controller.view.router.membership.readers
        result = await rt.command(command("maintenance", "node3", False))
        assert result.ok, result.message
        await eventually(
            lambda: "node3" in rt.controller.view.router.membership.readers,
            10,
            "node3 back among the readers",
        )
        assert rt.controller.view.quorum.recognized == ("node1", "node2", "node3")


async def test_pause_resume_and_ack(fresh_sandbox):
    rt, _ = runtime(sandbox_settings(fresh_sandbox))
    async with rt:
        await healthy_and_idle(rt)
        assert (await rt.command(command("pause"))).ok
        await sql(fresh_sandbox, "node3", "STOP SLAVE")  # would normally leave the readers
        await eventually(
            lambda: any(d["rule"] == "Paused" for d in rt.controller.decisions),
            10,
            "paused decision",
        )
        await asyncio.sleep(1)
        assert "node3" in rt.controller.view.router.membership.readers  # nothing changed
        assert (await rt.command(command("resume"))).ok
        await eventually(
            lambda: "node3" not in rt.controller.view.router.membership.readers,
            10,
            "node3 out after resume",
        )
        await sql(fresh_sandbox, "node3", "START SLAVE")
        ack = await rt.command(command("ack"))
        assert ack.ok and "recovery block cleared" in ack.message
