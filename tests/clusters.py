"""Helpers for the tests of one process serving several clusters (the fake fleet, a real
ProxySQL shared by them): settings, waits, and faults injected into a cluster's runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hacontrol.events import Event, OperatorCommand
from hacontrol.runtime import Runtime
from hacontrol.service import (
    Service,
)
from hacontrol.settings import Settings
from tests.fakefleet import FakeFleet, fleet, settings_data
from tests.live import LogCapture, runtime, service
from tests.proxysql_real import RealProxySQL
from tests.support import eventually

INTERVAL = 0.3
ROLES = ("writer", "reader", "broken", "hidden")
"""The four hostgroups of a cluster, in the order of their numbers (10, 20, 30, 40 + base)."""


class InjectedBug(RuntimeError):
    """What the injected crash raises (a bug in the decision task, as far as it knows)."""


def crash_on_command(runtime: Runtime, says: str = "") -> None:
    """The next operator command makes ``runtime``'s decision task raise (a real exception
    out of ``Controller.handle``, as a bug in the step or an effect would); ``says``: more
    text in the exception."""
    handle = runtime.controller.handle

    def buggy(event: Event) -> None:
        if isinstance(event, OperatorCommand):
            raise InjectedBug(f"injected: {event.command} broke the decision task{says}")
        handle(event)

    runtime.controller.handle = buggy  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def on_one_proxysql(
    tmp_path: Path, *pairs: str, **service_args: Any
) -> AsyncIterator[tuple[RealProxySQL, FakeFleet, list[Settings], Service, LogCapture]]:
    """Two fake clusters routed by one real ProxySQL (its replication hostgroup ``pairs``),
    their Service started."""
    with RealProxySQL(tmp_path / "proxysql") as px:
        await asyncio.to_thread(px.reset, (), list(pairs))
        async with FakeFleet(fleet([3, 3], net_timeout=0.5)) as fake:
            clusters = on_proxysql(cluster_settings(fake, tmp_path), px)
            svc, capture = service(*clusters, **service_args)
            async with svc:
                yield px, fake, clusters, svc, capture


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, sizes: tuple[int, ...] = (3, 3), **service_args: Any
) -> AsyncIterator[tuple[FakeFleet, Service, LogCapture, asyncio.Task[None]]]:
    """Fake clusters of ``sizes`` nodes (0.5 s network timeout), their Service started, every
    cluster healthy and idle; the task that awaits ``Service.wait`` (a crash that ends the
    process ends it), cancelled at the end."""
    async with FakeFleet(fleet(list(sizes), net_timeout=0.5)) as fake:
        svc, capture = service(*cluster_settings(fake, tmp_path), **service_args)
        async with svc:
            waiting = asyncio.create_task(svc.wait())
            try:
                await eventually(lambda: idle(svc), 20, "both clusters healthy and idle")
                yield fake, svc, capture, waiting
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)


@contextlib.asynccontextmanager
async def deciding(
    tmp_path: Path, **fleet_args: Any
) -> AsyncIterator[tuple[FakeFleet, Runtime, LogCapture]]:
    """One fake cluster of three nodes, its Runtime started and deciding."""
    async with FakeFleet(fleet([3], **fleet_args)) as fake:
        (settings,) = cluster_settings(fake, tmp_path)
        rt, capture = runtime(settings)
        async with rt:
            await eventually(lambda: rt.controller.decisions, 20, "deciding")
            yield fake, rt, capture


def slow_promote(
    runtime: Runtime,
    seconds: float,
    calls: list[str],
    stubborn: float = 0.0,
    acts_first: bool = False,
) -> None:
    """``runtime``'s promote takes ``seconds`` before it acts (a plan longer than its budget,
    as a rebuild always is); ``stubborn``: seconds it goes on after a cancel (a task that does
    not end when told to); ``acts_first``: it promotes on the server first, then takes its
    ``seconds`` (a cut after the server made the candidate writable, before the step returned).
    ``calls`` records what it did."""
    promote = runtime.executor.mysql.promote

    async def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append("called")
        if acts_first:
            calls.append("promoted on the server")
            await promote(*args, **kwargs)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            calls.append("cancelled")
            if not stubborn:
                raise
            await asyncio.sleep(stubborn)
            calls.append("ended after the cancel")
            raise
        calls.append("acts")
        return await promote(*args, **kwargs)

    runtime.executor.mysql.promote = slow  # type: ignore[method-assign]


TOKEN = "service-test-token"


def cluster_settings(fake: FakeFleet, tmp_path: Path, **api: Any) -> list[Settings]:
    """One Settings per cluster of the fake fleet: fast probes, a journal each, the API (on a
    free port) when ``api`` says so."""
    out = []
    for spec in fake.spec.clusters:
        data = settings_data(spec, fake.spec, journal=str(tmp_path / f"journal.{spec.name}"))
        data["probes"] = {"interval": INTERVAL, "timeout": 0.25}
        data["failover"] = {"io_stall": 1.0, "action_timeout": 2.0}
        data["api"] = {"enabled": bool(api), "port": 0, **api}
        out.append(Settings(**data))
    return out


def idle(svc: Service) -> bool:
    return all(
        rt.controller.view.quorum.ok
        and not rt.controller.view.problems
        and rt.controller.running_plan is None
        and rt.controller.decisions
        for rt in svc.runtimes.values()
    )


def finished(capture: LogCapture, cluster: str, kind: str = "failover") -> list[dict[str, Any]]:
    return [r for r in capture.of("plan_finished") if r["cluster"] == cluster and r["kind"] == kind]


def proxysql_router(px: RealProxySQL | None, port: int, base: int) -> dict[str, Any]:
    """The router section of a cluster on the ProxySQL admin (hostgroups base+10 .. base+40)."""
    return {
        "kind": "proxysql",
        "proxysql": {
            "host": "127.0.0.1",
            "port": port,
            "user": px.user if px else "admin",
            "password": px.password if px else "admin-secret",
            "timeout": 0.5,
            **{f"{role}_hostgroup": base + 10 * k for k, role in enumerate(ROLES, start=1)},
        },
    }


def on_proxysql(clusters: list[Settings], px: RealProxySQL) -> list[Settings]:
    """``clusters`` routed by the one ProxySQL ``px`` (hostgroups 10.., 110.., 210..)."""
    return [
        settings.model_copy(update={"router": Settings(
            **{**settings.model_dump(), "router": proxysql_router(px, px.port, 100 * k)}
        ).router})
        for k, settings in enumerate(clusters)
    ]  # fmt: skip
