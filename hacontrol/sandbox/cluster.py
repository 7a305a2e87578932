"""The sandbox: N mariadbd nodes (node1 primary, the rest semi-sync GTID replicas) and a router."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomysql
import pymysql

from hacontrol.sandbox import fleet, procs, render
from hacontrol.sandbox.model import (
    CONTROLLERS_DIR,
    HAPROXY_SOCKET,
    HOST,
    PROXYSQL_ADMIN_SECRET,
    ROUTER_DIR,
    SECRETS_DIR,
    SETTINGS_FILE,
    STATE_DIR,
    STATE_FILE,
    AlreadyRunningError,
    ClusterInfo,
    ControllerInfo,
    Credentials,
    NodeInfo,
    RouterInfo,
    RouterKind,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
)
from hacontrol.sandbox.netns import router_host
from hacontrol.sandbox.netns_host import Network
from hacontrol.sandbox.netns_host import unavailable as netns_unavailable
from hacontrol.sandbox.procs import find_binary
from hacontrol.sandbox.tls import SandboxTls, make_tls

READY_TIMEOUT = 30.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hacontrol" / "sandbox"


class Sandbox:
    """One sandbox directory. All state lives on disk (sandbox.json), so any process can manage
    a sandbox another one started: the CLI `up`, a test's `kill_node`, the CLI `down`."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.dir = spec.dir.resolve()

    @classmethod
    def at(cls, directory: Path) -> Sandbox:
        return cls(SandboxSpec(dir=directory))

    # ---- inspection -------------------------------------------------------------------------

    def info(self) -> SandboxInfo | None:
        return SandboxInfo.load(self.dir)

    def status(self) -> SandboxInfo:
        info = self.info()
        if info is None:
            raise SandboxError(f"no sandbox in {self.dir} (no {STATE_FILE})")
        return info

    def process_states(self) -> dict[str, str]:
        """'running' / 'stopped' / 'dead' per node name, for 'router' (and 'router2' ... with
        several) and per controller the sandbox started ('c1' ...)."""
        info = self.status()
        states = {n.name: procs.process_state(n.pid, n.config) for n in info.nodes}
        for i, router in enumerate(info.routers):
            states[router_name(i)] = procs.process_state(router.pid, router.config)
        for controller in info.controllers:
            states[controller.name] = procs.process_state(controller.pid, controller.settings)
        return states

    def is_running(self) -> bool:
        info = self.info()
        return info is not None and any(s != "dead" for s in self.process_states().values())

    def node_pid(self, name: str) -> int | None:
        """The node's pid while its process exists (running or stopped), else None."""
        node = self.status().node(name)
        return node.pid if procs.is_alive(node.pid, node.config) else None

    def router_pid(self) -> int | None:
        router = self.status().router
        return router.pid if procs.is_alive(router.pid, router.config) else None

    def password(self, role: str) -> str:
        """Password of 'app', 'controller', 'replication', 'monitor', 'root', or 'proxysql'
        (the ProxySQL admin user's, when ProxySQL is the router)."""
        if role == "proxysql":
            return read_secret(self.dir / SECRETS_DIR / PROXYSQL_ADMIN_SECRET)
        info = self.status()
        creds = info.root if role == "root" else info.users[role]
        assert creds is not None
        return creds.password()

    async def connect(
        self, target: str, role: str = "app", cluster: str | None = None, **kwargs: Any
    ) -> aiomysql.Connection:
        """A connection as `role` to a node name, or to the router's 'writer' / 'reader' port.

        ``cluster`` (a sandbox of several): the writer/reader of that cluster, and "app" its
        application user (the first cluster's when not given)."""
        info = self.status()
        user, password = self._login(info, role, cluster)
        if target in ("writer", "reader"):
            port = info.router.writer_port if target == "writer" else info.router.reader_port
            if cluster is not None:
                own = info.cluster(cluster)
                port = own.writer_port if target == "writer" else own.reader_port
            host = info.router.host
            socket = info.router.writer_socket if target == "writer" else info.router.reader_socket
        else:
            node = info.node(target)
            host, port, socket = node.host, node.port, node.socket
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 2)
        if info.netns:  # the hosts' addresses are not reachable from here: their unix sockets
            kwargs.setdefault("unix_socket", socket)
        tls = self.tls(info)
        if tls is not None and target not in ("writer", "reader"):
            kwargs.setdefault("ssl", tls.client_context())  # the users REQUIRE it on the nodes
        return await aiomysql.connect(host=host, port=port, user=user, password=password, **kwargs)

    def _login(self, info: SandboxInfo, role: str, cluster: str | None) -> tuple[str, str]:
        if role == "app" and cluster is not None:
            app = info.cluster(cluster).app
            return app.user, app.password()
        return ("root" if role == "root" else info.users[role].user), self.password(role)

    def network(self) -> Network:
        """The sandbox's own network (``--netns``): partitions, hosts, ``ip netns exec``."""
        network = Network.load(self.dir)
        if network is None:
            raise SandboxError(f"the sandbox in {self.dir} has no network of its own (--netns)")
        return network

    @staticmethod
    def tls(info: SandboxInfo) -> SandboxTls | None:
        """The sandbox's certificates when it runs with TLS (``--tls``)."""
        return SandboxTls(Path(info.tls)) if info.tls else None

    async def live_roles(self, timeout: float = 1.0) -> dict[str, str]:
        """What each node is now: 'primary', 'replica', 'writable-replica' or 'unreachable'."""

        async def probe(name: str) -> str:
            try:
                async with asyncio.timeout(timeout):
                    conn = await self.connect(name, "controller", connect_timeout=timeout)
                    try:
                        async with conn.cursor() as cur:
                            await cur.execute("SELECT @@read_only")
                            (read_only,) = await cur.fetchone()
                            await cur.execute("SHOW ALL SLAVES STATUS")
                            replicating = bool(await cur.fetchall())
                    finally:
                        conn.close()
            except (TimeoutError, OSError, pymysql.MySQLError):
                return "unreachable"
            if replicating:
                return "replica" if read_only else "writable-replica"
            return "primary"

        names = [n.name for n in self.status().nodes]
        return dict(zip(names, await asyncio.gather(*(probe(n) for n in names)), strict=True))

    # ---- up ---------------------------------------------------------------------------------

    async def up(self) -> SandboxInfo:
        """Build and start the sandbox. Raises AlreadyRunningError (nothing changed) or
        PortBusyError (before anything started)."""
        started = time.monotonic()
        existing = self.info()
        if existing is not None:
            if self.is_running():
                raise AlreadyRunningError(existing)
            await self.down()  # leftovers of a sandbox whose processes all died
            if not self.spec.netns:  # one killed a moment ago may still hold its socket
                for port, purpose in self.spec.ports():
                    await procs.wait_port_free(port, purpose, timeout=SIGNAL_TAKES_EFFECT)
        if self.spec.netns and (reason := netns_unavailable()):
            raise SandboxError(f"--netns: {reason}")
        if not self.spec.netns:  # with --netns the ports are on the sandbox's own hosts
            procs.check_ports(self.spec.ports())
        binaries = self._binaries()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_socket_paths()
        template = await ensure_template(
            self.spec.cache_dir or default_cache_dir(), binaries["mariadbd"]
        )
        try:
            if self.spec.netns:
                await asyncio.to_thread(Network.for_sandbox(self.dir, self.spec).create)
            info = await self._prepare(template)
            info = self._spawn_all(info, binaries)
            await self._configure(info)
            await self._wait_routers(info)
            info = self._write_settings(info)
            info = await fleet.start_controllers(info)
            info = replace(info, up_seconds=round(time.monotonic() - started, 2))
            info.save()
        except BaseException:
            await self.down()
            raise
        return info

    def _binaries(self) -> dict[str, str]:
        kind = self._router_kind()
        needed = ["mariadbd", "mariadb-install-db", kind]
        found = {name: find_binary(name) for name in needed}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise SandboxError(f"not installed: {', '.join(missing)}")
        return {name: path for name, path in found.items() if path is not None}

    def _router_kind(self) -> RouterKind:
        if self.spec.router is not None:
            return self.spec.router
        return "proxysql" if shutil.which("proxysql") else "haproxy"

    def _check_socket_paths(self) -> None:
        longest = self.dir / f"node{self.spec.total_nodes}" / "mysqld.sock"
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise SandboxError(f"sandbox directory path too long for unix sockets: {self.dir}")

    def _host(self, name: str) -> str:
        """Where a node or the router listens: its own host's address with --netns."""
        return Network.load(self.dir).address(name) if self.spec.netns else HOST  # type: ignore[union-attr]

    def _prefix(self, name: str, info: SandboxInfo) -> list[str] | None:
        """How to start a program on that host (``ip netns exec``), or None on this one."""
        return self.network().prefix(name) if info.netns else None

    async def _prepare(self, template: Path) -> SandboxInfo:
        """Secrets, configs and datadirs (copies of the template); nothing runs yet."""
        spec, root = self.spec, os.geteuid() == 0
        secrets_dir = self.dir / SECRETS_DIR
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        users = {
            role: Credentials(user, str(write_secret(secrets_dir / f"{user}.password")))
            for role, user in render.USERS.items()
        }
        root_creds = Credentials("root", str(write_secret(secrets_dir / "root.password")))
        nodes = tuple(
            NodeInfo(
                name=spec.node_name(i),
                host=self._host(spec.node_name(i)),
                port=spec.node_port(i),
                pid=None,
                role="primary" if i % spec.nodes == 0 else "replica",
                server_id=i + 1,
                node_dir=str(self.dir / spec.node_name(i)),
                config=str(self.dir / spec.node_name(i) / "my.cnf"),
            )
            for i in range(spec.total_nodes)
        )
        clusters = self._clusters(secrets_dir)
        if clusters:  # "app" is the first cluster's application user
            users["app"] = clusters[0].app
        tls = await asyncio.to_thread(make_tls, self.dir) if spec.tls else None
        write_node_configs(nodes, run_as_root=root, tls=tls, per_cluster=spec.nodes)
        await asyncio.gather(
            *(asyncio.to_thread(shutil.copytree, template, n.datadir) for n in nodes)
        )
        if self._router_kind() == "proxysql":
            write_secret(secrets_dir / PROXYSQL_ADMIN_SECRET)  # one admin password for all
        routers = [
            self._write_router_config(nodes, users, secrets_dir, tls, i, clusters)
            for i in range(self.spec.routers)
        ]
        info = SandboxInfo(
            dir=str(self.dir),
            settings=str(self.dir / SETTINGS_FILE),
            nodes=nodes,
            router=routers[0],
            users=users,
            root=root_creds,
            tls=str(tls.folder) if tls else None,
            more_routers=tuple(routers[1:]),
            netns=spec.netns,
            clusters=clusters,
        )
        info.save()
        return info

    def _clusters(self, secrets_dir: Path) -> tuple[ClusterInfo, ...]:
        """With ``--clusters N`` (N > 1): each cluster's nodes, hostgroups, backends, ports and
        application user (a password of its own)."""
        spec = self.spec
        if spec.clusters == 1:
            return ()
        clusters = []
        shared = self._router_kind() == "proxysql"  # it routes by user, on its own two ports
        for k in range(spec.clusters):
            name = spec.cluster_name(k)
            user = render.app_user(name, spec.clusters)
            port = 0 if shared else k
            clusters.append(
                ClusterInfo(
                    name=name,
                    nodes=tuple(spec.node_name(i) for i in spec.cluster_nodes(k)),
                    hostgroups=render.hostgroups(k),
                    writer_backend=f"writer_{name}",
                    reader_backend=f"readers_{name}",
                    writer_port=spec.cluster_port(port, 0),
                    reader_port=spec.cluster_port(port, 1),
                    app=Credentials(user, str(write_secret(secrets_dir / f"{user}.password"))),
                )
            )
        return tuple(clusters)

    def _write_router_config(
        self,
        nodes: tuple[NodeInfo, ...],
        users: dict[str, Credentials],
        secrets_dir: Path,
        tls: SandboxTls | None,
        index: int = 0,
        clusters: tuple[ClusterInfo, ...] = (),
    ) -> RouterInfo:
        spec, kind = self.spec, self._router_kind()
        router_dir = self.dir / router_dir_name(index)
        router_dir.mkdir(exist_ok=True)
        config = router_dir / ("haproxy.cfg" if kind == "haproxy" else "proxysql.cnf")
        admin_port = spec.router_port(index, 2)
        socket = HAPROXY_SOCKET if index == 0 else f"haproxy{index + 1}.sock"
        host = self._host(router_host(index))
        router = RouterInfo(
            kind=kind,
            host=host,
            writer_port=spec.router_port(index, 0),
            reader_port=spec.router_port(index, 1),
            admin=str(self.dir / socket) if kind == "haproxy" else f"{host}:{admin_port}",
            admin_port=admin_port,
            pid=None,
            config=str(config),
            **(router_sockets(router_dir, kind) if spec.netns else {}),
        )
        if kind == "haproxy":
            config.write_text(render.haproxy_cfg(nodes, router, clusters))
        else:
            admin_pw = read_secret(secrets_dir / PROXYSQL_ADMIN_SECRET)
            config.write_text(
                render.proxysql_cnf(
                    nodes,
                    router,
                    datadir=str(router_dir),
                    admin_password=admin_pw,
                    app_password=users["app"].password(),
                    monitor_password=users["monitor"].password(),
                    tls=tls is not None,
                    clusters=clusters,
                    app_passwords={c.app.user: c.app.password() for c in clusters},
                )
            )
            if tls is not None:
                tls.install_for_proxysql(router_dir)
        return router

    def _write_settings(self, info: SandboxInfo) -> SandboxInfo:
        """The sandbox's settings.toml (the first router), and those of the controllers it
        starts (``--controllers``): each its own router, API port, journal and instance id."""
        proxysql_pw = self.dir / SECRETS_DIR / PROXYSQL_ADMIN_SECRET
        assert info.root is not None
        common = {
            "controller_password_file": info.users["controller"].password_file,
            "replication_password_file": info.users["replication"].password_file,
            "proxysql_password_file": str(proxysql_pw) if proxysql_pw.exists() else None,
            "api_token_file": str(write_secret(self.dir / SECRETS_DIR / "api.token")),
            "rebuild": render.RebuildAccess(str(self.dir), info.root.password_file, sys.executable),
        }
        text = render.settings_toml(
            info.nodes,
            info.router,
            api_port=self.spec.api_port,
            journal=str(self.dir / STATE_DIR / "journal.jsonl"),
            tls=self.tls(info),
            clusters=info.clusters,
            **common,
        )
        Path(info.settings).write_text(text)
        controllers = []
        for i in range(self.spec.controllers):
            name = f"c{i + 1}"
            folder = self.dir / CONTROLLERS_DIR / name
            folder.mkdir(parents=True, exist_ok=True)
            api_port = self.spec.router_port(i, 3)
            settings = folder / SETTINGS_FILE
            settings.write_text(
                render.settings_toml(
                    info.nodes,
                    info.routers[i],
                    api_port=api_port,
                    journal=str(folder / "journal.jsonl"),
                    instance_id=name,
                    **common,
                )
            )
            log = str(folder / "hacontrol.log")
            controllers.append(ControllerInfo(name, i, str(settings), log, api_port, None))
        info = replace(info, controllers=tuple(controllers))
        info.save()
        return info

    def _spawn_all(self, info: SandboxInfo, binaries: dict[str, str]) -> SandboxInfo:
        for node in info.nodes:
            prefix = self._prefix(node.name, info)
            pid = self._spawn_node(node, binaries["mariadbd"], prefix=prefix)
            info = info.with_node_pid(node.name, pid)
            info.save()  # saved at once so that `down` finds it whatever happens next
        for i, router in enumerate(info.routers):
            argv = router_argv(binaries[router.kind], router, initial=True)
            log = Path(router.config).with_suffix(".log")
            pid = procs.spawn(argv, log, self._prefix(router_host(i), info))
            info = info.with_router_pid(i, pid)
            info.save()
        return info

    @staticmethod
    def _spawn_node(
        node: NodeInfo, mariadbd: str, *options: str, prefix: list[str] | None = None
    ) -> int:
        argv = [mariadbd, f"--defaults-file={node.config}", *options]
        return procs.spawn(argv, Path(node.node_dir) / "stdout.log", prefix)

    async def _configure(self, info: SandboxInfo) -> None:
        """Each cluster at once: users and schema on its primary, then its replicas attach."""
        if not info.clusters:
            await self._configure_cluster(info, info.nodes, info.users["app"])
            return
        await asyncio.gather(
            *(self._configure_cluster(info, info.nodes_of(c.name), c.app) for c in info.clusters)
        )

    async def _configure_cluster(
        self, info: SandboxInfo, nodes: tuple[NodeInfo, ...], app: Credentials
    ) -> None:
        """Users and schema on the primary (they replicate), then replicas attach and catch up."""
        conns = await asyncio.gather(*(wait_node_ready(n, "") for n in nodes))
        try:
            primary, replicas = conns[0], conns[1:]
            await execute(primary, "SET GLOBAL rpl_semi_sync_master_enabled = OFF")
            for user, host in await query(
                primary,
                "SELECT user, host FROM mysql.user WHERE user = '' "
                "OR (user = 'root' AND host <> 'localhost')",
            ):
                await execute(
                    primary, f"DROP USER {render.sql_string(user)}@{render.sql_string(host)}"
                )
            passwords = {role: c.password() for role, c in info.users.items()}
            passwords["app"] = app.password()
            assert info.root is not None
            tls = self.tls(info)
            for statement in render.setup_primary_sql(
                passwords, info.root.password(), tls=tls is not None, app=app.user
            ):
                await execute(primary, statement)
            (gtid_pos,) = (await query(primary, "SELECT @@gtid_binlog_pos"))[0]
            change = render.change_master_sql(nodes[0], passwords["replication"], tls)
            await asyncio.gather(
                *(
                    attach_replica(conn, node, change, gtid_pos)
                    for conn, node in zip(replicas, nodes[1:], strict=True)
                )
            )
            # Semi-sync was off while no replica listened, so setup did not wait for timeouts.
            if replicas:
                await execute(primary, "SET GLOBAL rpl_semi_sync_master_enabled = ON")
        finally:
            for conn in conns:
                conn.close()

    async def _wait_routers(self, info: SandboxInfo) -> None:
        await asyncio.gather(*(self._wait_router(router) for router in info.routers))

    async def _wait_router(self, router: RouterInfo) -> None:
        """Until the router answers: HAProxy's admin socket; ProxySQL's admin login and both
        traffic ports (ProxySQL opens its admin port before the traffic ports)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            if not procs.is_alive(router.pid, router.config):
                log = Path(router.config).with_suffix(".log")
                raise SandboxError(f"{router.kind} exited at start:\n{tail(log)}")
            try:
                await router_answers(router, self.dir)
                return
            except (OSError, pymysql.MySQLError):
                if loop.time() > deadline:
                    msg = f"{router.kind} did not start within {READY_TIMEOUT} s"
                    raise SandboxError(msg) from None
                await asyncio.sleep(0.02)

    # ---- node faults and restarts -----------------------------------------------------------

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to the node (SIGKILL, SIGSTOP, SIGCONT ...). False if it was not alive.

        Returns once the signal took effect for SIGKILL (gone), SIGSTOP (stopped) and SIGCONT
        (running): delivery is asynchronous, and a test checks the state right after.
        """
        node = self.status().node(name)
        return signal_and_wait(node.pid, node.config, sig)

    def kill_router(self, sig: int = signal.SIGKILL, index: int = 0) -> bool:
        """Send `sig` to a router process, like `kill_node`. False if it was not alive."""
        router = self.status().routers[index]
        return signal_and_wait(router.pid, router.config, sig)

    def kill_controller(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to a controller the sandbox started, like `kill_node`."""
        controller = self.status().controller(name)
        return signal_and_wait(controller.pid, controller.settings, sig)

    async def start_controller(self, name: str) -> int:
        """Start a controller again (after kill -9, say) with its settings, journal and log;
        returns the new pid once its API answers."""
        info = self.status()
        controller = info.controller(name)
        if procs.is_alive(controller.pid, controller.settings):
            raise SandboxError(f"{name} is already running (pid {controller.pid})")
        info = await fleet.start_controllers(info, only=name)
        info.save()
        return info.controller(name).pid or 0

    async def start_router(self, index: int = 0) -> int:
        """Restart a stopped router (after kill -9, say) and wait until it answers; returns the
        new pid. ProxySQL comes back from its proxysql.db (no --initial), as a production
        restart does: with whatever was last SAVEd TO DISK."""
        info = self.status()
        router = info.routers[index]
        if procs.is_alive(router.pid, router.config):
            raise SandboxError(f"{router.kind} is already running (pid {router.pid})")
        if not info.netns:
            await procs.wait_port_free(
                router.admin_port, f"{router.kind} admin", timeout=SIGNAL_TAKES_EFFECT
            )
        binary = find_binary(router.kind)
        if binary is None:
            raise SandboxError(f"not installed: {router.kind}")
        argv = router_argv(binary, router, initial=False)
        log = Path(router.config).with_suffix(".log")
        pid = procs.spawn(argv, log, self._prefix(router_host(index), info))
        info = info.with_router_pid(index, pid)
        info.save()
        await self._wait_router(info.routers[index])
        return pid

    async def start_node(self, name: str, *options: str) -> int:
        """Restart a node with its datadir and config (after kill -9, say); returns the new pid.

        ``options``: mariadbd options added after the config (``--read-only=ON``)."""
        info = self.status()
        node = info.node(name)
        if procs.is_alive(node.pid, node.config):
            raise SandboxError(f"{name} is already running (pid {node.pid})")
        if not info.netns:
            await procs.wait_port_free(node.port, f"mariadbd {name}", timeout=SIGNAL_TAKES_EFFECT)
        mariadbd = find_binary("mariadbd")
        if mariadbd is None:
            raise SandboxError("not installed: mariadbd")
        pid = self._spawn_node(node, mariadbd, *options, prefix=self._prefix(name, info))
        info = info.with_node_pid(name, pid)
        info.save()
        assert info.root is not None
        conn = await wait_node_ready(info.node(name), info.root.password())
        conn.close()
        return pid

    # ---- down -------------------------------------------------------------------------------

    async def down(self, grace: float = 5.0) -> bool:
        """Stop every process of the sandbox and remove what `up` created. False: no sandbox."""
        info = self.info()
        network = Network.load(self.dir)
        if info is None and network is None:
            return False
        if info is not None:
            await asyncio.gather(  # the controllers first: nothing acts while the rest stops
                *(procs.terminate(c.pid, c.settings, grace=grace) for c in info.controllers)
            )
            await asyncio.gather(
                *(procs.terminate(r.pid, r.config, grace=grace) for r in info.routers),
                *(procs.terminate(n.pid, n.config, grace=grace) for n in info.nodes),
            )
        if network is not None:  # after the processes: none is left on a host being removed
            await asyncio.to_thread(network.destroy)
        nodes = info.nodes if info is not None else ()
        routers = len(info.routers) if info is not None else 1
        for path in [Path(n.node_dir) for n in nodes] + [
            self.dir / SECRETS_DIR,
            *(self.dir / router_dir_name(i) for i in range(routers)),
            self.dir / STATE_DIR,
            self.dir / CONTROLLERS_DIR,
        ]:
            shutil.rmtree(path, ignore_errors=True)
        sockets = [HAPROXY_SOCKET, *(f"haproxy{i + 1}.sock" for i in range(1, routers))]
        for name in (*sockets, SETTINGS_FILE, STATE_FILE):
            (self.dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when empty: never remove what the sandbox did not create
        return True


# ---- helpers ----------------------------------------------------------------------------------


def router_name(index: int) -> str:
    """'router' for the first router, 'router2' ... for the others."""
    return "router" if index == 0 else f"router{index + 1}"


def router_dir_name(index: int) -> str:
    return ROUTER_DIR if index == 0 else f"{ROUTER_DIR}{index + 1}"


SIGNAL_TAKES_EFFECT = 10.0
"""Seconds a signalled process gets to reach its state: a killed mariadbd with a large buffer
pool on a loaded machine takes a while to be torn down (and to free its ports)."""


def signal_and_wait(pid: int | None, marker: str, sig: int) -> bool:
    """Send ``sig``; False when the process was not alive. For SIGKILL, SIGSTOP and SIGCONT,
    returns once it is dead, stopped or running again; SandboxError when it does not get there
    within SIGNAL_TAKES_EFFECT (the caller would otherwise act on a process still there)."""
    if not procs.send_signal(pid, marker, sig):
        return False
    expected = {signal.SIGKILL: "dead", signal.SIGSTOP: "stopped", signal.SIGCONT: "running"}
    state = expected.get(signal.Signals(sig))
    if state is not None and not procs.wait_state(pid, marker, state, SIGNAL_TAKES_EFFECT):
        msg = (
            f"process {pid} not {state} {SIGNAL_TAKES_EFFECT:g} s after {signal.Signals(sig).name}"
        )
        raise SandboxError(msg)
    return True


async def router_answers(router: RouterInfo, directory: Path) -> None:
    """Raises OSError / MySQLError until the router is ready for clients and the controller.
    With --netns (the router on its own host) through its unix sockets."""
    if router.kind == "haproxy":
        _, writer = await asyncio.open_unix_connection(router.admin)
        writer.close()
    else:
        password = read_secret(directory / SECRETS_DIR / PROXYSQL_ADMIN_SECRET)
        where: dict[str, Any] = (
            {"unix_socket": router.admin_socket}
            if router.admin_socket
            else {"host": router.host, "port": router.admin_port}
        )
        conn = await aiomysql.connect(user="admin", password=password, connect_timeout=1, **where)
        try:
            await execute(conn, "SELECT 1")
        finally:
            conn.close()
    if router.writer_socket and router.reader_socket:
        for path in (router.writer_socket, router.reader_socket):
            _, writer = await asyncio.open_unix_connection(path)
            writer.close()
        return
    if router.kind == "haproxy":
        return
    for port in (router.writer_port, router.reader_port):
        _, writer = await asyncio.open_connection(router.host, port)
        writer.close()


def router_sockets(router_dir: Path, kind: RouterKind) -> dict[str, str]:
    """With --netns: the unix sockets clients outside the sandbox's network use. ProxySQL has
    one for both (its rules send SELECTs to the readers) and one for its admin."""
    if kind == "haproxy":
        return {
            "writer_socket": str(router_dir / "writer.sock"),
            "reader_socket": str(router_dir / "readers.sock"),
        }
    app = str(router_dir / "app.sock")
    return {
        "writer_socket": app,
        "reader_socket": app,
        "admin_socket": str(router_dir / "admin.sock"),
    }


def router_argv(binary: str, router: RouterInfo, *, initial: bool) -> list[str]:
    """The router in the foreground (no angel process restarting ProxySQL behind the sandbox's
    back). ProxySQL gets its own datadir; ``--initial`` (first start) builds its configuration
    from the config file, and without it ProxySQL starts from what was last SAVEd TO DISK
    (proxysql.db), as a production restart does. ``--no-version-check``: no call home."""
    if router.kind == "haproxy":
        return [binary, "-db", "-f", router.config]
    datadir = str(Path(router.config).parent)
    argv = [binary, "-f", "--no-version-check", "-c", router.config, "-D", datadir]
    return [*argv, "--initial"] if initial else argv


def read_secret(path: Path) -> str:
    """A secret file's value without its trailing newline (ProxySQL takes passwords literally)."""
    return path.read_text().strip()


def write_secret(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(18) + "\n")
    return path


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


async def execute(conn: aiomysql.Connection, sql: str) -> None:
    async with conn.cursor() as cur:
        await cur.execute(sql)


async def query(conn: aiomysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def wait_node_ready(node: NodeInfo, root_password: str) -> aiomysql.Connection:
    """Connect as root over the node's unix socket, retrying until it answers; never sleep-wait
    for a fixed time. Fails early with the error log when the process exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while True:
        if not procs.is_alive(node.pid, node.config):
            log = Path(node.node_dir) / "error.log"
            raise SandboxError(f"mariadbd {node.name} exited at start:\n{tail(log)}")
        try:
            return await aiomysql.connect(
                unix_socket=node.socket, user="root", password=root_password, autocommit=True
            )
        except (OSError, pymysql.MySQLError):
            if loop.time() > deadline:
                raise SandboxError(f"{node.name} not ready within {READY_TIMEOUT} s") from None
            await asyncio.sleep(0.02)


async def attach_replica(
    conn: aiomysql.Connection, node: NodeInfo, change_master: str, gtid_pos: str
) -> None:
    await execute(conn, change_master)
    await execute(conn, "START SLAVE")
    rows = await query(conn, f"SELECT MASTER_GTID_WAIT({render.sql_string(gtid_pos)}, 20)")
    if rows[0][0] != 0:
        async with conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute("SHOW SLAVE STATUS")
            status = await cur.fetchone() or {}
        raise SandboxError(
            f"{node.name} did not catch up with the primary: "
            f"IO: {status.get('Last_IO_Error')!r} SQL: {status.get('Last_SQL_Error')!r}"
        )


async def ensure_template(cache_dir: Path, mariadbd: str) -> Path:
    """A datadir made by mariadb-install-db once per server version and InnoDB sizing, cached
    under `cache_dir` and copied per node (install-db is the slow part of creating a node)."""
    proc = await asyncio.create_subprocess_exec(
        mariadbd, "--version", stdout=asyncio.subprocess.PIPE
    )
    version, _ = await proc.communicate()
    key = hashlib.sha256(version + repr(render.INNODB_OPTIONS).encode()).hexdigest()[:16]
    final = cache_dir / f"template-{key}"
    if template_ready(final):
        return final / "data"
    work = new_template_workdir(cache_dir, key)
    try:
        cnf = work / "my.cnf"
        install = find_binary("mariadb-install-db") or "mariadb-install-db"
        proc = await asyncio.create_subprocess_exec(
            install,
            f"--defaults-file={cnf}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SandboxError(f"mariadb-install-db failed:\n{output.decode(errors='replace')}")
        publish_template(work, final, version.decode())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "data"


def template_ready(final: Path) -> bool:
    return (final / "READY").exists()


def new_template_workdir(cache_dir: Path, key: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f"building-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    cnf = work / "my.cnf"
    cnf.write_text(render.template_cnf(str(work / "data"), run_as_root=os.geteuid() == 0))
    return work


def publish_template(work: Path, final: Path, version: str) -> None:
    """Atomic rename, so a half-built template is never used."""
    (work / "READY").write_text(version)
    try:
        work.rename(final)
    except OSError:  # another process built it at the same time: use theirs
        if not template_ready(final):
            raise


def write_node_configs(
    nodes: tuple[NodeInfo, ...],
    *,
    run_as_root: bool,
    tls: SandboxTls | None = None,
    per_cluster: int | None = None,
) -> None:
    """``per_cluster``: nodes per cluster (a sandbox of several); default: one cluster."""
    per_cluster = per_cluster or len(nodes)
    for node in nodes:
        Path(node.node_dir).mkdir(exist_ok=True)
        (Path(node.node_dir) / "tmp").mkdir(exist_ok=True)
        config = render.node_cnf(
            node,
            primary=node.role == "primary",
            run_as_root=run_as_root,
            has_replicas=per_cluster > 1,
            tls=tls,
        )
        Path(node.config).write_text(config)
