"""The drill: run the controller in-process, drive a load, inject a fault, measure, restore.

One ``Drill`` owns one in-process ``Runtime`` (the same probes, decision task and executor as
``hacontrol run``) whose JSON log lines are captured with their monotonic time, so the
controller's own events (DeadPrimary, Promote, Route) and the clients' successes are on one
clock. Each run:

1. waits for a healthy, idle cluster; starts a writer and a reader through the router;
2. injects the fault on the current primary and notes the time;
3. waits for the failover (or switchover) plan to finish and for writes and reads to flow again;
   a frozen primary is thawed and a partition healed once the plan finished;
4. measures, and checks every acknowledged id on the new primary, read from it directly;
5. restores: the old primary restarted (kill) and rejoined by the controller as a replica
   (rebuilt first if it came back with errant transactions, sandbox only), then ``ack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hacontrol.drill import report
from hacontrol.drill.faults import FaultError, Faults
from hacontrol.drill.load import Access, LogCapture, ReadLoad, WriteLoad, ensure_table, present_ids
from hacontrol.events import OperatorCommand
from hacontrol.jsonlog import JsonLog
from hacontrol.sandbox.netns import CONTROLLER_HOST
from hacontrol.service import Runtime, secrets_of
from hacontrol.settings import Settings
from hacontrol.view import Health

NETWORK_FAULTS = ("partition-primary", "partition-controller", "flap", "degrade")
"""Faults on the sandbox's own network (``sandbox up --netns``)."""
STEADY_FAULTS = ("partition-controller", "flap", "degrade")
"""Faults held for ``DrillPlan.hold`` seconds that must not fail over (``flap``: once at most)."""
FAULTS = ("kill", "freeze", "switchover", "partition", *NETWORK_FAULTS)
LEADER_FAULTS = ("kill-leader", "freeze-leader", "kill-leader-and-primary")
"""A fleet's faults (``--controllers N``, ``drill.fleet``): on the leading controller."""
FLAP_STEPS = 6
DIRECT_IDS = 500_000_000
"""Offset of the ids the client on the old primary's own host writes (partition-primary)."""
ACK_IN_FLIGHT = 0.05
"""An acknowledgement that left the old primary before the cut may arrive this much later."""
Progress = Callable[[str], None]


class DrillTimeout(Exception):
    pass


@dataclass
class _Run:
    """What one run knows while it runs."""

    old: str
    fault: str
    fault_at: float = 0.0
    fault_wall: float = 0.0
    healed_at: float | None = None
    injected: bool = False
    error: str | None = None


@dataclass(frozen=True)
class DrillPlan:
    fault: str
    runs: int = 1
    period: float = 0.01
    """Seconds between two writes (and two reads)."""
    warmup_ops: int = 50
    """Acknowledged writes and reads before the fault."""
    settle_ops: int = 20
    """Successful writes and reads after the plan finished, to call the run complete."""
    healthy_timeout: float = 60.0
    failover_timeout: float = 45.0
    resume_timeout: float = 30.0
    restore_timeout: float = 120.0
    hold: float = 20.0
    """Seconds a steady fault (partition-controller, flap, degrade) lasts."""
    flap_period: float = 0.3
    """A flapping primary's links go down and up every this many seconds."""
    loss: float = 20.0
    """Percent of packets a degraded primary's links lose."""
    delay_ms: float = 0.0
    """Delay added to them each way (tc netem; 0 when the kernel lacks it)."""

    def __post_init__(self) -> None:
        if self.fault not in (*FAULTS, *LEADER_FAULTS):
            choices = ", ".join((*FAULTS, *LEADER_FAULTS))
            raise ValueError(f"fault must be one of {choices}, got {self.fault!r}")
        if self.runs < 1:
            raise ValueError("runs must be at least 1")


async def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02
) -> Any:
    """``predicate()``'s first true value (awaited when it is awaitable), asked every
    ``every`` seconds; DrillTimeout naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DrillTimeout(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


class Reporting(Protocol):
    progress: Progress
    on_result: Callable[[report.RunResult], None]


async def each_run(
    plan: DrillPlan,
    wait_healthy: Callable[[], Awaitable[object]],
    one_run: Callable[[int], Awaitable[report.RunResult]],
    keep: Callable[[report.RunResult], None],
    reporting: Reporting,
) -> None:
    """The runs, in order, each on a healthy cluster; none after a run that did not restore."""
    for index in range(1, plan.runs + 1):
        if index > 1:
            await wait_healthy()
        result = await one_run(index)
        keep(result)
        reporting.on_result(result)
        if not result.restored:
            reporting.progress("the cluster was not restored: no further run")
            break


async def attempt(job: Awaitable[object], progress: Progress) -> str | None:
    """Run a drill; the error that stopped it (a timeout, a fault that failed), or None."""
    try:
        await job
    except (DrillTimeout, FaultError, OSError) as exc:
        progress(f"ERROR: {exc}")
        return str(exc)
    return None


def write_figures(
    path: Path,
    runs: list[report.RunResult],
    used: dict[str, Any],
    machine: dict[str, Any],
    failure: str | None,
    seconds: float,
) -> None:
    """What ``--json FILE`` gets: every figure, the settings used, the machine, the error."""
    doc = report.document(runs, used, machine)
    doc["error"] = failure
    doc["seconds"] = round(seconds, 1)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def settings_summary(settings: Settings) -> dict[str, Any]:
    """The settings that shape the figures, for the report."""
    return {
        "probes.interval": settings.probes.interval,
        "probes.timeout": settings.probes.timeout,
        "probes.failure_threshold": settings.probes.failure_threshold,
        "failover.io_stall": settings.failover.io_stall,
        "failover.apply_timeout": settings.failover.apply_timeout,
        "failover.action_timeout": settings.failover.action_timeout,
        "router.kind": settings.router.kind,
    }


class Drill:
    def __init__(
        self,
        settings: Settings,
        access: Access,
        faults: Faults,
        plan: DrillPlan,
        *,
        progress: Progress = lambda line: None,
        on_result: Callable[[report.RunResult], None] = lambda result: None,
        acknowledge_block: bool = False,
    ) -> None:
        self.settings = settings
        self.access = access
        self.faults = faults
        self.plan = plan
        self.progress = progress
        self.on_result = on_result
        self.capture = LogCapture()
        log = JsonLog(settings.cluster.name, stream=self.capture, secrets=secrets_of(settings))
        self.runtime = Runtime(settings, log, acknowledge_block=acknowledge_block)
        if (rebuilder := faults.rebuilder(settings)) is not None:
            self.runtime.executor.rebuilder = rebuilder
        self.results: list[report.RunResult] = []

    # -- the whole drill -----------------------------------------------------------------------

    async def run(self) -> list[report.RunResult]:
        async with self.runtime:
            self.progress("controller started in-process; waiting for a healthy cluster")
            await self.wait_healthy()
            state = self.runtime.controller.state
            if state.halt is not None:
                raise FaultError(f"the controller is halted: {state.halt.reason}; fix and ack")
            await ensure_table(self.access)
            await each_run(self.plan, self.wait_healthy, self.one_run, self.results.append, self)
        return self.results

    def healthy(self) -> bool:
        controller = self.runtime.controller
        view, state = controller.view, controller.state
        primary = view.primary
        membership = view.router.membership
        return bool(
            primary is not None
            and view.quorum.ok
            and not view.problems
            and all(n.health is Health.HEALTHY for n in view.nodes.values())
            # Past the start-up grace: a fault right after the start would measure the grace.
            and all(n.probes >= self.settings.probes.failure_threshold for n in view.nodes.values())
            and all(view.sources.get(n) == primary for n in view.nodes if n != primary)
            and (
                self.settings.router.kind == "none"
                or (membership and membership.writers == {primary})
            )
            and controller.running_plan is None
            and not state.quarantined
            and state.halt is None
            and (state.blocked_until is None or state.blocked_until <= time.monotonic())
        )

    async def wait_healthy(self) -> None:
        try:
            await wait_for(self.healthy, self.plan.healthy_timeout, "a healthy, idle cluster")
        except DrillTimeout:
            view = self.runtime.controller.view
            problems = "; ".join(f"{p.code.value}: {p.reason}" for p in view.problems)
            raise DrillTimeout(
                f"no healthy cluster within {self.plan.healthy_timeout:g} s "
                f"(primary {view.primary}; problems: {problems or 'none'}; "
                f"state: {self.runtime.controller.state})"
            ) from None

    # -- one run -------------------------------------------------------------------------------

    async def one_run(self, index: int) -> report.RunResult:
        fault, say = self.plan.fault, self._say(index)
        run = _Run(old=self.runtime.controller.view.primary or "", fault=fault)
        start = int(time.time() * 1000) * 1000
        writes = WriteLoad(self.access, start_id=start).start()
        reads = ReadLoad(self.access, period=self.plan.period).start()
        direct = self._direct_writer(fault, run.old, start + DIRECT_IDS)
        try:
            await self._warm_up(writes, reads)
            say(f"load flowing ({len(writes.ok_times)} writes, {len(reads.ok_times)} reads)")
            await self._fault_and_recover(run, writes, reads, say)
        except (DrillTimeout, FaultError) as exc:
            run.error = str(exc)
            say(f"ERROR: {run.error}")
        finally:
            await asyncio.gather(*(load.stop() for load in (writes, reads, direct) if load))
            if run.injected:
                self._undo_fault(fault, run.old)
        return await self._result(index, run, writes, reads, direct, say)

    async def _warm_up(self, writes: WriteLoad, reads: ReadLoad) -> None:
        ops = self.plan.warmup_ops
        await wait_for(
            lambda: len(writes.ok_times) >= ops and len(reads.ok_times) >= ops,
            15,
            "writes and reads flowing through the router",
        )

    def _direct_writer(self, fault: str, node: str, start_id: int) -> WriteLoad | None:
        """A client on the old primary's own host (its unix socket), for a partition: what it
        writes there must never be acknowledged once the node is cut off."""
        socket = self.faults.node_socket(node) if fault == "partition-primary" else None
        if socket is None:
            return None
        return WriteLoad(self.access, start_id, period=0.05, address=socket).start()

    async def _fault_and_recover(
        self, run: _Run, writes: WriteLoad, reads: ReadLoad, say: Progress
    ) -> None:
        run.fault_wall, run.fault_at = time.time(), time.monotonic()
        command = self._inject(run.fault, run.old, run.fault_at)
        run.injected = True
        say(f"{run.fault} of the primary {run.old} injected")
        if run.fault in STEADY_FAULTS:
            await self._hold(run, say)
        else:
            await self._wait_plan(run, command, say)
        self._undo_fault(run.fault, run.old)
        run.healed_at = done = time.monotonic()
        await wait_for(
            lambda: (
                writes.ok_since(done) >= self.plan.settle_ops
                and reads.ok_since(done) >= self.plan.settle_ops
            ),
            self.plan.resume_timeout,
            "writes and reads to succeed again",
        )
        say("writes and reads flow again")

    async def _wait_plan(self, run: _Run, command: asyncio.Task[Any] | None, say: Progress) -> None:
        what = "switchover" if run.fault == "switchover" else "failover"
        finished = await wait_for(
            lambda: report.finished_plan(self.capture.records, run.fault_at),
            self.plan.failover_timeout,
            f"the {what} plan to finish",
        )
        if command is not None:
            answer = await command
            if not answer.ok:
                raise FaultError(f"switchover refused or failed: {answer.message}")
        say(
            f"{finished['kind']} finished (ok={finished['ok']}) after "
            f"{finished['_mono'] - run.fault_at:.3f} s: {finished['reason']}"
        )
        if not finished["ok"]:
            raise FaultError(f"{finished['kind']} failed: {finished['reason']}")

    async def _hold(self, run: _Run, say: Progress) -> None:
        """A fault that must not cause a failover (or at most one: ``flap``), held for
        ``plan.hold`` seconds; a flap toggles the primary's links meanwhile."""
        if run.fault == "flap":
            await self._flap(run.old)
        else:
            await asyncio.sleep(self.plan.hold)
        failovers = report.plans_started(self.capture.records, run.fault_at, "failover")
        say(f"{run.fault} held {self.plan.hold:g} s: {len(failovers)} failover(s)")
        allowed = 1 if run.fault == "flap" else 0
        if len(failovers) > allowed:
            raise FaultError(
                f"{len(failovers)} failovers during {run.fault} (at most {allowed}): "
                + "; ".join(f["reason"] for f in failovers)
            )

    async def _flap(self, node: str) -> None:
        """The primary's links down and up for ``hold`` seconds: up ``flap_period`` each time,
        down 1 to 6 times as long in turn (0.3 to 1.8 s by default), so that some cuts are
        shorter and some longer than it takes to confirm a lost primary."""
        end = time.monotonic() + self.plan.hold
        cuts = 0
        while time.monotonic() < end:
            self.faults.cut(((node,),))
            await asyncio.sleep(self.plan.flap_period * (1 + cuts % FLAP_STEPS))
            self.faults.heal_network()
            cuts += 1
            await asyncio.sleep(self.plan.flap_period)

    async def _result(
        self,
        index: int,
        run: _Run,
        writes: WriteLoad,
        reads: ReadLoad,
        direct: WriteLoad | None,
        say: Progress,
    ) -> report.RunResult:
        records, at = self.capture.records, run.fault_at
        new = report.promoted_node(records, at) if run.injected else None
        figures = report.log_figures(records, at) if run.injected else {}
        end = figures.get("plan_finished")
        until = at + end if end is not None else run.healed_at
        figures["write_outage"] = (
            report.outage(writes.ok_times, at, until) if run.injected else None
        )
        figures["read_outage"] = report.outage(reads.ok_times, at, until) if run.injected else None
        lost, isolated = await self._check_writes(run, new, writes, direct, say)
        if run.fault in STEADY_FAULTS and run.injected and new is None:
            await self._converge(run, say)
        restore = await self._restore(run.fault, run.old, new, run.injected, say)
        counts = dict(
            writes_acknowledged=len(writes.acknowledged)
            + len(direct.acknowledged if direct else ()),
            reads_ok=len(reads.ok_times),
            write_errors=writes.error_counts(),
            read_errors=reads.error_counts(),
            plans=len(report.plans_started(records, at)) if run.injected else 0,
            failovers=len(report.plans_started(records, at, "failover")) if run.injected else 0,
            isolated_acks=isolated,
            steps=report.plan_steps(records, at) if run.injected else (),
        )
        return report.run_result(index, run, new, figures, lost, restore, **counts)

    async def _check_writes(
        self, run: _Run, new: str | None, writes: WriteLoad, direct: WriteLoad | None, say: Progress
    ) -> tuple[list[int], int | None]:
        """Acknowledged ids missing where they must be (the new primary after a failover, the
        primary otherwise), and the writes the isolated old primary acknowledged after the
        fault (a client on its own host)."""
        if not run.injected:
            return [], None
        expected_failover = run.fault not in STEADY_FAULTS and run.fault != "flap"
        if expected_failover and (new is None or new == run.old):
            run.error = run.error or f"no new primary after the {run.fault}"
            return [], None
        holder = new or self.runtime.controller.view.primary or run.old
        acked = [*writes.acknowledged, *(direct.acknowledged if direct else ())]
        lost: list[int] = []
        try:
            lost = await self._lost(acked, writes.start_id, holder)
        except Exception as exc:  # reported, never hidden
            run.error = run.error or f"could not read the acknowledged ids on {holder}: {exc}"
        if lost:
            say(f"LOST {len(lost)} acknowledged writes: {lost[:20]}")
        isolated = None
        if direct is not None:
            isolated = sum(1 for t in direct.ok_times if t > run.fault_at + ACK_IN_FLIGHT)
            say(f"writes acknowledged by the cut-off old primary {run.old}: {isolated}")
            if isolated:
                run.error = run.error or f"the cut-off {run.old} acknowledged {isolated} writes"
        return lost, isolated

    async def _converge(self, run: _Run, say: Progress) -> None:
        """After a fault that must change nothing: the cluster healthy again, same primary."""
        try:
            await self.wait_healthy()
        except DrillTimeout as exc:
            run.error = run.error or str(exc)
            return
        now = self.runtime.controller.view.primary
        if now != run.old and run.fault != "flap":
            run.error = run.error or f"the primary changed from {run.old} to {now}"
        say(f"converged: primary {now}, every node healthy")

    def _say(self, index: int) -> Callable[[str], None]:
        total = self.plan.runs

        def say(line: str) -> None:
            self.progress(f"run {index}/{total}: {line}")

        return say

    def _inject(self, fault: str, node: str, at: float) -> asyncio.Task[Any] | None:
        match fault:
            case "kill":
                self.faults.kill(node)
            case "freeze":
                self.faults.freeze(node)
            case "partition":
                self.faults.partition(node)
            case "partition-primary":
                self.faults.cut(((node,),))
            case "partition-controller":
                self.faults.cut(((CONTROLLER_HOST, node),))
            case "degrade":
                what = self.faults.degrade(node, self.plan.loss, self.plan.delay_ms)
                self.progress(f"network: {what}")
            case "switchover":
                return asyncio.create_task(
                    self.runtime.command(OperatorCommand(at, "switchover")), name="switchover"
                )
        return None  # flap: toggled by _hold

    def _undo_fault(self, fault: str, node: str) -> None:
        """Thaw a frozen node, heal a partition; idempotent."""
        if fault == "freeze":
            with contextlib.suppress(FaultError):  # thawed already
                self.faults.thaw(node)
        elif fault == "partition":
            self.faults.heal(node)
        elif fault in NETWORK_FAULTS:
            self.faults.heal_network()

    async def _lost(self, acknowledged: list[int], low: int, holder: str) -> list[int]:
        node = self.settings.node(holder)
        socket = self.faults.node_socket(holder)
        where = socket if socket is not None else (node.host, node.port)
        present = await present_ids(self.access, where, low, max(acknowledged, default=low))
        return report.lost_writes(acknowledged, present)

    # -- restoring -----------------------------------------------------------------------------

    def _rejoined(self, old: str, new: str) -> bool:
        controller = self.runtime.controller
        view, state = controller.view, controller.state
        node = view.nodes[old]
        return (
            view.primary == new
            and view.sources.get(old) == new
            and node.health is Health.HEALTHY
            and old not in state.quarantined
        )

    async def _rebuild(self, old: str, new: str) -> str:
        """The controller's own rebuild (``hacontrol rebuild``) when it can run one; else the
        faults' way (a cluster the drill cannot rebuild says so)."""
        if self.runtime.executor.rebuilder is None:
            return await self.faults.rebuild(old, new)
        answer = await self.runtime.command(OperatorCommand(time.monotonic(), "rebuild", old))
        if not answer.ok:
            raise FaultError(f"rebuild of {old}: {answer.message}")
        plan = answer.detail.get("plan")

        def ended() -> dict[str, Any] | None:
            status = self.runtime.executor.rebuild_status
            done = status is not None and status["plan"] == plan and not status["running"]
            return status if done else None

        status = await wait_for(ended, self.plan.restore_timeout, f"the rebuild of {old}")
        if not status.get("ok"):
            raise FaultError(status.get("reason", "rebuild failed"))
        return f"{old} rebuilt by the controller from {answer.detail.get('source')} ({plan})"

    async def _restore(
        self, fault: str, old: str, new: str | None, injected: bool, say: Progress
    ) -> tuple[bool, str]:
        if not injected:
            return True, "nothing injected"
        if (new is None or new == old) and fault in STEADY_FAULTS:
            return True, f"nothing to restore: {old} stayed the primary"
        if new is None or new == old:
            if fault == "freeze":
                return False, f"no promotion happened; {old} thawed and left as it is"
            return False, f"no promotion happened; {old} left as it is"
        steps: list[str] = []
        try:
            if fault == "kill":
                say(f"restarting {old}")
                await self.faults.restart(old)
                steps.append(f"{old} restarted")
            deadline = time.monotonic() + self.plan.restore_timeout
            rebuilt = False
            while not self._rejoined(old, new):
                q = self.runtime.controller.state.quarantined.get(old)
                if q is not None and q.errant and not rebuilt:
                    say(f"{old} came back with errant transactions {q.errant}; rebuilding it")
                    steps.append(f"errant transactions {q.errant}")
                    steps.append(await self._rebuild(old, new))
                    rebuilt = True
                if time.monotonic() > deadline:
                    raise DrillTimeout(
                        f"{old} did not rejoin as a healthy replica of {new} within "
                        f"{self.plan.restore_timeout:g} s"
                    )
                await asyncio.sleep(0.05)
            steps.append(f"{old} rejoined as a replica of {new}")
            say(steps[-1])
            if fault != "switchover":
                answer = await self.runtime.command(OperatorCommand(time.monotonic(), "ack"))
                if not answer.ok:
                    raise FaultError(f"ack refused: {answer.message}")
                steps.append("recovery block acknowledged")
            return True, "; ".join(steps)
        except Exception as exc:  # SandboxError, OSError ...: the run failed, say why
            say(f"ERROR restoring: {exc}")
            return False, "; ".join([*steps, f"FAILED: {exc}"])
