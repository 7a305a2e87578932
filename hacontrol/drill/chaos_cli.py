"""``hacontrol drill --fault chaos --duration D [--seed N]``: the chaos soak on a sandbox.

The controller runs as a process of its own (``hacontrol run`` with the sandbox's settings,
``failover.recovery_block = 0``, log at info level in ``controller.log`` next to the
sandbox), so that it can be killed and restarted like in production. Progress on stderr, the
report on stdout, every figure with ``--json FILE``. Exit 0 when the soak passed.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from hacontrol.drill import chaos_report
from hacontrol.drill.chaos import Chaos, ChaosPlan
from hacontrol.drill.checker import Checker, HAProxyWatch, Login, Node, ProxySQLWatch
from hacontrol.drill.controller_proc import ControllerProcess
from hacontrol.drill.errors import FaultError
from hacontrol.settings import load_settings

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")


def parse_duration(text: str) -> float:
    """'90', '90s', '20m', '1.5h' -> seconds."""
    found = DURATION.match(text.strip())
    if found is None:
        raise ValueError(f"--duration must be a number of seconds or like 20m, 1h; got {text!r}")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


def checker_for(sandbox: Any) -> Checker:
    info = sandbox.status()
    router = info.router
    watch: Any
    if router.kind == "proxysql":
        watch = ProxySQLWatch(
            "proxysql",
            (router.host, router.admin_port),
            Login("admin", sandbox.password("proxysql")),
        )
    else:
        watch = HAProxyWatch("haproxy", router.admin)
    return Checker(
        nodes=[Node(n.name, n.host, n.port) for n in info.nodes],
        monitor=Login("monitor", sandbox.password("monitor")),
        app=Login("app", sandbox.password("app")),
        routers=[watch],
    )


def controller_for(sandbox: Any, workdir: Path, interval: float | None) -> ControllerProcess:
    config = Path(sandbox.status().settings)
    settings = load_settings(config).settings
    api = settings.api
    assert api.token is not None and api.port
    env = {"HACONTROL_FAILOVER__RECOVERY_BLOCK": "0", "HACONTROL_LOG__LEVEL": "info"}
    if interval is not None:
        env["HACONTROL_PROBES__INTERVAL"] = str(interval)
        timeout = min(settings.probes.timeout, interval * 0.8)
        env["HACONTROL_PROBES__TIMEOUT"] = str(round(timeout, 3))
    return ControllerProcess(
        config,
        f"http://127.0.0.1:{api.port}",
        api.token.get_secret_value(),
        workdir / "controller.log",
        env,
    )


async def soak(
    sandbox: Any,
    access: Any,
    plan: ChaosPlan,
    workdir: Path,
    *,
    interval: float | None = None,
    progress: Any = lambda line: None,
) -> dict[str, Any]:
    """Run the chaos against a running sandbox; the report as a dict."""
    controller = controller_for(sandbox, workdir, interval)
    checker = checker_for(sandbox).start()
    chaos = Chaos(sandbox, controller, checker, access, plan, progress)
    error: str | None = None
    final: dict[str, Any] = {}
    started = time.monotonic()
    try:
        progress(f"controller started as a process (log: {controller.log_path})")
        await controller.start()
        await chaos.run()
        progress("chaos over: waiting for convergence, then the final checks")
        await chaos.settle(None)
        await checker.stop()
        assert chaos.writes is not None
        final = await checker.final_check(access.table, chaos.writes.acknowledged)
    except (FaultError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        progress(f"ERROR: {error}")
    finally:
        await checker.stop()
        await controller.stop()
    return report_of(chaos, final, error, time.monotonic() - started, sandbox)


def report_of(
    chaos: Chaos, final: dict[str, Any], error: str | None, seconds: float, sandbox: Any
) -> dict[str, Any]:
    inv = chaos.checker.invariants
    records = [r.to_json() for r in chaos.records]
    returning = [
        {**e, "at": round(float(e["at"]) - chaos.t0, 3)}  # type: ignore[arg-type]
        for e in inv.returning_events
    ]
    assert chaos.writes is not None and chaos.reads is not None
    return {
        "seed": chaos.plan.seed,
        "duration": chaos.plan.duration,
        "seconds": round(seconds, 1),
        "router": sandbox.status().router.kind,
        "faults": len(records),
        "by_kind": chaos_report.by_kind(records),
        "violations": [v.to_json(chaos.t0) for v in inv.violations],
        "returning": returning,
        "returning_fenced": chaos_report.stats(e.get("fenced_after") for e in returning),
        "final": final or {"error": error or "no final check"},
        "unconverged": chaos.unconverged,
        "halts": chaos.halts,
        "rebuilt": chaos.rebuilt,
        "samples": inv.samples,
        "router_samples": inv.router_samples,
        "writes_acknowledged": len(chaos.writes.acknowledged),
        "write_errors": chaos.writes.error_counts(),
        "read_errors": chaos.reads.error_counts(),
        "error": error,
        "records": records,
    }


def job(args: argparse.Namespace, progress: Any, sandbox_access: Any) -> Any:
    """The coroutine ``hacontrol drill --fault chaos`` runs (a new sandbox unless ``--dir``)."""
    plan = ChaosPlan(
        duration=parse_duration(args.duration or "5m"),
        seed=args.seed if args.seed is not None else int(time.time()) % 100000,
    )
    if args.config is not None:
        raise ValueError("--fault chaos runs on the sandbox only (it kills every kind of process)")
    if getattr(args, "controllers", 1) != 1:
        raise ValueError("--fault chaos runs one controller (a fleet's chaos is not built yet)")
    if args.dir is not None:
        raise ValueError("--fault chaos builds a sandbox of its own and removes it; no --dir")

    async def run() -> int:
        from hacontrol.sandbox import Sandbox, SandboxSpec, find_free_base_port

        tmp = tempfile.TemporaryDirectory(prefix="hacontrol-chaos-")
        directory = Path(tmp.name) / "sandbox"
        sandbox = Sandbox(
            SandboxSpec(dir=directory, base_port=find_free_base_port(8), router=args.router)
        )
        progress(f"chaos seed {plan.seed}, {plan.duration:g} s; starting a sandbox in {directory}")
        await sandbox.up()
        try:
            access = sandbox_access(sandbox, args.table, args.client_timeout)
            doc = await soak(
                sandbox, access, plan, Path(tmp.name), interval=args.interval, progress=progress
            )
        finally:
            progress("removing the sandbox")
            await sandbox.down()
            if args.log is not None:
                log = Path(tmp.name) / "controller.log"
                if log.exists():
                    args.log.write_text(log.read_text())
            tmp.cleanup()
        print(chaos_report.render(doc))
        if args.json is not None:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            progress(f"figures written to {args.json}")
        return 0 if not chaos_report.verdict(doc) else 1

    return run()
