"""The HTTP API in a process of its own, supervised by the controller.

``ApiProcess`` starts ``python -m hacontrol.api_child`` (a clean interpreter) with one end of a
socket pair, sends it its configuration over it, and answers what it asks (``hacontrol.api_rpc``):
reads are computed from the controller's handle as one short synchronous call on the main loop
(as the in-process server did; the same path at most every ``MIN_READ_INTERVAL``), commands are
put on the decision task's queue and answered when it answers. Accepting, parsing, refusing
and closing connections then spend the API process's CPU and interpreter lock, never the main
loop's (it can also be niced, ``API_NICE``, without the priority inversion a niced thread of
the controller had).

Nothing here waits on the API process: frames to it are buffered (past ``MAX_BUFFERED`` bytes
unread it is killed), at most ``MAX_COMMANDS`` of its commands are in flight, a late or dead
process only makes the API answer 503 or not at all. When it dies, ``api_process_exited`` is
logged at error and counted (``hacontrol_api_process_restarts``), and it is started again
after a back-off (``BACKOFF`` doubling to ``MAX_BACKOFF``; back to ``BACKOFF`` once a process
lived ``STABLE_AFTER``) on the same address. The controller goes on probing and failing over
without its API meanwhile. The API process dies with the controller (``api_child``).

When no API process can be started at all at start-up (the interpreter cannot be executed,
say, by the user the controller runs as), the API is served from a thread of the controller's
process instead, as before it had a process of its own, with an ``api_process_unavailable``
warning: an API without the isolation rather than a controller that does not start. An API
process that starts but cannot listen (the address is taken, the certificate is bad) is an
error at start-up, as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacontrol.api import COMMANDS, Answer, ApiServer, ControllerHandle, reads_of
from hacontrol.api_child import ENV_CHANNEL, ENV_PARENT
from hacontrol.api_rpc import TO_CONTROLLER_MAX, FrameError, encode, read_frame
from hacontrol.events import OperatorCommand
from hacontrol.jsonlog import LEVELS, JsonLog, jsonable
from hacontrol.settings import ApiSettings

API_NICE = 0
"""Niceness added to the API process (0: the controller's own priority). Niced 10 it took less
from a failover under a local connection flood, but answered ``/health`` in seconds, past the
liveness probes' timeouts, when the flood's own processes shared the cores
(docs/hardening.md)."""
START_TIMEOUT = 30.0
"""Seconds a new API process may take to import, bind and say where it listens."""
STOP_GRACE = 1.5
"""Seconds the API process gets to close its connections at stop before it is killed."""
BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
"""A process that lived this long restarts its back-off from ``BACKOFF``."""
MIN_READ_INTERVAL = 0.05
"""Seconds one read's answer is reused for the API process however often it asks."""
MAX_COMMANDS = 16
MAX_BUFFERED = 8 << 20
"""Bytes written to the API process and not read by it, at most: past it, it is stuck."""


class CannotListen(OSError):
    """The API process started but could not listen (the address, the certificate): why."""


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    listening: asyncio.Future[tuple[str, int]]
    started: float = field(default_factory=time.monotonic)
    serving: asyncio.Task[None] | None = None

    def kill(self) -> None:
        # os.kill, not proc.kill(): Popen's polls first and may reap the process under the
        # loop's child watcher, which then reports it unknown with a wrong exit status.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def close(self) -> int:
        """Its exit status, once it exited (killed after STOP_GRACE); the channel closed."""
        self.writer.close()  # end of channel: it stops serving and exits
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
        code = await self.proc.wait()
        if self.serving is not None:
            self.serving.cancel()
            await asyncio.gather(self.serving, return_exceptions=True)
        return code


class ApiProcess:
    """``start()`` on the main loop: the API process listens (OSError when it cannot) and its
    address is returned, as ``ApiServer.start()``; ``stop()`` ends it. ``on_state(up,
    restarts)`` is told each time the process stops or starts."""

    def __init__(
        self,
        settings: ApiSettings,
        handle: ControllerHandle,
        log: JsonLog,
        *,
        nice: int | None = None,
        on_state: Callable[[bool, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.handle = handle
        self.log = log
        self.nice = API_NICE if nice is None else nice
        self._on_state = on_state or (lambda up, restarts: None)
        self._reads = reads_of(handle)
        self._last: dict[str, tuple[float, Answer]] = {}
        self._commands: set[asyncio.Task[None]] = set()
        self._child: _Child | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._thread: ApiServer | None = None
        self.address: tuple[str, int] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The API process's id while one runs."""
        return self._child.proc.pid if self._child is not None else None

    async def start(self) -> tuple[str, int]:
        try:
            self._child = await self._spawn(self.settings)
        except CannotListen:
            raise
        except OSError as exc:  # no process at all: serve from a thread rather than not at all
            return await self._in_thread(exc)
        self.address = await self._child.listening
        self._on_state(True, self.restarts)
        self._supervisor = asyncio.create_task(self._supervise(), name="api:supervisor")
        return self.address

    async def _in_thread(self, why: OSError) -> tuple[str, int]:
        self.log.emit("api_process_unavailable", None, "warning", error=str(why)[:300],
                      serving="from a thread of the controller's process")  # fmt: skip
        self._thread = ApiServer(self.settings, self.handle, self.log)
        self.address = await self._thread.start()
        self._on_state(True, self.restarts)
        return self.address

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.stop()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        child, self._child = self._child, None
        if child is not None:
            await child.close()
        for task in self._commands:
            task.cancel()
        await asyncio.gather(*self._commands, return_exceptions=True)
        self.log.emit("api_stopped", None, "info")

    # -- the process ---------------------------------------------------------------------------

    async def _spawn(self, settings: ApiSettings) -> _Child:
        """A new API process, listening; OSError (it is gone) when it could not listen."""
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hacontrol.api_child",
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=child_environment(theirs.fileno()),
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        child = _Child(proc, writer, asyncio.get_running_loop().create_future())
        child.listening.add_done_callback(lambda f: f.cancelled() or f.exception())
        writer.write(encode(self._config(settings)))
        child.serving = asyncio.create_task(self._serve(child, reader), name="api:channel")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.shield(child.listening)
        except BaseException as exc:
            await child.close()
            if isinstance(exc, TimeoutError):
                raise OSError(
                    f"the API process did not listen within {START_TIMEOUT:g} s"
                ) from None
            raise
        return child

    def _config(self, settings: ApiSettings) -> dict[str, Any]:
        token = settings.token.get_secret_value() if settings.token is not None else None
        return {
            "t": "config",
            "settings": settings.model_dump(mode="json", exclude={"token", "token_file"}),
            "token": token,
            "level": next(level for level in LEVELS if self.log.enabled(level)),
            "nice": self.nice,
            "clusters": list(self.handle.clusters),
        }

    async def _supervise(self) -> None:
        """Restart the API process whenever it exits, after a back-off, on the same address."""
        failures = 0
        while True:
            child = self._child
            if child is not None:
                await child.proc.wait()
                code = await child.close()
                self._child = None
                self.restarts += 1
                failures = 0 if time.monotonic() - child.started >= STABLE_AFTER else failures + 1
                self._on_state(False, self.restarts)
                self.log.emit(
                    "api_process_exited", None, "error", pid=child.proc.pid, exit_code=code,
                    restarts=self.restarts, restart_in=_backoff(failures),
                )  # fmt: skip
            await asyncio.sleep(_backoff(failures))
            try:
                self._child = await self._spawn(self._same_address())
            except OSError as exc:
                failures += 1
                self.log.emit("api_process_failed", None, "error", error=str(exc)[:300])
                continue
            self._on_state(True, self.restarts)
            self.log.emit("api_process_restarted", None, "warning", pid=self._child.proc.pid)

    def _same_address(self) -> ApiSettings:
        """The settings again, with the port first bound when it was any free one (0)."""
        if self.address is None or self.settings.socket is not None or self.settings.port:
            return self.settings
        return self.settings.model_copy(update={"port": self.address[1]})

    # -- its requests --------------------------------------------------------------------------

    async def _serve(self, child: _Child, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_frame(reader, TO_CONTROLLER_MAX)) is not None:
                self._on_message(child, message)
        except (FrameError, OSError, ValueError, KeyError, TypeError) as exc:
            self.log.emit("api_process_error", None, "error", error=f"{type(exc).__name__}: {exc}")
        finally:
            if not child.listening.done():
                child.listening.set_exception(
                    OSError(f"the API process ended before it listened (pid {child.proc.pid})")
                )
            child.kill()  # the channel is gone: so is the process, if it is not already

    def _on_message(self, child: _Child, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "read":
            self._send(child, self._read(message["id"], str(message["path"])))
        elif kind == "command":
            if len(self._commands) >= MAX_COMMANDS:
                busy = f"{MAX_COMMANDS} commands already wait for the controller"
                self._send(child, {"t": "answer", "id": message["id"], "busy": busy})
                return
            task = asyncio.create_task(self._command(child, message), name="api:command")
            self._commands.add(task)
            task.add_done_callback(self._commands.discard)
        elif kind == "log":
            level = str(message["level"])
            if level in LEVELS and isinstance(message["fields"], dict):
                self.log.emit(str(message["event"]), message["node"], level, **message["fields"])
        elif kind == "listening" and not child.listening.done():
            child.listening.set_result((str(message["host"]), int(message["port"])))
        elif kind == "failed" and not child.listening.done():
            child.listening.set_exception(CannotListen(str(message["error"])))

    def _read(self, ident: Any, path: str) -> dict[str, Any]:
        now = time.monotonic()
        last = self._last.get(path)
        if last is not None and now - last[0] < MIN_READ_INTERVAL:
            status, body, content_type = last[1]
        else:
            read = self._reads.get(path)
            if read is None:
                return {"t": "answer", "id": ident, "error": f"no such read: {path[:100]}"}
            try:
                status, body, content_type = answer = read()
            except Exception as exc:  # a bug in a read: the API answers 500, the loop goes on
                self.log.emit("api_error", None, "error", path=path, error=f"{type(exc).__name__}")
                return {
                    "t": "answer",
                    "id": ident,
                    "error": f"internal error: {type(exc).__name__}",
                }
            self._last[path] = (now, answer)
        text = body.decode("utf-8", "replace")
        return {"t": "answer", "id": ident, "status": status, "body": text, "type": content_type}

    async def _command(self, child: _Child, message: dict[str, Any]) -> None:
        ident = message["id"]
        cmd = _operator_command(message)
        cluster = message.get("cluster")
        if cmd is None or cluster not in self.handle.clusters:
            self._send(child, {"t": "answer", "id": ident, "busy": "malformed command"})
            return
        result = await self.handle.command(cmd, cluster)
        self._last.clear()  # the next read shows what the command changed
        detail = jsonable(result.detail)
        answer = {"t": "answer", "id": ident, "ok": result.ok, "message": result.message}
        self._send(child, {**answer, "detail": detail})

    def _send(self, child: _Child, message: dict[str, Any]) -> None:
        if child.writer.is_closing():
            return
        child.writer.write(encode(message))
        if child.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.log.emit("api_process_stuck", None, "error", pid=child.proc.pid,
                          unread_bytes=child.writer.transport.get_write_buffer_size())  # fmt: skip
            child.kill()


def _operator_command(message: dict[str, Any]) -> OperatorCommand | None:
    """The command the API process parsed, every field of it (a field dropped here would
    change its meaning: a rebuild's ``dry_run`` lost is a rebuild started); None when a field
    has the wrong type."""
    command, node, on = message.get("command"), message.get("node"), message.get("on")
    source, dry_run = message.get("source"), message.get("dry_run", False)
    if (
        command not in COMMANDS
        or not isinstance(node, str | None)
        or not isinstance(on, bool | None)
        or not isinstance(source, str | None)
        or not isinstance(dry_run, bool)
    ):
        return None
    return OperatorCommand(
        at=time.monotonic(), command=command, node=node, on=on, source=source, dry_run=dry_run
    )


def _backoff(failures: int) -> float:
    return min(MAX_BACKOFF, BACKOFF * 2 ** min(failures, 16))


def child_environment(channel_fd: int) -> dict[str, str]:
    """The controller's environment without its HACONTROL_* settings (the API process gets its
    own over the channel, and no database or mail password), plus the channel and the parent."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HACONTROL_")}
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env[ENV_CHANNEL] = str(channel_fd)
    env[ENV_PARENT] = str(os.getpid())
    return env
