"""The drill's connects keep a cancellation that arrives in the very loop iteration their
connect completes (``asyncio.wait_for`` on Python 3.11 returned the connection and dropped
the cancellation: a load or checker told to stop went on), and close what they opened. The
connect's handshake is a future the test completes itself, as that interleaving cannot be
forced on a real server; a real unanswering listener shows the timeout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiomysql
import pytest

from hacontrol.drill import checker, load

LOGIN = checker.Login("hacontrol", "pw")
CONNECTS: dict[str, Callable[[tuple[str, int], float], Awaitable[Any]]] = {
    "load": lambda address, timeout: load.connect(
        load.Access(address, address, "app", "pw", timeout=timeout), address
    ),
    "checker": lambda address, timeout: checker._connect(address, LOGIN, timeout),
}


@pytest.mark.parametrize("who", sorted(CONNECTS))
async def test_a_cancellation_arriving_as_the_connect_completes_is_kept(monkeypatch, who):
    handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: list[bool] = []

    async def handshake_completing_on_demand(self: aiomysql.Connection) -> None:
        await handshake

    monkeypatch.setattr(aiomysql.Connection, "_connect", handshake_completing_on_demand)
    monkeypatch.setattr(aiomysql.Connection, "close", lambda self: closed.append(True))
    task = asyncio.ensure_future(CONNECTS[who](("127.0.0.1", 1), 5.0))
    for _ in range(3):
        await asyncio.sleep(0)  # the task now waits on the handshake
    handshake.set_result(None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]  # the connection made meanwhile is not left open


@pytest.mark.parametrize("who", sorted(CONNECTS))
async def test_a_server_that_never_greets_times_out_within_the_bound(who):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await CONNECTS[who](listener.getsockname(), 0.3)
        assert loop.time() - started < 3.0
