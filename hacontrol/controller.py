"""The single decision task: consumes the event queue in order, keeps the cluster view,
decides, and starts plans.

Every event and every derived state change is one JSON line. A failed probe of the primary or
a lost watch connection asks the probes for a fast re-probe of every node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from hacontrol.decide import decide
from hacontrol.events import (
    CommandResult,
    ConnectionLost,
    Event,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Stop,
    Tick,
)
from hacontrol.executor import Executor
from hacontrol.flavors.base import NodeStatus
from hacontrol.journal import Intent, Journal, state_from_json, state_to_json
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import Metrics
from hacontrol.model import ControllerState, Halt
from hacontrol.plan import AlertKind, Notify, Plan, PlanKind, Promote
from hacontrol.rules.commands import plan_maintenance, plan_switchover
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, Code, changes, fold, initial, with_maintenance

Reprobe = Callable[[Iterable[str]], None]


def reprobe_targets(before: ClusterView, event: Event, settings: Settings) -> frozenset[str]:
    """Nodes to probe again at once, without waiting for their next interval. Pure.

    A lost watch connection (a crash closes it) or a failed probe of the primary, while that
    failure is not yet confirmed, sends every node to be probed again: the primary to confirm,
    the replicas because their IO threads saw the same closed connection at the same moment.
    """
    every = frozenset(before.nodes)
    if isinstance(event, ConnectionLost) and event.node in before.nodes:
        return every
    if isinstance(event, ProbeResult) and not event.ok and event.node == before.primary:
        failures = before.nodes[event.node].failures + 1
        if failures < settings.probes.failure_threshold:
            return every
    return frozenset()


class Controller:
    """The single decision task. It alone decides; the executor it starts alone acts.

    After every event: fold it into the view, log what changed, then, when no plan is running,
    ``decide`` and start the plan (one at a time, in its own task, so events keep flowing into
    the view meanwhile). A plan's result comes back as a PlanFinished event.
    """

    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        queue: asyncio.Queue[Event],
        *,
        reprobe: Reprobe = lambda nodes: None,
        executor: Executor | None = None,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        acknowledge_block: bool = False,
        metrics: Metrics | None = None,
        paused: bool = False,
    ) -> None:
        self.settings = settings
        self.log = log
        self.queue = queue
        self.view = initial(settings)
        self.executor = executor
        self.journal = journal
        self._reprobe = reprobe
        self._clock = clock
        self._wall = wall_clock
        self.state = ControllerState(started_at=clock())
        self._resume: Intent | None = None
        self._running: asyncio.Task[None] | None = None
        self._current: str | None = None
        self._stopping = False
        """The running plan's id, until its PlanFinished is handled (not when its task ends:
        events queued before its result must not start another plan on stale state)."""
        self._waiting: dict[str, OperatorCommand] = {}
        self._deferred: list[OperatorCommand] = []
        self._plans: dict[str, Plan] = {}
        # After a plan, decide again only on fresh facts: every node and the router probed
        # after it finished (bounded), or the same plan is re-made from the stale view.
        self._settle: set[str] = set()
        self._settle_since = 0.0
        self._settle_until = 0.0
        self.metrics = metrics
        self._primary_failing_since: float | None = None
        self._detect_seconds: dict[str, float | None] = {}
        self._last_logged: tuple[str, str] | None = None
        self.decisions: list[dict[str, object]] = []
        """The last decisions with their reasons (newest last), for status and tests."""
        if journal is not None:
            self._load_journal(journal, acknowledge_block)
        if paused and not self.state.paused:
            self._set_state(replace(self.state, paused=True))
            log.emit(
                "paused_at_start",
                None,
                "warning",
                reason="--paused: observing only until `hacontrol resume`",
            )

    def _load_journal(self, journal: Journal, acknowledge_block: bool) -> None:
        replay = journal.load()
        if replay.state is not None:
            self.state = state_from_json(replay.state, self._clock(), self._wall())
            maintenance = frozenset(replay.state.get("maintenance", ()))
            self.view = with_maintenance(self.view, maintenance, self.settings)
        if acknowledge_block and self.state.blocked_until is not None:
            self.state = replace(self.state, blocked_until=None)
            self.log.emit(
                "recovery_block_acknowledged", None, "warning", reason="--ack given at start-up"
            )
        self._resume = replay.unfinished
        if self._resume is not None:
            self.log.emit(
                "journal_unfinished",
                None,
                "warning",
                plan=self._resume.plan_id,
                rule=self._resume.plan.rule,
                done_steps=sorted(self._resume.done),
                reason="a plan began before the controller stopped; it is finished "
                "before anything new",
            )

    @property
    def running_plan(self) -> str | None:
        return self._current

    async def run(self) -> None:
        """Consume events until a Stop event; then wait for a running plan (bounded)."""
        while True:
            event = await self.queue.get()
            self.handle(event)
            if isinstance(event, Stop):
                break
        if self._running is not None and not self._running.done():
            # A plan is never abandoned halfway on a stop request (a promotion cut between
            # RESET SLAVE ALL and read_only=OFF leaves no writable node): let it finish.
            self.log.emit(
                "stop_waits_for_plan",
                None,
                "warning",
                plan=self.running_plan,
                budget_seconds=plan_budget(self.settings),
            )
            await asyncio.wait([self._running], timeout=plan_budget(self.settings))
        # Its outcome still counts (a failover that promoted nothing leaves no quarantine);
        # nothing new starts: stopping, the deferred commands are refused below.
        self._stopping = True
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if isinstance(event, PlanFinished):
                self.handle(event)
        self.refuse_pending("the controller is stopping; a plan's outcome is in the log")

    def handle(self, event: Event) -> None:
        log_event(self.log, event)
        if self.metrics is not None:
            self.metrics.observe_loop(max(0.0, self._clock() - event.at), self.queue.qsize())
            if isinstance(event, ProbeResult):
                self.metrics.observe_probe(event)
        before = self.view
        self.view = fold(before, event, self.settings)
        if self.metrics is not None:
            self.metrics.observe_view(self.view)
        if isinstance(event, ProbeResult | RouterProbeResult) and event.at >= self._settle_since:
            self._settle.discard(event.node if isinstance(event, ProbeResult) else "router")
        if isinstance(event, ProbeResult) and event.node == before.primary:
            if event.ok:
                self._primary_failing_since = None
            elif self._primary_failing_since is None:
                self._primary_failing_since = event.at
        for change in changes(before, self.view):
            self.log.emit(change.event, change.node, change.level, **change.fields)
        if isinstance(event, PlanFinished):
            self._finished(event)
        if isinstance(event, OperatorCommand):
            self._command(event)
        elif isinstance(event, PlanFinished):
            self._run_deferred()
        if targets := reprobe_targets(before, event, self.settings):
            self.log.emit(
                "fast_reprobe",
                getattr(event, "node", None),
                "info",
                nodes=sorted(targets),
                cause=type(event).__name__,
            )
            self._reprobe(targets)
        if not isinstance(event, Stop):
            self._decide()

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self) -> None:
        if self.executor is None or self._current is not None or self._stopping:
            return
        now = self._clock()
        if self._settle and now < self._settle_until and not self.view.has(Code.DEAD_PRIMARY):
            return  # a dead primary never waits: the failover plan reads what it needs fresh
        decision = decide(self.view, self.state, self.settings, now)
        plan = decision.plan
        if (
            self._resume is not None
            and plan.rule != "StartupGrace"
            and self.view.quorum.ok
            and not self.state.paused
        ):
            intent, self._resume = self._resume, None
            self._resume_intent(intent, decision.plan)
            return
        self._set_state(decision.state)
        self._log_decision(plan)
        if not plan.actions:
            return
        if not plan.changes_cluster:  # alerts only: hand them to the notifier now
            for action in plan.actions:
                assert isinstance(action, Notify)
                self.executor.notify(action, plan, on_halt=action.kind.halts)
            return
        self._start(f"{plan.kind}-{int(self._wall() * 1000)}", plan)

    def _resume_intent(self, intent: Intent, now_decided: Plan) -> None:
        """Finish a plan the journal says began, if the cluster still calls for it.

        Past its Promote (the point of no return) a plan is always finished. Before it: a
        failover goes on only if the same node is still confirmed dead; a switchover is rolled
        back; otherwise the plan is abandoned and the routing reconciles from the view.
        """
        plan = intent.plan
        promote_at = next(
            (i for i, a in enumerate(plan.actions) if isinstance(a, Promote)), len(plan.actions)
        )
        dead = next((a.old_primary for a in plan.actions if isinstance(a, Promote)), None)
        still_dead = self.view.has(Code.DEAD_PRIMARY) and self.view.primary == dead
        promoting = promote_at in intent.done or promote_at in intent.started
        if promoting or (plan.kind is PlanKind.FAILOVER and still_dead):
            if promote_at in intent.started and promote_at not in intent.done:
                # The crash came inside this Promote: a half-done promotion is ours to finish.
                actions = list(plan.actions)
                actions[promote_at] = replace(actions[promote_at], finish_half_done=True)
                plan = replace(plan, actions=tuple(actions))
            self._log_decision(intent.remaining(), force=True)
            self._start(intent.plan_id, plan, skip=intent.done, resumed=True)
            return
        if self.journal is not None:
            self.journal.end(intent.plan_id, False, "not resumed after a controller restart")
        if plan.rollback:
            rollback = Plan(
                plan.rule,
                f"rolling back a {plan.kind} cut before promotion by a controller restart: "
                f"{plan.reason}",
                plan.rollback,
                PlanKind.ROLLBACK,
            )
            self._log_decision(rollback, force=True)
            self._start(f"{intent.plan_id}-rollback", rollback)
            self._drop_quarantine(dead)
            return
        reason = (
            f"abandoned after a controller restart: {now_decided.rule} now ({now_decided.reason})"
        )
        self.log.emit("plan_abandoned", dead, "warning", plan=intent.plan_id, reason=reason)
        self._drop_quarantine(dead)

    def _drop_quarantine(self, dead: str | None) -> None:
        """A failover that promoted nothing: the dead primary is no "old primary"."""
        if dead is not None and dead in self.state.quarantined:
            quarantined = {k: v for k, v in self.state.quarantined.items() if k != dead}
            self._set_state(replace(self.state, quarantined=quarantined, blocked_until=None))

    def _start(
        self, plan_id: str, plan: Plan, *, skip: frozenset[int] = frozenset(), resumed: bool = False
    ) -> None:
        assert self.executor is not None
        executor = self.executor
        self.log.emit(
            "plan_started",
            None,
            "warning" if plan.kind is PlanKind.FAILOVER else "info",
            plan=plan_id,
            rule=plan.rule,
            kind=plan.kind,
            reason=plan.reason,
            actions=[type(a).__name__ for i, a in enumerate(plan.actions) if i not in skip],
        )

        async def execute() -> None:
            try:
                result = await executor.run(plan_id, plan, skip=skip, resumed=resumed)
            except Exception as exc:  # the plan must always report back (journal I/O, a bug)
                result = PlanFinished(
                    self._clock(),
                    plan_id,
                    plan.rule,
                    plan.kind,
                    False,
                    f"the executor failed: {type(exc).__name__}: {exc}",
                    None,
                    (),
                    0.0,
                )
            self.queue.put_nowait(result)

        self._running = asyncio.create_task(execute(), name=f"plan:{plan_id}")
        self._current = plan_id
        self._plans[plan_id] = plan
        if plan.kind is PlanKind.FAILOVER and self._primary_failing_since is not None:
            self._detect_seconds[plan_id] = self._clock() - self._primary_failing_since

    # -- operator commands ------------------------------------------------------------------

    def _command(self, cmd: OperatorCommand) -> None:
        self.log.emit("operator_command", cmd.node, "warning", command=cmd.command, on=cmd.on)
        busy = self._current is not None
        state = self.state
        now = self._clock()
        match cmd.command:
            case "ack":
                halt = state.halt
                cleared = halt is not None and halt.code == "FailoverFailed"
                self._set_state(replace(state, blocked_until=None, halt=None if cleared else halt))
                extra = f"; halt cleared: {halt.reason}" if cleared and halt else ""
                return self._reply(
                    cmd, True, f"recovery block cleared: automatic failover armed{extra}"
                )
            case "pause":
                self._set_state(replace(state, paused=True))
                return self._reply(cmd, True, "paused: observing only, no automatic change")
            case "resume":
                self._set_state(replace(state, paused=False))
                return self._reply(cmd, True, "resumed: automatic changes allowed")
            case "maintenance" | "switchover" if busy:
                # One plan at a time: the command waits for the running plan, then is planned
                # against the view as it is then (the caller's own timeout bounds the wait).
                self._deferred.append(cmd)
                self.log.emit(
                    "operator_command_deferred",
                    cmd.node,
                    "info",
                    command=cmd.command,
                    running=self.running_plan,
                )
                return None
            case "maintenance":
                planned = plan_maintenance(self.view, self.settings, cmd.node, bool(cmd.on))
                if isinstance(planned, str):
                    return self._reply(cmd, False, f"refused: {planned}")
                plan, view = planned
                self._set_view(view)
            case "switchover":
                planned = plan_switchover(self.view, state, self.settings, cmd.node, now)
                if isinstance(planned, str):
                    return self._reply(cmd, False, f"refused: {planned}")
                plan = planned
            case _:
                return self._reply(cmd, False, f"unknown command {cmd.command!r}")
        self._log_decision(plan, force=True)
        if not plan.actions:
            return self._reply(cmd, True, plan.reason)
        plan_id = f"{plan.kind}-{int(self._wall() * 1000)}"
        if cmd.reply is not None:
            self._waiting[plan_id] = cmd
        self._start(plan_id, plan)
        return None

    def _run_deferred(self) -> None:
        """Deferred commands, in order, until one starts a plan; the caller's timeout passed
        (its reply future is done): dropped, never run late."""
        while self._deferred and self._current is None and not self._stopping:
            cmd = self._deferred.pop(0)
            if cmd.reply is not None and cmd.reply.done():
                self.log.emit(
                    "operator_command_dropped",
                    cmd.node,
                    "warning",
                    command=cmd.command,
                    reason="its caller stopped waiting",
                )
                continue
            self._command(cmd)

    def refuse_pending(self, reason: str) -> None:
        """On shutdown: every command still waiting gets an answer."""
        for cmd in self._deferred:
            self._reply(cmd, False, f"refused: {reason}")
        self._deferred.clear()
        for cmd in self._waiting.values():
            self._reply(cmd, False, f"the controller stopped while running it: {reason}")

    def _reply(self, cmd: OperatorCommand, ok: bool, message: str, **detail: object) -> None:
        self.log.emit(
            "operator_answer",
            cmd.node,
            "info" if ok else "warning",
            command=cmd.command,
            ok=ok,
            message=message,
        )
        if cmd.reply is not None and not cmd.reply.done():
            cmd.reply.set_result(CommandResult(ok, message, dict(detail)))

    def _finished(self, event: PlanFinished) -> None:
        if event.plan_id == self._current:
            self._current = None
        self._settle_since = self._clock()
        self._settle_until = self._settle_since + 2 * self.settings.probes.interval
        # Fresh facts are needed about what the plan touched: the router after a router
        # change, the nodes it acted on after a node action.
        plan = self._plans.get(event.plan_id)
        touched = {n for n in event.touched if n in self.view.nodes}
        if event.routed:
            touched.add("router")
        if plan is not None and plan.kind is PlanKind.FAILOVER:
            touched |= set(self.view.nodes)
        if self.settings.router.kind == "none":
            touched.discard("router")
        self._settle = touched
        if self.metrics is not None:
            self.metrics.observe_plan(event, self._detect_seconds.pop(event.plan_id, None))
        self.log.emit(
            "plan_finished",
            None,
            "info" if event.ok else "error",
            plan=event.plan_id,
            rule=event.rule,
            kind=event.kind,
            ok=event.ok,
            reason=event.reason,
            seconds=event.seconds,
        )
        now = self._clock()
        state = self.state
        plan = self._plans.pop(event.plan_id, None)
        if not event.ok:
            if event.kind == PlanKind.FAILOVER:
                reason = f"failover stopped: {event.reason}"
                state = replace(state, halt=Halt("FailoverFailed", reason, now))
                if event.promoted is None and plan is not None:
                    # Nothing was promoted: the dead primary is not an "old" primary, and no
                    # recovery block applies; the halt (until ack) decides what happens next.
                    dead = next(
                        (a.old_primary for a in plan.actions if isinstance(a, Promote)), None
                    )
                    quarantined = {k: v for k, v in state.quarantined.items() if k != dead}
                    state = replace(state, quarantined=quarantined, blocked_until=None)
                if self.executor is not None:
                    self.executor.notify(
                        Notify(AlertKind.HALT, None, "HALT: failover failed", reason),
                        Plan("FailoverFailed", reason, kind=PlanKind.HALT),
                        on_halt=True,
                    )
            elif event.kind == PlanKind.ROUTE:
                state = replace(state, route_retry_at=now + 2 * self.settings.probes.interval)
            elif event.kind in (PlanKind.REJOIN, PlanKind.FENCE, PlanKind.REPOINT):
                node = next((n for a in plan.actions for n in a.targets()), None) if plan else None
                if node:
                    retry = {**state.retry_at, (PlanKind(event.kind), node): now + 30.0}
                    state = replace(state, retry_at=retry)
                    if self.executor is not None:
                        self.executor.notify(
                            Notify(
                                AlertKind(f"{event.kind}_failed"),
                                node,
                                f"{event.kind} failed",
                                f"{event.reason}; retried in 30 s",
                            ),
                            Plan(event.rule, event.reason, kind=PlanKind.ALERT),
                        )
        self._set_state(state)
        if (cmd := self._waiting.pop(event.plan_id, None)) is not None:
            steps = [
                {
                    "action": s.action,
                    "target": s.node,
                    "ok": s.ok,
                    "reason": s.reason,
                    "seconds": s.seconds,
                }
                for s in event.steps
            ]
            self._reply(
                cmd,
                event.ok,
                f"{event.rule}: {event.reason}",
                plan=event.plan_id,
                seconds=event.seconds,
                steps=steps,
            )

    def _set_state(self, state: ControllerState) -> None:
        def persisted(st: ControllerState) -> tuple[object, ...]:
            return (
                st.blocked_until,
                st.last_failover_at,
                st.quarantined,
                st.paused,
            )

        before = persisted(self.state)
        self.state = state
        if self.metrics is not None:
            self.metrics.set_halt(state.halt is not None)
        if self.journal is not None and persisted(state) != before:
            self.journal.save_state(
                state_to_json(state, self.view.maintenance, self._clock(), self._wall())
            )

    def _set_view(self, view: ClusterView) -> None:
        """A view changed by a command (maintenance): persisted like the state."""
        before = self.view.maintenance
        self.view = view
        if self.journal is not None and view.maintenance != before:
            self.journal.save_state(
                state_to_json(self.state, view.maintenance, self._clock(), self._wall())
            )

    def _log_decision(self, plan: Plan, force: bool = False) -> None:
        key = (plan.rule, plan.reason)
        if not force and key == self._last_logged and not plan.actions:
            return
        self._last_logged = key
        level = "info" if plan.rule in ("Nothing", "StartupGrace") else "warning"
        record = {
            "rule": plan.rule,
            "kind": plan.kind,
            "reason": plan.reason,
            "actions": [type(a).__name__ for a in plan.actions],
        }
        self.decisions = [*self.decisions[-19:], {"at": self._wall(), **record}]
        self.log.emit("decision", None, level, **record)


def plan_budget(settings: Settings) -> float:
    """The longest a plan may take: the apply wait plus a few actions."""
    failover = settings.failover
    return failover.apply_timeout + failover.switchover_deadline + 8 * failover.action_timeout


def log_event(log: JsonLog, event: Event) -> None:
    match event:
        case ProbeResult(ok=True):
            assert event.status is not None
            log.emit(
                "probe",
                event.node,
                "debug",
                ok=True,
                rtt_ms=round((event.rtt or 0) * 1000, 2),
                **summarize(event.status),
            )
        case ProbeResult():
            log.emit("probe", event.node, "info", ok=False, error=event.error)
        case ConnectionLost():
            log.emit("connection_lost", event.node, "warning", reason=event.reason)
        case RouterProbeResult(ok=True):
            assert event.membership is not None
            log.emit(
                "router_probe",
                None,
                "debug",
                kind=event.kind,
                membership=event.membership.to_json(),
                warnings=list(event.warnings),
            )
        case RouterProbeResult():
            log.emit("router_probe", None, "warning", kind=event.kind, error=event.error)
        case Tick():
            pass  # ticks drive timers; a line each second would say nothing
        case PlanFinished() | OperatorCommand():
            pass  # logged by the controller with their outcome
        case Stop():
            log.emit("stop_requested", None, "info", reason=event.reason)


def summarize(status: NodeStatus) -> dict[str, object]:
    """The few fields of a status worth a log line."""
    out: dict[str, object] = {
        "server_id": status.server_id,
        "read_only": status.read_only,
        "gtid": status.gtid_executed,
    }
    if status.replication:
        ch = status.replication[0]
        out.update(
            source=f"{ch.source_host}:{ch.source_port}",
            io=ch.io_state.value,
            sql=ch.sql_running,
            lag=ch.seconds_behind,
            received=ch.received_gtid,
            heartbeats=ch.heartbeats_received,
        )
        if ch.last_io_errno or ch.last_sql_errno:
            out["errors"] = {
                "io": [ch.last_io_errno, ch.last_io_error],
                "sql": [ch.last_sql_errno, ch.last_sql_error],
            }
    return out
