"""Runs one plan's actions in order: the only code that changes nodes and the router.

A plain runner. What to do was decided by the rules; so was what undoes a plan
(``rules.rollback``). Each action has a timeout and its implementation re-checks its
precondition on fresh data. A failed ``required`` action stops the plan; the others are logged
and the plan goes on. Multi-step plans (``PlanKind.journaled``) are journaled: ``begin`` before
the first step (unless resumed), ``start`` before a Promote, ``step`` after each, ``end`` at the
finish, each durable (in the journal's writer thread, off the event loop) before the run goes
on. A record that cannot be written never stops a failover, nor a plan past its promotion: the
run goes on without the journal; any other plan stops after the step in flight
(``rules.journal``). The result comes back to the decision task as a ``PlanFinished`` event
carrying typed facts: which node was promoted, which nodes and whether the router were touched,
where it stopped; an unexpected error inside the run still reports what it promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from hacontrol import gtid
from hacontrol.actions.hooks import HookRunner
from hacontrol.actions.hooks import describe as describe_hook
from hacontrol.actions.notify import Alert, Notifier
from hacontrol.actions.rebuild import Guard, OnProgress, RebuildResult
from hacontrol.events import PlanFinished
from hacontrol.flavors.base import IoState, NodeStatus, ReplicationStatus
from hacontrol.journal import Journal, JournalUnwritable
from hacontrol.jsonlog import JsonLog
from hacontrol.mariabackup import Progress
from hacontrol.plan import (
    LEASE_LOST,
    Action,
    ActionResult,
    AlertKind,
    CatchUp,
    CheckTransactions,
    Drain,
    Fence,
    Hook,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Publish,
    Rebuild,
    Rejoin,
    Repoint,
    RequireReadOnly,
    Route,
    RouteFence,
    SetIOThreads,
    SetWritable,
    WaitApplied,
)
from hacontrol.routing import Router, fenced
from hacontrol.rules.candidates import topology_text
from hacontrol.rules.journal import goes_on_without_journal
from hacontrol.rules.lease import describe, holds_majority
from hacontrol.rules.rollback import rollback_actions
from hacontrol.settings import Settings
from hacontrol.view import ClusterView


class NodeActions(Protocol):
    """What the executor asks of the nodes: ``actions.mysql.MySQLActions``, or a fake in
    tests. Each returns an ActionResult and never raises; ``status`` raises when unreadable."""

    async def status(self, node: str, timeout: float | None = None) -> NodeStatus: ...

    async def fence(self, node: str, timeout: float | None = None) -> ActionResult: ...

    async def wait_applied(self, node: str, timeout: float) -> ActionResult: ...

    async def promote(
        self, node: str, host: str, port: int, timeout: float | None = None
    ) -> ActionResult: ...

    async def repoint(
        self, node: str, host: str, port: int, timeout: float | None = None
    ) -> ActionResult: ...

    async def rejoin(
        self, node: str, host: str, port: int, timeout: float | None = None
    ) -> ActionResult: ...

    async def set_io_thread(
        self, node: str, running: bool, timeout: float | None = None
    ) -> ActionResult: ...

    async def check_transactions(
        self, node: str, max_age: float, timeout: float | None = None
    ) -> ActionResult: ...

    async def catch_up(self, node: str, host: str, port: int, timeout: float) -> ActionResult: ...

    async def set_writable(
        self,
        node: str,
        on: bool,
        timeout: float | None = None,
        *,
        semi_sync_source: bool | None = None,
    ) -> ActionResult: ...


class Publisher(Protocol):
    """The lease edge's part in a plan (``probes.lease.LeaseKeeper``; a fake in tests)."""

    async def publish(self, node: str, timeout: float) -> ActionResult: ...


class NodeRebuilder(Protocol):
    """``actions.rebuild.Rebuilder``: one rebuild, never raises; progress through a callback."""

    async def rebuild(self, target: str, source: str, primary: str,
                      on_progress: OnProgress | None = None, guard: Guard | None = None,
                      ) -> RebuildResult: ...  # fmt: skip


@dataclass
class _Run:
    """What one run of one plan knows while it runs; never outlives it."""

    plan_id: str
    plan: Plan
    started: float
    journaled: bool
    timings: dict[str, float] = field(default_factory=dict)
    stopped_io: frozenset[str] = frozenset()
    """IO threads this run stopped (and only those are started again by a rollback)."""
    begun: bool = False
    """Its ``begin`` is in the journal, or may be: written before a restart, or handed to the
    writer by this run (a record whose wait gave up may still land). An ``end`` follows."""
    promoted: bool = False
    """Its Promote is done (in this run, or before a restart)."""
    stop: str | None = None
    """Why it stops before its next step (a journal record it could not write)."""
    lease_lost: bool = False
    """A step was refused: this instance no longer held the fleet's lease."""


class Executor:
    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        *,
        mysql: NodeActions,
        router: Router | None,
        notifier: Notifier | None,
        journal: Journal | None,
        view: Callable[[], ClusterView],
        clock: Callable[[], float] = time.monotonic,
        fault_after: str | None = None,
        hooks: HookRunner | None = None,
        lease: Publisher | None = None,
        rebuilder: NodeRebuilder | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.mysql = mysql
        self.router = router
        self.notifier = notifier
        self.journal = journal
        self.hooks = hooks
        self.lease = lease
        self.rebuilder = rebuilder
        self.rebuild_status: dict[str, Any] | None = None
        """The running (or last) rebuild: phase, bytes, rate, ETA, outcome (for /status)."""
        self._view = view
        self._clock = clock
        self._fault_after = fault_after
        """Test-only fault injection: crash (SIGKILL self) right after this action type."""
        self._background: set[asyncio.Task[object]] = set()
        self.cut_by_stop = False
        """Set by the Runtime's stop before it cancels the running plan: the plan's journal
        record is then left open, so the next start resumes it as after a kill -9 (an end
        record would tell it the plan ended, and a failover cut after its stops or its
        promotion would be neither finished nor undone). A cancel without it is a preemption
        by the decision (a rebuild giving way to a failover): that one ends its record."""
        self._handlers: dict[type, Callable[[Any, _Run], Awaitable[ActionResult]]] = {
            RouteFence: self._route_fence,
            Drain: self._drain,
            Route: self._route,
            WaitApplied: self._wait_applied,
            Promote: self._promote,
            Repoint: self._repoint,
            Fence: self._fence,
            Rejoin: self._rejoin,
            SetIOThreads: self._set_io_threads,
            CheckTransactions: self._check_transactions,
            CatchUp: self._catch_up,
            SetWritable: self._set_writable,
            RequireReadOnly: self._require_read_only,
            Publish: self._publish,
            Rebuild: self._rebuild,
            Hook: self._hook,
            Notify: self._notify_step,
        }

    # -- running a plan ----------------------------------------------------------------------

    async def run(
        self,
        plan_id: str,
        plan: Plan,
        *,
        skip: frozenset[int] = frozenset(),
        resumed: bool = False,
    ) -> PlanFinished:
        """Run ``plan`` (``skip``: the steps a run before a restart did) and report back."""
        run = _Run(plan_id, plan, self._clock(), plan.kind.journaled and self.journal is not None)
        run.begun = run.journaled and resumed
        run.promoted = plan.promote is not None and plan.point_of_no_return in skip
        steps: list[ActionResult] = []
        try:
            if run.journaled and not resumed:
                run.begun = True  # from now on an end follows, even if this wait gives up
                await self._record(run, "begin", plan_id, plan)
                if run.stop is not None:
                    reason = f"not started: {run.stop}"
                    await self._end(run, False, reason)
                    return self._finished(run, False, reason, None, ())
            elif self.journal is not None:  # what was persisted before this plan lands first
                await self.journal.flushed()
            failed_at = await self._steps(run, skip, steps)
            ok, reason, undo = failed_at is None, _outcome(steps), ()
            if failed_at is not None:
                reason = (
                    f"stopped before {type(plan.actions[failed_at]).__name__}: {run.stop}"
                    if run.stop is not None
                    else f"{steps[-1].action} failed: {steps[-1].reason}"
                )
                # A lost lease: the next leader reconciles from the live topology, not this one.
                undo = (
                    ()
                    if run.lease_lost
                    else rollback_actions(plan, failed_at, run.stopped_io, reason)
                )
            if undo:
                reason = f"rolled back ({await self._rollback(run, undo)}) after {reason}"
            await self._end(run, ok, reason)
            return self._finished(run, ok, reason, failed_at, tuple(steps), bool(undo))
        except asyncio.CancelledError:  # stopped from outside
            if self.cut_by_stop:  # the next start resumes it from its open record
                self.log.emit("plan_left_open", None, "warning", plan=plan_id, steps=len(steps))
                raise
            with contextlib.suppress(Exception):  # preempted: its journal record ends it
                await self._end(run, False, "cancelled before its end")
            raise
        except Exception as exc:  # a bug or an I/O error: report what was done all the same
            with contextlib.suppress(Exception):  # the log itself may be what failed
                self.log.emit("executor_error", None, "error", plan=plan_id, error=repr(exc))
            reason = f"the executor failed: {type(exc).__name__}: {exc}"
            if run.promoted:  # done as far as the controller goes: a restart must not redo it
                with contextlib.suppress(Exception):
                    await self._end(run, False, reason)
            return self._finished(run, False, reason, None, tuple(steps))

    async def _steps(
        self, run: _Run, skip: frozenset[int], steps: list[ActionResult]
    ) -> int | None:
        """Each step in order; the index where the plan stops, None when every step ran."""
        for index, action in enumerate(run.plan.actions):
            if index in skip:
                continue
            if run.journaled and isinstance(action, Promote):  # a crash inside is known as such
                await self._record(run, "step_started", run.plan_id, index)
            if run.stop is not None:
                return index
            step = await self._step(run, index, action)
            steps.append(step)
            run.lease_lost = run.lease_lost or bool(step.detail.get(LEASE_LOST))
            if not step.ok and (action.required or run.lease_lost):
                return index
        return None

    async def _record(self, run: _Run, record: str, *args: Any) -> None:
        """A journal record of this run, durable before the run goes on. When it cannot be
        written, the run goes on without the journal or stops (``rules.journal``)."""
        if not run.journaled:
            return
        try:
            journal = self._journal()
            await journal.write(getattr(journal, record), *args)
        except JournalUnwritable as exc:
            run.journaled = False
            goes_on = goes_on_without_journal(run.plan, run.promoted)
            if not goes_on:
                run.stop = f"the journal cannot be written ({exc})"
            self.log.emit(
                "journal_write_failed",
                None,
                "error",
                plan=run.plan_id,
                rule=run.plan.rule,
                reason=str(exc),
                plan_goes_on=goes_on,
                why="a failover, or past its promotion: it goes on without the journal"
                if goes_on
                else "it stops after the step in flight (before its promotion)",
            )

    async def _end(self, run: _Run, ok: bool, reason: str) -> None:
        """The ``end`` of a plan whose ``begin`` is (or may land) in the journal, even after a
        record failed (the journal keeps it for later if it cannot be written now). An ``end``
        whose ``begin`` never landed is harmless; a ``begin`` without one is a plan a restart
        finishes or rolls back, however long ago it ran."""
        if not run.begun or self.journal is None:
            return
        promoted = run.plan.promote.node if run.promoted and run.plan.promote else None
        self.journal.post(self.journal.end, run.plan_id, ok, reason, promoted)
        await self.journal.flushed()

    def _finished(
        self,
        run: _Run,
        ok: bool,
        reason: str,
        failed_at: int | None,
        steps: tuple[ActionResult, ...],
        rolled_back: bool = False,
    ) -> PlanFinished:
        plan = run.plan
        ran = [plan.actions[s.index] for s in steps]
        promoted = run.promoted  # set the moment the Promote succeeded (or before a restart)
        return PlanFinished(
            self._clock(),
            run.plan_id,
            plan.rule,
            plan.kind,
            ok,
            reason,
            failed_at,
            steps,
            round(self._clock() - run.started, 3),
            promoted=plan.promote.node if promoted and plan.promote else None,
            touched=frozenset(n for a in ran for n in a.targets()),
            routed=any(a.routes for a in ran),
            rolled_back=rolled_back,
            lease_lost=run.lease_lost,
        )

    async def _step(self, run: _Run, index: int, action: Action) -> ActionResult:
        """One action, timed, logged and journaled; it never raises."""
        name = type(action).__name__
        t0 = self._clock()
        result = await self._attempt(run, action, deadline=index < run.plan.point_of_no_return)
        if isinstance(action, Promote) and result.ok:
            run.promoted = True  # first: whatever fails after this, the plan promoted
        took = self._clock() - t0
        run.timings[name] = self._clock() - run.started
        step = replace(
            result, action=name, node=_target(action), index=index, seconds=round(took, 3)
        )
        self.log.emit(
            "action",
            step.node,
            "info" if step.ok else "error",
            plan=run.plan_id,
            rule=run.plan.rule,
            action=name,
            ok=step.ok,
            changed=step.changed,
            reason=step.reason,
            seconds=step.seconds,
        )
        await self._record(run, "step", run.plan_id, index, step.ok, step.reason)
        if self._fault_after == name:
            _crash_for_test(self.log, name)
        return step

    def lease_problem(self, action: Action) -> str | None:
        """Why this instance may not run ``action`` now, or None. In a fleet an action on a
        node, or an operator's hook (it may act on anything: fence a node, move an address),
        runs only while this instance holds the leader lock on a majority that stays valid at
        least ``lease.margin`` longer; each statement a node action sends is checked again
        (``actions.mysql``)."""
        settings = self.settings
        if not settings.controller.fleet or not (action.targets() or isinstance(action, Hook)):
            return None
        view, now = self._view(), self._clock()
        if holds_majority(view, settings, now, settings.lease.margin):
            return None
        where = describe(view, settings, now)
        return f"lease: this instance no longer holds a valid majority ({where})"

    async def _attempt(self, run: _Run, action: Action, *, deadline: bool) -> ActionResult:
        """The action under the plan's deadline (before its point of no return), if the
        lease allows it."""
        plan = run.plan
        if problem := self.lease_problem(action):
            return ActionResult("", None, False, False, problem, {LEASE_LOST: True})
        try:
            if plan.deadline is None or not deadline:
                return await self._do(action, run)
            left = run.started + plan.deadline - self._clock()
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                return await self._do(action, run)
        except TimeoutError:
            return _failed(f"deadline of {plan.deadline:g} s passed before promotion")
        except Exception as exc:  # an action must not kill the decision task
            return _failed(f"{type(exc).__name__}: {exc}")

    async def _rollback(self, run: _Run, actions: tuple[Action, ...]) -> str:
        """Undo a plan stopped before its point of no return: every step is attempted; a
        failed guard (RequireReadOnly) stops it."""
        results = []
        for action in actions:
            if problem := self.lease_problem(action):
                return f"NOT rolled back: {problem}"
            try:
                result = await self._do(action, run)
            except Exception as exc:
                result = _failed(f"{type(exc).__name__}: {exc}")
            name = type(action).__name__
            self.log.emit(
                "rollback_action",
                _target(action),
                "warning" if result.ok else "error",
                plan=run.plan_id,
                action=name,
                ok=result.ok,
                reason=result.reason,
            )
            if isinstance(action, RequireReadOnly):
                if not result.ok:
                    return f"NOT rolled back: {result.reason}"
                continue
            results.append(f"{name} {'ok' if result.ok else 'FAILED'}")
        return ", ".join(results)

    def _journal(self) -> Journal:
        assert self.journal is not None
        return self.journal

    async def _do(self, action: Action, run: _Run) -> ActionResult:
        handler = self._handlers.get(type(action))
        if handler is None:
            raise TypeError(f"unknown action {action!r}")
        return await handler(action, run)

    # -- one handler per action type --------------------------------------------------------

    @property
    def _timeout(self) -> float:
        return self.settings.failover.action_timeout

    async def _route_fence(self, action: RouteFence, run: _Run) -> ActionResult:
        if self.router is None:
            return _done("no router")
        desired = fenced(await self.router.read(), action.node)
        changed = await self.router.apply(desired, allow_no_writer=True)
        return _done(f"{action.node} out of the writer and reader groups", changed)

    async def _drain(self, action: Drain, run: _Run) -> ActionResult:
        if self.router is None:
            return _done("no router")
        drained = await self.router.drain(action.node, timeout=action.timeout)
        detail = {"idle": drained.idle, "in_use": drained.in_use, "seconds": drained.seconds}
        if drained.idle:
            reason = f"{action.node} drained in {drained.seconds:g} s: no new write starts there"
        else:
            reason = (
                f"{action.node}: drain deadline of {action.timeout:g} s passed with "
                f"{drained.in_use} still in use; the fence ends them"
            )
        return ActionResult("", None, True, True, reason, detail)

    async def _route(self, action: Route, run: _Run) -> ActionResult:
        if self.router is None:
            return _done("no router")
        changed = await self.router.apply(
            action.desired,
            allow_no_writer=action.no_writer,
            allow_hidden_change=action.hidden_change,
        )
        return _done(f"router: {action.desired.to_json()}", changed)

    async def _set_io_threads(self, action: SetIOThreads, run: _Run) -> ActionResult:
        results = await asyncio.gather(
            *(self.mysql.set_io_thread(n, action.running, self._timeout) for n in action.nodes)
        )
        if not action.running:
            run.stopped_io = frozenset(r.node for r in results if r.changed)
        verb = "started" if action.running else "stopped"
        return _combined(results, f"IO threads {verb} on {', '.join(action.nodes)}")

    async def _check_transactions(self, action: CheckTransactions, run: _Run) -> ActionResult:
        return await self.mysql.check_transactions(action.node, action.max_age, self._timeout)

    async def _catch_up(self, action: CatchUp, run: _Run) -> ActionResult:
        src = self.settings.node(action.source)
        return await self.mysql.catch_up(action.node, src.host, src.port, action.timeout)

    async def _set_writable(self, action: SetWritable, run: _Run) -> ActionResult:
        return await self.mysql.set_writable(
            action.node, action.on, self._timeout, semi_sync_source=action.semi_sync_source
        )

    async def _require_read_only(self, action: RequireReadOnly, run: _Run) -> ActionResult:
        try:
            status = await self.mysql.status(action.node)
        except Exception as exc:
            return _failed(f"cannot read the candidate {action.node}: {exc}")
        if not status.read_only:
            return _failed(f"the candidate {action.node} is writable")
        return _done(f"{action.node} is read-only")

    async def _wait_applied(self, action: WaitApplied, run: _Run) -> ActionResult:
        if action.peers and (problem := await self._received_elsewhere(action)):
            return _failed(problem)
        return await self.mysql.wait_applied(action.node, action.timeout)

    async def _received_elsewhere(self, action: WaitApplied) -> str | None:
        """Why ``action.node`` must not be promoted given its peers' fresh positions
        (``received_beyond``), or None. A peer that cannot be read fails it too: only the
        controller's link to it may be broken, and it may hold a write it alone acknowledged.
        The candidate's own read is ``wait_applied``'s to report."""
        names = (action.node, *action.peers)
        read = await asyncio.gather(
            *(self.mysql.status(n, self._timeout) for n in names), return_exceptions=True
        )
        candidate = read[0]
        if not isinstance(candidate, NodeStatus):
            return None
        peers: dict[str, NodeStatus] = {}
        for name, got in zip(action.peers, read[1:], strict=True):
            if not isinstance(got, NodeStatus):
                return (
                    f"{name} cannot be read ({got}): it may hold a write it alone acknowledged; "
                    f"not promoting {action.node} (the failover halts until an operator acts)"
                )
            peers[name] = got
        return received_beyond(action.node, candidate, peers)

    async def _promote(self, action: Promote, run: _Run) -> ActionResult:
        src = self.settings.node(action.old_primary)
        result = await self.mysql.promote(action.node, src.host, src.port, self._timeout)
        if result.ok or not (action.finish_half_done and result.detail.get("half_done_promotion")):
            return result
        # Our own journaled promotion was cut between RESET SLAVE ALL and read_only=OFF (a
        # crash): this node is the candidate the plan chose and it applied everything
        # (WaitApplied was done), so finish it, unless its old primary turned writable since
        # the decision (restarted with read_only=OFF).
        if problem := await self._old_primary_writable(action):
            return _failed(problem)
        finished = await self.mysql.set_writable(
            action.node, True, self._timeout, semi_sync_source=True
        )
        return replace(finished, reason=f"finished a half-done promotion: {finished.reason}")

    async def _old_primary_writable(self, action: Promote) -> str | None:
        """Why a half-done promotion must not be finished now: its old primary, read right
        before, is writable (two writers if it were); the plan then stops (a halt and an
        alert). One that cannot be read is away still, as the decision saw it."""
        try:
            old = await self.mysql.status(action.old_primary, self._timeout)
        except Exception:
            return None
        if old.read_only:
            return None
        return (
            f"the old primary {action.old_primary} is writable now: not finishing the half-done "
            f"promotion of {action.node} (it would make two writers)"
        )

    async def _repoint(self, action: Repoint, run: _Run) -> ActionResult:
        if not action.nodes:
            return _done("no other replica")
        src = self.settings.node(action.new_primary)
        results = await asyncio.gather(
            *(self.mysql.repoint(n, src.host, src.port, self._timeout) for n in action.nodes)
        )
        return _combined(results, f"{', '.join(action.nodes)} replicate from {action.new_primary}")

    async def _fence(self, action: Fence, run: _Run) -> ActionResult:
        return await self.mysql.fence(action.node, self._timeout)

    async def _rejoin(self, action: Rejoin, run: _Run) -> ActionResult:
        src = self.settings.node(action.new_primary)
        return await self.mysql.rejoin(action.node, src.host, src.port, self._timeout)

    async def _publish(self, action: Publish, run: _Run) -> ActionResult:
        if self.lease is None:
            return _failed("no lease: this instance is not part of a fleet")
        return await self.lease.publish(action.node, self._timeout)

    async def _rebuild(self, action: Rebuild, run: _Run) -> ActionResult:
        if self.rebuilder is None:
            return _failed("rebuild is not configured: set rebuild.stop_target and start_target")
        status: dict[str, Any] = {
            "plan": run.plan_id,
            "node": action.node,
            "source": action.source,
            "primary": action.primary,
            "running": True,
            "phase": "check",
        }
        self.rebuild_status = status

        def progress(report: Progress) -> None:
            if report.phase != status["phase"] or report.phase == "failed":
                self.log.emit("rebuild_phase", action.node, "info", plan=run.plan_id,
                              phase=report.phase, message=report.message)  # fmt: skip
            if report.phase == "copy" and not report.message:
                status["copy_line"] = report.line()  # the last word on the copy
            status.update(
                phase=report.phase,
                line=report.line(),
                copied=report.copied if report.phase == "copy" else status.get("copied", 0),
                total=report.total if report.phase == "copy" else status.get("total"),
                rate=report.rate if report.phase == "copy" else status.get("rate"),
                eta=report.eta if report.phase == "copy" else None,
            )

        try:
            result = await self.rebuilder.rebuild(
                action.node,
                action.source,
                action.primary,
                progress,
                guard=lambda: self.lease_problem(action),  # before every change to the node
            )
        except asyncio.CancelledError:  # undone by the rebuilder before it got here
            status.update(running=False, ok=False, reason=f"stopped: {status.get('line', '')}")
            if self.cut_by_stop:  # no outcome follows (its record is left open): say it now
                self._rebuild_cut(action, run, status.get("line", ""))
            raise
        kept = (
            "failed_phase",
            "phases",
            "copied",
            "estimate",
            "position",
            "seconds",
            "notes",
            LEASE_LOST,
        )
        detail = {k: result.detail[k] for k in kept if k in result.detail}
        status.update(running=False, ok=result.ok, reason=result.reason, **detail)
        return ActionResult("", None, result.ok, True, result.reason, detail)

    def _rebuild_cut(self, action: Rebuild, run: _Run, where: str) -> None:
        """A rebuild cut by a stop (its cluster crashed, a shutdown): its undo has run, and no
        PlanFinished (no ``rebuild_failed`` alert) follows; where the undo left the target (it
        may say "restore by hand") is logged at error level and mailed here."""
        node = action.node
        reason = f"cut by a stop of the controller; the undo says: {where or 'nothing'}"
        self.log.emit("rebuild_cut", node, "error", plan=run.plan_id, where=where)
        alert = Notify(AlertKind.REBUILD_FAILED, node, f"rebuild of {node} cut", reason)
        self._send(alert, run.plan, {})

    async def _hook(self, action: Hook, run: _Run) -> ActionResult:
        if self.hooks is None:
            return _done("no hook runner")
        job = self.hooks.run(action.phase, dict(action.context))
        if not action.required:  # only a veto (pre_failover) may delay a plan
            self._in_background(job, f"hook:{action.phase}")
            return _done(f"{action.phase} hook started in the background")
        result = await job
        return ActionResult(
            "hook", None, result.ok or not result.ran, result.ran, describe_hook(result)
        )

    async def _notify_step(self, action: Notify, run: _Run) -> ActionResult:
        self._send(action, run.plan, run.timings)
        return _done("alert sent to the notifier")

    # -- alerts -------------------------------------------------------------------------------

    def notify(self, action: Notify, plan: Plan, *, on_halt: bool = False) -> None:
        """An alert outside a running plan (halts, refusals): never blocks. ``on_halt``: the
        ``on_halt`` hook runs too, in the background."""
        self._send(action, plan, {})
        if on_halt:
            self.on_halt(action.kind.value, action.node, action.reason)

    def on_halt(self, kind: str, node: str | None, reason: str) -> None:
        """The ``on_halt`` hook (when one is set), in the background: a halt, or a crash of
        this cluster's controller (``cluster_crashed``, alerted by the Runtime)."""
        if self.hooks is not None and self.settings.hooks.on_halt:
            context = {"kind": kind, "node": node or "", "reason": reason}
            self._in_background(self.hooks.run("on_halt", context), "hook:on_halt")

    def _in_background(self, job: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(job, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def background(self) -> list[asyncio.Task[object]]:
        """The hooks still running in the background (``post_failover``, ``on_halt``...): the
        Runtime's stop lets them end within its grace, then cancels them (a cancelled hook's
        process group is killed) and awaits them, never leaving one beside a restart."""
        return list(self._background)

    def _send(self, action: Notify, plan: Plan, timings: dict[str, float]) -> None:
        sections = list(action.sections)
        if plan.kind in (PlanKind.FAILOVER, PlanKind.SWITCHOVER) and timings:
            lines = [f"{name:<12} +{seconds:.3f} s" for name, seconds in timings.items()]
            sections.append(("timings (from the decision)", "\n".join(lines)))
            sections.append(("topology after", topology_text(self._view())))
        kind = str(action.kind)
        alert = Alert(
            kind,
            self.settings.cluster.name,
            action.node,
            action.summary,
            action.reason,
            tuple(sections),
        )
        if self.notifier is not None:
            self.notifier.alert(alert)
        else:
            self.log.emit(
                "alert",
                action.node,
                "warning",
                kind=kind,
                summary=action.summary,
                reason=action.reason,
                mail="off",
            )


def _outcome(steps: list[ActionResult]) -> str:
    """A plan that ran to its end: say which steps failed without stopping it."""
    failed = [f"{s.action} ({s.reason})" for s in steps if not s.ok]
    return "all steps done" if not failed else "done, but failed: " + "; ".join(failed)


def _done(reason: str, changed: bool = False) -> ActionResult:
    return ActionResult("", None, True, changed, reason)


def _failed(reason: str) -> ActionResult:
    return ActionResult("", None, False, False, reason)


def _combined(results: list[ActionResult], success: str) -> ActionResult:
    """One result for an action run on several nodes at once."""
    bad = [f"{r.node}: {r.reason}" for r in results if not r.ok]
    lease_lost = any(r.detail.get(LEASE_LOST) for r in results)
    return ActionResult(
        "",
        None,
        not bad,
        any(r.changed for r in results),
        "; ".join(bad) or success,
        {LEASE_LOST: True} if lease_lost else {},
    )


def received_beyond(node: str, candidate: NodeStatus, peers: dict[str, NodeStatus]) -> str | None:
    """Pure: why ``node`` must not be promoted, or None: a peer's IO thread still runs (what it
    receives now may be acknowledged), or a peer received a transaction ``node`` holds neither
    executed nor received. The failover then halts (``FailoverFailed``) until an operator
    acknowledges it: routing is restored, or a new failover ranks the replicas again."""
    mine = _channel(candidate)
    if mine is None:
        return None
    halts = f"not promoting {node}: the failover halts until an operator acts"
    try:
        executed = gtid.parse(candidate.gtid_executed, candidate.flavor)  # type: ignore[arg-type]
        holds = executed | gtid.parse(mine.received_gtid, candidate.flavor)  # type: ignore[arg-type]
    except ValueError as exc:
        return f"{node}'s executed and received transactions cannot be compared ({exc}); {halts}"
    for name, status in sorted(peers.items()):
        theirs = _channel(status)
        if theirs is None:
            continue
        if theirs.io_state is not IoState.STOPPED:
            return (
                f"{name}'s IO thread is {theirs.io_state.value}, not stopped: what it receives "
                f"now may be acknowledged by it alone; {halts}"
            )
        try:
            extra = gtid.parse(theirs.received_gtid, status.flavor) - holds  # type: ignore[arg-type]
        except ValueError as exc:
            return f"{name}'s received transactions cannot be compared ({exc}); {halts}"
        if extra:
            return (
                f"{name} received {theirs.received_gtid}, {node} holds only {holds} "
                f"(its source answered again?): promoting {node} could lose a write "
                f"acknowledged by {name}; {halts}"
            )
    return None


def _channel(status: NodeStatus) -> ReplicationStatus | None:
    return next((r for r in status.replication if r.connection_name == ""), None)


def _target(action: Action) -> str | None:
    """The node of an action's log line (and of a command's answer): for display only."""
    if isinstance(action, Repoint):
        return ",".join(action.nodes)
    return getattr(action, "node", None)


def _crash_for_test(log: JsonLog, after: str) -> None:
    import os
    import signal

    log.emit("fault_injected", None, "error", after=after)
    os.kill(os.getpid(), signal.SIGKILL)
