"""Helpers every kind of test shares: folding events into a view, a free port, waiting for a
condition. One of each (plain values live in ``tests.factories``, sandbox helpers in
``tests.live``)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from hacontrol.events import Event
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, fold, initial


def fold_all(
    settings: Settings, *rounds: Iterable[Event] | Event, view: ClusterView | None = None
) -> ClusterView:
    """The view after every event, in order, from ``view`` (or the initial one). An argument
    is one event or a round of them."""
    view = initial(settings) if view is None else view
    for item in rounds:
        for event in item if isinstance(item, list | tuple) else (item,):
            view = fold(view, event, settings)
    return view


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "the condition", poll: float = 0.05
) -> Any:
    """Poll ``check`` (a function, or a coroutine function) until it returns something truthy,
    and return that; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(poll)
