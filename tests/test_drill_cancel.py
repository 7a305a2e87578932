"""The drill's connects keep a cancellation that arrives in the very loop iteration their
connect completes (``asyncio.wait_for`` on Python 3.11 returned the connection and dropped
the cancellation: a load or checker told to stop went on). The connect is a future the test
completes itself, as that interleaving cannot be forced on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hacontrol.drill import checker, load


async def _cancelled_as_connected(
    monkeypatch: pytest.MonkeyPatch, module: Any, connect: Callable[[], Awaitable[Any]]
) -> None:
    connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def connect_completing_on_demand(**_: Any) -> str:
        return await connected

    monkeypatch.setattr(module.aiomysql, "connect", connect_completing_on_demand)
    task = asyncio.ensure_future(connect())
    for _ in range(3):
        await asyncio.sleep(0)  # the task now waits on the connect
    connected.set_result("a connection")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_load_connect_keeps_a_cancellation_arriving_as_it_completes(monkeypatch):
    access = load.Access(("127.0.0.1", 1), ("127.0.0.1", 2), "app", "pw", timeout=5.0)
    await _cancelled_as_connected(monkeypatch, load, lambda: load.connect(access, ("127.0.0.1", 1)))


async def test_a_checker_connect_keeps_a_cancellation_arriving_as_it_completes(monkeypatch):
    login = checker.Login("hacontrol", "pw")
    await _cancelled_as_connected(
        monkeypatch, checker, lambda: checker._connect(("127.0.0.1", 1), login, 5.0)
    )
