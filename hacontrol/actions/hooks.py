"""Operator hooks: a command run at a phase of a failover or switchover.

Operators plug their own commands into phases (``HookSettings``: ``on_failure_detected``,
``pre_failover``, ``post_failover``, ``post_switchover``, ``on_halt``) to page someone, update
DNS or a CMDB, or veto a failover ("do not fail over now"). ``HookRunner.run()`` never raises
for a failing hook: every outcome is a ``HookResult`` value, and the caller decides what a
failure means (a failed ``pre_failover`` aborts the failover).

Decisions written down here:

- The command line is split with ``shlex.split`` and run WITHOUT a shell, so the controller
  never interprets ``$``, ``;`` or globs. An operator who wants shell code writes
  ``sh -c '...'`` or a script. A line that does not split (unbalanced quotes) is a failed hook.
- The hook runs in a new session (its own process group), stdin from /dev/null, stdout and
  stderr into one pipe. On timeout the whole group gets SIGTERM, then SIGKILL after
  ``kill_grace`` seconds, so children a hook started die with it.
- The hook is done when its own process exits. Output is then read for at most ``drain``
  more seconds: a background process it left behind may hold the pipe open, and it does not
  delay the failover. Such leftovers of a hook that exited are NOT killed (a hook may start
  something on purpose); they simply stop being read.
- Environment: the controller's environment minus every ``HACONTROL_*`` variable (settings
  overrides and secrets such as ``HACONTROL_MYSQL__PASSWORD`` live there), plus the context as
  ``HACONTROL_<KEY>`` and always ``HACONTROL_CLUSTER`` and ``HACONTROL_PHASE``. No environment
  value is ever logged.
- Output kept in the result: the first ``output_limit`` bytes (64 KiB), decoded as UTF-8 with
  replacement. The log line carries at most ``LOG_OUTPUT_LIMIT`` characters of it, so that one
  line stays under the 16 KiB at which container log drivers split lines.
- A hook cancelled with its caller (controller shutdown) has its group killed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from hacontrol.jsonlog import JsonLog
from hacontrol.settings import HookSettings

PHASES = ("on_failure_detected", "pre_failover", "post_failover", "post_switchover", "on_halt")
ENV_PREFIX = "HACONTROL_"
OUTPUT_LIMIT = 64 * 1024
LOG_OUTPUT_LIMIT = 8 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HookResult:
    phase: str
    command: str
    """The command line as configured (empty when none)."""
    ran: bool
    """False when no command is configured for the phase."""
    ok: bool
    exit_code: int | None
    """None on timeout or when the command could not start; negative: killed by that signal."""
    timed_out: bool
    seconds: float
    output: str
    """stdout and stderr interleaved, truncated, or the reason the command could not start."""


def hook_env(
    base_env: Mapping[str, str], cluster: str, phase: str, context: Mapping[str, str]
) -> dict[str, str]:
    """The hook's environment: ``base_env`` without ``HACONTROL_*``, plus the context.

    Context keys become ``HACONTROL_<KEY>`` (upper-cased; characters other than letters,
    digits and ``_`` become ``_``). ``cluster`` and ``phase`` always win over the context.
    """
    env = {k: v for k, v in base_env.items() if not k.upper().startswith(ENV_PREFIX)}
    for key, value in context.items():
        env[ENV_PREFIX + _env_key(key)] = str(value)
    env[ENV_PREFIX + "CLUSTER"] = cluster
    env[ENV_PREFIX + "PHASE"] = phase
    return env


def _env_key(key: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", key.upper())


def command_problem(command: str) -> str | None:
    """Why ``command`` cannot be run as a hook command line, or None (empty is fine: no hook)."""
    try:
        shlex.split(command)
    except ValueError as exc:
        return f"cannot split command line: {exc}"
    return None


def describe(result: HookResult) -> str:
    """One line for an alert, e.g. ``pre_failover hook `/usr/local/bin/guard` exited 3: busy``."""
    if not result.ran:
        return f"{result.phase}: no hook configured"
    head = f"{result.phase} hook `{result.command}`"
    if result.timed_out:
        what = f"timed out after {result.seconds:.1f} s and was killed"
    elif result.exit_code is None:
        what = "could not start"
    elif result.exit_code < 0:
        what = f"was killed by {_signal_name(-result.exit_code)}"
    else:
        what = f"exited {result.exit_code}"
    line = _first_line(result.output)
    return f"{head} {what}: {line}" if line else f"{head} {what}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _first_line(text: str, limit: int = 200) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


@dataclass(frozen=True)
class _Outcome:
    exit_code: int | None
    timed_out: bool
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class HookRunner:
    def __init__(
        self,
        settings: HookSettings,
        log: JsonLog,
        *,
        cluster: str,
        environ: Mapping[str, str] | None = None,
        kill_grace: float = 2.0,
        drain: float = 0.5,
        output_limit: int = OUTPUT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``environ``: the base environment (default: the controller's, read at each run)."""
        self._settings = settings
        self._log = log
        self._cluster = cluster
        self._environ = environ
        self._kill_grace = kill_grace
        self._drain = drain
        self._output_limit = output_limit
        self._clock = clock

    def longest(self) -> float:
        """Seconds a hook may take at most: its timeout, the kill grace and the output drain
        (a stop lets a background hook have that before it kills it)."""
        return self._settings.timeout + self._kill_grace + self._drain

    def command(self, phase: str) -> str:
        if phase not in PHASES:
            raise ValueError(f"unknown hook phase {phase!r}; known: {', '.join(PHASES)}")
        return getattr(self._settings, phase).strip()

    async def run(self, phase: str, context: Mapping[str, str]) -> HookResult:
        command = self.command(phase)
        if not command:
            return HookResult(phase, "", False, True, None, False, 0.0, "")
        node = context.get("node")
        self._log.emit("hook_started", node, phase=phase, command=command)
        start = self._clock()
        env = hook_env(
            os.environ if self._environ is None else self._environ, self._cluster, phase, context
        )
        try:
            outcome = await self._execute(command, env)
        except asyncio.CancelledError:  # its controller stopped: its process group was killed
            seconds = round(self._clock() - start, 3)
            cut = HookResult(phase, command, True, False, None, False, seconds, "")
            killed = "the controller stopped before the hook ended"
            self._finished(node, "error", cut, killed=killed)
            raise
        seconds = round(self._clock() - start, 3)
        result = HookResult(
            phase=phase,
            command=command,
            ran=True,
            ok=outcome.ok,
            exit_code=outcome.exit_code,
            timed_out=outcome.timed_out,
            seconds=seconds,
            output=outcome.output,
        )
        if result.ok:
            level = "info"
        elif result.exit_code is not None and result.exit_code > 0:
            level = "warning"  # the hook ran and said no: a deliberate answer, e.g. a veto
        else:
            level = "error"  # timed out, killed, or could not start
        self._finished(node, level, result)
        return result

    def _finished(self, node: str | None, level: str, result: HookResult, **more: str) -> None:
        """The ``hook_finished`` line: ``result``, its output cut at LOG_OUTPUT_LIMIT."""
        output = result.output
        if len(output) > LOG_OUTPUT_LIMIT:
            output = output[:LOG_OUTPUT_LIMIT] + "\n[output truncated in this log line]"
        self._log.emit(
            "hook_finished",
            node,
            level=level,
            phase=result.phase,
            command=result.command,
            ok=result.ok,
            exit_code=result.exit_code,
            timed_out=result.timed_out,
            seconds=result.seconds,
            output=output,
            **more,
        )

    async def _execute(self, command: str, env: Mapping[str, str]) -> _Outcome:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return _Outcome(None, False, f"cannot split command line: {exc}")
        if not argv:
            return _Outcome(None, False, "empty command line")
        # Our own pipe (not asyncio's PIPE): the hook is done when its process exits, even if
        # a background child still holds the pipe, and we close our end when we stop reading.
        read_fd, write_fd = os.pipe()
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=dict(env),
                start_new_session=True,
            )
        )
        try:
            # Shielded: cancelled half-way, asyncio would kill the hook's own process only and
            # leave its children; instead the spawn completes and its whole group is killed.
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            spawn.add_done_callback(functools.partial(_abandon, read_fd, write_fd))
            raise
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(read_fd)
            os.close(write_fd)
            return _Outcome(None, False, f"cannot start {argv[0]!r}: {_error_text(exc)}")
        os.close(write_fd)  # the hook has its copies; EOF comes when they are all closed

        captured = bytearray()
        try:
            timed_out = await self._supervise(proc, os.fdopen(read_fd, "rb", buffering=0), captured)
        except asyncio.CancelledError:
            _killpg(proc.pid, signal.SIGKILL)  # shutdown: no grace, the caller is going away
            # Reaped before the cancel goes on: a hook its caller awaited is a dead one.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(self._kill_grace):
                    await proc.wait()
            raise
        output = bytes(captured[: self._output_limit]).decode("utf-8", errors="replace")
        if len(captured) > self._output_limit:
            output += f"\n[output truncated at {self._output_limit} bytes]"
        return _Outcome(None if timed_out else proc.returncode, timed_out, output)

    async def _supervise(
        self, proc: asyncio.subprocess.Process, pipe: BinaryIO, captured: bytearray
    ) -> bool:
        """Wait for the hook (killing its group on timeout) and read its output into
        ``captured``. Returns whether it timed out. Closes ``pipe``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK)
        # On failure (or cancellation) connect_read_pipe closes the transport, hence ``pipe``.
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        capture = asyncio.create_task(
            self._capture(reader, captured), name=f"hook-output-{proc.pid}"
        )
        timed_out = False
        try:
            try:
                async with asyncio.timeout(self._settings.timeout):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                await self._terminate(proc)
            await asyncio.wait([capture], timeout=self._drain)
        finally:
            capture.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await capture
            transport.close()
        return timed_out

    async def _capture(self, reader: asyncio.StreamReader, into: bytearray) -> None:
        """Read until EOF; keep one byte past the limit (to know it was cut), drop the rest."""
        while chunk := await reader.read(_CHUNK):
            room = self._output_limit + 1 - len(into)
            if room > 0:
                into += chunk[:room]

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the hook's process group, SIGKILL it after the grace period."""
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._kill_grace):
                await proc.wait()
                # Children may outlive the hook's own process: give them the same grace.
                # Polling: the kernel offers no event for "process group is empty".
                while _group_alive(proc.pid):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        _killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._kill_grace):
                await proc.wait()


def _abandon(
    read_fd: int, write_fd: int, spawn: asyncio.Future[asyncio.subprocess.Process]
) -> None:
    """A spawn whose caller was cancelled: close the pipe, kill the hook's group if it runs."""
    os.close(read_fd)
    os.close(write_fd)
    if not spawn.cancelled() and spawn.exception() is None:
        _killpg(spawn.result().pid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    # start_new_session=True: the hook's pid is its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group.

    Zombies count as gone: orphans are reaped by PID 1, and a container's PID 1 may reap late
    or never. Read from /proc on Linux; elsewhere, any member, zombie or not, counts.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
