"""Sandbox fixtures: real mariadbd nodes and HAProxy on free loopback ports in tmp dirs.

`sandbox` (session scope) is shared by tests that only read or that restore what they change;
`fresh_sandbox` (function scope) is for destructive tests. Both are synchronous fixtures that
run the async API on a private event loop in a worker thread, so they work with any
pytest-asyncio loop scope, and both are always torn down: by the fixture finalizer, and by
`atexit` as a last resort when the session is interrupted.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from hacontrol.sandbox import PortBusyError, Sandbox, SandboxSpec, find_free_base_port
from hacontrol.sandbox.cluster import find_binary

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread (never the test's loop)."""

    async def runner() -> T:
        return await factory()

    with ThreadPoolExecutor(1, thread_name_prefix="sandbox") as pool:
        return pool.submit(asyncio.run, runner()).result()


def missing_binaries() -> list[str]:
    return [b for b in ("mariadbd", "mariadb-install-db", "haproxy") if find_binary(b) is None]


def skip_without_servers() -> None:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"sandbox needs {', '.join(missing)} (Debian: mariadb-server, haproxy)")


def _stop(sandbox: Sandbox) -> None:
    with contextlib.suppress(Exception):
        run_sync(sandbox.down)


def start_sandbox(directory: Path, nodes: int = 3) -> Sandbox:
    """Start a sandbox on free ports; retried when another process grabs a port meanwhile."""
    skip_without_servers()
    for _ in range(3):
        spec = SandboxSpec(dir=directory, nodes=nodes, base_port=find_free_base_port(nodes + 3))
        sandbox = Sandbox(spec)
        try:
            run_sync(sandbox.up)
        except PortBusyError:
            continue
        return sandbox
    raise RuntimeError("could not find free ports for a sandbox three times in a row")


@contextlib.contextmanager
def running_sandbox(directory: Path, nodes: int = 3) -> Iterator[Sandbox]:
    sandbox = start_sandbox(directory, nodes)
    last_resort = functools.partial(_stop, sandbox)
    atexit.register(last_resort)
    try:
        yield sandbox
    finally:
        run_sync(sandbox.down)  # errors here fail the teardown visibly
        atexit.unregister(last_resort)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A 3-node sandbox shared by the session. Tests must leave it as they found it."""
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox") as sb:
        yield sb


@pytest.fixture
def fresh_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A 3-node sandbox of one's own, for tests that kill, freeze or reconfigure nodes."""
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox") as sb:
        yield sb
