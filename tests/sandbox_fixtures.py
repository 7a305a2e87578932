"""Sandbox fixtures: real mariadbd nodes and a real router on free loopback ports in tmp dirs.

The router is the sandbox's default: ProxySQL when a `proxysql` binary is on PATH, else HAProxy.
`sandbox` (session scope) is shared by tests that only read or that restore what they change;
`fresh_sandbox` (function scope) is for destructive tests. `proxysql_sandbox` and
`haproxy_sandbox` (session scope) pin the router: they are `sandbox` when its router is the one
asked for, a second sandbox otherwise; `proxysql_sandbox` skips without ProxySQL, saying how to
get it. All are synchronous fixtures that
run the async API on a private event loop in a worker thread, so they work with any
pytest-asyncio loop scope, and both are always torn down: by the fixture finalizer, and by
`atexit` as a last resort when the session is interrupted.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import shutil
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from hacontrol.sandbox import PortBusyError, Sandbox, SandboxSpec, find_free_base_port
from hacontrol.sandbox.cluster import find_binary
from hacontrol.sandbox.model import RouterKind
from hacontrol.sandbox.netns_host import unavailable as netns_unavailable
from tests.proxysql_real import require_proxysql

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread (never the test's loop)."""

    async def runner() -> T:
        return await factory()

    with ThreadPoolExecutor(1, thread_name_prefix="sandbox") as pool:
        return pool.submit(asyncio.run, runner()).result()


def missing_binaries() -> list[str]:
    return [b for b in ("mariadbd", "mariadb-install-db", "haproxy") if find_binary(b) is None]


NEEDS_MARIADB_BACKUP = pytest.mark.skipif(
    shutil.which("mariadb-backup") is None or shutil.which("mbstream") is None,
    reason="needs mariadb-backup and mbstream (Debian package mariadb-backup; "
    "scripts/bootstrap.sh installs it)",
)
"""The rebuild tests' mark: skipped, saying how to get them, without the backup tools."""


def skip_without_servers() -> None:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"sandbox needs {', '.join(missing)} (Debian: mariadb-server, haproxy)")


def _stop(sandbox: Sandbox) -> None:
    with contextlib.suppress(Exception):
        run_sync(sandbox.down)


def skip_without_netns() -> None:
    """Partition tests need network namespaces: root, ip and nft."""
    if reason := netns_unavailable():
        pytest.skip(f"sandbox --netns: {reason}")


def start_sandbox(
    directory: Path,
    nodes: int = 3,
    router: RouterKind | None = None,
    *,
    tls: bool = False,
    netns: bool = False,
    clusters: int = 1,
) -> Sandbox:
    """Start a sandbox on free ports; retried when another process grabs a port meanwhile.
    ``clusters``: that many clusters of ``nodes`` nodes behind the one router."""
    skip_without_servers()
    if router == "proxysql":
        require_proxysql()
    for _ in range(3):
        spec = SandboxSpec(
            dir=directory,
            nodes=nodes,
            base_port=find_free_base_port(nodes * clusters + 4 + 2 * (clusters - 1)),
            router=router,
            tls=tls,
            netns=netns,
            clusters=clusters,
        )
        sandbox = Sandbox(spec)
        try:
            run_sync(sandbox.up)
        except PortBusyError:
            continue
        return sandbox
    raise RuntimeError("could not find free ports for a sandbox three times in a row")


@contextlib.contextmanager
def running_sandbox(
    directory: Path,
    nodes: int = 3,
    router: RouterKind | None = None,
    *,
    tls: bool = False,
    netns: bool = False,
    clusters: int = 1,
) -> Iterator[Sandbox]:
    sandbox = start_sandbox(directory, nodes, router, tls=tls, netns=netns, clusters=clusters)
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


@pytest.fixture(scope="session")
def proxysql_sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A 3-node sandbox behind ProxySQL (skipped without one): `sandbox` itself, since ProxySQL
    is its default router whenever it is installed."""
    require_proxysql()
    sb: Sandbox = request.getfixturevalue("sandbox")
    assert sb.status().router.kind == "proxysql"
    yield sb


@pytest.fixture(scope="session")
def haproxy_sandbox(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sandbox]:
    """A 3-node sandbox behind HAProxy: `sandbox` when HAProxy is its router, else its own."""
    default: Sandbox = request.getfixturevalue("sandbox")
    if default.status().router.kind == "haproxy":
        yield default
        return
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox", router="haproxy") as sb:
        yield sb


@pytest.fixture
def fresh_proxysql_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A 3-node sandbox of one's own behind ProxySQL (skipped without one)."""
    require_proxysql()
    directory = tmp_path_factory.mktemp("sbx") / "sandbox"
    with running_sandbox(directory, router="proxysql") as sb:
        yield sb


@pytest.fixture
def netns_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A 3-node sandbox of one's own on a network of its own (``--netns``): every node, the
    router and the controller on hosts of their own, for partitions (skipped when not root)."""
    skip_without_netns()
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox", netns=True) as sb:
        yield sb
