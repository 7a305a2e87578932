"""HAProxy router: the runtime API over its admin socket ("stats socket ... level admin").

Model: two backends, the writer backend and the reader backend, each with one server per
managed node, named like the node (``NodeSettings.name``). A node is routed in a backend when
its server there is READY; it is not routed when the server is in MAINT (which also stops
health checks). Servers that are not managed nodes are never read into the membership and
never touched.

- ``writers`` = managed nodes READY in the writer backend, ``readers`` = READY in the reader
  backend, ``broken`` = managed nodes READY in neither.
- HAProxy has no place for an operator-hidden node: a hidden node is kept in MAINT in both
  backends and reads back as ``broken``; the controller keeps the hidden list itself
  (``expected_readback`` says what a desired state reads back as).
- Readiness is the administrative state only (what the controller sets). A server that is
  READY but DOWN by an HAProxy health check still counts as routed: the controller's own
  probes judge node health, and the router must not flap with HAProxy's checks.

HAProxy 2.6 ``srv_admin_state`` bits (``enum srv_admin`` in ``include/haproxy/server-t.h``):
FMAINT 0x01 (forced by ``set server ... state maint``), IMAINT 0x02 (inherited from a tracked
server), CMAINT 0x04 (``disabled`` in the config; alone it does NOT stop traffic once the
server was set ready), FDRAIN 0x08, IDRAIN 0x10, RMAINT 0x20 (address resolution failed),
HMAINT 0x40 (FQDN set from the CLI; a marker, not a maintenance). HAProxy's own masks:
MAINT = 0x23, DRAIN = 0x18.

Writes are ordered so that there are never two writers, even for a moment: every server that
must stop being writer is first put in MAINT in the writer backend and its sessions are cut
(``shutdown sessions server``; MAINT alone leaves established connections open), and only then
is the new writer set READY. Reader additions come next (so the reader backend is never empty
in between), reader removals last. Each command goes on its own connection and its answer is
checked before the next one is sent, so a refused demotion stops the promotion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from hacontrol.routing import (
    Drained,
    Lines,
    Membership,
    RouterError,
    StdlibLines,
    desired_state_problem,
)
from hacontrol.settings import HAProxySettings

log = logging.getLogger(__name__)

ADMF_FMAINT = 0x01
ADMF_IMAINT = 0x02
ADMF_CMAINT = 0x04
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20
ADMF_HMAINT = 0x40
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT  # 0x23, HAProxy's SRV_ADMF_MAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN  # 0x18, HAProxy's SRV_ADMF_DRAIN

SRV_ST_RUNNING = 2  # srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping

DEFAULT_ATTEMPTS = 3

Transport = Callable[[str], Awaitable[str]]
"""Sends one runtime API command and returns HAProxy's whole answer."""


class Admin(StrEnum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state``."""

    backend: str
    name: str
    address: str
    port: int | None
    op_state: int
    admin_state: int

    @property
    def admin(self) -> Admin:
        if self.admin_state & ADMF_MAINT:
            return Admin.MAINT
        if self.admin_state & ADMF_DRAIN:
            return Admin.DRAIN
        return Admin.READY

    @property
    def ready(self) -> bool:
        return self.admin is Admin.READY

    @property
    def running(self) -> bool:
        """HAProxy's operational state (health checks): running, whatever its admin state."""
        return self.op_state == SRV_ST_RUNNING


@dataclass(frozen=True)
class Backends:
    """The managed nodes' servers in the writer and the reader backend."""

    writer: Mapping[str, ServerState]
    reader: Mapping[str, ServerState]

    def membership(self) -> Membership:
        writers = {name for name, server in self.writer.items() if server.ready}
        readers = {name for name, server in self.reader.items() if server.ready}
        return Membership.of(
            writers=writers,
            readers=readers,
            broken=set(self.writer) - writers - readers,
        )


# --- pure parts -------------------------------------------------------------------------------


def parse_servers_state(answer: str) -> tuple[ServerState, ...]:
    """Parse the answer to ``show servers state [backend]`` (format version 1).

    Columns are found by the names in the ``#`` header line, so columns added by later
    HAProxy versions do not matter. Raises RouterError on anything else (for example
    "Can't find backend.").
    """
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise RouterError(f"unexpected answer to 'show servers state': {_excerpt(answer)}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise RouterError(f"'show servers state' answer has no header line: {_excerpt(answer)}")
    columns = lines[1].lstrip("#").split()
    needed = ("be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state")
    if missing := [name for name in needed if name not in columns]:
        raise RouterError(f"'show servers state' header lacks columns {missing}: {lines[1]!r}")
    index = {name: i for i, name in enumerate(columns)}
    servers = []
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < len(columns):
            raise RouterError(f"'show servers state' line has too few fields: {line!r}")
        try:
            port = fields[index["srv_port"]] if "srv_port" in index else "-"
            servers.append(
                ServerState(
                    backend=fields[index["be_name"]],
                    name=fields[index["srv_name"]],
                    address=fields[index["srv_addr"]],
                    port=int(port) if port.isdigit() else None,
                    op_state=int(fields[index["srv_op_state"]]),
                    admin_state=int(fields[index["srv_admin_state"]]),
                )
            )
        except ValueError:
            raise RouterError(f"'show servers state' line is not numeric: {line!r}") from None
    return tuple(servers)


def managed_backends(
    servers: Iterable[ServerState], nodes: Sequence[str], writer_backend: str, reader_backend: str
) -> Backends:
    """Pick the managed nodes' servers. Raises RouterError naming every missing server."""
    by_backend: dict[str, dict[str, ServerState]] = {writer_backend: {}, reader_backend: {}}
    for server in servers:
        if server.backend in by_backend and server.name in nodes:
            by_backend[server.backend][server.name] = server
    missing = [
        f"{backend}/{node}"
        for backend, found in by_backend.items()
        for node in nodes
        if node not in found
    ]
    if missing:
        raise RouterError(
            f"HAProxy has no server(s) {missing}: every managed node needs a server of the "
            f"same name in backends {writer_backend!r} and {reader_backend!r}"
        )
    return Backends(writer=by_backend[writer_backend], reader=by_backend[reader_backend])


def parse_stat_sessions(answer: str, backend: str, server: str) -> int:
    """Current sessions (``scur``) of one server from ``show stat`` (CSV, named header).

    Raises RouterError when the answer has no such server or is not that CSV.
    """
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise RouterError(f"unexpected answer to 'show stat': {_excerpt(answer)}")
    columns = lines[0][2:].split(",")
    try:
        px, sv, scur = (columns.index(name) for name in ("pxname", "svname", "scur"))
    except ValueError:
        raise RouterError(f"'show stat' header lacks pxname/svname/scur: {lines[0]!r}") from None
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) > scur and fields[px] == backend and fields[sv] == server:
            if not fields[scur].isdigit():
                raise RouterError(f"'show stat' scur is not a number: {line!r}")
            return int(fields[scur])
    raise RouterError(f"'show stat' has no server {backend}/{server}")


def expected_readback(desired: Membership, nodes: Iterable[str]) -> Membership:
    """What ``read()`` returns once ``desired`` is applied: hidden and unrouted read as broken."""
    routed = desired.writers | desired.readers
    return Membership.of(
        writers=desired.writers,
        readers=desired.readers,
        broken=set(nodes) - routed,
    )


def plan_commands(
    current: Backends, desired: Membership, writer_backend: str, reader_backend: str
) -> tuple[str, ...]:
    """The runtime API commands that turn ``current`` into ``desired``, in a safe order.

    Empty when nothing must change. Every managed node not desired in a backend must be in
    MAINT there (DRAIN is not enough: it still accepts persistent sessions).
    """
    writer_off: list[str] = []
    writer_on: list[str] = []
    reader_on: list[str] = []
    reader_off: list[str] = []
    for node, server in sorted(current.writer.items()):
        if node in desired.writers:
            if server.admin is not Admin.READY:
                writer_on.append(_set_state(writer_backend, node, Admin.READY))
        elif server.admin is not Admin.MAINT:
            writer_off += _take_out(writer_backend, node)
    for node, server in sorted(current.reader.items()):
        if node in desired.readers:
            if server.admin is not Admin.READY:
                reader_on.append(_set_state(reader_backend, node, Admin.READY))
        elif server.admin is not Admin.MAINT:
            reader_off += _take_out(reader_backend, node)
    return (*writer_off, *writer_on, *reader_on, *reader_off)


def _set_state(backend: str, node: str, state: Admin) -> str:
    return f"set server {backend}/{node} state {state}"


def _take_out(backend: str, node: str) -> list[str]:
    # MAINT first, so that no new session lands on the server after the old ones are cut.
    return [_set_state(backend, node, Admin.MAINT), f"shutdown sessions server {backend}/{node}"]


def describe_difference(actual: Membership, wanted: Membership) -> str:
    parts = []
    for role in ("writers", "readers", "broken"):
        have, want = getattr(actual, role), getattr(wanted, role)
        if have != want:
            parts.append(f"{role} {sorted(have)} instead of {sorted(want)}")
    return "; ".join(parts) or "same membership, but servers left in drain"


def _excerpt(answer: str, limit: int = 200) -> str:
    text = " ".join(answer.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- I/O ----------------------------------------------------------------------------------------


class SocketTransport:
    """One command per connection on HAProxy's admin socket (non-interactive mode).

    ``address`` is a unix socket path, or ``host:port`` for a TCP socket (``[::1]:port`` for
    IPv6). HAProxy answers and closes the connection; the answer is read to EOF.
    """

    def __init__(self, address: str) -> None:
        if not address:
            raise ValueError("HAProxy admin socket address is empty")
        self.tcp = _tcp_address(address)
        self.unix_path = None if self.tcp else address.removeprefix("unix@")

    async def __call__(self, command: str) -> str:
        if self.tcp is not None:
            reader, writer = await asyncio.open_connection(*self.tcp)
        else:
            reader, writer = await asyncio.open_unix_connection(self.unix_path)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _tcp_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` for a TCP address, None for a unix socket path.

    HAProxy's own prefixes are accepted too: ``unix@/path``, ``ipv4@host:port``, ``ipv6@...``.
    """
    family, sep, rest = address.partition("@")
    if sep and family in ("ipv4", "ipv6"):
        address = rest
    elif "/" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class HAProxyRouter:
    """The Router over HAProxy's runtime API. See the module doc for the model.

    ``commands_sent`` lists every write command sent, in order (reads are not listed).
    ``transport`` replaces the admin socket (tests); every call is bounded by
    ``settings.timeout`` either way.
    """

    kind = "haproxy"

    def __init__(
        self,
        settings: HAProxySettings,
        nodes: Sequence[str],
        *,
        transport: Transport | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_delay: float = 0.1,
        lines: Lines | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.settings = settings
        self.nodes = tuple(nodes)
        self.commands_sent: list[str] = []
        self._transport = transport or SocketTransport(settings.socket)
        self._attempts = attempts
        self._retry_delay = retry_delay
        self.lines: Lines = lines if lines is not None else StdlibLines(log)
        """This router's lines: the cluster's JsonLog in a running controller."""

    async def read(self) -> Membership:
        return (await self.read_backends()).membership()

    async def read_backends(self) -> Backends:
        """The managed nodes' servers, from one ``show servers state`` snapshot."""
        answer = await self._call("show servers state")
        return managed_backends(
            parse_servers_state(answer),
            self.nodes,
            self.settings.writer_backend,
            self.settings.reader_backend,
        )

    async def apply(
        self,
        desired: Membership,
        *,
        allow_no_writer: bool = False,
        allow_hidden_change: bool = False,  # HAProxy has no hidden group: hidden = maint
    ) -> bool:
        if problem := desired_state_problem(desired, allow_no_writer=allow_no_writer):
            raise RouterError(f"refusing to apply HAProxy membership: {problem}")
        if unknown := desired.nodes() - set(self.nodes):
            raise RouterError(f"refusing to apply HAProxy membership: unmanaged {sorted(unknown)}")
        wanted = expected_readback(desired, self.nodes)
        current = await self.read_backends()
        commands = self._plan(current, desired)
        if not commands:
            return False
        for attempt in range(1, self._attempts + 1):
            for command in commands:
                await self._write(command)
            current = await self.read_backends()
            commands = self._plan(current, desired)
            if not commands:
                return True
            difference = describe_difference(current.membership(), wanted)
            self.lines.emit(
                "router_mismatch",
                None,
                "warning",
                reason="HAProxy did not confirm the desired membership",
                attempt=attempt,
                attempts=self._attempts,
                differences=[difference],
            )
            if attempt < self._attempts:
                await asyncio.sleep(self._retry_delay)
        raise RouterError(
            f"HAProxy did not confirm the membership after {self._attempts} attempts: {difference}"
        )

    async def close(self) -> None:
        """Nothing to close: every command uses its own connection."""

    async def drain(self, node: str, *, timeout: float, poll: float = 0.02) -> Drained:
        """Put ``node``'s server in the writer backend in DRAIN and wait until it has no
        session (``scur`` 0) or ``timeout`` seconds passed.

        The closest HAProxy has to ProxySQL's OFFLINE_SOFT, with its limits (docs/haproxy.md):
        HAProxy sees TCP connections, not transactions, so a client idling on a pooled
        connection keeps its session and the drain lasts until the deadline; and with no other
        ready writer, HAProxy cannot hold a new connection until one is back: it closes it
        (the client sees error 2013 and reconnects).
        """
        backend = self.settings.writer_backend
        current = await self.read_backends()
        server = current.writer.get(node)
        if server is None or server.admin is Admin.MAINT:
            raise RouterError(f"cannot drain {node}: it is not routed in backend {backend!r}")
        started = time.monotonic()
        if server.admin is Admin.READY:
            await self._write(_set_state(backend, node, Admin.DRAIN))
        while True:
            in_use = parse_stat_sessions(await self._call("show stat"), backend, node)
            elapsed = time.monotonic() - started
            if in_use == 0 or elapsed >= timeout:
                self.lines.emit(
                    "router_drained", node, "info", seconds=round(elapsed, 3), in_use=in_use
                )
                return Drained(node, in_use == 0, in_use, round(elapsed, 3))
            await asyncio.sleep(min(poll, timeout - elapsed))

    def _plan(self, current: Backends, desired: Membership) -> tuple[str, ...]:
        return plan_commands(
            current, desired, self.settings.writer_backend, self.settings.reader_backend
        )

    async def _write(self, command: str) -> None:
        self.commands_sent.append(command)
        answer = await self._call(command)
        if answer.strip():
            raise RouterError(f"HAProxy refused {command!r}: {_excerpt(answer)}")
        self.lines.emit("router_statement", None, "info", command=command)

    async def _call(self, command: str) -> str:
        where = f"HAProxy admin socket {self.settings.socket!r}"
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._transport(command)
        except TimeoutError:
            raise RouterError(
                f"{where}: no answer to {command!r} within {self.settings.timeout} s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise RouterError(f"{where}: {command!r} failed: {reason}") from None
