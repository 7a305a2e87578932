"""One cluster's ``Runtime``: its probes, router probe, lease, ticker, notifier and decision
task, as owned tasks; and ``snapshot`` (``hacontrol status``).

Everything cluster-scoped lives here, one object per cluster: view, model, controller,
executor, journal, router rows, lease, metrics. ``hacontrol.service`` runs one Runtime per
cluster in one process, with one API, one signal path and the ProxySQL admin links shared by
the clusters routed through the same ProxySQL (``AdminLinks``).

A Stop event on the queue ends the decision task (it finishes what it holds); the probes are
then cancelled and their connections closed within a bounded, logged grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from hacontrol.actions.hooks import HookRunner
from hacontrol.actions.mysql import LeaseUntil, MySQLActions
from hacontrol.actions.notify import Alert, MailPolicy, Notifier
from hacontrol.actions.proxysql import AdminLinks
from hacontrol.actions.rebuild import Rebuilder
from hacontrol.controller import Controller, plan_budget
from hacontrol.events import CommandResult, Event, OperatorCommand, Stop, Tick
from hacontrol.executor import Executor
from hacontrol.journal import Journal
from hacontrol.jsonlog import JsonLog, Scrubber
from hacontrol.metrics import Metrics
from hacontrol.mysqlconn import endpoint_for
from hacontrol.plan import AlertKind
from hacontrol.probes.lease import LeaseKeeper, lock_names
from hacontrol.probes.mysql import NodeProbe, phase_of
from hacontrol.probes.router import RouterProbe
from hacontrol.routing import Router
from hacontrol.rules.lease import majority_until
from hacontrol.settings import Settings
from hacontrol.status import controller_status
from hacontrol.view import ClusterView, fold, initial, serves

API_TIMEOUT = 60.0
"""How long an operator command may wait for the controller's answer (API and in-process)."""

SHUTDOWN_GRACE = 1.5
"""Seconds the probes get to close after the decision task stopped (2 s overall budget)."""

CRASH_MAIL_GRACE = 5.0
"""Seconds a crashed cluster's notifier gets to send the crash alert before it closes."""

CRASH_HOOK_GRACE_MAX = 30.0
"""The longest a crashed cluster's stop lets its background hooks run (the crash's on_halt, a
post_failover) before it kills them: their timeout, at most this (its restart waits)."""


class WorkerCrashed(Exception):
    """A cluster's decision task or one of its workers (a node probe, the router probe, the
    lease, the ticker) ended with an unexpected exception, or a worker ended at all: a bug.
    ``task``: which one; ``error``: what it raised."""

    def __init__(self, cluster: str, task: str, error: BaseException) -> None:
        super().__init__(f"cluster {cluster}: task {task} crashed: {describe_error(error)}")
        self.cluster, self.task, self.error = cluster, task, error


def describe_error(error: BaseException) -> str:
    """``Type: text``; a group (a TaskGroup's: the lease keeper's) names its first error too."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, BaseExceptionGroup) and error.exceptions:
        text += f": first {describe_error(error.exceptions[0])}"
    return text


def build_router(
    settings: Settings, links: AdminLinks | None = None, log: JsonLog | None = None
) -> Router | None:
    """The cluster's router. ``links``: the process's ProxySQL admin links, so that clusters
    routed by the same ProxySQL share its one connection and lock (None: a link of its own);
    ``log``: the cluster's, for the router's own lines (None: the stdlib logger).
    RouterError when two clusters name one admin with different credentials."""
    kind = settings.router.kind
    names = [n.name for n in settings.nodes]
    if kind == "haproxy":
        from hacontrol.actions.haproxy import HAProxyRouter

        return HAProxyRouter(settings.router.haproxy, names, lines=log)
    if kind == "proxysql":
        from hacontrol.actions.proxysql import ProxySQLRouter

        proxysql = settings.router.proxysql
        link = links.get(proxysql) if links is not None else None
        half = settings.probes.interval / 2
        return ProxySQLRouter(
            proxysql,
            settings.nodes,
            settings.router,
            link=link,
            share_age=half,  # one read of a shared admin per half interval
            cluster=settings.cluster.name,
            busy_after=half,  # then the probe is skipped (busy), within its interval
            lines=log,
        )
    return None


def node_probes(settings: Settings, emit, *, watch: bool = True) -> dict[str, NodeProbe]:
    password = settings.mysql.password.get_secret_value() if settings.mysql.password else ""
    return {
        node.name: NodeProbe(
            node.name,
            endpoint_for(node.host, node.port, settings.mysql.user, password, settings.mysql.tls),
            interval=settings.probes.interval,
            timeout=settings.probes.timeout,
            emit=emit,
            watch=watch,
            phase=phase_of(settings.cluster.name, settings.probes.interval),
        )
        for node in settings.nodes
    }


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value, for the log's last-defence scrubbing."""
    values = [
        settings.mysql.password,
        settings.mysql.replication_password,
        settings.router.proxysql.password,
        settings.smtp.password,
        settings.api.token,
    ]
    return [v.get_secret_value() for v in values if v is not None]


def rebuilder_of(settings: Settings, lease_until: LeaseUntil) -> Rebuilder | None:
    """The ``[rebuild]`` section's Rebuilder, or None when no stop/start command is set (a
    rebuild then fails at once, saying so). ``lease_until``: the statement guard, as for every
    node action."""
    if not (settings.rebuild.stop_target and settings.rebuild.start_target):
        return None
    return Rebuilder.from_settings(settings, lease_until=lease_until)


class Runtime:
    """Probes, router probe, ticker and the decision task of one cluster, as owned tasks.

    ``async with Runtime(settings, log) as rt:`` starts everything; leaving the block (or
    ``stop()``) puts a Stop event on the queue, lets the decision task finish, then cancels the
    workers and closes their connections within ``SHUTDOWN_GRACE``. No API and no signal
    handling here: ``service.Service`` owns those for every cluster of the process.
    """

    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        *,
        acknowledge_block: bool = False,
        mail_policy: MailPolicy | None = None,
        paused: bool = False,
        links: AdminLinks | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.cluster.name
        self.log = log
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.probes = node_probes(settings, self.emit)
        self.router = build_router(settings, links, log)
        self._mail_policy = mail_policy or MailPolicy()
        self.notifier = Notifier(settings.smtp, log, policy=self._mail_policy)
        self.metrics = Metrics(settings.cluster.name, mail=self.notifier)
        self.journal = Journal(settings.controller.journal)
        self.lease = LeaseKeeper(settings, self.emit) if settings.controller.fleet else None
        self.executor = self._executor()
        self.controller = Controller(
            settings,
            log,
            self.queue,
            reprobe=self._reprobe,
            executor=self.executor,
            journal=self.journal,
            acknowledge_block=acknowledge_block,
            metrics=self.metrics,
            paused=paused,
            lease_mode=self.lease.set_mode if self.lease is not None else (lambda mode: None),
        )
        self._workers: list[asyncio.Task[None]] = []
        self._decision: asyncio.Task[None] | None = None
        self._notifier_task: asyncio.Task[None] | None = None
        self.router_probe: RouterProbe | None = None
        self.left_running: list[str] = []
        """What its ``stop`` could not end (tasks, a stuck journal writer): no restart until
        it has (``leftovers_ended``)."""
        self._leftovers: list[asyncio.Task[Any]] = []
        self._notifier_closed = False
        self.halted: str | None = None
        """Why this cluster runs no controller while others do: its router refused at
        start-up, or a worker crashed (``crashed``) and it waits for its restart."""

    def _executor(self) -> Executor:
        settings, fleet = self.settings, self.settings.controller.fleet
        lease_until: LeaseUntil = self._lease_until if fleet else lambda: float("inf")
        return Executor(
            settings,
            self.log,
            mysql=MySQLActions(
                settings,
                timeout=settings.failover.action_timeout,
                lease_until=lease_until,
                lease_fence=self._lease_fence if fleet else None,
            ),
            router=self.router,
            notifier=self.notifier,
            journal=self.journal,
            view=lambda: self.controller.view,
            fault_after=os.environ.get("HACONTROL_TEST_CRASH_AFTER") or None,
            hooks=HookRunner(settings.hooks, self.log, cluster=settings.cluster.name),
            lease=self.lease,
            rebuilder=rebuilder_of(settings, lease_until),
        )

    def emit(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def _lease_until(self) -> float:
        """Until when this instance holds its fleet's lease on a majority (the statement guard
        of every node action)."""
        until = majority_until(self.controller.view, self.settings)
        return until if until is not None else float("-inf")

    def _lease_fence(self, node: str) -> tuple[str, int] | None:
        """The leader lock's name and this instance's lease session on ``node`` while the view
        says it holds the lock there (the server checks it as it makes a node writable)."""
        lock = self.controller.view.locks.get(node)
        if lock is None or not lock.held or lock.session is None:
            return None
        return lock_names(self.settings.cluster.name)["leader"], lock.session

    # -- what the HTTP API sees of this cluster (through service.Service) ----------------------

    def alive(self) -> tuple[bool, str]:
        if self.halted is not None:  # held on purpose, not dead: no restart of the process
            return True, f"halted (not ready): {self.halted}"
        decision = self._decision
        if decision is None or decision.done():
            return False, "the decision task is not running"
        return True, "event loop and decision task alive"

    def ready(self) -> tuple[bool, str]:
        if self.halted is not None:
            return False, f"halted: {self.halted}"
        view = self.controller.view
        unprobed = [n for n, node in view.nodes.items() if node.probes == 0]
        if unprobed:
            return False, f"not probed yet: {', '.join(unprobed)}"
        return serves(view)

    def status(self) -> dict[str, Any]:
        controller = self.controller
        out = controller_status(
            controller.model,
            self.settings,
            time.monotonic(),
            last_failover=controller.last_failover,
        )
        out["rebuild"] = self.executor.rebuild_status
        if (probe := self.router_probe) is not None and probe.skipped:
            out["router_probe_busy"] = {"skipped": probe.skipped, "now": probe.busy}
        if self.halted is not None:
            out["halted"] = self.halted
        if self.left_running:  # a crashed cluster's restart waits for these to end
            out["waiting_for"] = list(self.left_running)
        return out

    async def command(self, cmd: OperatorCommand, timeout: float = API_TIMEOUT) -> CommandResult:
        """Put an operator command on the queue and wait for the controller's answer. A halted
        cluster, or one whose decision task is gone or dies meanwhile, answers at once why."""
        decision = self._decision
        if self.halted is not None:
            return CommandResult(False, f"cluster {self.name} is halted: {self.halted}")
        if decision is None or decision.done():
            return CommandResult(False, f"cluster {self.name}: its decision task is not running")
        reply: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self.emit(replace(cmd, reply=reply))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait([reply, decision], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            return CommandResult(False, f"no answer from the controller within {timeout:g} s")
        finally:
            if not reply.done():  # the controller sees the caller gone (CallerGone)
                reply.cancel()
        if not reply.cancelled():
            return reply.result()
        why = self.halted or "its decision task stopped before answering"
        return CommandResult(False, f"cluster {self.name}: {why}")

    def _reprobe(self, names: Iterable[str]) -> None:
        for name in names:
            self.probes[name].wake()

    async def __aenter__(self) -> Runtime:
        settings = self.settings
        loop = asyncio.get_running_loop()
        check = getattr(self.router, "check_startup", None)
        if check is not None:
            try:
                await check()  # RouterError: e.g. ProxySQL's own read_only monitor would fight us
            except BaseException:
                await self.router.close()  # type: ignore[union-attr]
                raise
        self.log.emit(
            "started",
            None,
            "info",
            nodes=[n.name for n in settings.nodes],
            router=settings.router.kind,
            loop=type(loop).__module__,
            probe_interval=settings.probes.interval,
            probe_timeout=settings.probes.timeout,
            instance=settings.controller.instance_id,
            fleet=settings.controller.fleet,
        )
        self._workers = [
            asyncio.create_task(p.run(), name=f"probe:{name}") for name, p in self.probes.items()
        ]
        if self.lease is not None:
            self._workers.append(asyncio.create_task(self.lease.run(), name="lease"))
        if self.router is not None:
            self.router_probe = RouterProbe(
                self.router,
                interval=settings.probes.interval,
                timeout=settings.probes.interval,
                emit=self.emit,
            )
            probe = self.router_probe.run()
            self._workers.append(asyncio.create_task(probe, name="probe:router"))
        self._workers.append(
            asyncio.create_task(_ticker(self.emit, settings.probes.interval), name="ticker")
        )
        self._notifier_task = asyncio.create_task(self.notifier.run(), name="notifier")
        self._decision = asyncio.create_task(self.controller.run(), name="decision")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop("runtime closed")

    def halt(self, reason: str) -> None:
        """Not started (its router refused: ``__aenter__`` raised RouterError) while the
        process's other clusters run: no probe, no decision, no change; not ready, the reason
        logged and mailed. Only a restart after the fix starts it."""
        self.halted = f"refused at start-up: {reason}"
        self.metrics.set_halt(True)
        name = self.settings.cluster.name
        self.log.emit("startup_refused", None, "error", reason=reason)
        self.notifier.alert(
            Alert(
                kind="startup_refused",
                cluster=name,
                node=None,
                summary=f"cluster {name} not started: its router conflicts with hacontrol",
                reason=reason + "\nNo failover for this cluster until fixed and restarted.",
            )
        )
        self._notifier_task = asyncio.create_task(self.notifier.run(), name="notifier")

    def crashed(self, error: WorkerCrashed, restart_in: float | None) -> None:
        """A worker of this cluster crashed (``wait`` raised): halted, the reason logged with
        the exception and mailed; ``restart_in``: seconds until a fresh Runtime takes over
        (None: never, the process ends). Then ``stop`` it (``CRASH_MAIL_GRACE``)."""
        then = "restarts from its journal" if restart_in is not None else "no restart"
        later = " (and once anything its stop cannot end, such as a rebuild's undo, has ended)"
        self.halted = f"crashed ({error.task}: {describe_error(error.error)}); {then}" + (
            f" in {restart_in:g} s after its stop" if restart_in is not None else ""
        )
        self.metrics.set_halt(True)
        self.log.emit(
            "cluster_crashed",
            None,
            "error",
            task=error.task,
            error=describe_error(error.error),
            where=_frames(error.error),
            restart_in=restart_in,
        )
        self._alert(
            f"cluster {self.name}: controller crashed ({type(error.error).__name__})",
            f"{error}\nNo failover for this cluster until it runs again; {then}"
            + (f" in {restart_in:g} s after its stop{later}." if restart_in is not None else ".")
            + " The other clusters of this process go on.",
        )

    def waits_for_leftovers(self) -> None:
        """Crashed, and its stop left something running (``left_running``: a plan whose
        bounded undo outlives the stop's grace, as a rebuild's does; a hook; a stuck journal
        writer): it stays halted until all of it has ended (``leftovers_ended``), and only
        then restarts: a fresh Runtime beside it would be a second executor of this cluster."""
        left = ", ".join(self.left_running)
        self.halted = f"{self.halted}; waiting first for {left} (left running by its stop) to end"
        self.log.emit(
            "cluster_waits_for_leftovers", None, "warning", left_running=self.left_running
        )
        self._reopen_notifier()  # for what they still alert

    def _reopen_notifier(self) -> None:
        """A fresh notifier when ``stop`` closed this Runtime's, its executor's too (what its
        leftovers still alert, a rebuild's undo saying where it left the target, is mailed);
        ``leftovers_ended`` closes it."""
        if self._notifier_closed:
            self.notifier = Notifier(self.settings.smtp, self.log, policy=self._mail_policy)
            self.executor.notifier = self.notifier
            self._notifier_closed = False
            self._notifier_task = asyncio.create_task(self.notifier.run(), name="notifier")

    def not_restarted(self, waited: float) -> None:
        """What its stop left running is still running ``waited`` s later (a plan that does
        not end when cancelled, a stuck journal writer): still halted, now alerted; it restarts
        if they ever end, else only a process restart runs this cluster again."""
        left = ", ".join(self.left_running)
        self.halted = (
            f"crashed and not restarted: its stop left {left} running, still after "
            f"{waited:g} s; it restarts once that ends, or restart the process once the node "
            "actions it ran are checked"
        )
        self.log.emit(
            "cluster_not_restarted", None, "error", left_running=self.left_running, waited=waited
        )
        self._alert(
            f"cluster {self.name}: crashed and not restarted (its stop left {left} running)",
            f"{self.halted}.\nNo failover for this cluster until it runs again."
            " The other clusters of this process go on.",
        )

    def _alert(self, summary: str, reason: str) -> None:
        """A ``cluster_crashed`` alert, mailed (by a fresh notifier when ``stop`` closed this
        Runtime's: a crash after a crash, a restart that failed), and the on_halt hook run;
        ``stop`` (or ``leftovers_ended``) awaits both."""
        self._reopen_notifier()
        scrub = Scrubber(secrets_of(self.settings))  # the exception's text, as in the log
        kind = AlertKind.CLUSTER_CRASHED
        self.notifier.alert(
            Alert(kind=kind, cluster=self.name, node=None, summary=scrub(summary),
                  reason=scrub(reason))
        )  # fmt: skip
        self.executor.on_halt(kind.value, None, scrub(reason))  # awaited by ``stop``

    async def wait(self) -> None:
        """Until the decision task stops on a Stop; a task that dies on its own (the decision
        task or a worker) is a bug: WorkerCrashed."""
        decision = self._decision
        assert decision is not None
        done, _ = await asyncio.wait(
            [decision, *self._workers], return_when=asyncio.FIRST_COMPLETED
        )
        for task in (decision, *done):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise WorkerCrashed(self.name, task.get_name(), task.exception())  # type: ignore[arg-type]
        if not decision.done():  # a worker that runs until cancelled ended on its own
            ended = next(task for task in done if task is not decision)
            raise WorkerCrashed(self.name, ended.get_name(), RuntimeError("ended on its own"))
        await decision

    async def stop(
        self, reason: str, mail_grace: float = 0.5, hook_grace: float | None = None
    ) -> None:
        """The decision task finishes what it holds (a running plan within its budget, counted
        from the Stop), then the plan still running is cancelled (its journal record left
        open); the alert mails get ``mail_grace`` and the background hooks ``hook_grace``
        (None: ``mail_grace``; a crash-stop: ``hooks_longest()``, their whole timeout), then
        every task is cancelled and awaited within ``SHUTDOWN_GRACE``. What is still running
        after that is named in ``left_running`` (and in the ``stopped`` line): a restart of
        this cluster must not start beside it; the journal stays open for it until
        ``leftovers_ended``. Else the journal is flushed and closed for good."""
        decision = self._decision
        hook_grace = mail_grace if hook_grace is None else hook_grace
        if decision is None:  # never started (refused, a failed restart)
            await self._stop_halted(mail_grace, hook_grace)
            return
        self._decision = None
        since_stop = time.monotonic()
        if not decision.done():
            self.emit(Stop(time.monotonic(), reason))
            await self._let_decision_finish(decision)
        # What is left of the plan's budget: all of it when the decision task had crashed
        # before, none when it gave the plan its budget on the Stop, the rest when it crashed
        # while it handled the Stop (a plan is not cut halfway while it may finish).
        left = plan_budget(self.settings) - (time.monotonic() - since_stop)
        plan = await self._end_plan(max(0.0, left))
        stopping = time.monotonic()
        await self._end_workers()  # first: in a fleet the leader locks are free at once
        hooks = await self._close_alerts(mail_grace, hook_grace)
        if self._notifier_task is not None:
            self._workers.append(self._notifier_task)
        for task in (*self._workers, *hooks):
            task.cancel()
        owned = [*self._workers, *hooks, decision, *([plan] if plan is not None else [])]
        _, pending = await asyncio.wait(owned, timeout=SHUTDOWN_GRACE)
        if self.router is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.3):
                    await self.router.close()
        # Every record posted is on disk before a fresh Runtime of this cluster (a restart
        # after a crash) reads and appends to the same journal; after the close no record of
        # this Runtime lands there any more (a write fails, JournalUnwritable). A task still
        # running keeps it open: its records (a plan's end) land once it ends.
        journal_flushed = await self.journal.flushed()
        if not pending and journal_flushed:  # else ``leftovers_ended`` closes it
            self.journal.close()
        names = sorted(t.get_name() for t in pending)
        self._leftovers = list(pending)
        self.left_running = names + ([] if journal_flushed else ["journal writer"])
        self.log.emit(
            "stopped",
            None,
            "info" if not self.left_running else "warning",
            grace_seconds=round(time.monotonic() - stopping, 3),
            tasks_not_finished=names,
            stuck_at={t.get_name(): _where(t) for t in pending},
            journal_flushed=journal_flushed,
            hooks_killed=sorted(t.get_name() for t in hooks),
        )

    async def _end_workers(self) -> None:
        """The probes, the router probe, the ticker and the lease keeper (its sessions closed:
        in a fleet the leader locks are free for another instance), cancelled and awaited
        within ``SHUTDOWN_GRACE``, before the alerts' and hooks' grace: nothing decides here
        any more. One still running is awaited again with the rest (``left_running``)."""
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.wait(self._workers, timeout=SHUTDOWN_GRACE)

    async def _stop_halted(self, mail_grace: float, hook_grace: float) -> None:
        """``stop`` of a Runtime that runs no decision task: its alert's mail (``mail_grace``)
        and on_halt hook (``hook_grace``, then cancelled and awaited), its notifier, its
        journal."""
        hooks = await self._close_alerts(mail_grace, hook_grace) if self.halted else []
        if self._notifier_task is not None:
            self._notifier_task.cancel()
            await asyncio.gather(self._notifier_task, return_exceptions=True)
            self._notifier_task = None
        for task in hooks:
            task.cancel()
        if hooks:
            _, pending = await asyncio.wait(hooks, timeout=SHUTDOWN_GRACE)
            self._leftovers += pending
            self.left_running += sorted(t.get_name() for t in pending)
        if all(task.done() for task in self._leftovers):
            self.journal.close()  # for good

    async def _close_alerts(self, grace: float, hook_grace: float) -> list[asyncio.Task[object]]:
        """The alert mails get ``grace`` s and the background hooks (post_failover, on_halt)
        ``hook_grace``, at once; the notifier is then closed (its task is cancelled with the
        workers). The hooks still running, for the caller to cancel (their process groups are
        killed)."""
        hooks = self.executor.background()
        with contextlib.suppress(Exception):
            await asyncio.gather(
                self.notifier.close(grace),
                asyncio.wait(hooks, timeout=hook_grace) if hooks else asyncio.sleep(0),
            )
        self._notifier_closed = True
        return [task for task in hooks if not task.done()]

    def hooks_longest(self) -> float:
        """What a crash-stop gives the background hooks (the on_halt of its crash alert, a
        post_failover of the last plan): as long as a hook may run (its timeout, then the
        kill), so that a pager is not cut short, at most ``CRASH_HOOK_GRACE_MAX`` (the restart
        waits for them; a hook cut then is named in the ``stopped`` line)."""
        hooks = self.executor.hooks
        return min(hooks.longest(), CRASH_HOOK_GRACE_MAX) if hooks is not None else 0.0

    async def leftovers_ended(self, poll: float = 1.0) -> None:
        """Returns once everything ``stop`` left running (``left_running``: a plan whose undo
        outlived the grace, a hook, a stuck journal writer) has ended, the on_halt hooks of
        its alerts included; then the journal is flushed (their records land) and closed for
        good. Only then may a fresh Runtime of this cluster start. Never returns while one
        runs."""
        while pending := [
            task
            for task in (*self._leftovers, *self.executor.background(), self.controller._task)
            if task is not None and not task.done()  # a plan its stuck decision task started
        ]:
            await asyncio.wait(pending)
        # Open, so that ``flushed`` waits for a no-op queued behind every record posted:
        # none of them lands after a fresh Runtime loaded the file.
        flushed = await self.journal.flushed()
        while not flushed:  # a stuck writer thread: until it is free
            await asyncio.sleep(poll)
            flushed = await self.journal.flushed()
        self.journal.close()
        if not self._notifier_closed:  # the not-restarted alert's fresh notifier
            with contextlib.suppress(Exception):
                await self.notifier.close(CRASH_MAIL_GRACE)
            self._notifier_closed = True
        if self._notifier_task is not None:
            self._notifier_task.cancel()
            await asyncio.gather(self._notifier_task, return_exceptions=True)
            self._notifier_task = None
        self.log.emit("leftovers_ended", None, "warning", ended=self.left_running)
        self._leftovers, self.left_running = [], []

    async def _let_decision_finish(self, decision: asyncio.Task[None]) -> None:
        """The decision task, with a Stop on its queue: idle, within ``SHUTDOWN_GRACE``; a
        plan running (or started meanwhile, by an event queued before the Stop) is let finish
        within its budget; then it is cancelled (a no-op when it finished)."""
        await asyncio.wait([decision], timeout=SHUTDOWN_GRACE)
        if not decision.done() and self.controller.running_plan is not None:
            await asyncio.wait([decision], timeout=plan_budget(self.settings))
        decision.cancel()

    async def _end_plan(self, budget: float) -> asyncio.Task[None] | None:
        """The plan still running once its decision task is gone (it crashed, or it stopped
        and gave the plan its budget): let it finish within ``budget`` (never cut halfway
        while it may: a promotion cut between RESET SLAVE ALL and read_only=OFF leaves no
        writable node), then cancel it, its journal record left open (the next start of this
        cluster resumes it, as after a kill -9); the caller awaits it. None when no plan
        runs."""
        plan = self.controller._task  # the controller that owned it is gone
        if plan is None or plan.done():
            return None
        running = self.controller.running_plan
        if budget > 0:
            self.log.emit(
                "stop_waits_for_plan", None, "warning", plan=running, budget_seconds=budget
            )
            await asyncio.wait([plan], timeout=budget)
        if not plan.done():
            self.log.emit("stop_cancels_plan", None, "warning", plan=running)
            self.executor.cut_by_stop = True  # its journal record stays open: resumed later
            plan.cancel()
        return plan


def _frames(error: BaseException) -> list[str]:
    """Where ``error`` was raised: the innermost frames of its traceback, last."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]  # where the first of a group's errors was raised
    frames = traceback.extract_tb(error.__traceback__)[-8:]
    return [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames]


def _where(task: asyncio.Task[None]) -> list[str]:
    """Where a task that did not finish in time is waiting: innermost frames last."""
    return [
        f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}"
        for f in task.get_stack(limit=8)
    ]


async def _ticker(emit, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        emit(Tick(time.monotonic()))


async def snapshot(settings: Settings) -> ClusterView:
    """``hacontrol status``: probe every node and the router once, with a failure threshold of
    one (a single probe is all it has); no running controller needed."""
    one_shot = settings.model_copy(
        update={"probes": settings.probes.model_copy(update={"failure_threshold": 1})}
    )
    events: list[Event] = []
    probes = node_probes(one_shot, events.append, watch=False)
    router = build_router(one_shot)
    lease = LeaseKeeper(one_shot, events.append) if settings.controller.fleet else None
    try:
        jobs = [p.probe() for p in probes.values()]
        if lease is not None:  # who holds the fleet's locks (read only, nothing taken)
            jobs += [lease.round(node.name) for node in settings.nodes]
        if router is not None:
            jobs.append(
                RouterProbe(
                    router, interval=1, timeout=settings.probes.timeout * 2, emit=events.append
                ).probe()
            )
        results = [r for r in await asyncio.gather(*jobs) if r is not None]  # None: busy
    finally:
        if lease is not None:
            lease.close()
        for p in probes.values():
            await p.close()
        if router is not None:
            await router.close()
    view = initial(one_shot)
    for event in results:
        view = fold(view, event, one_shot)
    return view
