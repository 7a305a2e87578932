"""Local processes for a rebuild: run one command, or stream one command into another.

Side effects only. Every process gets its own session (process group), so that a timeout or
a cancellation kills it with everything it started (an ``sh -s`` script's children, the local
half of an ``ssh``), and nothing else. Blocking I/O runs in threads: the event loop stays free,
and no child watcher of the loop (uvloop's included) is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hacontrol.mariabackup import BackupLog
from hacontrol.rebuild_commands import Command

CHUNK = 1024 * 1024
POLL = 0.1
KEEP_LINES = 20


class ProcessError(Exception):
    """A command could not run, failed, or timed out; the message is one line for operators."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 5) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:]) if text else "no output"


def _popen(command: Command, env: Mapping[str, str] | None, **streams: int) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            command.argv,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            **streams,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise ProcessError(f"cannot run {command.argv[0]}: {exc.strerror or exc}") from None


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process's group (its own session), if it still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def run(command: Command, timeout: float, env: Mapping[str, str] | None = None) -> Finished:
    """Run to completion, feeding ``command.stdin``; ProcessError on a timeout. A non-zero
    exit status is returned, not raised: the caller knows what it means."""
    proc = _popen(
        command,
        env,
        stdin=subprocess.PIPE if command.stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    data = command.stdin.encode() if command.stdin is not None else None
    try:
        out, err = await asyncio.to_thread(proc.communicate, data, timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        await asyncio.to_thread(proc.communicate)
        raise ProcessError(f"{command} timed out after {timeout:g} s") from None
    except BaseException:  # cancelled: the thread returns once the group is dead
        kill(proc)
        raise
    return Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass(frozen=True)
class StreamDone:
    copied: int
    backup_code: int
    receive_code: int
    receive_tail: str


class Stream:
    """``backup`` | hacontrol | ``receive``: bytes counted as they pass, the backup's stderr
    folded into a :class:`BackupLog`. Threads: one pump, one drain per stderr."""

    def __init__(
        self, backup: Command, receive: Command, env: Mapping[str, str] | None = None
    ) -> None:
        self.backup_cmd, self.receive_cmd, self.env = backup, receive, env
        self.log = BackupLog()
        self.copied = 0
        self.last_data = time.monotonic()
        self.pipe_error = ""
        self._receive_tail: deque[str] = deque(maxlen=KEEP_LINES)
        self._pumped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen] = []

    def start(self) -> None:
        receive = _popen(
            self.receive_cmd,
            self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._procs.append(receive)
        try:
            backup = _popen(
                self.backup_cmd,
                self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except ProcessError:
            self.kill()
            raise
        self._procs.append(backup)
        self._spawn(self._pump, backup, receive)
        self._spawn(self._drain, backup.stderr, self.log.feed)
        self._spawn(self._drain, receive.stderr, self._receive_tail.append)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="rebuild-stream", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, backup: subprocess.Popen, receive: subprocess.Popen) -> None:
        src, dst = backup.stdout.fileno(), receive.stdin.fileno()
        try:
            while chunk := os.read(src, CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
                self.copied += len(chunk)
                self.last_data = time.monotonic()
        except BrokenPipeError:
            self.pipe_error = "the receiving side stopped reading"
            kill(backup)
        except OSError as exc:
            self.pipe_error = f"stream broken: {exc}"
            kill(backup)
        finally:
            for pipe in (receive.stdin, backup.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
            self._pumped.set()

    @staticmethod
    def _drain(pipe, sink: Callable[[str], None]) -> None:
        try:
            with contextlib.suppress(OSError, ValueError):
                for raw in pipe:
                    sink(raw.decode(errors="replace"))
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    @property
    def pumped(self) -> bool:
        """The backup's output ended (it finished, or died, or the receiver went away)."""
        return self._pumped.is_set()

    def kill(self) -> None:
        for proc in self._procs:
            kill(proc)

    async def abort(self) -> None:
        """Kill both processes and reap them (a stall, a timeout, a cancellation)."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(_wait_all, tuple(self._procs), 10.0)

    async def finish(self, timeout: float) -> StreamDone:
        """After :attr:`pumped`: wait for both processes and the drains (bounded)."""
        receive, backup = self._procs
        try:
            codes = await asyncio.to_thread(_wait_all, (backup, receive), timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessError(
                f"the backup or the receiver did not exit within {timeout:g} s"
            ) from None
        finally:
            for thread in self._threads:
                await asyncio.to_thread(thread.join, 5.0)
        return StreamDone(self.copied, codes[0], codes[1], " | ".join(self._receive_tail))


def _wait_all(procs: tuple[subprocess.Popen, ...], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(max(0.0, deadline - time.monotonic())) for p in procs]
