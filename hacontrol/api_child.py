"""The API process: ``python -m hacontrol.api_child``, started by ``hacontrol.api_process``.

It serves the same ``ApiServer`` (routes, limits, TLS, unix socket) as in-process, but every
read is asked of the controller and every command forwarded to it over the channel
(``hacontrol.api_rpc``) whose descriptor it inherits (``HACONTROL_API_CHANNEL_FD``). The first
frame on it is the configuration: API settings, token, log level, CPU priority; no secret is
ever on the command line or in this process's environment.

It dies with the controller: the kernel kills it when its parent dies (``PR_SET_PDEATHSIG``),
and the end of the channel stops it too (the controller stopped it, or is gone).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import signal
import socket
import sys
import threading
from typing import Any

from hacontrol.api import Answer, ApiServer
from hacontrol.api_loop import MainUnavailable, new_event_loop
from hacontrol.api_rpc import TO_API_MAX, FrameError, encode, read_frame
from hacontrol.events import CommandResult, OperatorCommand
from hacontrol.jsonlog import JsonLog, jsonable
from hacontrol.settings import ApiSettings

ENV_CHANNEL = "HACONTROL_API_CHANNEL_FD"
ENV_PARENT = "HACONTROL_API_PARENT_PID"
ASK_TIMEOUT = 10.0
"""Seconds a read waits for the controller at most (the server gives up sooner: 503)."""
MAX_COMMANDS = 16
"""Commands waiting for the controller's answer at most; past it: 503."""
PR_SET_PDEATHSIG = 1


class Channel:
    """This process's end of the channel: frames out from any thread, answers matched by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the controller (from any thread; in order from each thread)."""
        frame = encode(message)
        if threading.get_ident() == self._loop_thread:
            self._write(frame)
        else:
            self._loop.call_soon_threadsafe(self._write, frame)

    def _write(self, frame: bytes) -> None:
        if not self.closed and not self._writer.is_closing():
            self._writer.write(frame)

    async def ask(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """The controller's answer to ``message``; MainUnavailable when it is gone or late."""
        if self.closed:
            raise MainUnavailable("the controller's channel is closed")
        ident = next(self._ids)
        answer = self._loop.create_future()
        self._pending[ident] = answer
        try:
            self._write(encode({**message, "id": ident}))
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            raise MainUnavailable(f"the controller did not answer within {timeout:g} s") from None
        finally:
            self._pending.pop(ident, None)

    async def run(self) -> None:
        """Hand answers to their askers until the controller closes the channel."""
        try:
            while (message := await read_frame(self._reader, TO_API_MAX)) is not None:
                waiter = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
                if message["t"] == "answer" and waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except (FrameError, OSError):
            pass
        finally:
            self.closed = True
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(MainUnavailable("the controller's channel closed"))


class RemoteController:
    """What ``ApiServer`` asks of the controller, asked over the channel: one read of each path
    in flight at a time (later askers share it), at most ``MAX_COMMANDS`` commands."""

    def __init__(self, channel: Channel, clusters: tuple[str, ...]) -> None:
        self._channel = channel
        self.clusters = clusters
        self._reads: dict[str, asyncio.Future[Answer]] = {}
        self._commands = 0

    async def read(self, path: str) -> Answer:
        inflight = self._reads.get(path)
        if inflight is None:
            inflight = self._reads[path] = asyncio.ensure_future(self._ask_read(path))
            inflight.add_done_callback(lambda f: self._reads.pop(path, None))
            inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(inflight)

    async def _ask_read(self, path: str) -> Answer:
        answer = await self._channel.ask({"t": "read", "path": path}, ASK_TIMEOUT)
        if "error" in answer:
            raise RuntimeError(str(answer["error"]))
        return int(answer["status"]), str(answer["body"]).encode(), str(answer["type"])

    async def command(self, cmd: OperatorCommand, cluster: str) -> CommandResult:
        if self._commands >= MAX_COMMANDS:
            raise MainUnavailable(f"{MAX_COMMANDS} commands already wait for the controller")
        self._commands += 1
        try:
            fields = {
                "command": cmd.command,
                "node": cmd.node,
                "on": cmd.on,
                "source": cmd.source,
                "dry_run": cmd.dry_run,
                "cluster": cluster,
            }
            answer = await self._channel.ask({"t": "command", **fields}, None)
        finally:
            self._commands -= 1
        if "busy" in answer:
            raise MainUnavailable(str(answer["busy"]))
        detail = answer.get("detail")
        return CommandResult(
            bool(answer["ok"]), str(answer["message"]), detail if isinstance(detail, dict) else {}
        )


class ForwardLog(JsonLog):
    """The controller's log, from this process: each line at or above its level is sent over
    the channel for the controller to write (one writer, its scrubbing, its stream)."""

    def __init__(self, channel: Channel, level: str) -> None:
        super().__init__("api", level=level)
        self._channel = channel

    def emit(self, event: str, node: str | None = None, level: str = "info", **fields: Any) -> None:
        if self.enabled(level) and not self._channel.closed:
            self._channel.send(
                {
                    "t": "log",
                    "event": event,
                    "node": node,
                    "level": level,
                    "fields": jsonable(fields),
                }
            )


async def serve(sock: socket.socket) -> int:
    """Serve until the controller closes the channel or SIGTERM; the exit status."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    config = await read_frame(reader, TO_API_MAX)
    if config is None or config["t"] != "config":
        return 2
    if config.get("nice"):
        os.nice(int(config["nice"]))
    settings = ApiSettings.model_validate({**config["settings"], "token": config.get("token")})
    channel = Channel(reader, writer)
    reading = asyncio.create_task(channel.run(), name="api:channel")
    remote = RemoteController(channel, tuple(str(name) for name in config["clusters"]))
    api = ApiServer(settings, remote, ForwardLog(channel, str(config["level"])), fetch=remote.read)  # type: ignore[arg-type]
    try:
        host, port = await api.start()
    except (OSError, ValueError) as exc:  # cannot bind, a bad certificate or key
        channel.send({"t": "failed", "error": f"{type(exc).__name__}: {exc}"})
        await writer.drain()
        return 3
    channel.send({"t": "listening", "host": host, "port": port})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await api.stop()
    writer.close()
    return 0


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the channel's end still stops this process
        pass
    if os.getppid() != parent:
        os._exit(1)


def main() -> int:
    die_with_parent(int(os.environ[ENV_PARENT]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle
    sock = socket.socket(fileno=int(os.environ.pop(ENV_CHANNEL)))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve(sock))


if __name__ == "__main__":
    sys.exit(main())
