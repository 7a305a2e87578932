"""Runs one plan's actions in order: the only code that changes nodes and the router.

Side effects only; what to do was decided by ``decide``. Each action has a timeout and its
implementation re-checks its precondition on fresh data. A failed ``required`` action stops the
plan; the others are logged and the plan goes on. Multi-step plans (failover, rejoin) are
journaled: ``begin`` before the first step, ``step`` after each, ``end`` at the finish.
The result comes back to the decision task as a ``PlanFinished`` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hacontrol import plan as p
from hacontrol.actions.hooks import HookRunner
from hacontrol.actions.hooks import describe as describe_hook
from hacontrol.actions.mysql import MySQLActions
from hacontrol.actions.notify import Alert, Notifier
from hacontrol.events import PlanFinished, StepResult
from hacontrol.journal import Journal
from hacontrol.jsonlog import JsonLog
from hacontrol.routing import Router, fenced
from hacontrol.rules.candidates import topology_text
from hacontrol.settings import Settings
from hacontrol.view import ClusterView


@dataclass(frozen=True)
class Outcome:
    ok: bool
    changed: bool
    reason: str


class Executor:
    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        *,
        mysql: MySQLActions,
        router: Router | None,
        notifier: Notifier | None,
        journal: Journal | None,
        view: Callable[[], ClusterView],
        clock: Callable[[], float] = time.monotonic,
        fault_after: str | None = None,
        hooks: HookRunner | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.mysql = mysql
        self.router = router
        self.notifier = notifier
        self.journal = journal
        self._view = view
        self._clock = clock
        self._fault_after = fault_after
        self._resuming = False
        self._stopped_io: set[str] = set()
        self.hooks = hooks
        self._background: set[asyncio.Task[object]] = set()
        """Test-only fault injection: crash (SIGKILL self) right after this action type."""

    async def run(
        self,
        plan_id: str,
        plan: p.Plan,
        *,
        skip: frozenset[int] = frozenset(),
        resumed: bool = False,
    ) -> PlanFinished:
        started = self._clock()
        self._resuming = resumed
        self._stopped_io = set()
        journaled = plan.kind.journaled and self.journal is not None
        if journaled and not resumed:
            assert self.journal is not None
            self.journal.begin(plan_id, plan)
        steps: list[StepResult] = []
        timings: dict[str, float] = {}
        failed: str | None = None
        no_return = next(
            (i for i, a in enumerate(plan.actions) if isinstance(a, p.Promote)), len(plan.actions)
        )
        for index, action in enumerate(plan.actions):
            if index in skip:
                continue
            name = type(action).__name__
            t0 = self._clock()
            if journaled and isinstance(action, p.Promote):
                assert self.journal is not None  # a crash inside Promote must be known as such
                self.journal.step_started(plan_id, index)
            try:
                if plan.deadline is not None and index < no_return:
                    left = started + plan.deadline - self._clock()
                    if left <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(left):
                        outcome = await self._do(action, plan, started, timings)
                else:
                    outcome = await self._do(action, plan, started, timings)
            except TimeoutError:
                outcome = Outcome(
                    False, False, f"deadline of {plan.deadline:g} s passed before promotion"
                )
            except Exception as exc:  # an action must not kill the decision task
                outcome = Outcome(False, False, f"{type(exc).__name__}: {exc}")
            took = self._clock() - t0
            timings[name] = self._clock() - started
            step = StepResult(
                index,
                name,
                _target(action),
                outcome.ok,
                outcome.changed,
                outcome.reason,
                round(took, 3),
            )
            steps.append(step)
            self.log.emit(
                "action",
                step.target,
                "info" if outcome.ok else "error",
                plan=plan_id,
                rule=plan.rule,
                action=name,
                ok=outcome.ok,
                changed=outcome.changed,
                reason=outcome.reason,
                seconds=round(took, 3),
            )
            if journaled:
                assert self.journal is not None
                self.journal.step(plan_id, index, outcome.ok, outcome.reason)
            if self._fault_after == name:
                _crash_for_test(self.log, name)
            if not outcome.ok and action.required:
                failed = name
                break
        ok = failed is None
        reason = "all steps done" if ok else f"{failed} failed: {steps[-1].reason}"
        stopped_at = steps[-1].index if steps else 0
        # Before the point of no return, or at it when Promote itself failed (its candidate
        # is then not writable: Promote turns read_only off last and checks it).
        if not ok and plan.rollback and stopped_at <= no_return:
            undone = await self._rollback(plan_id, plan, reason, failed == "Promote")
            reason = f"rolled back ({undone}) after {reason}"
        if journaled:
            assert self.journal is not None
            self.journal.end(plan_id, ok, reason)
        return PlanFinished(
            self._clock(),
            plan_id,
            plan.rule,
            plan.kind,
            ok,
            reason,
            failed,
            tuple(steps),
            round(self._clock() - started, 3),
        )

    async def _rollback(
        self, plan_id: str, plan: p.Plan, why: str, promote_failed: bool = False
    ) -> str:
        """Undo a plan stopped before its point of no return; every step is attempted."""
        if promote_failed and plan.kind is p.PlanKind.SWITCHOVER:
            candidate = next(a.node for a in plan.actions if isinstance(a, p.Promote))
            try:
                status = await self.mysql.status(candidate)
            except Exception as exc:
                return f"NOT rolled back: cannot read the candidate {candidate}: {exc}"
            if not status.read_only:
                # Making the old primary writable again would make two writers.
                return f"NOT rolled back: the candidate {candidate} is writable"
        results = []
        for action in plan.rollback:
            if isinstance(action, p.SetIOThreads) and action.running:
                # Start again only the IO threads this plan stopped (not an operator's).
                nodes = tuple(n for n in action.nodes if n in self._stopped_io)
                if not nodes:
                    continue
                action = p.SetIOThreads(nodes, running=True, required=action.required)
            if isinstance(action, p.Notify):
                action = p.Notify(
                    action.kind,
                    action.node,
                    action.summary,
                    f"{action.reason}; cause: {why}",
                    action.sections,
                )
            try:
                outcome = await self._do(action, plan, self._clock(), {})
            except Exception as exc:
                outcome = Outcome(False, False, f"{type(exc).__name__}: {exc}")
            results.append(f"{type(action).__name__} {'ok' if outcome.ok else 'FAILED'}")
            self.log.emit(
                "rollback_action",
                _target(action),
                "warning" if outcome.ok else "error",
                plan=plan_id,
                action=type(action).__name__,
                ok=outcome.ok,
                reason=outcome.reason,
            )
        return ", ".join(results)

    async def _do(
        self, action: p.Action, plan: p.Plan, started: float, timings: dict[str, float]
    ) -> Outcome:
        timeout = self.settings.failover.action_timeout
        match action:
            case p.RouteFence(node=node):
                if self.router is None:
                    return Outcome(True, False, "no router")
                current = await self.router.read()
                desired = fenced(current, node)
                changed = await self.router.apply(desired, allow_no_writer=True)
                return Outcome(True, changed, f"{node} out of the writer and reader groups")
            case p.Route(desired=desired, hidden_change=hidden_change):
                if self.router is None:
                    return Outcome(True, False, "no router")
                changed = await self.router.apply(desired, allow_hidden_change=hidden_change)
                return Outcome(True, changed, f"router: {desired.to_json()}")
            case p.SetIOThreads(nodes=nodes, running=running):
                results = await asyncio.gather(
                    *(self.mysql.set_io_thread(n, running, timeout) for n in nodes)
                )
                if not running:
                    self._stopped_io = {r.node for r in results if r.changed}
                bad = [f"{r.node}: {r.reason}" for r in results if not r.ok]
                verb = "started" if running else "stopped"
                return Outcome(
                    not bad,
                    any(r.changed for r in results),
                    "; ".join(bad) or f"IO threads {verb} on {', '.join(nodes)}",
                )
            case p.CheckTransactions(node=node, max_age=max_age):
                return _outcome(await self.mysql.check_transactions(node, max_age, timeout))
            case p.CatchUp(node=node, source=source, timeout=wait):
                src = self.settings.node(source)
                return _outcome(await self.mysql.catch_up(node, src.host, src.port, wait))
            case p.SetWritable(node=node, on=on, semi_sync_source=semi_sync):
                return _outcome(
                    await self.mysql.set_writable(node, on, timeout, semi_sync_source=semi_sync)
                )
            case p.WaitApplied(node=node, timeout=wait):
                return _outcome(await self.mysql.wait_applied(node, wait))
            case p.Promote(node=node, old_primary=old):
                src = self.settings.node(old)
                result = await self.mysql.promote(node, src.host, src.port, timeout)
                if not result.ok and self._resuming and "half-done promotion" in result.reason:
                    # Our own journaled promotion was cut between RESET SLAVE ALL and
                    # read_only=OFF (a crash): this node is the candidate the plan chose, it
                    # applied everything (WaitApplied was done), so finish it.
                    finished = await self.mysql.set_writable(
                        node, True, timeout, semi_sync_source=True
                    )
                    return Outcome(
                        finished.ok,
                        finished.changed,
                        f"finished a half-done promotion: {finished.reason}",
                    )
                return _outcome(result)
            case p.Repoint(nodes=nodes, new_primary=new):
                if not nodes:
                    return Outcome(True, False, "no other replica")
                src = self.settings.node(new)
                results = await asyncio.gather(
                    *(self.mysql.repoint(n, src.host, src.port, timeout) for n in nodes)
                )
                bad = [f"{r.node}: {r.reason}" for r in results if not r.ok]
                return Outcome(
                    not bad,
                    any(r.changed for r in results),
                    "; ".join(bad) or f"{', '.join(nodes)} replicate from {new}",
                )
            case p.Fence(node=node):
                return _outcome(await self.mysql.fence(node, timeout))
            case p.Rejoin(node=node, new_primary=new):
                src = self.settings.node(new)
                return _outcome(await self.mysql.rejoin(node, src.host, src.port, timeout))
            case p.Hook(phase=phase, context=context, required=required):
                if self.hooks is None:
                    return Outcome(True, False, "no hook runner")
                if not required:  # only a veto (pre_failover) may delay a plan
                    self._in_background(self.hooks.run(phase, dict(context)), f"hook:{phase}")
                    return Outcome(True, False, f"{phase} hook started in the background")
                result = await self.hooks.run(phase, dict(context))
                return Outcome(result.ok or not result.ran, result.ran, describe_hook(result))
            case p.Notify():
                self._notify(action, plan, timings)
                return Outcome(True, False, "alert sent to the notifier")
        raise TypeError(f"unknown action {action!r}")

    def notify(self, action: p.Notify, plan: p.Plan) -> None:
        """An alert outside a running plan (halts, refusals): never blocks. A halt also runs
        the ``on_halt`` hook, in the background."""
        self._notify(action, plan, {})
        if action.kind.halts and self.hooks is not None and self.settings.hooks.on_halt:
            context = {
                "kind": action.kind.value,
                "node": action.node or "",
                "reason": action.reason,
            }
            self._in_background(self.hooks.run("on_halt", context), "hook:on_halt")

    def _in_background(self, job: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(job, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _notify(self, action: p.Notify, plan: p.Plan, timings: dict[str, float]) -> None:
        sections = list(action.sections)
        if plan.kind in (p.PlanKind.FAILOVER, p.PlanKind.SWITCHOVER) and timings:
            lines = [f"{name:<12} +{seconds:.3f} s" for name, seconds in timings.items()]
            sections.append(("timings (from the decision)", "\n".join(lines)))
            sections.append(("topology after", topology_text(self._view())))
        alert = Alert(
            action.kind.value,
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
                kind=action.kind,
                summary=action.summary,
                reason=action.reason,
                mail="off",
            )


def _outcome(result) -> Outcome:  # ActionResult from actions/mysql.py
    return Outcome(result.ok, result.changed, result.reason)


def _target(action: p.Action) -> str | None:
    for attr in ("node",):
        if hasattr(action, attr):
            return getattr(action, attr)
    if isinstance(action, p.Repoint):
        return ",".join(action.nodes)
    return None


def _crash_for_test(log: JsonLog, after: str) -> None:
    import os
    import signal

    log.emit("fault_injected", None, "error", after=after)
    os.kill(os.getpid(), signal.SIGKILL)
