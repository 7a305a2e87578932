"""`hacontrol sandbox up|down|status`.

Exit codes: 0 success; `up` on a sandbox that is already running prints so, changes nothing
and exits 0 (the wanted state holds; scripts can call `up` unconditionally); 1 on any error
(busy port, missing binary, a node that fails to start), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from hacontrol.sandbox import netns_cli
from hacontrol.sandbox.cluster import Sandbox, router_name
from hacontrol.sandbox.model import (
    DEFAULT_BASE_PORT,
    MAX_CLUSTERS,
    AlreadyRunningError,
    ClusterInfo,
    RouterInfo,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
)


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "sandbox",
        help="local test cluster: mariadbd nodes and a router on 127.0.0.1",
        description="Run a local MariaDB replication cluster behind ProxySQL (when a proxysql "
        "binary is on PATH) or HAProxy, for tests and drills.",
    )
    parser.add_argument(
        "action", choices=["up", "down", "status", *netns_cli.ACTIONS, *NODE_ACTIONS]
    )
    parser.add_argument(
        "--nodes", type=int, default=3, help="number of nodes (per cluster; default 3)"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"first node port (default {DEFAULT_BASE_PORT}, away from 3306); nodes use "
        "base..base+N-1, then the router writer, reader and admin ports",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("./sandbox"), help="sandbox directory (./sandbox)"
    )
    add_router_argument(parser, "the router in front of the nodes")
    parser.add_argument(
        "--routers",
        type=int,
        default=1,
        help="routers in front of the nodes, each with ports of its own (default 1; a fleet)",
    )
    parser.add_argument(
        "--controllers",
        type=int,
        default=0,
        help="controllers to start with the sandbox, controller i next to router i, each with "
        "its own API port, journal and log (default 0: run one yourself; docs/fleet.md)",
    )
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument(
        "--node", help="stop-node / start-node: the node (start-node: read-only, for a rebuild)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS everywhere with a CA of its own (nodes, replication, the controller's "
        "connections with a client certificate, ProxySQL's admin, the API)",
    )
    netns_cli.add_arguments(parser)
    add_clusters_argument(parser)
    parser.set_defaults(func=run)


def add_router_argument(parser: argparse.ArgumentParser, what: str, then: str = "") -> None:
    """``--router``: the sandbox's router kind, ProxySQL by default when it is on PATH."""
    parser.add_argument(
        "--router",
        choices=["proxysql", "haproxy"],
        help=f"{what} (default: proxysql when on PATH, else haproxy){then}",
    )


def add_clusters_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clusters",
        type=int,
        default=1,
        help=f"clusters of --nodes nodes each behind the one router, named c1, c2 ... (1 to "
        f"{MAX_CLUSTERS}; default 1: one cluster named sandbox); ProxySQL routes each "
        "cluster's application user (app_c1 ...) to its own hostgroups (10/20/30/40, "
        "110/120/130/140 ...), HAProxy gives each cluster writer and reader ports of its own",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            spec = SandboxSpec(
                dir=args.dir,
                nodes=args.nodes,
                base_port=args.base_port,
                router=args.router,
                tls=args.tls,
                routers=args.routers,
                controllers=args.controllers,
                netns=args.netns,
                clusters=args.clusters,
            )
            return cmd_up(Sandbox(spec))
        if args.action in netns_cli.ACTIONS:
            return netns_cli.run(args.dir, args)
        sandbox = Sandbox.at(args.dir)
        if args.action in NODE_ACTIONS:
            return cmd_node(sandbox, args.action, args.node)
        if args.action == "down":
            return cmd_down(sandbox)
        return cmd_status(sandbox, as_json=args.json)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1


NODE_ACTIONS = ("stop-node", "start-node")


def cmd_node(sandbox: Sandbox, action: str, node: str | None) -> int:
    """Stop a node and wait until its process is gone, or start it read-only and wait until it
    answers: the sandbox's stop/start commands for a rebuild (settings ``[rebuild]``)."""
    from hacontrol.actions.rebuild import SandboxControl

    names = [n.name for n in sandbox.status().nodes]
    if node not in names:
        print(f"sandbox: {action} needs --node, one of {', '.join(names)}", file=sys.stderr)
        return 1
    control = SandboxControl(sandbox)
    asyncio.run(control.stop(node) if action == "stop-node" else control.start(node))
    print(f"{node} {'stopped' if action == 'stop-node' else 'started read-only'}")
    return 0


def cmd_up(sandbox: Sandbox) -> int:
    try:
        info = asyncio.run(sandbox.up())
    except AlreadyRunningError as exc:
        print(f"sandbox: {exc}")
        print(describe(exc.info, sandbox.process_states()))
        return 0
    print(f"sandbox up in {info.up_seconds:.2f} s")
    print(describe(info, sandbox.process_states()))
    return 0


def cmd_down(sandbox: Sandbox) -> int:
    if asyncio.run(sandbox.down()):
        print(f"sandbox in {sandbox.dir} stopped and removed")
    else:
        print(f"no sandbox in {sandbox.dir}; nothing to do")
    return 0


def cmd_status(sandbox: Sandbox, *, as_json: bool) -> int:
    info = sandbox.status()
    states = sandbox.process_states()
    roles = asyncio.run(sandbox.live_roles())
    if as_json:
        print(json.dumps(status_document(info, states, roles), indent=2))
    else:
        print(describe(info, states, roles))
    return 0


def status_document(
    info: SandboxInfo, states: dict[str, str], live_roles: dict[str, str]
) -> dict[str, Any]:
    """The `status --json` shape. `role` is the role given at `up`; `live_role` is probed now."""
    router = info.router
    return {
        "settings": info.settings,
        "dir": info.dir,
        "nodes": [
            {
                "name": n.name,
                "host": n.host,
                "port": n.port,
                "pid": n.pid,
                "role": n.role,
                "live_role": live_roles.get(n.name, "unknown"),
                "process": states[n.name],
                "config": n.config,
                "datadir": n.datadir,
                "socket": n.socket,
            }
            for n in info.nodes
        ],
        "router": router_document(router, states["router"]),
        "routers": [router_document(r, states[router_name(i)]) for i, r in enumerate(info.routers)],
        "controllers": [
            {
                "name": c.name,
                "router": c.router + 1,
                "api": f"http://127.0.0.1:{c.api_port}",
                "pid": c.pid,
                "process": states[c.name],
                "settings": c.settings,
                "log": c.log,
            }
            for c in info.controllers
        ],
        "clusters": [cluster_document(c) for c in info.clusters],
        "network": netns_cli.document(info.dir),
        "users": {
            role: {"user": c.user, "password": c.password(), "password_file": c.password_file}
            for role, c in info.users.items()
        },
    }


def cluster_document(cluster: ClusterInfo) -> dict[str, Any]:
    """A cluster of a sandbox of several (``--clusters``): where its application connects."""
    return {
        "name": cluster.name,
        "nodes": list(cluster.nodes),
        "hostgroups": cluster.hostgroups,
        "writer_backend": cluster.writer_backend,
        "reader_backend": cluster.reader_backend,
        "writer_port": cluster.writer_port,
        "reader_port": cluster.reader_port,
        "app": {
            "user": cluster.app.user,
            "password": cluster.app.password(),
            "password_file": cluster.app.password_file,
        },
    }


def router_document(router: RouterInfo, process: str) -> dict[str, Any]:
    return {
        "kind": router.kind,
        "host": router.host,
        "writer_port": router.writer_port,
        "reader_port": router.reader_port,
        "admin": router.admin,
        "admin_tcp": f"{router.host}:{router.admin_port}",
        "pid": router.pid,
        "process": process,
        "config": router.config,
        "writer_socket": router.writer_socket,
        "reader_socket": router.reader_socket,
        "admin_socket": router.admin_socket,
    }


def describe(
    info: SandboxInfo, states: dict[str, str], live_roles: dict[str, str] | None = None
) -> str:
    router = info.router
    rows = [("node", "address", "pid", "role at up", "now", "process")]
    rows += [
        (
            n.name,
            f"{n.host}:{n.port}",
            str(n.pid),
            n.role,
            (live_roles or {}).get(n.name, "-"),
            states[n.name],
        )
        for n in info.nodes
    ]
    if info.clusters:
        rows = [(*row, cluster) for row, cluster in zip(rows, cluster_column(info), strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    app = info.users["app"]
    routers = [
        f"{r.kind}{'' if i == 0 else f' {i + 1}'} (pid {r.pid}, {states[router_name(i)]}): "
        f"writer {r.host}:{r.writer_port}, reader {r.host}:{r.reader_port}, admin "
        + (f"{r.admin} and {r.host}:{r.admin_port}" if r.kind == "haproxy" else r.admin)
        for i, r in enumerate(info.routers)
    ]
    controllers = [
        f"controller {c.name} (pid {c.pid}, {states[c.name]}) next to router {c.router + 1}: "
        f"API http://127.0.0.1:{c.api_port}, log {c.log}"
        for c in info.controllers
    ]
    where = (
        f"-S {router.writer_socket}"
        if router.writer_socket
        else f"-h {router.host} -P {router.writer_port}"
    )
    if info.clusters:
        return "\n".join([*table, *routers, *describe_clusters(info)])
    return "\n".join(
        [
            *table,
            *routers,
            *controllers,
            f"controller settings: {info.settings}",
            *(
                [
                    f"TLS: CA {info.tls}/ca.pem; nodes, replication, the controller "
                    "(client certificate), ProxySQL's admin and the API"
                ]
                if info.tls
                else []
            ),
            f'connect as app: mariadb {where} -u {app.user} -p"$(cat {app.password_file})" app',
            *netns_cli.describe(info.dir),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def cluster_column(info: SandboxInfo) -> list[str]:
    """The "cluster" column of the node table (its heading first)."""
    names = []
    for node in info.nodes:
        cluster = info.cluster_of(node.name)
        names.append(cluster.name if cluster else "-")
    return ["cluster", *names]


def describe_clusters(info: SandboxInfo) -> list[str]:
    """Per cluster of a sandbox of several: its hostgroups or backends and how to connect."""
    router = info.router
    lines = []
    for c in info.clusters:
        if router.kind == "proxysql":
            routing = "hostgroups " + "/".join(str(hg) for hg in c.hostgroups.values())
        else:
            routing = f"backends {c.writer_backend}/{c.reader_backend}"
        lines.append(
            f"cluster {c.name}: {', '.join(c.nodes)}; {routing}; writer {router.host}:"
            f"{c.writer_port}, reader {router.host}:{c.reader_port} as {c.app.user}: "
            f"mariadb -h {router.host} -P {c.writer_port} -u {c.app.user} "
            f'-p"$(cat {c.app.password_file})" app'
        )
    return [*lines, f"controller settings ([[clusters]]): {info.settings}"]
