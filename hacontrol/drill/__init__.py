"""``hacontrol drill``: inject a fault on the primary and measure what clients and the
controller saw (RTO per phase, client-visible outages, lost acknowledged writes).

Against a sandbox by default (a new one in a temporary directory, or ``--dir D`` to use or keep
one), or against any cluster given ``--config F`` with ``--yes-kill-the-primary``. The drill
runs its own controller in-process, so it refuses when the controller's API port is in use:
another controller is probably running, and two controllers must never manage one cluster.

Exit codes: 0 every run completed, restored the cluster and lost no acknowledged write;
1 otherwise; 2 usage or configuration error (nothing was changed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hacontrol.drill import report
from hacontrol.drill.faults import (
    LocalFaults,
    SandboxFaults,
    partition_unavailable,
)
from hacontrol.drill.load import Access
from hacontrol.drill.place import drill_sandbox
from hacontrol.drill.runner import (
    FAULTS,
    LEADER_FAULTS,
    NETWORK_FAULTS,
    Drill,
    DrillPlan,
    attempt,
    settings_summary,
    write_figures,
)
from hacontrol.sandbox.cli import add_router_argument
from hacontrol.sandbox.netns_host import unavailable as netns_unavailable
from hacontrol.settings import (
    FailoverSettings,
    ProbeSettings,
    Settings,
    SettingsError,
    check,
    load_settings,
)

SETTINGS_CHOICES = ("own", "defaults")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PASSWORD_ENV = "HACONTROL_DRILL_PASSWORD"


class UsageError(Exception):
    """Exit 2: nothing was changed."""


@dataclass(frozen=True)
class Outputs:
    json: Path | None = None
    """Every figure of every run, the settings used and the machine."""
    log: Path | None = None
    """The controller's JSON log lines."""


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "drill",
        help="failover drill: kill/freeze/switch over the primary under load and measure",
        description="Inject a fault on the primary under a write/read load through the router, "
        "and measure detection, promotion, router update, client-visible outages and lost "
        "acknowledged writes. Exit 0 when every run completed with no lost acknowledged write.",
    )
    _fault_arguments(p)
    _runs_arguments(p)
    p.add_argument("--dir", type=Path, help="sandbox directory to use (started if needed) and keep")
    add_router_argument(p, "the sandbox's router", "; the load goes through it")
    _real_cluster_arguments(p)
    _load_arguments(p)
    p.set_defaults(func=run)


def _fault_arguments(p: argparse.ArgumentParser) -> None:
    """What is done, to how many controllers and clusters, and how a chaos run goes."""
    p.add_argument(
        "--fault",
        choices=(*FAULTS, *LEADER_FAULTS, "chaos"),
        default="kill",
        help="what to do to the primary (with --controllers N: kill, freeze, or to the leading "
        "controller: kill-leader, freeze-leader, kill-leader-and-primary); chaos: random "
        "faults of every kind (sandbox only); partition-primary (cut off from every other "
        "host), partition-controller (the controller alone with it), flap (its links down and "
        "up for --hold s) and degrade (its links lose --loss %% of their packets for --hold s) "
        "run on a sandbox with hosts of its own (root only)",
    )
    p.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="a fleet: N routers each with its own controller (processes of their own) on the "
        "sandbox; the outage is measured through every router (default 1: one controller "
        "in-process)",
    )
    _several_clusters_arguments(p)
    p.add_argument(
        "--duration", help="with --fault chaos: how long, like 90s, 20m, 1h (default 5m)"
    )
    p.add_argument(
        "--seed", type=int, help="with --fault chaos: replay the fault sequence of this seed"
    )
    add_network_options(p)


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    """How many runs, where their figures go, and the controller's timing."""
    p.add_argument("--runs", type=int, default=1, help="number of runs (default 1)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    p.add_argument(
        "--interval", type=float, help="probe interval override (default: from the settings)"
    )
    p.add_argument(
        "--settings",
        choices=SETTINGS_CHOICES,
        default="own",
        help="the controller's timing: its settings' own (the sandbox's, or --config's; the "
        "default), or the defaults of settings.toml ([probes] and [failover] as a new "
        "install has them; the servers and the router keep theirs)",
    )


def _load_arguments(p: argparse.ArgumentParser) -> None:
    """The controller's log and the drill's clients."""
    p.add_argument(
        "--log", type=Path, metavar="FILE", help="write the controller's JSON log lines here"
    )
    p.add_argument(
        "--table", default="app.drill", help="table the drill writes to (default app.drill)"
    )
    p.add_argument(
        "--client-timeout",
        type=float,
        default=2.0,
        help="connect/query timeout of the drill's clients, seconds (default 2)",
    )


def _several_clusters_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clusters",
        type=int,
        default=1,
        help="several clusters (2 to 4) behind the sandbox's one router, ONE controller process "
        "for all: --fault kill kills every primary at once and reports each cluster's failover "
        "and write outage (default 1)",
    )
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="the cluster to drill when the settings hold several (required then)",
    )


def _real_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Drilling a real cluster instead of the sandbox (``--config``)."""
    p.add_argument("--config", metavar="FILE", help="drill a real cluster with these settings")
    p.add_argument(
        "--yes-kill-the-primary",
        action="store_true",
        help="required with --config: the drill kills or freezes that cluster's primary",
    )
    p.add_argument("--writer", metavar="HOST:PORT", help="with --config: the router's writer")
    p.add_argument("--reader", metavar="HOST:PORT", help="with --config: the router's reader")
    p.add_argument("--app-user", help="with --config: the application user")
    p.add_argument(
        "--app-password-file",
        type=Path,
        help=f"with --config: file holding the application password (or ${PASSWORD_ENV})",
    )


def add_network_options(p: argparse.ArgumentParser) -> None:
    """Options of the faults on the sandbox's own network."""
    p.add_argument(
        "--hold",
        type=float,
        default=20.0,
        help="seconds a flap, degrade or partition-controller lasts",
    )
    p.add_argument(
        "--flap-period",
        type=float,
        default=0.3,
        help="flap: seconds up between cuts; cuts last 1 to 6 times as long in turn",
    )
    p.add_argument("--loss", type=float, default=20.0, help="degrade: percent of packets lost")
    p.add_argument(
        "--delay", type=float, default=0.0, help="degrade: ms added each way (needs tc netem)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.fault == "chaos":
            from hacontrol.drill.chaos_cli import job as chaos_job

            job = chaos_job(args, progress, sandbox_access)
        elif args.duration is not None or args.seed is not None:
            raise UsageError("--duration and --seed go with --fault chaos")
        else:
            job = drill_job(args)
    except (UsageError, ValueError) as exc:
        print(f"hacontrol drill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_loop(job)
    except UsageError as exc:
        print(f"hacontrol drill: {exc}", file=sys.stderr)
        return EXIT_USAGE


def drill_job(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    plan = DrillPlan(
        fault=args.fault,
        runs=args.runs,
        hold=args.hold,
        flap_period=args.flap_period,
        loss=args.loss,
        delay_ms=args.delay,
    )
    if args.clusters != 1:
        from hacontrol.drill.clusters import check_options, clusters_job

        if reason := check_options(args):
            raise UsageError(reason)
        return clusters_job(args, progress, machine)
    if args.controllers != 1:
        from hacontrol.drill.fleet import fleet_drill

        if args.fault in NETWORK_FAULTS:
            raise UsageError(f"--fault {args.fault} is not offered with --controllers yet")
        return fleet_drill(args, plan, progress=progress, machine=machine)
    if args.fault in LEADER_FAULTS:
        raise UsageError(f"--fault {args.fault} needs a fleet: add --controllers 3")
    if args.config is not None:
        return config_drill(args, plan)
    if args.fault == "partition" and (reason := partition_unavailable()):
        raise UsageError(f"--fault partition is not possible here: {reason}")
    if args.fault in NETWORK_FAULTS and (reason := netns_unavailable()):
        raise UsageError(f"--fault {args.fault} needs hosts of its own: {reason}")
    return sandbox_drill(args, plan)


def run_loop(job: Coroutine[Any, Any, int]) -> int:
    """On uvloop when installed, like ``hacontrol run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(job)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(job)


# ---- settings ----------------------------------------------------------------------------------


def drill_settings(
    path: str | Path, interval: float | None, timing: str = "own", cluster: str | None = None
) -> Settings:
    """The settings file (with HACONTROL_* overrides), the probe interval given, re-checked.
    ``timing="defaults"``: its [probes] and [failover] replaced by the defaults (those of the
    example settings.toml), to measure what a new install gets. ``cluster``: the one to drill
    when the file holds several (``--cluster``; required then)."""
    try:
        settings = load_settings(path).pick(cluster)
    except SettingsError as exc:
        raise UsageError("settings error: " + "; ".join(exc.problems)) from None
    if timing == "defaults":
        settings = default_timing(settings)
    if interval is not None:
        probes = settings.probes
        update: dict[str, Any] = {"interval": interval}
        if probes.timeout >= interval:
            update["timeout"] = round(interval * 0.8, 3)
        settings = settings.model_copy(update={"probes": probes.model_copy(update=update)})
        errors, _ = check(settings)
        if errors:
            raise UsageError("with --interval: " + "; ".join(errors))
    return settings


def default_timing(settings: Settings) -> Settings:
    """The settings with the probes' and the failover's defaults instead of their own."""
    return settings.model_copy(update={"probes": ProbeSettings(), "failover": FailoverSettings()})


def refuse_if_controller_running(settings: Settings) -> None:
    from hacontrol.sandbox.procs import port_is_free

    api = settings.api
    if not api.enabled or api.port == 0:
        return
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1"}.get(api.host, api.host)
    if not port_is_free(api.port, host):
        raise UsageError(
            f"the controller API port {host}:{api.port} is in use: another controller is "
            "probably running on this cluster (two controllers must never manage one "
            "cluster); stop it before the drill"
        )


def address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"{option} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


# ---- the two targets ---------------------------------------------------------------------------


def config_drill(args: argparse.Namespace, plan: DrillPlan) -> Coroutine[Any, Any, int]:
    if not args.yes_kill_the_primary:
        raise UsageError(
            "--config drills a real cluster: its primary is killed, frozen or switched over. "
            "Add --yes-kill-the-primary to confirm"
        )
    if args.fault == "partition" or args.fault in NETWORK_FAULTS:
        raise UsageError(f"--fault {args.fault} is offered for the sandbox only")
    if args.dir is not None:
        raise UsageError("--dir and --config exclude each other")
    if args.router is not None:
        raise UsageError("--router is for the sandbox; with --config the settings name it")
    missing = [o for o, v in (("--writer", args.writer), ("--app-user", args.app_user)) if not v]
    if missing:
        raise UsageError(f"with --config, give {' and '.join(missing)} (the application's view)")
    password = os.environ.get(PASSWORD_ENV)
    if args.app_password_file is not None:
        try:
            password = args.app_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--app-password-file: {exc.strerror}") from None
    if password is None:
        raise UsageError(f"with --config, give --app-password-file or ${PASSWORD_ENV}")
    settings = drill_settings(args.config, args.interval, args.settings, args.cluster)
    refuse_if_controller_running(settings)
    writer = address(args.writer, "--writer")
    access = Access(
        writer=writer,
        reader=address(args.reader, "--reader") if args.reader else writer,
        user=args.app_user,
        password=password,
        table=args.table,
        timeout=args.client_timeout,
    )
    faults = LocalFaults({n.name: n.port for n in settings.nodes})
    return drive(
        settings, access, faults, plan, Outputs(args.json, args.log), acknowledge_block=False
    )


def sandbox_drill(args: argparse.Namespace, plan: DrillPlan) -> Coroutine[Any, Any, int]:
    async def job() -> int:
        from hacontrol.sandbox import Sandbox, SandboxError, SandboxSpec, find_free_base_port

        netns = plan.fault in NETWORK_FAULTS

        def make(directory: Path) -> Sandbox:
            if netns:
                progress("the sandbox on hosts of its own")
            spec = SandboxSpec(
                dir=directory, base_port=find_free_base_port(8), router=args.router, netns=netns
            )
            return Sandbox(spec)

        try:
            async with drill_sandbox(args.dir, make, progress) as sandbox:
                kind = sandbox.status().router.kind
                if args.router is not None and kind != args.router:
                    raise UsageError(f"the sandbox in {sandbox.dir} runs {kind}, not {args.router}")
                progress(f"load through {kind}")
                info = sandbox.status()
                if netns and not info.netns:
                    raise UsageError(
                        f"--fault {plan.fault}: the sandbox in {sandbox.dir} has no --netns"
                    )
                settings = drill_settings(info.settings, args.interval, args.settings, args.cluster)
                with controller_host(sandbox, info.netns):
                    refuse_if_controller_running(settings)
                    return await drive(
                        settings,
                        sandbox_access(sandbox, args.table, args.client_timeout, args.cluster),
                        SandboxFaults(sandbox),
                        plan,
                        Outputs(args.json, args.log),
                        acknowledge_block=True,
                    )
        except SandboxError as exc:
            print(f"hacontrol drill: sandbox: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return job()


def controller_host(sandbox: Any, netns: bool) -> contextlib.AbstractContextManager[None]:
    """The in-process controller on the sandbox's controller host (this thread's sockets are
    opened in its network namespace), or right here without --netns."""
    from hacontrol.sandbox.netns import CONTROLLER_HOST

    return sandbox.network().entered(CONTROLLER_HOST) if netns else contextlib.nullcontext()


def sandbox_access(
    sandbox: Any, table: str = "app.drill", timeout: float = 2.0, cluster: str | None = None
) -> Access:
    """The application as it reaches the router: its ports, or with --netns its unix sockets
    (an application on the router's host, next to its ProxySQL). ``cluster`` (a sandbox of
    several): that cluster's application user and ports."""
    if cluster is not None and sandbox.status().clusters:
        from hacontrol.drill.clusters import cluster_access

        return cluster_access(sandbox, sandbox.status().cluster(cluster), table, timeout)
    router = sandbox.status().router
    return Access(
        writer=router.writer_socket or (router.host, router.writer_port),
        reader=router.reader_socket or (router.host, router.reader_port),
        user="app",
        password=sandbox.password("app"),
        table=table,
        timeout=timeout,
    )


# ---- running and reporting ---------------------------------------------------------------------


def progress(line: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"drill {stamp} {line}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def drive(
    settings: Settings,
    access: Access,
    faults: Any,
    plan: DrillPlan,
    outputs: Outputs,
    *,
    acknowledge_block: bool,
    out: Callable[[str], None] = print,
) -> int:
    drill = Drill(
        settings,
        access,
        faults,
        plan,
        progress=progress,
        on_result=lambda r: out(report.render_run(r) + "\n"),
        acknowledge_block=acknowledge_block,
    )
    started = time.monotonic()
    failure = await attempt(drill.run(), progress)
    runs = drill.results
    out(report.render_summary(runs))
    if outputs.log is not None:
        lines = (
            json.dumps({k: v for k, v in r.items() if k != "_mono"}) for r in drill.capture.records
        )
        outputs.log.write_text("".join(line + "\n" for line in lines))
    json_path = outputs.json
    if json_path is not None:
        used = {
            **settings_summary(settings),
            "fault": plan.fault,
            "runs": plan.runs,
            "client_timeout": access.timeout,
            "write_period": plan.period,
        }
        write_figures(json_path, runs, used, machine(), failure, time.monotonic() - started)
        progress(f"figures written to {json_path}")
    return EXIT_OK if failure is None and report.exit_code(runs) == 0 else EXIT_FAILED
