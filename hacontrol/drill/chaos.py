"""The chaos drill: random faults from the whole catalogue, one after another, under a steady
writer and reader through the router, with an independent checker watching.

A seeded ``random.Random`` draws every choice (the pause before a fault, its kind, which
replica, how long a node stays down or frozen, when the controller is killed in a plan), in
the same order on every run: ``--seed`` replays the same sequence of faults. Roles are drawn,
not names ("a replica", "the primary"), so a replay hits the same roles.

Each fault is undone by the drill the way an operator or a supervisor would (a killed node is
restarted, a frozen one thawed, the router and the controller restarted) and the drill then
waits, bounded, until the cluster has converged (``Checker.convergence`` and an idle
controller) before the next one: never more broken at once than the cluster can survive.
While waiting it does what an operator does after a failover: a node quarantined with errant
transactions is rebuilt (``rebuild.py``), a halt is acknowledged after it is recorded.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from hacontrol.drill.checker import Checker
from hacontrol.drill.controller_proc import ControllerProcess
from hacontrol.drill.errors import FaultError
from hacontrol.drill.load import Access, ReadLoad, WriteLoad, ensure_table
from hacontrol.drill.rebuild import rebuild_sandbox_node
from hacontrol.drill.report import outage

CATALOGUE: dict[str, int] = {
    "kill-primary": 3,
    "freeze-primary": 2,
    "restart-primary": 1,
    "kill-replica": 2,
    "freeze-replica": 2,
    "restart-replica": 1,
    "kill-router": 1,
    "restart-router": 1,
    "kill-controller": 1,
    "kill-controller-mid-plan": 2,
    "restart-controller": 1,
    "switchover": 2,
    "maintenance": 1,
}
"""Fault kinds and their weights in the draw."""
READ_ONLY = "--read-only=ON"
HALT_GRACE = 5.0
"""Seconds a halt stands before the drill, as the operator, acknowledges it (some clear)."""
HALT_REACK = 30.0
"""Seconds before the same halt is acknowledged again."""
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ChaosPlan:
    duration: float
    seed: int
    gap: tuple[float, float] = (1.0, 6.0)
    """Seconds of calm (converged, under load) before the next fault."""
    down: tuple[float, float] = (1.0, 8.0)
    """Seconds a killed or frozen replica, or a killed router, stays down."""
    failover_timeout: float = 45.0
    converge_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError("--duration must be positive")


@dataclass
class FaultRecord:
    index: int
    kind: str
    target: str
    at: float
    """Seconds since the chaos began."""
    notes: list[str] = field(default_factory=list)
    converged_after: float | None = None
    window: tuple[float, float] = (0.0, 0.0)
    """Monotonic start of the fault and time of convergence (outages are measured in it)."""
    write_outage: float | None = None
    read_outage: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "target": self.target,
            "at": round(self.at, 2),
            "converged_after": _round(self.converged_after),
            "write_outage": _round(self.write_outage),
            "read_outage": _round(self.read_outage),
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def start_option(latest: Mapping[str, bool | None], node: str, down: Set[str]) -> str | None:
    """How to start ``node`` again, from the checker's latest read_only samples: read-only
    when another node is writable; writable when every other node is known read-only (or its
    server is down); None when another running node's sample is unknown (``None``: a read
    that timed out under load): that may be a writer, so ask again, never guess "no writer"
    (it would start a second one)."""
    others = {n: ro for n, ro in latest.items() if n != node and n not in down}
    if any(ro is False for ro in others.values()):
        return READ_ONLY
    if any(ro is None for ro in others.values()):
        return None
    return "--read-only=OFF"


class Chaos:
    def __init__(
        self,
        sandbox: Any,  # hacontrol.sandbox.Sandbox
        controller: ControllerProcess,
        checker: Checker,
        access: Access,
        plan: ChaosPlan,
        progress: Progress = lambda line: None,
    ) -> None:
        self.sandbox = sandbox
        self.controller = controller
        self.checker = checker
        self.access = access
        self.plan = plan
        self.progress = progress
        self.rng = random.Random(plan.seed)
        self.records: list[FaultRecord] = []
        self.halts: list[str] = []
        self.rebuilt: list[str] = []
        self.unconverged: str | None = None
        self.t0 = time.monotonic()
        self.writes: WriteLoad | None = None
        self.reads: ReadLoad | None = None
        self._rebuilt_for: set[tuple[int, str]] = set()
        self._acked: dict[str, float] = {}
        """Halt reason -> when the drill acknowledged it (once per halt, not at every poll)."""

    # -- roles, as the checker sees them --------------------------------------------------------

    def primary(self) -> str | None:
        writable = [n for n, ro in self.checker.latest.items() if ro is False]
        return writable[0] if len(writable) == 1 else None

    def replicas(self) -> list[str]:
        primary = self.primary()
        return sorted(n.name for n in self.checker.nodes if n.name != primary)

    def _writable_other_than(self, node: str) -> bool:
        return any(ro is False for n, ro in self.checker.latest.items() if n != node)

    # -- the whole run --------------------------------------------------------------------------

    async def run(self) -> None:
        await ensure_table(self.access)
        start_id = int(time.time() * 1000) * 1000
        self.writes = WriteLoad(self.access, start_id=start_id).start()
        self.reads = ReadLoad(self.access).start()
        try:
            await self.settle(None)
            if self.unconverged:
                return
            self.t0 = time.monotonic()
            while time.monotonic() - self.t0 < self.plan.duration:
                await asyncio.sleep(self.rng.uniform(*self.plan.gap))
                kinds, weights = zip(*CATALOGUE.items(), strict=True)
                kind = self.rng.choices(kinds, weights)[0]
                record = await self.one(len(self.records) + 1, kind)
                self.records.append(record)
                if self.unconverged:
                    self.progress(f"not converged after fault {record.index}: stopping")
                    break
        finally:
            await asyncio.sleep(1.0)  # successes after the last window
            await self.writes.stop()
            await self.reads.stop()
            self._outages()

    async def one(self, index: int, kind: str) -> FaultRecord:
        started = time.monotonic()
        record = FaultRecord(index, kind, "", started - self.t0)
        try:
            await self.inject(record)
        except (FaultError, OSError) as exc:  # the sandbox's errors too (SandboxError)
            record.notes.append(f"fault error: {exc}")
        except Exception as exc:  # a sandbox error must not end the soak: recorded
            record.notes.append(f"fault error: {type(exc).__name__}: {exc}")
        await self.settle(record)
        record.window = (started, time.monotonic())
        self.progress(
            f"fault {index} {kind} {record.target}: converged after "
            f"{_round(record.converged_after)} s"
            + (f" ({'; '.join(record.notes)})" if record.notes else "")
        )
        return record

    def _outages(self) -> None:
        """The longest time without an acknowledged write (a successful read) that overlaps
        each fault's window; measured once the load stopped, so that a success after the
        window always exists."""
        assert self.writes is not None and self.reads is not None
        for record in self.records:
            if record.converged_after is not None:
                record.write_outage = outage(self.writes.ok_times, *record.window)
                record.read_outage = outage(self.reads.ok_times, *record.window)

    # -- faults ---------------------------------------------------------------------------------

    async def inject(self, record: FaultRecord) -> None:
        kind = record.kind
        if kind.endswith("-primary"):
            record.target = self.primary() or ""
            if not record.target:
                record.notes.append("no single writable node: skipped")
                return
        elif kind.endswith("-replica") or kind == "maintenance":
            replicas = self.replicas()
            record.target = replicas[self.rng.randrange(len(replicas))]
        else:
            record.target = kind.split("-")[-1] if "-" in kind else "cluster"
        action = getattr(self, "_" + kind.replace("-", "_"))
        await action(record)

    async def _kill_primary(self, record: FaultRecord) -> None:
        old = record.target
        self.sandbox.kill_node(old, signal.SIGKILL)
        await self._await_new_writer(old, record)
        await self._start_node(old, record)

    async def _freeze_primary(self, record: FaultRecord) -> None:
        old = record.target
        self.sandbox.kill_node(old, signal.SIGSTOP)
        try:
            await self._await_new_writer(old, record)
        finally:
            self.sandbox.kill_node(old, signal.SIGCONT)

    async def _restart_primary(self, record: FaultRecord) -> None:
        await self._stop_node(record.target)
        await self._start_node(record.target, record)

    async def _kill_replica(self, record: FaultRecord) -> None:
        self.sandbox.kill_node(record.target, signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(*self.plan.down))
        await self._start_node(record.target, record)

    async def _freeze_replica(self, record: FaultRecord) -> None:
        self.sandbox.kill_node(record.target, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.rng.uniform(*self.plan.down))
        finally:
            self.sandbox.kill_node(record.target, signal.SIGCONT)

    async def _restart_replica(self, record: FaultRecord) -> None:
        await self._stop_node(record.target)
        await self._start_node(record.target, record)

    async def _kill_router(self, record: FaultRecord) -> None:
        self.sandbox.kill_router(signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.5, 5.0))
        await self.sandbox.start_router()

    async def _restart_router(self, record: FaultRecord) -> None:
        self.sandbox.kill_router(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self.sandbox.router_pid() is not None:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if self.sandbox.router_pid() is not None:
            self.sandbox.kill_router(signal.SIGKILL)
        await self.sandbox.start_router()

    async def _kill_controller(self, record: FaultRecord) -> None:
        await self.controller.stop(signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.5, 5.0))
        await self.controller.start()

    async def _restart_controller(self, record: FaultRecord) -> None:
        await self.controller.stop(signal.SIGTERM)
        await self.controller.start()

    async def _kill_controller_mid_plan(self, record: FaultRecord) -> None:
        """A switchover or a primary's death, and the controller killed while it acts."""
        trigger = self.rng.choice(["switchover", "kill-primary"])
        # a switchover's plan lasts about 0.5 s, a failover's from its start about 0.3 s
        delay = self.rng.uniform(0.0, 1.0) * (0.6 if trigger == "switchover" else 0.5)
        old = self.primary()
        record.notes.append(f"{trigger} of {old}, controller killed {delay:.2f} s later")
        if old is None:
            return
        if trigger == "switchover":
            command = asyncio.create_task(self.controller.post("/switchover"))
        else:
            self.sandbox.kill_node(old, signal.SIGKILL)
            # killed once the failover plan runs: detection takes a few probe intervals
            await self._await_plan(timeout=self.plan.failover_timeout)
        await asyncio.sleep(delay)
        running = await self._plan_running()
        await self.controller.stop(signal.SIGKILL)
        record.notes.append(f"killed during plan {running}" if running else "killed between plans")
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await self.controller.start()
        if trigger == "switchover":
            answer = await command
            record.notes.append(f"switchover answer: {answer.get('message', '')[:120]}")
        else:
            await self._await_new_writer(old, record)
            await self._start_node(old, record)

    async def _switchover(self, record: FaultRecord) -> None:
        record.target = self.primary() or ""
        answer = await self.controller.post("/switchover")
        if not answer.get("ok"):
            record.notes.append(f"refused: {answer.get('message', '')[:160]}")

    async def _maintenance(self, record: FaultRecord) -> None:
        node = record.target
        answer = await self.controller.post("/maintenance", {"node": node, "on": True})
        if not answer.get("ok"):
            record.notes.append(f"maintenance on refused: {answer.get('message', '')[:160]}")
            return
        await asyncio.sleep(self.rng.uniform(2.0, 6.0))
        answer = await self.controller.post("/maintenance", {"node": node, "on": False})
        if not answer.get("ok"):
            record.notes.append(f"maintenance off refused: {answer.get('message', '')[:160]}")

    # -- helpers --------------------------------------------------------------------------------

    async def _await_new_writer(self, old: str, record: FaultRecord) -> None:
        deadline = time.monotonic() + self.plan.failover_timeout
        while time.monotonic() < deadline:
            if self._writable_other_than(old):
                return
            await asyncio.sleep(0.05)
        record.notes.append(f"no other node writable within {self.plan.failover_timeout:g} s")

    async def _plan_running(self) -> str | None:
        try:
            return (await self.controller.get("/status"))["controller"]["plan_running"]
        except (OSError, ValueError, KeyError):
            return None

    async def _await_plan(self, timeout: float) -> None:
        """Until the controller reports a running plan (bounded)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await self._plan_running() is not None:
                return
            await asyncio.sleep(0.05)

    async def _stop_node(self, node: str) -> None:
        self.sandbox.kill_node(node, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.sandbox.node_pid(node) is not None:
            if time.monotonic() > deadline:
                self.sandbox.kill_node(node, signal.SIGKILL)
            await asyncio.sleep(0.05)

    async def _start_node(self, node: str, record: FaultRecord | None) -> None:
        """Started read-only when another node is writable (a returning old primary must not
        take writes), writable only when every other node is known read-only or down (it is
        still the primary: no failover happened). An unknown sample (a read timed out under
        load) starts nothing: the repair loop asks again."""
        if self.sandbox.node_pid(node) is not None:
            return
        down = {n.name for n in self.checker.nodes if self.sandbox.node_pid(n.name) is None}
        latest = {n.name: self.checker.latest.get(n.name) for n in self.checker.nodes}
        option = start_option(latest, node, down)
        if option is None:
            return
        await self.sandbox.start_node(node, option)
        if record is not None and option != READ_ONLY:
            record.notes.append(f"{node} restarted writable (no other writer)")

    # -- convergence ----------------------------------------------------------------------------

    async def settle(self, record: FaultRecord | None) -> None:
        started = time.monotonic() if record is None else self.t0 + record.at
        deadline = time.monotonic() + self.plan.converge_timeout
        why = "not checked yet"
        while time.monotonic() < deadline:
            await self._repair(record)
            why = await self._why_not_converged()
            if why is None:
                if record is not None:
                    record.converged_after = time.monotonic() - started
                return
            await asyncio.sleep(0.25)
        self.unconverged = why
        if record is not None:
            record.notes.append(f"NOT CONVERGED within {self.plan.converge_timeout:g} s: {why}")

    async def _why_not_converged(self) -> str | None:
        if why := await self.checker.convergence():
            return why
        try:
            status = await self.controller.get("/status")
        except (OSError, ValueError) as exc:
            return f"controller status: {exc}"
        ctl = status["controller"]
        if ctl["plan_running"] is not None:
            return f"plan {ctl['plan_running']} running"
        if ctl["halt"] or ctl["quarantined"] or ctl["maintenance"]:
            return f"controller: halt {ctl['halt']}, quarantined {ctl['quarantined']}"
        if unhealthy := [n["name"] for n in status["nodes"] if n["health"] != "healthy"]:
            return f"controller sees unhealthy nodes: {unhealthy}"
        assert self.writes is not None
        if self.writes.ok_since(time.monotonic() - 1.0) == 0:
            return "no write acknowledged in the last second"
        return None

    async def _repair(self, record: FaultRecord | None) -> None:
        """What an operator or a supervisor does after the fault: restart what is down,
        rebuild a node quarantined with errant transactions, acknowledge a halt."""
        for node in self.checker.nodes:
            if self.sandbox.node_pid(node.name) is None:
                await self._start_node(node.name, record)
        if self.sandbox.router_pid() is None:
            await self.sandbox.start_router()
        if not self.controller.alive():
            await self.controller.start()
        try:
            ctl = (await self.controller.get("/status"))["controller"]
        except (OSError, ValueError, KeyError):
            return
        index = record.index if record is not None else 0
        for node, q in ctl["quarantined"].items():
            if q.get("errant") and (index, node) not in self._rebuilt_for:
                self._rebuilt_for.add((index, node))
                self.rebuilt.append(node)
                note = await rebuild_sandbox_node(self.sandbox, node, q["new_primary"])
                if record is not None:
                    record.notes.append(f"errant {q['errant']}: {note}")
        halt = ctl["halt"]
        if halt and halt["for_seconds"] >= HALT_GRACE and ctl["plan_running"] is None:
            if time.monotonic() - self._acked.get(halt["reason"], -HALT_REACK) < HALT_REACK:
                return  # acknowledged already: some halts stand until their cause is gone
            self._acked[halt["reason"]] = time.monotonic()
            self.halts.append(halt["reason"])
            if record is not None:
                record.notes.append(f"halt acknowledged: {halt['reason'][:160]}")
            await self.controller.post("/ack")
