"""Processes and ports of the sandbox. Processes are found by pid file / state, never by name.

A pid alone can be reused, so every signal is sent only after /proc/<pid>/cmdline shows the
process still runs with our config file (the "marker").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path

from hacontrol.sandbox.model import HOST, PortBusyError


def find_binary(name: str) -> str | None:
    """Debian puts the daemons (and ip, tc, nft) in /usr/sbin, which a non-root PATH often
    lacks."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if candidate.exists() else None


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a server could listen on host:port (SO_REUSEADDR, like mariadbd and HAProxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def check_ports(ports: list[tuple[int, str]]) -> None:
    """Raise PortBusyError naming the first busy port."""
    for port, purpose in ports:
        if not port_is_free(port):
            raise PortBusyError(port, purpose)


async def wait_port_free(port: int, purpose: str, timeout: float) -> None:
    """A just-killed process may hold its listening socket for a moment while it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not port_is_free(port):
        if loop.time() >= deadline:
            raise PortBusyError(port, purpose)
        await asyncio.sleep(0.02)


def find_free_base_port(count: int, *, low: int = 20000, high: int = 32000) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1 (below the ephemeral range).

    Starts at a random place so that parallel test sessions rarely pick the same range; still a
    check-then-use race, which `up` turns into a clear PortBusyError.
    """
    span = high - low - count
    start = random.randrange(span)
    for offset in range(0, span, count):
        base = low + (start + offset) % span
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {low} and {high}")


def process_state(pid: int | None, marker: str) -> str:
    """'running', 'stopped' (SIGSTOP), or 'dead' (gone, zombie, or a reused pid)."""
    if pid is None:
        return "dead"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "dead"
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        reap(pid)
        return "dead"
    if marker not in cmdline:
        return "dead"  # the pid was reused by someone else's process
    return "stopped" if state in ("T", "t") else "running"


def is_alive(pid: int | None, marker: str) -> bool:
    return process_state(pid, marker) != "dead"


def wait_state(pid: int | None, marker: str, state: str, timeout: float) -> bool:
    """Poll /proc until the process reaches `state` (a few ms after a signal); bounded."""
    deadline = time.monotonic() + timeout
    while process_state(pid, marker) != state:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def reap(pid: int) -> None:
    """Collect a zombie child of this process (a killed node started by this process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def send_signal(pid: int | None, marker: str, sig: int) -> bool:
    if not is_alive(pid, marker):
        return False
    assert pid is not None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def spawn(argv: list[str], log_path: Path, prefix: list[str] | None = None) -> int:
    """Start a daemon in its own session (Ctrl-C on the CLI does not reach it); returns its pid.

    Neither asyncio's subprocess (it kills children when its transport closes) nor Popen (it
    warns about children still running when collected): a bare posix_spawn, reaped by reap().
    ``prefix``: a command that execs ``argv`` in the same process (``ip netns exec NS``).
    """
    full = [*(prefix or []), *argv]
    pid = os.posix_spawn(
        full[0],
        full,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    wait_exec(pid, argv)
    return pid


def wait_exec(pid: int, argv: list[str], timeout: float = 2.0) -> None:
    """Until the child shows its new command line (bounded). posix_spawn returns as soon as
    the kernel has switched the child to the new program, a moment before it sets up the
    arguments that /proc/<pid>/cmdline shows: a `process_state` in that moment found no marker
    and called a starting node dead ("exited at start", seen twice in 50 drill restarts on a
    loaded machine)."""
    expected = "\0".join(argv).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(expected):
                return
        except (FileNotFoundError, ProcessLookupError):
            return  # gone: the caller finds it dead and shows its log
        time.sleep(0.001)


async def wait_dead(pid: int, marker: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while is_alive(pid, marker):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def terminate(pid: int | None, marker: str, *, grace: float = 5.0) -> None:
    """SIGTERM (and SIGCONT so a frozen process can act on it), then SIGKILL after `grace`."""
    if pid is None or not send_signal(pid, marker, signal.SIGTERM):
        return
    send_signal(pid, marker, signal.SIGCONT)
    if await wait_dead(pid, marker, grace):
        return
    send_signal(pid, marker, signal.SIGKILL)
    await wait_dead(pid, marker, 5.0)
