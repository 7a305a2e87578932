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

A cluster whose decision task or worker crashes (an unexpected exception: a bug) is halted
alone and restarted from its journal after a back-off (``Service._supervise``), as a process
restart would, once everything its stop could not end within its grace has ended (until then
it stays halted: never two controllers of one cluster at once); the process ends (non-zero)
only when no cluster runs any more, or on a process-wide failure. Every cluster's ProxySQL
rows stay on the shared admin link meanwhile, under the check before every LOAD.

As the API's ``ControllerHandle``: ``/health`` is alive when every decision task is (or its
cluster is halted on purpose: refused at start-up, crashed and waiting to restart), ``/ready``
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
from hacontrol.gcpolicy import settle_after_start
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import render_all
from hacontrol.routing import RouterError
from hacontrol.runtime import (
    API_TIMEOUT,
    CRASH_MAIL_GRACE,
    SHUTDOWN_GRACE,
    Runtime,
    WorkerCrashed,
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


RESTART_BACKOFF = 5.0
"""Seconds a crashed cluster waits before its first restart; doubled after each crash."""

RESTART_BACKOFF_MAX = 300.0
"""The longest wait between two restarts of a cluster that keeps crashing."""

RESTART_STABLE = 600.0
"""Seconds a restarted cluster must run before its back-off starts again from the first."""

LEFTOVER_PATIENCE = 1200.0
"""Seconds a crashed cluster waits for what its stop left running (a rebuild's undo: stop
300 s, start 600 s and a few 60 s commands with the default timeouts) before it alerts that it
is not restarted; it still restarts if they end later."""


def restart_delay(last: float | None, ran_for: float, first: float) -> float:
    """Seconds a crashed cluster waits before its restart: ``first`` at its first crash or
    when it ran ``RESTART_STABLE`` s since its last (re)start; else twice ``last`` (the wait
    before the restart that just failed or crashed again), at most ``RESTART_BACKOFF_MAX``."""
    if last is None or ran_for >= RESTART_STABLE:
        return first
    return min(last * 2, RESTART_BACKOFF_MAX)


class UnknownCluster(LookupError):
    """A command named no cluster while there are several, or one that is not run here."""


class Service:
    """Every cluster's Runtime, the API and the shutdown. ``async with Service(clusters, log)``
    starts the API, then the clusters; leaving the block stops the API first, then every
    cluster at once. A cluster whose router conflicts with hacontrol (RouterError at start-up,
    e.g. ProxySQL's replication hostgroups over its hostgroups) refuses the process when it is
    the only one; among several it alone stays halted (``Runtime.halt``: not ready, logged,
    mailed) and the others run. An unreachable router refuses nothing: a runtime problem.
    A cluster that crashes while running is halted alone, then restarted (``wait``).

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
        restart_backoff: float = RESTART_BACKOFF,
        leftover_patience: float = LEFTOVER_PATIENCE,
    ) -> None:
        if not clusters:
            raise ValueError("no cluster to run")
        if unknown := set(acknowledge) - {settings.cluster.name for settings in clusters}:
            raise ValueError(f"no cluster {', '.join(sorted(unknown))} to acknowledge")
        self.settings = clusters[0]
        """The process-wide sections (api, log, controller.instance_id) are equal in all."""
        self.links = AdminLinks()
        self._log, self._mail_policy, self._paused = log, mail_policy, paused
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
            self.runtimes[name] = self._runtime(settings, acknowledge_block=name in acknowledge)
        self.clusters = tuple(self.runtimes)
        self.api: ApiProcess | None = None
        self.restart_backoff, self.leftover_patience = restart_backoff, leftover_patience
        self._started: list[Runtime] = []
        self._halted: list[Runtime] = []
        """Clusters whose router refused at start-up (a real conflict) while others run."""
        self._running: set[str] = set()
        """Clusters whose controller runs now (not halted, not crashed waiting to restart)."""
        self._cleanups: set[asyncio.Future[None]] = set()
        self._api_now: tuple[bool, int] | None = None

    def _runtime(
        self, settings: Settings, *, acknowledge_block: bool = False, restart: bool = False
    ) -> Runtime:
        """``restart``: of a crashed cluster; the process's ``--paused`` is not applied again
        (the journal keeps the operator's pause or resume), nor any start-up acknowledge."""
        name = settings.cluster.name
        return Runtime(
            settings,
            self._log.for_cluster(name),
            acknowledge_block=acknowledge_block,
            mail_policy=self._mail_policy,
            paused=self._paused and not restart,
            links=self.links,
        )

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
        self._api_now = (up, restarts)  # for a cluster's fresh Runtime (a restart)
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
        """Until the clusters stop on a Stop. A cluster whose worker crashes is halted alone
        (``_supervise``) and restarted; WorkerCrashed when no cluster runs any more (the
        process then ends non-zero; with one cluster: at its first crash, as before)."""
        self._running = {rt.name for rt in self._started}
        watches = [
            asyncio.create_task(self._supervise(rt.name), name=f"supervise:{rt.name}")
            for rt in self._started
        ]
        try:
            done, _ = await asyncio.wait(watches, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _supervise(self, name: str) -> None:
        """One cluster's life: returns when its decision task stopped on a Stop. A crash
        (WorkerCrashed) halts it (alert, status, ``hacontrol_halt_active``), stops it, and
        after a back-off (``restart_delay``) a fresh Runtime resumes from its journal, as a
        process restart would; while the other clusters run on. A stop that left something of
        the crashed Runtime running (``left_running``: a rebuild's undo) keeps the cluster
        halted until it has ended (``_until_leftovers_end``: no second executor beside the
        first), then the back-off and the restart. Raises the crash when no cluster is left
        running."""
        runtime, backoff = self.runtimes[name], None
        error: WorkerCrashed | None = None
        while True:
            since = time.monotonic()
            if error is None:
                try:
                    await runtime.wait()
                    return
                except WorkerCrashed as crash:
                    error = crash
            self._running.discard(name)
            backoff = restart_delay(backoff, time.monotonic() - since, self.restart_backoff)
            last = not self._running
            runtime.crashed(error, None if last else backoff)
            cleanup = asyncio.ensure_future(
                runtime.stop(
                    f"crashed: {error}",
                    mail_grace=CRASH_MAIL_GRACE,
                    hook_grace=max(CRASH_MAIL_GRACE, runtime.hooks_longest()),
                )
            )
            self._cleanups.add(cleanup)  # a shutdown meanwhile waits for it (``stop``)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)
            if last:
                raise error
            if runtime.left_running:  # halted until they end: never two plans at once
                await self._until_leftovers_end(runtime)
            await asyncio.sleep(backoff)
            runtime, error = await self._restart(runtime)

    async def _until_leftovers_end(self, runtime: Runtime) -> None:
        """While what the crashed Runtime's stop left running (``left_running``) runs, its
        cluster stays halted (/status and the log say what it waits for); alerted
        (``not_restarted``) when that lasts ``leftover_patience`` s. Returns once all of it
        has ended and its journal is flushed and closed: only then may the restart come."""
        runtime.waits_for_leftovers()
        ended = asyncio.ensure_future(runtime.leftovers_ended())
        try:
            done, _ = await asyncio.wait([ended], timeout=self.leftover_patience)
            if not done:
                runtime.not_restarted(self.leftover_patience)
            await ended
        finally:
            ended.cancel()

    async def _restart(self, crashed: Runtime) -> tuple[Runtime, WorkerCrashed | None]:
        """A fresh Runtime for the crashed one's cluster (its settings, its journal), started
        in its place; the error when it does not start (a crash too: back-off, again)."""
        crashed.log.emit("cluster_restarting", None, "warning", after=crashed.halted)
        try:
            fresh = self._runtime(crashed.settings, restart=True)
        except Exception as exc:  # e.g. its router's hostgroups still held on the admin link
            return crashed, WorkerCrashed(crashed.name, "start-up", exc)
        fresh.halted = f"starting again after: {crashed.halted}"  # /health up, commands refused
        if self._api_now is not None:  # its metrics show the API as the others' do
            fresh.metrics.set_api(*self._api_now)
        self.runtimes[crashed.name] = fresh
        try:
            await fresh.__aenter__()
        except Exception as exc:
            return fresh, WorkerCrashed(fresh.name, "start-up", exc)
        fresh.halted = None
        self._running.add(fresh.name)
        return fresh, None

    async def stop(self, reason: str) -> None:
        if self.api is not None:  # first: no new command during shutdown
            api, self.api = self.api, None
            with contextlib.suppress(Exception):
                await api.stop()
        self._started, self._halted = [], []
        await asyncio.gather(*self._cleanups, return_exceptions=True)  # crashed ones' stops
        # Every cluster's current Runtime: a restarted one replaced its crashed predecessor.
        current = list(self.runtimes.values())
        await asyncio.gather(*(rt.stop(reason) for rt in current), return_exceptions=True)
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
            settle_after_start(service.log)
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
