"""A fleet on a sandbox, for live tests: N routers (real HAProxy processes, each like the
sandbox's own) and N ``hacontrol run`` processes, each with its own router, API port and
journal, all on the sandbox's mariadbd nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacontrol.actions.haproxy import HAProxyRouter
from hacontrol.routing import Membership
from hacontrol.sandbox import Sandbox
from hacontrol.sandbox.cluster import find_binary
from hacontrol.sandbox.model import HOST, RouterInfo
from hacontrol.sandbox.render import haproxy_cfg
from hacontrol.settings import HAProxySettings
from tests.live import FAST_ENV, Process, WriteLoop
from tests.support import free_port

LEASE_ENV = {
    "HACONTROL_CONTROLLER__FLEET": "true",
    "HACONTROL_LEASE__WAIT_TIMEOUT": "2",
    "HACONTROL_LEASE__KEEPALIVE": "0.25",
    "HACONTROL_LEASE__VALIDITY": "1.2",
    "HACONTROL_LEASE__MARGIN": "0.25",
    "HACONTROL_LEASE__BACKOFF": "0.5",
}
"""W 2 s, K 0.25 s, V 1.2 s: a takeover within about two seconds, and 0.7 s of slack for a
controller the loaded test machine stalls (the drill measures with tighter timings)."""


@dataclass
class Member:
    """One instance of the fleet: its router and its controller process."""

    name: str
    router: RouterInfo
    router_proc: subprocess.Popen[bytes]
    api_port: int
    journal: Path
    process: Process | None = None
    env: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        return [] if self.process is None else list(self.process.records)

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [] if self.process is None else self.process.of(event, **match)

    def leads(self) -> bool:
        """The last lease line of this instance says it leads."""
        lines = self.of("lease")
        return bool(lines) and lines[-1]["leader"] is True

    def changes(self) -> list[dict[str, Any]]:
        """Every step of a plan that acted on a database node (actions on the router, the
        lock and mails aside)."""
        on_nodes = {"Fence", "Promote", "Repoint", "Rejoin", "SetIOThreads", "SetWritable"}
        return [a for a in self.of("action") if a["action"] in on_nodes and a.get("changed")]

    async def writers(self) -> frozenset[str]:
        router = HAProxyRouter(HAProxySettings(socket=self.router.admin), NODES)
        try:
            return (await router.read()).writers
        finally:
            await router.close()

    async def membership(self) -> Membership:
        router = HAProxyRouter(HAProxySettings(socket=self.router.admin), NODES)
        try:
            return await router.read()
        finally:
            await router.close()


NODES = ("node1", "node2", "node3")


class Fleet:
    """``size`` routers and controllers on ``sandbox``; ``start`` starts a controller."""

    def __init__(self, sandbox: Sandbox, directory: Path) -> None:
        self.sandbox = sandbox
        self.info = sandbox.status()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.members: list[Member] = []

    def add(self, size: int) -> None:
        for i in range(len(self.members) + 1, len(self.members) + size + 1):
            self.members.append(self._router(f"c{i}"))

    def _router(self, name: str) -> Member:
        """A HAProxy of its own on free ports; started again on other ports when one was
        taken meanwhile (free_port is a check-then-use race with the other tests' processes)."""
        haproxy = find_binary("haproxy")
        assert haproxy is not None
        folder = self.dir / name
        folder.mkdir()
        for _ in range(3):
            router = RouterInfo(
                kind="haproxy",
                host=HOST,
                writer_port=free_port(),
                reader_port=free_port(),
                admin=str(folder / "haproxy.sock"),
                admin_port=free_port(),
                pid=None,
                config=str(folder / "haproxy.cfg"),
            )
            Path(router.config).write_text(haproxy_cfg(self.info.nodes, router))
            log = folder / "haproxy.log"
            proc = subprocess.Popen(
                [haproxy, "-db", "-f", router.config],
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            if started(proc, Path(router.admin)):
                return Member(name, router, proc, free_port(), folder / "journal.jsonl")
            assert "Address already in use" in log.read_text(), log.read_text()
            Path(router.admin).unlink(missing_ok=True)
        raise AssertionError(f"{name}'s haproxy found no free ports three times in a row")

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def start(
        self, name: str, *, config: Path | None = None, prefix: list[str] | None = None, **env: str
    ) -> Member:
        member = self.member(name)
        member.env = {
            **FAST_ENV,
            **LEASE_ENV,
            "HACONTROL_CONTROLLER__INSTANCE_ID": name,
            "HACONTROL_CONTROLLER__JOURNAL": str(member.journal),
            "HACONTROL_ROUTER__KIND": "haproxy",
            "HACONTROL_ROUTER__HAPROXY__SOCKET": member.router.admin,
            "HACONTROL_API__PORT": str(member.api_port),
            **env,
        }
        member.process = Process(config or Path(self.info.settings), member.env, prefix=prefix)
        return member

    def start_all(self, **env: str) -> None:
        for member in self.members:
            self.start(member.name, **env)

    def write_loops(self, members: list[Member]) -> dict[str, WriteLoop]:
        """A running WriteLoop through each member's router, each on its own id range."""
        ids = {m.name: 1_000_000 * i for i, m in enumerate(members, start=1)}
        return {
            m.name: WriteLoop(self.sandbox, start_id=ids[m.name], port=m.router.writer_port).start()
            for m in members
        }

    def leaders(self) -> list[str]:
        return [m.name for m in self.members if m.process is not None and m.leads()]

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.story()}")

    def story(self) -> str:
        """What each instance decided and did, for a failure's message."""
        kept = {"lease", "decision", "plan_started", "plan_finished", "action", "fault_injected"}
        out = []
        for m in self.members:
            out.append(f"--- {m.name} (exit {m.process.proc.poll() if m.process else None})")
            for r in m.records():
                if r.get("event") in kept:
                    fields = {k: v for k, v in r.items() if k not in ("ts", "cluster", "_mono")}
                    out.append(f"{r['ts'][11:23]} {fields}"[:400])
        return "\n".join(out[-200:])

    def signal(self, name: str, sig: int) -> float:
        """Send ``sig`` to a controller; the monotonic time it was sent."""
        process = self.member(name).process
        assert process is not None
        at = time.monotonic()
        os.kill(process.proc.pid, sig)
        if sig == signal.SIGKILL:
            process.proc.wait(5)
        return at

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.process.proc.pid, signal.SIGCONT)
                member.process.stop()
            member.router_proc.terminate()
            try:
                member.router_proc.wait(5)
            except subprocess.TimeoutExpired:
                member.router_proc.kill()
                member.router_proc.wait(10)  # its ports free before the next test


def started(proc: subprocess.Popen[bytes], admin: Path, timeout: float = 10.0) -> bool:
    """Until HAProxy answers a command on its admin socket (True) or exited (False, reaped).
    The socket file alone says nothing: HAProxy binds it before its listeners, and leaves it
    behind when a port is taken; it answers once every listener is bound."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.connect(str(admin))
            sock.sendall(b"show info\n")
            if sock.recv(64):
                return True
        assert time.monotonic() < deadline, "haproxy did not start"
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def running_fleet(sandbox: Sandbox, directory: Path, size: int = 3) -> Iterator[Fleet]:
    fleet = Fleet(sandbox, directory)
    try:
        fleet.add(size)
        yield fleet
    finally:
        fleet.stop()
