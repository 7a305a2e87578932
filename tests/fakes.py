"""Shared fakes for tests that need a misbehaving peer or a stand-in controller: the API's
controller handle, a raw HTTP client, MySQL-protocol servers that answer wrongly, and the
executor's edges (nodes, router, notifier) that record every call.

Every server listens on 127.0.0.1 on a free port and is closed by its owner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import SecretStr

from hacontrol import operator_cli
from hacontrol.api import ApiServer
from hacontrol.api_loop import LoopThread
from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.flavors.base import NodeStatus
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import Metrics
from hacontrol.plan import ActionResult
from hacontrol.routing import Drained, Membership, RouterError
from hacontrol.settings import ApiSettings
from hacontrol.status import to_json
from tests import mysql_wire as protocol
from tests.factories import primary, replica, settings, status
from tests.support import fold_all

TOKEN = "s3cret-token-value"

# ---------------------------------------------------------------------------------------------
# The API


class FakeHandle:
    """Implements api.ControllerHandle; records commands (and ``cluster_of`` each: which
    cluster it was sent to), answers canned results. ``clusters``: the clusters it runs."""

    def __init__(self, *, hang: bool = False, clusters: tuple[str, ...] = ("t",)) -> None:
        self.clusters = clusters
        self.cluster_of: list[str] = []
        view = fold_all(settings(), [primary(), replica("node2"), replica("node3")])
        self.view = view
        self.metrics = Metrics("t")
        self.metrics.observe_view(view)
        self.commands: list[OperatorCommand] = []
        self.answers: dict[str, CommandResult] = {}
        self.alive_state = (True, "decision task running")
        self.ready_state = (True, "3 of 3 nodes probed, quorum ok")
        self.hang = hang
        self.status_calls = 0

    def alive(self) -> tuple[bool, str]:
        return self.alive_state

    def ready(self) -> tuple[bool, str]:
        return self.ready_state

    def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return {"view": to_json(self.view), "state": {"paused": False, "halt": None}}

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    async def command(self, cmd: OperatorCommand, cluster: str) -> CommandResult:
        self.commands.append(cmd)
        self.cluster_of.append(cluster)
        if self.hang:
            await asyncio.Event().wait()
        default = CommandResult(True, f"{cmd.command} accepted", {"node": cmd.node, "on": cmd.on})
        return self.answers.get(cmd.command, default)


def api_settings(token: str | None = TOKEN, **kw: Any) -> ApiSettings:
    secret = SecretStr(token) if token is not None else None
    return ApiSettings(host="127.0.0.1", port=0, token=secret, **kw)


async def start_api(
    handle: FakeHandle,
    *,
    token: str | None = TOKEN,
    timeout: float = 5.0,
    read_ttl: float = 0.0,
    configure: Callable[[ApiServer], object] = lambda server: None,
    **settings_kw: Any,
) -> tuple[ApiServer, io.StringIO, str]:
    """An ApiServer for ``handle``, started from the running loop (the "main loop");
    ``configure`` may change it before it starts."""
    stream = io.StringIO()
    log = JsonLog("t", stream=stream)  # no secrets given: the API itself must not log the token
    server = ApiServer(
        api_settings(token, **settings_kw), handle, log, command_timeout=timeout, read_ttl=read_ttl
    )
    configure(server)
    host, port = await server.start()
    return server, stream, f"http://{host}:{port}"


@contextlib.contextmanager
def threaded_api(handle: FakeHandle, **kw: Any) -> Iterator[tuple[ApiServer, io.StringIO, str]]:
    """For synchronous tests: a "main loop" in a thread of its own, the API started from it."""
    main = LoopThread("fake-main")
    main.start()
    try:
        server, stream, url = main.run(start_api(handle, **kw)).result(10)
        try:
            yield server, stream, url
        finally:
            main.run(server.stop()).result(10)
    finally:
        main.stop()


def cli_args(argv: list[str]) -> argparse.Namespace:
    """The operator CLI's arguments, parsed as ``hacontrol`` parses them."""
    parser = argparse.ArgumentParser(prog="hacontrol")
    operator_cli.register_cli(parser.add_subparsers())
    return parser.parse_args(argv)


async def run_cli(argv: list[str]) -> int:
    """The operator CLI in this process (its exit code), against a real API server."""
    args = cli_args(argv)
    return await asyncio.to_thread(args.func, args)  # urllib blocks: keep the server's loop free


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def raw_http(port: int, data: bytes, *, timeout: float = 3.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection; (status, headers, body) of the answer, status
    0 when the server closed without answering. Blocking: run it in a thread from a loop."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            while not _complete(received) and (chunk := sock.recv(65536)):
                received += chunk
    if not received:
        return 0, {}, b""
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@contextlib.asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[list[socket.socket]]:
    """``count`` TCP connections to the port that send nothing (yielded as they open)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """The server closed (or reset) this idle connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


# ---------------------------------------------------------------------------------------------
# MySQL-protocol servers that misbehave (the wire format: tests/mysql_wire.py)

Reply = list[bytes] | bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]
"""What a FakeMySQL sends for a query: payloads (framed with sequence ids from 1), raw bytes
as they are, or a coroutine that writes whatever it likes."""


def ok_reply(sql: str) -> Reply:
    return [protocol.ok_packet()]


async def stream_maximal_packets(writer: asyncio.StreamWriter, first_seq: int = 1) -> None:
    """Packets of the largest size (16 MiB - 1, "more follows"), forever, until the peer goes."""
    chunk = b"\xa5" * (1 << 16)
    seq = first_seq
    while True:
        writer.write(b"\xff\xff\xff" + bytes([seq & 0xFF]))
        seq += 1
        for _ in range(0xFFFFFF // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(chunk[: 0xFFFFFF % len(chunk)])


class FakeMySQL:
    """Accepts any login, then answers each COM_QUERY with ``answer(sql)``; records queries.

    ``greeting``: raw bytes (or a writer coroutine) sent instead of a handshake, for servers
    that do not even greet properly."""

    def __init__(
        self,
        answer: Callable[[str], Reply] = ok_reply,
        *,
        greeting: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None,
        version: str = "10.11.6-MariaDB-fake",
    ) -> None:
        self.answer = answer
        self.greeting = greeting
        self.version = version
        self.queries: list[str] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> FakeMySQL:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply, seq: int) -> None:
        if isinstance(reply, bytes):
            writer.write(reply)
        elif isinstance(reply, list):
            for i, payload in enumerate(reply):
                writer.write(protocol.frame(payload, seq + i))
        else:
            await reply(writer)
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            if self.greeting is not None:
                await self._send(writer, self.greeting, 0)
                return
            writer.write(protocol.frame(protocol.handshake_v10(self.version, 1, b"s" * 20), 0))
            await _read_packet(reader)  # the client's handshake response: any login will do
            writer.write(protocol.frame(protocol.ok_packet(), 2))
            while True:
                payload = await _read_packet(reader)
                if payload[:1] == bytes([protocol.COM_QUERY]):
                    sql = payload[1:].decode("utf-8", "replace")
                    self.queries.append(sql)
                    await self._send(writer, self.answer(sql), 1)
                elif payload[:1] == bytes([protocol.COM_QUIT]):
                    return
                else:
                    await self._send(writer, [protocol.ok_packet()], 1)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Cancelled at stop: end quietly (asyncio's start_server logs a handler task that
            # ends cancelled as an error on 3.11).
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(header[:3], "little"))


@contextlib.asynccontextmanager
async def garbage_server() -> AsyncIterator[int]:
    """A TCP server that speaks no MySQL at all (an HTTP error page), on a free port."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def slow_relay(host: str, port: int, delay: float) -> AsyncIterator[int]:
    """A TCP relay to ``host:port`` that holds every new connection ``delay`` seconds before it
    reaches the server (a slow connect: SYN retransmits, a loaded node); a free port."""
    tasks: set[asyncio.Task[Any]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await asyncio.sleep(delay)
            up_reader, up_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            writer.close()
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# The executor's edges: nodes, router and notifier that record every call


BEFORE = Membership.of(["node1"], ["node1", "node2", "node3"])


class Crash(BaseException):
    """Stands for the controller dying inside an action (not an error the executor catches)."""


@dataclass
class FakeNodes:
    """Every call recorded as (method, node); ``fail`` and ``crash`` by (method, node)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[tuple[str, str], ActionResult] = field(default_factory=dict)
    crash: set[tuple[str, str]] = field(default_factory=set)
    read_only: dict[str, bool] = field(default_factory=dict)
    io_running: set[str] = field(default_factory=lambda: {"node2", "node3"})
    slow: dict[str, float] = field(default_factory=dict)
    then: dict[tuple[str, str], Callable[[], None]] = field(default_factory=dict)
    """Run right after (method, node): a fault elsewhere while the plan runs."""
    statuses: dict[str, NodeStatus | Exception] = field(default_factory=dict)
    """What ``status`` answers (or raises) for a node, instead of a plain read-only one."""

    async def _act(self, method: str, node: str, changed: bool = True) -> ActionResult:
        self.calls.append((method, node))
        if (method, node) in self.crash:
            raise Crash
        if (method, node) in self.then:
            self.then[(method, node)]()
        await asyncio.sleep(self.slow.get(method, 0))
        failed = self.fail.get((method, node))
        return failed or ActionResult(method, node, True, changed, f"{method} done")

    async def status(self, node, timeout=None):
        self.calls.append(("status", node))
        if node in self.statuses:
            got = self.statuses[node]
            if isinstance(got, Exception):
                raise got
            return got
        return status(int(node[-1]), read_only=self.read_only.get(node, True))

    async def fence(self, node, timeout=None):
        return await self._act("fence", node)

    async def wait_applied(self, node, timeout):
        return await self._act("wait_applied", node)

    async def promote(self, node, host, port, timeout=None):
        return await self._act("promote", node)

    async def repoint(self, node, host, port, timeout=None):
        return await self._act("repoint", node)

    async def rejoin(self, node, host, port, timeout=None):
        return await self._act("rejoin", node)

    async def set_io_thread(self, node, running, timeout=None):
        changed = (node in self.io_running) != running
        (self.io_running.add if running else self.io_running.discard)(node)
        return await self._act("start_io" if running else "stop_io", node, changed)

    async def check_transactions(self, node, max_age, timeout=None):
        return await self._act("check_transactions", node)

    async def catch_up(self, node, host, port, timeout):
        return await self._act("catch_up", node)

    async def set_writable(self, node, on, timeout=None, *, semi_sync_source=None):
        return await self._act("writable" if on else "read_only", node)


@dataclass
class FakeRouter:
    """``drain`` takes the writer out of ``writers`` as ProxySQL's OFFLINE_SOFT reads back;
    ``in_use`` connections never finish (the drain runs to its deadline)."""

    membership: Membership = BEFORE
    applied: list[Membership] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    in_use: int = 0
    drain_error: str | None = None

    async def read(self) -> Membership:
        return self.membership

    async def apply(self, desired, *, allow_no_writer=False, allow_hidden_change=False) -> bool:
        self.applied.append(desired)
        changed, self.membership = desired != self.membership, desired
        return changed

    async def drain(self, node: str, *, timeout: float) -> Drained:
        if self.drain_error is not None:
            raise RouterError(self.drain_error)
        if node not in self.membership.writers:
            raise RouterError(f"cannot drain {node}: not the writer")
        self.drained.append(node)
        self.membership = replace(self.membership, writers=self.membership.writers - {node})
        idle = self.in_use == 0
        return Drained(node, idle, self.in_use, 0.0 if idle else timeout)

    async def close(self) -> None:
        pass


@dataclass
class FakeNotifier:
    alerts: list = field(default_factory=list)

    def alert(self, alert) -> bool:
        self.alerts.append(alert)
        return True
