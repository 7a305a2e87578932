"""``hacontrol run``: one process for every cluster of the settings.

A ``Service`` owns one ``runtime.Runtime`` per cluster (each with its own probes, queue and
decision task: a failover in one cluster never waits for another's probing or deciding), the
one HTTP API process, the signal path and the shutdown. SIGTERM/SIGINT become a Stop event on
every cluster's queue; each decision task finishes what it holds, then the probes are cancelled
within a bounded, logged grace period. uvloop is used when installed.

Shared between clusters, and only this: the API, the log stream (each cluster's lines carry
its name), one metrics exposition (label ``cluster``), and the ProxySQL admin links
(``actions.proxysql.AdminLinks``: the clusters routed by one ProxySQL share its admin
connection and the lock that serialises their applies and probes).

As the API's ``ControllerHandle``: ``/health`` is alive when every decision task is, ``/ready``
when every cluster is ready, ``/status`` shows each cluster under ``clusters`` (and, with one
cluster, that cluster's fields at the top level as before), commands go to the named cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from hacontrol.actions.notify import MailPolicy
from hacontrol.actions.proxysql import AdminLinks
from hacontrol.api_process import ApiProcess
from hacontrol.events import CommandResult, OperatorCommand, Stop
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import render_all
from hacontrol.routing import RouterError
from hacontrol.runtime import (
    API_TIMEOUT,
    SHUTDOWN_GRACE,
    Runtime,
    build_router,
    node_probes,
    rebuilder_of,
    secrets_of,
    snapshot,
)
from hacontrol.settings import Settings

__all__ = [
    "SHUTDOWN_GRACE",
    "Runtime",
    "Service",
    "build_router",
    "node_probes",
    "rebuilder_of",
    "run_forever",
    "secrets_of",
    "serve",
    "snapshot",
]


class UnknownCluster(LookupError):
    """A command named no cluster while there are several, or one that is not run here."""


class Service:
    """Every cluster's Runtime, the API and the shutdown. ``async with Service(clusters, log)``
    starts the API, then the clusters; leaving the block stops the API first, then every
    cluster at once. A cluster whose router conflicts with hacontrol (RouterError at start-up,
    e.g. ProxySQL's replication hostgroups over its hostgroups) refuses the process when it is
    the only one; among several it alone stays halted (``Runtime.halt``: not ready, logged,
    mailed) and the others run. An unreachable router refuses nothing: a runtime problem.

    ``log``: the process's log; each cluster writes through ``log.for_cluster(name)``.
    """

    def __init__(
        self,
        clusters: Sequence[Settings],
        log: JsonLog,
        *,
        acknowledge: Collection[str] = (),
        paused: bool = False,
        mail_policy: MailPolicy | None = None,
    ) -> None:
        if not clusters:
            raise ValueError("no cluster to run")
        if unknown := set(acknowledge) - {settings.cluster.name for settings in clusters}:
            raise ValueError(f"no cluster {', '.join(sorted(unknown))} to acknowledge")
        self.settings = clusters[0]
        """The process-wide sections (api, log, controller.instance_id) are equal in all."""
        self.links = AdminLinks()
        self.log = log.for_cluster(clusters[0].cluster.name if len(clusters) == 1 else None)
        self.runtimes: dict[str, Runtime] = {}
        journals: dict[object, str] = {}
        for settings in clusters:
            name = settings.cluster.name
            if name in self.runtimes:
                raise ValueError(f"two clusters named {name!r}")
            journal = settings.controller.journal.resolve()
            if journal in journals:  # one journal each: a plan of one must never resume in another
                raise ValueError(
                    f"clusters {journals[journal]!r} and {name!r} share the journal {journal}"
                )
            journals[journal] = name
            self.runtimes[name] = Runtime(
                settings,
                log.for_cluster(name),
                acknowledge_block=name in acknowledge,
                mail_policy=mail_policy,
                paused=paused,
                links=self.links,
            )
        self.clusters = tuple(self.runtimes)
        self.api: ApiProcess | None = None
        self._started: list[Runtime] = []
        self._halted: list[Runtime] = []
        """Clusters whose router refused at start-up (a real conflict) while others run."""

    def emit_all(self, event: Stop) -> None:
        for runtime in self.runtimes.values():
            runtime.emit(event)

    # -- what the HTTP API sees (hacontrol.api.ControllerHandle) --------------------------------

    def alive(self) -> tuple[bool, str]:
        return _all_of({name: rt.alive() for name, rt in self.runtimes.items()})

    def ready(self) -> tuple[bool, str]:
        return _all_of({name: rt.ready() for name, rt in self.runtimes.items()})

    def status(self) -> dict[str, Any]:
        each = {name: rt.status() for name, rt in self.runtimes.items()}
        if len(each) == 1:
            (only,) = each.values()
            return {**only, "clusters": each}
        return {"clusters": each}

    def metrics_text(self) -> bytes:
        return render_all([rt.metrics for rt in self.runtimes.values()])

    async def command(
        self, cmd: OperatorCommand, cluster: str | None = None, timeout: float = API_TIMEOUT
    ) -> CommandResult:
        """``cmd`` for the decision task of ``cluster`` (None: the only one); UnknownCluster
        when it names none of them (the API checked it already)."""
        return await self.runtime(cluster).command(cmd, timeout)

    def runtime(self, cluster: str | None) -> Runtime:
        if cluster is None and len(self.runtimes) == 1:
            return next(iter(self.runtimes.values()))
        if cluster is None:
            raise UnknownCluster(f"several clusters: name one of {', '.join(self.clusters)}")
        found = self.runtimes.get(cluster)
        if found is None:
            raise UnknownCluster(f"no cluster {cluster!r} (known: {', '.join(self.clusters)})")
        return found

    def _api_state(self, up: bool, restarts: int) -> None:
        for runtime in self.runtimes.values():
            runtime.metrics.set_api(up, restarts)

    # -- life ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Service:
        try:
            if self.settings.api.enabled:  # first: it answers (503) while the clusters start
                self.api = ApiProcess(self.settings.api, self, self.log, on_state=self._api_state)
                await self.api.start()
            for runtime in self.runtimes.values():
                try:
                    await runtime.__aenter__()
                except RouterError as exc:
                    if len(self.runtimes) == 1:
                        raise  # the process refuses: exit 1, the reason printed
                    runtime.halt(str(exc))  # the other clusters keep their failover
                    self._halted.append(runtime)
                    continue
                self._started.append(runtime)
            if not self._started:
                raise RouterError(
                    "no cluster could start: "
                    + "; ".join(f"{rt.name}: {rt.halted}" for rt in self._halted)
                )
        except BaseException:
            await self.stop("start-up failed")
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop("service closed")

    async def wait(self) -> None:
        """Until a cluster's decision task stops (a Stop, or a worker's bug: re-raised); the
        other clusters are then stopped too (``__aexit__``)."""
        waits = [asyncio.create_task(rt.wait(), name=f"wait:{rt.name}") for rt in self._started]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def stop(self, reason: str) -> None:
        if self.api is not None:  # first: no new command during shutdown
            api, self.api = self.api, None
            with contextlib.suppress(Exception):
                await api.stop()
        started, self._started = self._started + self._halted, []
        self._halted = []
        await asyncio.gather(*(rt.stop(reason) for rt in started), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.links.close()


def _all_of(each: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """Every cluster's (ok, reason) as one: ok when all are; the reason names the clusters
    (with one cluster: its reason as it is)."""
    if len(each) == 1:
        return next(iter(each.values()))
    failing = {name: reason for name, (ok, reason) in each.items() if not ok}
    if failing:
        return False, "; ".join(f"{name}: {reason}" for name, reason in failing.items())
    return True, f"all {len(each)} clusters: " + "; ".join(
        f"{name}: {reason}" for name, (_, reason) in each.items()
    )


async def serve(
    clusters: Sequence[Settings],
    log: JsonLog,
    *,
    acknowledge: Collection[str] = (),
    paused: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    service = Service(clusters, log, acknowledge=acknowledge, paused=paused)

    def on_signal(name: str) -> Callable[[], None]:
        return lambda: service.emit_all(Stop(time.monotonic(), name))

    # Before the service starts: a signal while the API process starts is a Stop too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal(sig.name))
    try:
        async with service:
            await service.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def run_forever(
    clusters: Sequence[Settings],
    log: JsonLog,
    *,
    acknowledge: Collection[str] = (),
    paused: bool = False,
) -> int:
    """Run ``serve`` on uvloop when installed, else on the default loop."""
    main = serve(clusters, log, acknowledge=acknowledge, paused=paused)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
