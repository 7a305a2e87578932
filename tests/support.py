"""Helpers every kind of test shares: folding events into a view, a free port, waiting for a
condition, disk faults (a full tmpfs, an immutable file, a journal that cannot be written). One
of each (plain values live in ``tests.factories``, sandbox helpers in
``tests.live``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hacontrol.events import Event
from hacontrol.journal import Journal
from hacontrol.metrics import Metrics
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, fold, initial


def fold_all(
    settings: Settings, *rounds: Iterable[Event] | Event, view: ClusterView | None = None
) -> ClusterView:
    """The view after every event, in order, from ``view`` (or the initial one). An argument
    is one event or a round of them."""
    view = initial(settings) if view is None else view
    for item in rounds:
        for event in item if isinstance(item, list | tuple) else (item,):
            view = fold(view, event, settings)
    return view


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "the condition", poll: float = 0.05
) -> Any:
    """Poll ``check`` (a function, or a coroutine function) until it returns something truthy,
    and return that; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(poll)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, again until it ends, and collect it. Python 3.11's ``asyncio.wait_for``
    (aiomysql's connect uses it) loses a cancellation that arrives as the call it waits for
    completes, and the task would go on: one ``cancel()`` then an await could hang a test (seen
    with a client reconnecting 20 times a second to a read-only node)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    await asyncio.gather(task, return_exceptions=True)


# -- disk faults: a small tmpfs filled up, an immutable file (real, as root) -----------------


def disk_faults_unavailable() -> str | None:
    """Why a test cannot mount a tmpfs or set the immutable flag here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount -t tmpfs, chattr +i)"
    if shutil.which("chattr") is None:
        return "needs chattr (e2fsprogs)"
    return None


@contextlib.contextmanager
def small_tmpfs(size: str = "16k") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted on a temporary folder; unmounted at the end."""
    where = Path(tempfile.mkdtemp(prefix="hacontrol-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        for path in where.rglob("*"):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        where.rmdir()


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` until it refuses a byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while os.write(fd, chunk):
                    pass
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i path`` for the block (skips the test when the filesystem refuses it)."""
    import pytest

    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def break_journal(journal: Journal) -> Callable[[], None]:
    """From now on the journal's folder is a regular file: every record fails."""

    def now() -> None:
        blocker = journal.path.parent / "not-a-folder"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("x")
        journal.path = blocker / "journal.jsonl"

    return now


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Prometheus samples by (name, labels)."""


def samples(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(data: Samples, name: str, **labels: str) -> float | None:
    return data.get((name, frozenset({"cluster": "t", **labels}.items())))
