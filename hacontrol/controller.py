"""The decision task of one cluster: a thin interpreter around ``step``.

It takes events from the queue in order, feeds each to the pure ``step`` with the clock's time,
keeps the model it returns and performs the effects: log lines, plans started in the executor
(one at a time, in their own task, whose result comes back as an event), alerts, answers to
operator commands, fast re-probes, the journal (through ``JournalLink``: records off the
loop, failures and checks as events) and the metrics (``ModelMetrics``). Every policy lives in
``step`` and the rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

from hacontrol.effects import (
    CancelPlan,
    Effect,
    EndIntent,
    Log,
    PersistState,
    RecordPlan,
    Reply,
    Reprobe,
    SendAlert,
    SetLeaseMode,
    StartPlan,
)
from hacontrol.events import CallerGone, Event, PlanFinished, Stop
from hacontrol.journal import Journal, state_from_json, state_to_json
from hacontrol.journal_link import JOURNAL_CHECK_EVERY, JournalLink
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import Metrics
from hacontrol.model import ControllerState, LeaseMode, Running
from hacontrol.model_metrics import ModelMetrics
from hacontrol.plan import Notify, Plan
from hacontrol.rules.commands import STOPPING, farewell
from hacontrol.rules.lifecycle import unreported
from hacontrol.settings import Settings
from hacontrol.status import plan_timeline
from hacontrol.step import boot, step
from hacontrol.view import ClusterView, initial


class PlanRunner(Protocol):
    """What the controller needs of the executor (``executor.Executor``; fakes in tests)."""

    async def run(
        self, plan_id: str, plan: Plan, *, skip: frozenset[int], resumed: bool
    ) -> PlanFinished: ...

    def notify(self, action: Notify, plan: Plan, *, on_halt: bool = False) -> None: ...


class Controller:
    """Feeds events to ``step`` and performs its effects. It alone decides (through ``step``);
    the executor it starts alone acts."""

    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        queue: asyncio.Queue[Event],
        *,
        reprobe: Callable[[Iterable[str]], None] = lambda nodes: None,
        executor: PlanRunner | None = None,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        acknowledge_block: bool = False,
        metrics: Metrics | None = None,
        paused: bool = False,
        journal_check_every: float = JOURNAL_CHECK_EVERY,
        lease_mode: Callable[[LeaseMode], None] = lambda mode: None,
    ) -> None:
        self.settings, self.log, self.queue = settings, log, queue
        self._lease_mode = lease_mode
        self.executor, self.journal, self.metrics = executor, journal, metrics
        self._shown = ModelMetrics(metrics, settings) if metrics is not None else None
        self._journal = (
            JournalLink(journal, log, queue, clock, journal_check_every)
            if journal is not None
            else None
        )
        self.last_failover: dict[str, Any] | None = None
        """The timeline of the last failover or switchover this process ran (status page)."""
        self._reprobe, self._clock, self._wall = reprobe, clock, wall_clock
        self._task: asyncio.Task[None] | None = None
        if self._journal is not None:
            self._journal.loop = _running_loop()
        # JournalError: not a journal (the caller says so)
        replay = self._journal.load() if self._journal is not None else None
        kept = replay.state if replay is not None else None
        self.model, effects = boot(
            initial(settings),
            settings,
            kept=None if kept is None else state_from_json(kept, clock(), wall_clock()),
            unfinished=replay.unfinished if replay is not None else None,
            acknowledge_block=acknowledge_block,
            paused=paused,
            acting=executor is not None,
            wall_offset=wall_clock() - clock(),
        )
        self._perform(effects, at_boot=True)

    # -- what status, the API and tests read -------------------------------------------------

    @property
    def view(self) -> ClusterView:
        return self.model.view

    @property
    def state(self) -> ControllerState:
        return self.model.state

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.model.decisions]

    @property
    def running_plan(self) -> str | None:
        running = self.model.running
        return running.plan_id if running is not None else None

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume events until a Stop event; then let a running plan finish (bounded), take
        in its outcome (nothing new starts), and answer every command still waiting."""
        link = self._journal
        if link is None:
            await self._consume()
            return
        link.loop = asyncio.get_running_loop()
        checks = asyncio.create_task(link.check_often(), name="journal-check")
        try:
            await self._consume()
        finally:
            checks.cancel()
            await link.journal.flushed()

    async def _consume(self) -> None:
        while True:
            event = await self.queue.get()
            self.handle(event)
            if isinstance(event, Stop):
                break
        task = self._task
        if task is not None and not task.done():
            # A plan is never abandoned halfway on a stop request (a promotion cut between
            # RESET SLAVE ALL and read_only=OFF leaves no writable node): let it finish.
            budget = {"plan": self.running_plan, "budget_seconds": plan_budget(self.settings)}
            self.log.emit("stop_waits_for_plan", None, "warning", **budget)
            await asyncio.wait([task], timeout=plan_budget(self.settings))
        while not self.queue.empty():
            self.handle(self.queue.get_nowait())
        self._perform(farewell(self.model, STOPPING))

    def handle(self, event: Event) -> None:
        now = self._clock()
        if self._shown is not None:
            self._shown.event(event, now, self.queue.qsize())
        if isinstance(event, PlanFinished):  # deferred commands run next: are they awaited?
            for cmd in self.model.deferred:
                if cmd.reply is not None and cmd.reply.done():
                    self._step(CallerGone(event.at, cmd), now)
        self._step(event, now)

    def _step(self, event: Event, now: float) -> None:
        before = self.model
        self.model, effects = step(before, event, self.settings, now)
        if self._shown is not None:
            self._shown.step(before, self.model, now)
        self._perform(effects)

    # -- effects -------------------------------------------------------------------------------

    def _perform(self, effects: Iterable[Effect], *, at_boot: bool = False) -> None:
        for effect in effects:
            match effect:
                case Log(event=name, node=node, level=level, fields=fields):
                    self.log.emit(name, node, level, **fields)
                case StartPlan(running=running):
                    self._start(running)
                case CancelPlan(plan_id=plan_id):
                    if self._task is not None and self.running_plan == plan_id:
                        self._task.cancel()
                case SendAlert(alert=alert, plan=plan, on_halt=on_halt):
                    if self.executor is not None:
                        self.executor.notify(alert, plan, on_halt=on_halt)
                case Reply(command=cmd, result=result):
                    if cmd.reply is not None and not cmd.reply.done():
                        cmd.reply.set_result(result)
                case Reprobe(nodes=nodes):
                    self._reprobe(nodes)
                case PersistState(state=kept) if self._journal is not None:
                    record = state_to_json(kept, self._clock(), self._wall())
                    self._journal.write(at_boot, self._journal.journal.save_state, record)
                case EndIntent(plan_id, reason, promoted) if self._journal is not None:
                    journal = self._journal.journal
                    self._journal.write(at_boot, journal.end, plan_id, False, reason, promoted)
                case RecordPlan(finished=finished, detect_seconds=seconds):
                    if self.metrics is not None:
                        self.metrics.observe_plan(finished, seconds)
                    timeline = plan_timeline(finished, seconds, self.model.wall_offset)
                    if timeline is not None:
                        self.last_failover = timeline
                case SetLeaseMode(mode=mode):
                    self._lease_mode(mode)

    # -- plans -----------------------------------------------------------------------------------

    def _start(self, running: Running) -> None:
        executor = self.executor
        assert executor is not None  # a model that does not act starts no plan

        async def execute() -> None:
            try:
                result = await executor.run(
                    running.plan_id, running.plan, skip=running.skip, resumed=running.resumed
                )
            except Exception as exc:  # the plan must always report back (journal I/O, a bug)
                result = unreported(running, f"{type(exc).__name__}: {exc}", self._clock())
            except asyncio.CancelledError:
                reason = (self.model.running.preempted if self.model.running else None) or ""
                if not reason:
                    raise  # not ours: the runtime is shutting down
                result = replace(unreported(running, reason, self._clock()), reason=reason)
            self.queue.put_nowait(result)

        self._task = asyncio.create_task(execute(), name=f"plan:{running.plan_id}")


def plan_budget(settings: Settings) -> float:
    """The longest a plan may take: the apply wait plus a few actions."""
    failover = settings.failover
    return failover.apply_timeout + failover.switchover_deadline + 8 * failover.action_timeout


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
