"""Shared fakes for tests that need a misbehaving peer or a stand-in controller: the API's
controller handle, a raw HTTP client, and MySQL-protocol servers that answer wrongly.

Everything listens on 127.0.0.1 on a free port and is closed by its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pydantic import SecretStr

from hacontrol.api import ApiServer
from hacontrol.api_loop import LoopThread
from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.jsonlog import JsonLog
from hacontrol.metrics import Metrics
from hacontrol.settings import ApiSettings
from hacontrol.status import to_json
from hacontrol.view import fold, initial
from tests.factories import primary, replica, settings

TOKEN = "s3cret-token-value"

# ---------------------------------------------------------------------------------------------
# The API


class FakeHandle:
    """Implements api.ControllerHandle; records commands, answers canned results."""

    def __init__(self, *, hang: bool = False) -> None:
        s = settings()
        view = initial(s)
        for event in (primary(), replica("node2"), replica("node3")):
            view = fold(view, event, s)
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

    async def command(self, cmd: OperatorCommand) -> CommandResult:
        self.commands.append(cmd)
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
