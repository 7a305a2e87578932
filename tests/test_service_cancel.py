"""A cancellation that arrives as the awaited call completes is never lost in the runtime's
files: Python 3.11's ``asyncio.wait_for`` returns the result then and swallows the cancel
(a stop that never stops, a plan cut that runs on); ``async with asyncio.timeout(...)`` around
the same await (shielded where it was) raises it. Shown on the idiom, then checked on the
sources: none of these files calls ``asyncio.wait_for``."""

from __future__ import annotations

import ast
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hacontrol"
FILES = (
    "runtime.py",
    "service.py",
    "api_process.py",
    "journal.py",
    "journal_link.py",
    "actions/hooks.py",
    "actions/proxysql.py",
)


async def cancelled_as_it_completes(wait: Callable[[asyncio.Future[int]], Awaitable[int]]) -> str:
    """Start ``wait`` on a future, then in one loop iteration complete the future and cancel
    the waiting task: what the task ends with."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait(future))
    await asyncio.sleep(0)  # the task now waits
    future.set_result(1)
    task.cancel()
    try:
        return f"returned {await task}"
    except asyncio.CancelledError:
        return "cancelled"


async def with_timeout(future: asyncio.Future[int]) -> int:
    async with asyncio.timeout(5):
        return await asyncio.shield(future)


async def with_wait_for(future: asyncio.Future[int]) -> int:
    return await asyncio.wait_for(asyncio.shield(future), 5)


async def test_the_timeout_block_never_loses_a_cancellation() -> None:
    assert await cancelled_as_it_completes(with_timeout) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is asyncio.timeout since 3.12")
async def test_wait_for_loses_it_on_this_python() -> None:
    assert await cancelled_as_it_completes(with_wait_for) == "returned 1"


@pytest.mark.parametrize("name", FILES)
def test_no_wait_for_in_the_runtime_files(name: str) -> None:
    tree = ast.parse((ROOT / name).read_text())
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "wait_for"
        and isinstance(node.value, ast.Name) and node.value.id == "asyncio"
    ]  # fmt: skip
    assert not calls, f"hacontrol/{name}: asyncio.wait_for at line(s) {calls}"
