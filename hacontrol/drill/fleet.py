"""``hacontrol drill --controllers N``: the drill of a fleet, on a sandbox of its own.

The sandbox starts N routers and N controllers (``sandbox up --routers N --controllers N``),
each controller a process of its own next to its router. A writer and a reader go through
EVERY router, and the fault hits the primary, the leading controller, or both:

- ``kill`` / ``freeze``: the primary (SIGKILL; SIGSTOP, thawed once the failover finished);
- ``kill-leader``: SIGKILL of the controller that leads;
- ``freeze-leader``: SIGSTOP of it for the lease's W and a half, then SIGCONT: it must change
  nothing, step down and follow;
- ``kill-leader-and-primary``: both at once.

Figures per run: the takeover (another instance holds the lease), the publication of the
primary by the leader acting after the fault, the failover's own figures, and the write and
read outage through each router (the leader's beside the followers'). The controllers' JSON
log files are read as they grow; their wall-clock stamps are put on the drill's monotonic
clock. Between runs the cluster is restored: the old primary restarted and rejoined (rebuilt
when errant), a killed controller started again, the recovery block acknowledged everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hacontrol.drill import report
from hacontrol.drill.faults import FaultError, SandboxFaults
from hacontrol.drill.load import Access, ReadLoad, WriteLoad, ensure_table, present_ids
from hacontrol.drill.place import drill_sandbox
from hacontrol.drill.runner import (
    DrillPlan,
    DrillTimeout,
    attempt,
    each_run,
    settings_summary,
    wait_for,
    write_figures,
)
from hacontrol.sandbox import Sandbox
from hacontrol.sandbox.cluster import read_secret
from hacontrol.sandbox.model import SECRETS_DIR, ControllerInfo, RouterInfo, SandboxInfo
from hacontrol.settings import Settings, load_settings

FLEET_FAULTS = ("kill", "freeze", "kill-leader", "freeze-leader", "kill-leader-and-primary")
ON_PRIMARY = ("kill", "freeze", "kill-leader-and-primary")
ON_LEADER = ("kill-leader", "freeze-leader", "kill-leader-and-primary")
Progress = Callable[[str], None]


def api_token(info: SandboxInfo) -> str:
    """The token of the API of the controllers the sandbox starts (its secrets folder)."""
    return read_secret(Path(info.dir) / SECRETS_DIR / "api.token")


class LogTail:
    """A controller's JSON log file, read as it grows; each record with ``_mono`` (its stamp on
    the drill's monotonic clock) and ``_instance``."""

    def __init__(self, path: Path, instance: str, wall_minus_mono: float) -> None:
        self.path, self.instance, self._offset = path, instance, wall_minus_mono
        self._position = 0
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._position)
                chunk = handle.read()
        except OSError:
            return self.records
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._position += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                record = json.loads(line)
                wall = datetime.fromisoformat(record["ts"]).timestamp()
                record["_mono"] = wall - self._offset
                record["_instance"] = self.instance
                self.records.append(record)
        return self.records


@dataclass
class Instance:
    """One controller of the fleet, its router and its log."""

    controller: ControllerInfo
    router: RouterInfo
    log: LogTail
    token: str

    @property
    def name(self) -> str:
        return self.controller.name

    def status(self) -> dict[str, Any] | None:
        """``GET /status``, or None when the controller does not answer (killed, frozen)."""
        return self._call("GET", "/status")

    def ack(self) -> dict[str, Any] | None:
        return self._call("POST", "/ack")

    def _call(self, method: str, path: str) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.controller.api_port}{path}"
        request = urllib.request.Request(
            url, method=method, data=b"{}" if method == "POST" else None
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=1.0) as answer:
                return dict(json.loads(answer.read()))
        except (urllib.error.URLError, OSError, ValueError):
            return None


class FleetDrill:
    """Runs ``plan`` against the fleet of ``sandbox``; results in ``results``."""

    def __init__(
        self,
        sandbox: Sandbox,
        plan: DrillPlan,
        *,
        table: str = "app.drill",
        timeout: float = 2.0,
        progress: Progress = lambda line: None,
        on_result: Callable[[report.RunResult], None] = lambda result: None,
    ) -> None:
        info = sandbox.status()
        offset = time.time() - time.monotonic()
        token = api_token(info)
        self.sandbox, self.plan, self.progress, self.on_result = sandbox, plan, progress, on_result
        self.instances = [
            Instance(c, info.routers[c.router], LogTail(Path(c.log), c.name, offset), token)
            for c in info.controllers
        ]
        self.settings: Settings = load_settings(info.controllers[0].settings).settings
        self.faults = SandboxFaults(sandbox)
        self.access = {
            i.name: Access(
                writer=(i.router.host, i.router.writer_port),
                reader=(i.router.host, i.router.reader_port),
                user="app",
                password=sandbox.password("app"),
                table=table,
                timeout=timeout,
            )
            for i in self.instances
        }
        self.results: list[report.RunResult] = []

    def records(self) -> list[dict[str, Any]]:
        out = [r for i in self.instances for r in i.log.read()]
        return sorted(out, key=lambda r: r["_mono"])

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        answers = await asyncio.gather(*(asyncio.to_thread(i.status) for i in self.instances))
        return {i.name: a for i, a in zip(self.instances, answers, strict=True)}

    # -- the whole drill -----------------------------------------------------------------------

    async def run(self) -> list[report.RunResult]:
        self.progress(f"{len(self.instances)} controllers; waiting for one leader, all routed")
        await self.wait_healthy()
        await ensure_table(next(iter(self.access.values())))
        await each_run(self.plan, self.wait_healthy, self.one_run, self.results.append, self)
        return self.results

    async def healthy(self) -> str | None:
        """The leader's name once the fleet is healthy and quiet: every controller answers,
        exactly one leads and acts, every router agrees with the published primary, the
        leader sees every node healthy with no problem, no plan, no block."""
        statuses = await self.statuses()
        if any(s is None for s in statuses.values()):
            return None
        leaders = [n for n, s in statuses.items() if s and s["fleet"]["leader"]]
        if len(leaders) != 1:
            return None
        lead = statuses[leaders[0]]
        assert lead is not None
        primary, fleet, controller = lead["primary"], lead["fleet"], lead["controller"]
        quiet = (
            fleet["acting"]
            and primary is not None
            and not lead["problems"]
            and all(n["health"] == "healthy" for n in lead["nodes"])
            and controller["plan_running"] is None
            and not controller["quarantined"]
            and controller["halt"] is None
            and not controller["recovery_block_seconds_left"]
        )
        routed = all(
            s and s["fleet"]["router_agrees"] and s["fleet"]["published_primary"] == primary
            for s in statuses.values()
        )
        return leaders[0] if quiet and routed else None

    async def wait_healthy(self) -> str:
        leader: str | None = None
        deadline = time.monotonic() + self.plan.healthy_timeout
        while (leader := await self.healthy()) is None:
            if time.monotonic() > deadline:
                raise DrillTimeout(
                    f"no healthy fleet within {self.plan.healthy_timeout:g} s: "
                    f"{await self.statuses_text()}"
                )
            await asyncio.sleep(0.1)
        return leader

    async def statuses_text(self) -> str:
        parts = []
        for name, s in (await self.statuses()).items():
            if s is None:
                parts.append(f"{name}: no answer")
            else:
                f = s["fleet"]
                problems = ", ".join(p["code"] for p in s["problems"]) or "none"
                parts.append(
                    f"{name}: leader {f['leader']}, published {f['published_primary']}, "
                    f"router agrees {f['router_agrees']}, problems {problems}"
                )
        return "; ".join(parts)

    # -- one run -------------------------------------------------------------------------------

    async def one_run(self, index: int) -> report.RunResult:
        plan, fault = self.plan, self.plan.fault
        leader = await self.wait_healthy()
        status = await asyncio.to_thread(self.instance(leader).status)
        assert status is not None
        old = str(status["primary"])
        say = self._say(index)
        loads = self._start_loads()
        run = _Run(fault=fault, old=old, leader=leader)
        try:
            await wait_for(
                lambda: all(
                    len(w.ok_times) >= plan.warmup_ops and len(r.ok_times) >= plan.warmup_ops
                    for w, r in loads.values()
                ),
                15,
                "writes and reads flowing through every router",
            )
            say(f"load flowing through {len(loads)} routers; {leader} leads, {old} is primary")
            run.fault_wall, run.fault_at = time.time(), time.monotonic()
            self._inject(run)
            run.injected = True
            say(f"{fault} injected ({self._victims(run)})")
            await self._wait_done(run, say)
            managed = {n: load for n, load in loads.items() if n != self._unmanaged(run)}
            await self._wait_flowing(managed, time.monotonic())
            say(f"writes and reads flow again through the routers of {', '.join(managed)}")
        except (DrillTimeout, FaultError) as exc:
            run.error = str(exc)
            say(f"ERROR: {run.error}")
        finally:
            for writes, reads in loads.values():
                await writes.stop()
                await reads.stop()
            if run.injected:
                self._undo(run)
        return await self._result(index, run, loads, say)

    def instance(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    def _start_loads(self) -> dict[str, tuple[WriteLoad, ReadLoad]]:
        base = int(time.time() * 1000) * 1000
        return {
            name: (
                WriteLoad(access, start_id=base + i * 100_000_000, period=self.plan.period).start(),
                ReadLoad(access, period=self.plan.period).start(),
            )
            for i, (name, access) in enumerate(self.access.items())
        }

    @staticmethod
    def _unmanaged(run: _Run) -> str | None:
        """The router nobody keeps right during the run: its controller was killed with the
        primary (it follows again once restarted; measured only through the others)."""
        return run.leader if run.fault == "kill-leader-and-primary" else None

    def _victims(self, run: _Run) -> str:
        parts = []
        if run.fault in ON_PRIMARY:
            parts.append(f"the primary {run.old}")
        if run.fault in ON_LEADER:
            parts.append(f"the leader {run.leader}")
        return " and ".join(parts)

    def _inject(self, run: _Run) -> None:
        if run.fault in ("kill-leader", "kill-leader-and-primary"):
            self.sandbox.kill_controller(run.leader, signal.SIGKILL)
        if run.fault == "freeze-leader":
            self.sandbox.kill_controller(run.leader, signal.SIGSTOP)
        if run.fault in ("kill", "kill-leader-and-primary"):
            self.faults.kill(run.old)
        if run.fault == "freeze":
            self.faults.freeze(run.old)

    def _undo(self, run: _Run) -> None:
        """Thaw what was frozen; idempotent."""
        if run.fault == "freeze":
            with contextlib.suppress(FaultError):
                self.faults.thaw(run.old)
        if run.fault == "freeze-leader":
            self.sandbox.kill_controller(run.leader, signal.SIGCONT)

    async def _wait_done(self, run: _Run, say: Progress) -> None:
        """Until the fleet is through the fault: the failover finished (a primary fault), a new
        leader published the primary (a leader fault), the frozen leader stepped down."""
        if run.fault in ON_PRIMARY:
            finished = await wait_for(
                lambda: report.finished_plan(self.records(), run.fault_at),
                self.plan.failover_timeout,
                "the failover to finish",
            )
            say(f"failover finished (ok={finished['ok']}) by {finished['_instance']}")
            if not finished["ok"]:
                raise FaultError(f"failover failed: {finished['reason']}")
            if run.fault == "freeze":
                self.faults.thaw(run.old)
        if run.fault in ON_LEADER:
            taken = await wait_for(
                lambda: self._new_leader(run), self.plan.failover_timeout, "another leader"
            )
            say(f"{taken['_instance']} took the lease")
        published = await wait_for(
            lambda: self._published(run), self.plan.failover_timeout, "the primary published"
        )
        say(f"{published['_instance']} published {published['node']}")
        if run.fault == "freeze-leader":
            thaw_at = run.fault_at + self.settings.lease.wait_timeout * 1.5
            await asyncio.sleep(max(0.0, thaw_at - time.monotonic()))
            self.sandbox.kill_controller(run.leader, signal.SIGCONT)
            await wait_for(
                lambda: self._stepped_down(run), 15, f"{run.leader} to step down and follow"
            )
            say(f"{run.leader} resumed, stepped down and follows")

    def _new_leader(self, run: _Run) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.records()
                if r["_mono"] >= run.fault_at
                and r["event"] == "lease"
                and r.get("leader") is True
                and r["_instance"] != run.leader
            ),
            None,
        )

    def _published(self, run: _Run) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.records()
                if r["_mono"] >= run.fault_at
                and r["event"] == "action"
                and r.get("action") == "Publish"
                and r.get("ok")
            ),
            None,
        )

    def _stepped_down(self, run: _Run) -> bool:
        return any(
            r["_mono"] >= run.fault_at
            and r["_instance"] == run.leader
            and r["event"] == "lease"
            and r.get("leader") is False
            for r in self.records()
        )

    async def _wait_flowing(self, loads: dict[str, tuple[WriteLoad, ReadLoad]], t: float) -> None:
        ops = self.plan.settle_ops
        await wait_for(
            lambda: all(w.ok_since(t) >= ops and r.ok_since(t) >= ops for w, r in loads.values()),
            self.plan.resume_timeout,
            "writes and reads to succeed again through the routers kept right",
        )

    # -- measuring and restoring ---------------------------------------------------------------

    async def _result(
        self,
        index: int,
        run: _Run,
        loads: dict[str, tuple[WriteLoad, ReadLoad]],
        say: Progress,
    ) -> report.RunResult:
        records = self.records()
        new = report.promoted_node(records, run.fault_at) if run.fault in ON_PRIMARY else run.old
        figures = fleet_figures(records, run, loads) if run.injected else {}
        lost: list[int] = []
        if run.injected and new is not None:
            try:
                lost = await self._lost(loads, new)
            except Exception as exc:  # reported, never hidden
                run.error = run.error or f"could not read the acknowledged ids on {new}: {exc}"
        elif run.injected and run.error is None:
            run.error = f"no new primary after the {run.fault}"
        if lost:
            say(f"LOST {len(lost)} acknowledged writes: {lost[:20]}")
        after = self._new_leader(run) if run.fault in ON_LEADER else None
        restore = await self._restore(run, new, say)
        writes = {name: w for name, (w, _) in loads.items()}
        reads = {name: r for name, (_, r) in loads.items()}
        counts = dict(
            writes_acknowledged=sum(len(w.acknowledged) for w in writes.values()),
            reads_ok=sum(len(r.ok_times) for r in reads.values()),
            write_errors=per_router(writes),
            read_errors=per_router(reads),
            leaders=(run.leader, after["_instance"] if after else run.leader),
        )
        return report.run_result(index, run, new, figures, lost, restore, **counts)

    async def _lost(self, loads: dict[str, tuple[WriteLoad, ReadLoad]], new: str) -> list[int]:
        node = self.settings.node(new)
        lost: list[int] = []
        for name, (writes, _) in loads.items():
            if not writes.acknowledged:
                continue
            present = await present_ids(
                self.access[name], (node.host, node.port), writes.start_id, writes.last_id
            )
            lost += report.lost_writes(writes.acknowledged, present)
        return sorted(lost)

    async def _restore(self, run: _Run, new: str | None, say: Progress) -> tuple[bool, str]:
        if not run.injected:
            return True, "nothing injected"
        steps: list[str] = []
        try:
            if run.fault in ("kill-leader", "kill-leader-and-primary"):
                await self.sandbox.start_controller(run.leader)
                steps.append(f"{run.leader} started again")
            if run.fault in ON_PRIMARY:
                if new is None or new == run.old:
                    return False, f"no promotion happened; {run.old} left as it is"
                if run.fault != "freeze":
                    await self.faults.restart(run.old)
                    steps.append(f"{run.old} restarted")
                steps += await self._rejoined(run.old, new, say)
                await asyncio.gather(*(asyncio.to_thread(i.ack) for i in self.instances))
                steps.append("recovery block acknowledged on every instance")
            await self.wait_healthy()
            say("; ".join(steps) or "nothing to restore")
            return True, "; ".join(steps) or "nothing to restore"
        except Exception as exc:  # SandboxError, DrillTimeout ...: the run failed, say why
            say(f"ERROR restoring: {exc}")
            return False, "; ".join([*steps, f"FAILED: {exc}"])

    async def _rejoined(self, old: str, new: str, say: Progress) -> list[str]:
        """Until the leader rejoined ``old`` as a healthy replica of ``new`` (rebuilt once when
        it came back with errant transactions)."""
        steps: list[str] = []
        deadline = time.monotonic() + self.plan.restore_timeout
        rebuilt = False
        while True:
            lead = await self._leader_status()
            if lead is not None and rejoined(lead, old, new):
                steps.append(f"{old} rejoined as a replica of {new}")
                return steps
            errant = (lead or {}).get("controller", {}).get("quarantined", {}).get(old, {})
            if errant and errant.get("errant") and not rebuilt:
                say(f"{old} came back with errant transactions {errant['errant']}; rebuilding it")
                steps.append(await self.faults.rebuild(old, new))
                rebuilt = True
            if time.monotonic() > deadline:
                raise DrillTimeout(
                    f"{old} did not rejoin as a healthy replica of {new}: {seen(lead, old)}"
                )
            await asyncio.sleep(0.1)

    async def _leader_status(self) -> dict[str, Any] | None:
        for status in (await self.statuses()).values():
            if status is not None and status["fleet"]["leader"]:
                return status
        return None

    def _say(self, index: int) -> Progress:
        def say(line: str) -> None:
            self.progress(f"run {index}/{self.plan.runs}: {line}")

        return say


@dataclass
class _Run:
    """One run's facts as they come."""

    fault: str
    old: str
    leader: str
    fault_at: float = 0.0
    fault_wall: float = 0.0
    injected: bool = False
    error: str | None = None


def rejoined(status: dict[str, Any], old: str, new: str) -> bool:
    node = next((n for n in status["nodes"] if n["name"] == old), None)
    return (
        status["primary"] == new
        and node is not None
        and node["source"] == new
        and node["health"] == "healthy"
        and old not in status["controller"]["quarantined"]
    )


def seen(status: dict[str, Any] | None, name: str) -> str:
    """What the leader says of node ``name``, for an error message."""
    if status is None:
        return "no leader answers"
    node = next((n for n in status["nodes"] if n["name"] == name), {})
    quarantined = status["controller"]["quarantined"].get(name)
    return (
        f"the leader {status['fleet']['instance']} sees it {node.get('health')} "
        f"({node.get('reason')}), source {node.get('source')}, quarantined {quarantined}, "
        f"last decisions {[d['rule'] for d in status['controller']['last_decisions'][-5:]]}"
    )


def fleet_figures(
    records: list[dict[str, Any]], run: _Run, loads: dict[str, tuple[WriteLoad, ReadLoad]]
) -> dict[str, float | None]:
    """The run's figures, seconds after the fault (outages: the longest gap a client saw)."""
    at = run.fault_at
    figures: dict[str, float | None] = {}
    if run.fault in ON_PRIMARY:
        figures.update(report.log_figures(records, at))
    after = [r for r in records if r["_mono"] >= at]
    if run.fault in ON_LEADER:
        taken = next((r for r in after if r["event"] == "lease" and r.get("leader") is True), None)
        figures["takeover"] = taken["_mono"] - at if taken else None
    published = next(
        (
            r
            for r in after
            if r["event"] == "action" and r.get("action") == "Publish" and r.get("ok")
        ),
        None,
    )
    figures["published"] = published["_mono"] - at if published else None
    end = figures.get("plan_finished")
    until = at + end if end is not None else None
    outages = {}
    for name, (writes, reads) in loads.items():
        outages[name] = report.outage(writes.ok_times, at, until)
        figures[f"write_outage@{name}"] = outages[name]
        figures[f"read_outage@{name}"] = report.outage(reads.ok_times, at, until)
    figures["write_outage_leader"] = outages.get(run.leader)
    followers = [v for n, v in outages.items() if n != run.leader and v is not None]
    figures["write_outage_followers"] = max(followers) if followers else None
    return figures


def per_router(loads: dict[str, Any]) -> dict[str, int]:
    """Client errors by router and kind: ``c1 OperationalError(2013)``."""
    out: dict[str, int] = {}
    for name, load in loads.items():
        for kind, count in load.error_counts().items():
            out[f"{name} {kind}"] = count
    return out


# ---- the job of ``hacontrol drill --controllers N`` --------------------------------------------


def fleet_drill(
    args: Any, plan: DrillPlan, *, progress: Progress, machine: Callable[[], dict[str, Any]]
) -> Coroutine[Any, Any, int]:
    """The drill of a fleet on a sandbox of its own (``--dir D``: use or keep one started
    with ``--routers N --controllers N``). ValueError: a usage error, nothing changed."""
    if args.controllers < 2:
        raise ValueError("--controllers: a fleet has 2 instances or more")
    if plan.fault not in FLEET_FAULTS:
        raise ValueError(f"--fault {plan.fault} is not offered with --controllers")
    if args.config is not None:
        raise ValueError("--controllers drills a sandbox; --config is for a single controller")

    async def job() -> int:
        from hacontrol.sandbox import SandboxError

        def make(directory: Path) -> Sandbox:
            progress(f"{args.controllers} routers, each with its controller")
            return fleet_sandbox(directory, args.controllers, args.router)

        try:
            async with drill_sandbox(args.dir, make, progress) as sandbox:
                if len(sandbox.status().controllers) < 2:
                    raise ValueError(f"the sandbox in {sandbox.dir} runs no fleet of controllers")
                progress(f"load through {sandbox.status().router.kind}, every router")
                return await drive_fleet(sandbox, args, plan, progress, machine)
        except SandboxError as exc:
            print(f"hacontrol drill: sandbox: {exc}", file=sys.stderr)
            return 1

    return job()


def fleet_sandbox(directory: Path, size: int, router: str | None) -> Sandbox:
    from hacontrol.sandbox import SandboxSpec, find_free_base_port

    spec = SandboxSpec(
        dir=directory,
        base_port=find_free_base_port(3 + 4 * size),
        router=router,  # type: ignore[arg-type]
        routers=size,
        controllers=size,
    )
    return Sandbox(spec)


async def drive_fleet(
    sandbox: Sandbox,
    args: Any,
    plan: DrillPlan,
    progress: Progress,
    machine: Callable[[], dict[str, Any]],
) -> int:
    drill = FleetDrill(
        sandbox,
        plan,
        table=args.table,
        timeout=args.client_timeout,
        progress=progress,
        on_result=lambda r: print(report.render_run(r) + "\n", flush=True),
    )
    started = time.monotonic()
    failure = await attempt(drill.run(), progress)
    runs = drill.results
    print(report.render_summary(runs), flush=True)
    if args.json is not None:
        lease = drill.settings.lease
        used = {
            **settings_summary(drill.settings),
            "controllers": len(drill.instances),
            "lease.wait_timeout": lease.wait_timeout,
            "lease.keepalive": lease.keepalive,
            "lease.validity": lease.validity,
            "fault": plan.fault,
            "runs": plan.runs,
            "client_timeout": args.client_timeout,
            "write_period": plan.period,
        }
        write_figures(args.json, runs, used, machine(), failure, time.monotonic() - started)
        progress(f"figures written to {args.json}")
    return 0 if failure is None and report.exit_code(runs) == 0 else 1
