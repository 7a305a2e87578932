"""Faults the drill injects on a node: SIGKILL, SIGSTOP/SIGCONT, a network partition.

Two ways to reach a node's process: the sandbox (its own pid bookkeeping), or, for a cluster
given by ``--config``, the local process listening on the node's port, found through
``/proc/net/tcp`` and the socket inodes in ``/proc/<pid>/fd``. A node on another host cannot
be killed from here: the drill refuses with a message rather than guess.

The partition drops every TCP packet to and from the node's port with iptables (root only);
it is offered for the sandbox only, where every node, replica, router and the controller sit
on this host's loopback, so the rules cut the node off from all of them at once.

The network faults (``partition-primary``, ``partition-controller``, ``flap``, ``degrade``)
need a sandbox on hosts of its own (``sandbox up --netns``): groups of hosts are cut from each
other, or a host's links lose packets, on the sandbox's own bridge
(``hacontrol.sandbox.netns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from hacontrol.drill.errors import FaultError
from hacontrol.drill.rebuild import rebuild_sandbox_node

__all__ = ["FaultError", "Faults", "LocalFaults", "SandboxFaults"]

IPTABLES_COMMENT = "hacontrol-drill"
TCP_LISTEN = "0A"


class Faults(Protocol):
    def kill(self, node: str) -> None: ...
    def freeze(self, node: str) -> None: ...
    def thaw(self, node: str) -> None: ...
    def partition(self, node: str) -> None: ...
    def heal(self, node: str) -> None: ...
    async def restart(self, node: str) -> None: ...
    async def rebuild(self, node: str, source: str) -> str: ...
    def rebuilder(self, settings: Any) -> Any: ...
    def cut(self, groups: Groups) -> None: ...
    def degrade(self, node: str, loss: float, delay_ms: float) -> str: ...
    def heal_network(self) -> None: ...
    def node_socket(self, node: str) -> str | None: ...


Groups = tuple[tuple[str, ...], ...]


# ---- pure helpers ------------------------------------------------------------------------------


def listening_inodes(proc_net_tcp: str, port: int) -> set[int]:
    """Socket inodes listening on ``port`` in the text of /proc/net/tcp or /proc/net/tcp6."""
    inodes: set[int] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(int(inode))
    return inodes


def socket_inode(link: str) -> int | None:
    """The inode of a /proc/<pid>/fd link target 'socket:[12345]', else None."""
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return None


def partition_rules(port: int) -> list[list[str]]:
    """iptables rule specs (without -I/-D) that cut every TCP packet to and from ``port``."""
    mark = ["-m", "comment", "--comment", f"{IPTABLES_COMMENT}:{port}", "-j", "DROP"]
    return [
        ["INPUT", "-p", "tcp", "--dport", str(port), *mark],
        ["INPUT", "-p", "tcp", "--sport", str(port), *mark],
    ]


def partition_unavailable() -> str | None:
    """Why a partition cannot be injected here, or None."""
    if os.geteuid() != 0:
        return "a partition needs root (iptables)"
    if shutil.which("iptables") is None:
        return "a partition needs iptables"
    probe = subprocess.run(["iptables", "-L", "INPUT", "-n"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"iptables is unusable here: {probe.stderr.strip()}"
    return None


# ---- processes by port ------------------------------------------------------------------------


def pid_listening_on(port: int, proc: Path = Path("/proc")) -> int | None:
    """The pid of the local process listening on TCP ``port``, or None."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes((proc / "net" / table).read_text(), port)
    if not inodes:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if socket_inode(os.readlink(fd)) in inodes:
                        return int(entry.name)
    return None


def respawn(argv: list[str], env: dict[str, str]) -> int:
    """Start a daemon again in its own session, output discarded; returns its pid."""
    return os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


class _Iptables:
    def partition_port(self, port: int) -> None:
        if reason := partition_unavailable():
            raise FaultError(reason)
        for rule in partition_rules(port):
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)

    def heal_port(self, port: int) -> None:
        for rule in partition_rules(port):
            while subprocess.run(["iptables", "-D", *rule], capture_output=True).returncode == 0:
                pass  # every copy, should a rule have been inserted twice


class SandboxFaults(_Iptables):
    """Faults on sandbox nodes; the old primary is restarted or rebuilt by the sandbox."""

    def __init__(self, sandbox) -> None:  # hacontrol.sandbox.Sandbox
        self.sandbox = sandbox

    def _signal(self, node: str, sig: int) -> None:
        if not self.sandbox.kill_node(node, sig):
            raise FaultError(f"{node} has no running process to signal")

    def kill(self, node: str) -> None:
        self._signal(node, signal.SIGKILL)

    def freeze(self, node: str) -> None:
        self._signal(node, signal.SIGSTOP)

    def thaw(self, node: str) -> None:
        self._signal(node, signal.SIGCONT)

    def partition(self, node: str) -> None:
        self.partition_port(self.sandbox.status().node(node).port)

    def heal(self, node: str) -> None:
        self.heal_port(self.sandbox.status().node(node).port)

    async def restart(self, node: str) -> None:
        await self.sandbox.start_node(node)

    async def rebuild(self, node: str, source: str) -> str:
        return await rebuild_sandbox_node(self.sandbox, node, source)

    # -- on a sandbox with hosts of its own (--netns) ------------------------------------------

    def _network(self):  # hacontrol.sandbox.netns_host.Network
        from hacontrol.sandbox import SandboxError

        try:
            return self.sandbox.network()
        except SandboxError as exc:
            raise FaultError(str(exc)) from None

    def cut(self, groups: Groups) -> None:
        """Packets between the groups dropped (every host not named keeps every link)."""
        self._network().partition(groups)

    def degrade(self, node: str, loss: float, delay_ms: float) -> str:
        """The node's links to every other host lose ``loss`` % of their packets and (with tc
        netem) get ``delay_ms`` more in each direction."""
        network = self._network()
        others = tuple(h.name for h in network.plan.hosts if h.name != node)
        faults = network.partition(((node,), others), loss=loss, delay_ms=delay_ms)
        return faults.describe()

    def heal_network(self) -> None:
        self._network().heal()

    def node_socket(self, node: str) -> str | None:
        """Where a client on the node's own host connects (its unix socket)."""
        return str(self.sandbox.status().node(node).socket)

    def rebuilder(self, settings: Any) -> Any:
        """How the controller rebuilds a sandbox node (``hacontrol rebuild``): mariadb-backup
        from a healthy replica, the node stopped and started through the sandbox."""
        from hacontrol.actions.rebuild import Rebuilder, SandboxControl, sandbox_commands

        commands, env = sandbox_commands(self.sandbox)
        return Rebuilder(settings, commands, control=SandboxControl(self.sandbox), env=env)


class LocalFaults(_Iptables):
    """Faults on the local processes of a ``--config`` cluster, found by their listening port.

    A killed process is restarted with the command line and environment it had (mariadbd
    takes absolute paths from its config), unless something else (systemd, a container
    runtime) restarts it first.
    """

    def __init__(self, ports: dict[str, int], restart_grace: float = 5.0) -> None:
        self.ports = ports
        self.restart_grace = restart_grace
        self._frozen: dict[str, int] = {}
        self._killed: dict[str, tuple[list[str], dict[str, str]]] = {}

    def pid(self, node: str) -> int:
        port = self.ports[node]
        pid = pid_listening_on(port)
        if pid is None:
            raise FaultError(
                f"no local process listens on port {port} of {node}: the drill can only "
                "kill or freeze processes on this host"
            )
        return pid

    def kill(self, node: str) -> None:
        pid = self.pid(node)
        proc = Path(f"/proc/{pid}")
        try:
            argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            env = dict(
                item.decode().split("=", 1)
                for item in (proc / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError as exc:
            raise FaultError(f"cannot read how {node} (pid {pid}) was started: {exc}") from None
        self._killed[node] = (argv, env)
        os.kill(pid, signal.SIGKILL)

    def freeze(self, node: str) -> None:
        pid = self.pid(node)
        os.kill(pid, signal.SIGSTOP)
        self._frozen[node] = pid

    def thaw(self, node: str) -> None:
        pid = self._frozen.pop(node, None)
        if pid is None:
            raise FaultError(f"{node} was not frozen by the drill")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def partition(self, node: str) -> None:
        raise FaultError(
            "partition is offered for the sandbox only: iptables here cuts only this host's "
            "view of a node, which is the controller-only partition (no failover, by design)"
        )

    def heal(self, node: str) -> None:
        pass

    async def restart(self, node: str) -> None:
        port = self.ports[node]
        deadline = time.monotonic() + self.restart_grace
        while time.monotonic() < deadline:  # a supervisor may restart it on its own
            if pid_listening_on(port) is not None:
                return
            await asyncio.sleep(0.2)
        argv, env = self._killed.pop(node, ([], {}))
        if not argv:
            raise FaultError(f"{node} was not killed by the drill; start it by hand")
        respawn(argv, env)
        deadline = time.monotonic() + 60
        while pid_listening_on(port) is None:
            if time.monotonic() > deadline:
                raise FaultError(f"{node} restarted with {argv} but does not listen on {port}")
            await asyncio.sleep(0.2)

    def rebuilder(self, settings: Any) -> Any:
        return None  # the controller's own [rebuild] settings, if any

    async def rebuild(self, node: str, source: str) -> str:
        raise FaultError(
            f"{node} has errant transactions; the drill rebuilds sandbox nodes only: "
            "rebuild it from a backup of the new primary, then rejoin it"
        )

    def cut(self, groups: Groups) -> None:
        raise FaultError(NETWORK_FAULTS_ONLY)

    def degrade(self, node: str, loss: float, delay_ms: float) -> str:
        raise FaultError(NETWORK_FAULTS_ONLY)

    def heal_network(self) -> None:
        pass

    def node_socket(self, node: str) -> str | None:
        return None


NETWORK_FAULTS_ONLY = (
    "network faults need a sandbox on hosts of its own (sandbox up --netns): the drill cannot "
    "cut a real cluster's network"
)
