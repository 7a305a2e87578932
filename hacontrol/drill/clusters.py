"""``hacontrol drill --clusters N``: several clusters behind one router, one controller for all.

The sandbox starts N clusters behind its one router (``sandbox up --clusters N``) and the drill
runs ONE ``hacontrol run`` process with the sandbox's ``[[clusters]]`` settings. A writer per
cluster goes through the router as that cluster's application user; once every cluster is
healthy and its load flows, the fault hits every cluster's primary at once:

- ``kill``: SIGKILL of every primary, one right after the other (their spread is reported).

Figures per cluster, from that cluster's own log lines (every line names its cluster) and its
own client: detection, promotion, router updated, plan finished, the write outage around the
kill, acknowledged writes missing on its new primary, and whether its plan acted only on its
own nodes. One run: the old primaries stay down (the sandbox is removed afterwards unless
``--dir`` keeps it).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacontrol.drill import report
from hacontrol.drill.controller_proc import ControllerProcess
from hacontrol.drill.errors import FaultError
from hacontrol.drill.fleet import LogTail, api_token
from hacontrol.drill.load import Access, WriteLoad, ensure_table, present_ids
from hacontrol.drill.runner import DrillTimeout, wait_for
from hacontrol.sandbox import Sandbox, procs
from hacontrol.sandbox.model import ClusterInfo, SandboxInfo

CLUSTER_FAULTS = ("kill",)
KILL_SPREAD = 0.1
"""Every primary is killed within this many seconds of the first (else the run is refused)."""
Progress = Callable[[str], None]


@dataclass
class ClusterRun:
    """One cluster during the run: its load, its old primary, its figures."""

    cluster: ClusterInfo
    access: Access
    writes: WriteLoad
    old: str
    killed_at: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


class ClustersDrill:
    """The drill of every cluster of ``sandbox`` under one controller process."""

    def __init__(
        self,
        sandbox: Sandbox,
        log: Path,
        *,
        table: str = "app.drill",
        timeout: float = 2.0,
        progress: Progress = lambda line: None,
        failover_timeout: float = 60.0,
    ) -> None:
        info = sandbox.status()
        token = api_token(info)
        api = f"http://127.0.0.1:{api_port(info)}"
        self.sandbox, self.info, self.progress = sandbox, info, progress
        self.log = LogTail(log, "controller", time.time() - time.monotonic())
        self.controller = ControllerProcess(Path(info.settings), api, token, self.log.path)
        self.failover_timeout = failover_timeout
        base = int(time.time() * 1000) * 1000
        self.runs = [
            ClusterRun(c, access, WriteLoad(access, start_id=base + k * 100_000_000), "")
            for k, c in enumerate(info.clusters)
            for access in [cluster_access(sandbox, c, table, timeout)]
        ]

    async def run(self) -> dict[str, Any]:
        """Start the controller, load every cluster, kill every primary, measure, stop."""
        self.progress(f"one controller for {len(self.runs)} clusters: {self.log.path}")
        await self.controller.start()
        try:
            await wait_for(self.healthy, 60, "every cluster healthy", every=0.1)
            for run in self.runs:
                await ensure_table(run.access)
                run.old = (await self.statuses())[run.cluster.name]["primary"]
                run.writes.start()
            await wait_for(lambda: all(len(r.writes.ok_times) >= 50 for r in self.runs), 20,
                           "writes flowing into every cluster")  # fmt: skip
            spread = self.kill_primaries()
            self.progress(f"killed {', '.join(r.old for r in self.runs)} within {spread:.2f} ms")
            await wait_for(self.failed_over, self.failover_timeout, "every failover", every=0.1)
            after = time.monotonic()
            await wait_for(lambda: all(r.writes.ok_since(after) >= 20 for r in self.runs), 20,
                           "writes into every cluster again")  # fmt: skip
        finally:
            for run in self.runs:
                await run.writes.stop()
            await self.controller.stop()
        return await self.figures(spread)

    async def statuses(self) -> dict[str, Any]:
        answer = await self.controller.get("/status")
        return dict(answer.get("clusters", {}))

    async def healthy(self) -> bool:
        """Every cluster: a primary, every node healthy, no problem, no plan, routed."""
        statuses = await self.statuses()
        return len(statuses) == len(self.runs) and all(
            s["primary"] is not None
            and not s["problems"]
            and all(n["health"] == "healthy" for n in s["nodes"])
            and s["controller"]["plan_running"] is None
            and s["fleet"]["router_agrees"]
            for s in statuses.values()
        )

    async def failed_over(self) -> bool:
        statuses = await self.statuses()
        return all(
            statuses[r.cluster.name]["primary"] not in (None, r.old)
            and statuses[r.cluster.name]["controller"]["plan_running"] is None
            and statuses[r.cluster.name]["fleet"]["router_agrees"]
            for r in self.runs
        )

    def kill_primaries(self) -> float:
        """SIGKILL every old primary, one right after the other; their spread in ms."""
        for run in self.runs:
            node = self.info.node(run.old)
            if not procs.send_signal(node.pid, node.config, signal.SIGKILL):
                raise FaultError(f"{run.old} was not running")
            run.killed_at = time.monotonic()
        for run in self.runs:
            node = self.info.node(run.old)
            procs.wait_state(node.pid, node.config, "dead", timeout=5.0)
        spread = max(r.killed_at for r in self.runs) - min(r.killed_at for r in self.runs)
        if spread > KILL_SPREAD:
            raise FaultError(f"the kills were {spread * 1000:.1f} ms apart (> {KILL_SPREAD}s)")
        return spread * 1000

    async def figures(self, spread_ms: float) -> dict[str, Any]:
        records = self.log.read()
        out: dict[str, Any] = {"clusters": len(self.runs), "kill_spread_ms": round(spread_ms, 2)}
        for run in self.runs:
            mine = [r for r in records if r.get("cluster") == run.cluster.name]
            new = report.promoted_node(mine, run.killed_at)
            lost: list[int] | None = None
            if new is not None:
                present = await present_ids(run.access, self._address(new), run.writes.start_id,
                                            run.writes.last_id)  # fmt: skip
                lost = report.lost_writes(run.writes.acknowledged, present)
            times = report.log_figures(mine, run.killed_at)
            out[run.cluster.name] = {
                "old_primary": run.old,
                "new_primary": new,
                **{k: None if v is None else round(v, 3) for k, v in times.items()},
                "write_outage": rounded(report.outage(run.writes.ok_times, run.killed_at)),
                "acknowledged": len(run.writes.acknowledged),
                "lost": lost,
                "client_errors": run.writes.error_counts(),
                "acted_on_other_clusters": foreign_actions(mine, run.cluster, run.killed_at),
            }
        return out

    def _address(self, node: str) -> tuple[str, int]:
        found = self.info.node(node)
        return found.host, found.port


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def foreign_actions(records: list[dict[str, Any]], cluster: ClusterInfo, at: float) -> list[str]:
    """The nodes of other clusters that this cluster's plans acted on after ``at`` (none)."""
    return sorted(
        {
            r["node"]
            for r in records
            if r["_mono"] >= at and r["event"] == "action" and r.get("node")
            if r["node"] not in cluster.nodes
        }
    )


def cluster_access(sandbox: Sandbox, cluster: ClusterInfo, table: str, timeout: float) -> Access:
    """The application of one cluster: its user, through the router's ports for it."""
    host = sandbox.status().router.host
    return Access(
        writer=(host, cluster.writer_port),
        reader=(host, cluster.reader_port),
        user=cluster.app.user,
        password=cluster.app.password(),
        table=table,
        timeout=timeout,
    )


def api_port(info: SandboxInfo) -> int:
    import tomllib

    return int(tomllib.loads(Path(info.settings).read_text())["api"]["port"])


def render(figures: dict[str, Any]) -> str:
    """The figures as lines for the operator: one per cluster."""
    lines = [f"{figures['clusters']} clusters, primaries killed within "
             f"{figures['kill_spread_ms']} ms of each other"]  # fmt: skip
    for name, f in figures.items():
        if not isinstance(f, dict):
            continue
        lines.append(
            f"{name}: {f['old_primary']} -> {f['new_primary']}; detection {f['detection']} s, "
            f"promotion {f['promotion']} s, routed {f['router_updated']} s, finished "
            f"{f['plan_finished']} s; write outage {f['write_outage']} s; "
            f"{f['acknowledged']} writes acknowledged, lost {len(f['lost'] or [])}; "
            f"acted on other clusters' nodes: {', '.join(f['acted_on_other_clusters']) or 'none'}"
        )
    return "\n".join(lines)


def passed(figures: dict[str, Any]) -> bool:
    """Every cluster failed over to one of its own nodes and lost no acknowledged write."""
    each = [f for f in figures.values() if isinstance(f, dict)]
    return bool(each) and all(
        f["new_primary"] is not None
        and f["lost"] == []
        and f["write_outage"] is not None
        and not f["acted_on_other_clusters"]
        for f in each
    )


def clusters_job(args: Any, progress: Progress, machine: Callable[[], dict[str, Any]]) -> Any:
    """The coroutine of ``hacontrol drill --clusters N`` (N >= 2); the caller checked the
    options (``check_options``)."""
    import json
    import tempfile

    from hacontrol.drill.place import drill_sandbox
    from hacontrol.sandbox import SandboxError, SandboxSpec, find_free_base_port

    def make(directory: Path) -> Sandbox:
        ports = 3 * args.clusters + 4 + 2 * (args.clusters - 1)
        spec = SandboxSpec(dir=directory, base_port=find_free_base_port(ports),
                           router=args.router, clusters=args.clusters)  # fmt: skip
        return Sandbox(spec)

    async def job() -> int:
        try:
            async with drill_sandbox(args.dir, make, progress) as sandbox:
                if len(sandbox.status().clusters) != args.clusters:
                    raise FaultError(
                        f"the sandbox in {sandbox.dir} has not {args.clusters} clusters"
                    )
                with tempfile.TemporaryDirectory(prefix="hacontrol-drill-") as tmp:
                    log = args.log or Path(tmp) / "hacontrol.log"
                    drill = ClustersDrill(
                        sandbox, log, table=args.table, timeout=args.client_timeout,
                        progress=progress,
                    )  # fmt: skip
                    figures = await drill.run()
        except (SandboxError, FaultError, DrillTimeout) as exc:
            print(f"hacontrol drill: {exc}")
            return 1
        print(render(figures))
        if args.json is not None:
            args.json.write_text(json.dumps({**figures, "machine": machine()}, indent=1) + "\n")
            progress(f"figures written to {args.json}")
        return 0 if passed(figures) else 1

    return job()


def check_options(args: Any) -> str | None:
    """Why ``--clusters`` cannot run with these options, or None."""
    if not 2 <= args.clusters <= 4:
        return f"--clusters must be between 2 and 4, got {args.clusters}"
    if args.fault not in CLUSTER_FAULTS:
        return f"--clusters offers --fault {', '.join(CLUSTER_FAULTS)} (got {args.fault})"
    for option, given in (("--config", args.config), ("--controllers", args.controllers != 1),
                          ("--runs", args.runs != 1), ("--cluster", args.cluster)):  # fmt: skip
        if given:
            return f"--clusters with {option} is not offered yet (one run, one controller)"
    return None
