"""Intent journal: multi-step changes survive a crash of the controller.

Append-only JSON lines, each made durable (written whole, fsynced) before it counts:

- ``begin``: a plan's id, kind, rule, reason and its actions, written BEFORE its first step;
- ``start``: a Promote began (a crash inside it is known as such);
- ``step``: one action done (index, ok, detail), written right after it completed;
- ``end``: the plan finished (ok or not) and the node it promoted (null: none). A failover
  that promoted nothing releases, in the replay, the quarantine and the recovery block the
  state written before it took: a crash between this record and the controller's next state
  record must not leave a dead primary quarantined (no failover, no alert);
- ``state``: the controller state that must outlive a restart (``model.Persisted``: pause,
  maintenance, quarantined old primaries, the recovery block, the last failover), in
  wall-clock time.

``load()`` replays the file: the last state, and the plan that began but did not end (with the
indexes of its completed steps), which the controller finishes before anything new. The file
is compacted at load to those two records (when it can be written).

Reading is strict: a record that is not one this journal writes raises ``JournalError`` naming
the file, the line and the problem (``hacontrol journal check``; ``hacontrol journal reset
--yes`` keeps a copy and starts empty). A torn record (the controller died mid-write: a line
that starts as a record and stops) is skipped and counted; it never counted as written.

Writing never blocks the event loop: records go, in order, through ONE writer thread
(``post`` without waiting, ``write`` awaited with a deadline), so that what was posted before a
record is durable before it. A record that cannot be made durable raises ``JournalUnwritable``
(``on_failure`` hears of it too); a short write is cut back, so the file never holds half a
record from a full disk. ``check_space`` says whether the journal can be written and how much
room is left; the controller runs it periodically.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacontrol import plan as p
from hacontrol.journal_format import (
    ACTION_TYPES,
    RecordError,
    action_from_json,
    action_to_json,
    check_record,
    plan_from_json,
    plan_to_json,
    released,
    state_from_json,
    state_to_json,
)
from hacontrol.model import Intent

__all__ = [
    "ACTION_TYPES",
    "Journal",
    "JournalError",
    "JournalUnwritable",
    "Replay",
    "Space",
    "action_from_json",
    "action_to_json",
    "plan_from_json",
    "plan_to_json",
    "read_records",
    "state_from_json",
    "state_to_json",
]

WRITE_TIMEOUT = 2.0
"""An awaited record not durable within this long counts as not written (a hung disk)."""
MIN_FREE = 4096
"""Less room than this on the journal's filesystem: it cannot take a plan's records."""
LOW_FREE = 64 * 1024 * 1024
"""Less room than this: writable still, but an operator should act (an alert)."""
_TORN_PREFIX = '{"ts":'


class JournalError(Exception):
    """The journal cannot be read as a journal: the file, the line (1-based) and the problem."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class JournalUnwritable(Exception):
    """A record could not be made durable (full disk, read-only, immutable, hung)."""


@dataclass(frozen=True)
class Space:
    """What ``check_space`` found: can the journal be written, and the room left."""

    writable: bool
    free_bytes: int | None
    reason: str = ""

    @property
    def low(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < LOW_FREE


@dataclass(frozen=True)
class Replay:
    unfinished: Intent | None
    state: dict[str, Any] | None
    torn: tuple[int, ...] = ()
    """Lines holding a torn record (skipped)."""
    records: int = 0
    unwritable: str | None = None
    """Why the compaction at load could not write the journal (it was left as it was)."""


def read_records(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], tuple[int, ...]]:
    """Every record with its line number, and the torn lines; JournalError on anything else."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], ()
    except IsADirectoryError:
        raise JournalError(path, "is a directory, not a journal file") from None
    except OSError as exc:
        raise JournalError(path, f"cannot be read: {exc.strerror or exc}") from None
    records: list[tuple[int, dict[str, Any]]] = []
    torn: list[int] = []
    for number, data in enumerate(raw.split(b"\n"), start=1):
        if not data.strip():
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JournalError(path, f"not UTF-8 text (byte {exc.start + 1})", number) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.startswith(_TORN_PREFIX):
                torn.append(number)  # a record cut by a crash mid-write
                continue
            raise JournalError(path, f"not JSON: {exc.msg} (column {exc.colno})", number) from None
        except RecursionError:
            raise JournalError(path, "JSON nested too deeply", number) from None
        try:
            records.append((number, check_record(value)))
        except RecordError as exc:
            raise JournalError(path, str(exc), number) from None
    return records, tuple(torn)


def replay(records: list[tuple[int, dict[str, Any]]]) -> tuple[Intent | None, dict | None]:
    """The plan that began and did not end (the last one), and the last state."""
    begun: dict[str, dict[str, Any]] = {}
    done: dict[str, set[int]] = {}
    started: dict[str, set[int]] = {}
    state: dict[str, Any] | None = None
    for _, record in records:
        kind, plan_id = record["type"], record.get("id")
        if kind == "begin":
            begun[plan_id] = record
            done[plan_id], started[plan_id] = set(), set()
        elif kind == "step" and record["ok"] and plan_id in done:
            done[plan_id].add(record["index"])
        elif kind == "start" and plan_id in started:
            started[plan_id].add(record["index"])
        elif kind == "end":
            ended = begun.pop(plan_id, None)
            nothing_promoted = record.get("promoted", "") is None  # key absent: not known
            if ended is not None and state is not None and nothing_promoted and not begun:
                state = released(state, ended)
        elif kind == "state":
            state = record["state"]
    if not begun:
        return None, state
    record = list(begun.values())[-1]
    plan = plan_from_json(record)
    steps = len(plan.actions)
    intent = Intent(
        record["id"],
        plan,
        frozenset(i for i in done[record["id"]] if i < steps),
        frozenset(i for i in started[record["id"]] if i < steps),
    )
    return intent, state


class Journal:
    def __init__(self, path: Path, *, write_timeout: float = WRITE_TIMEOUT) -> None:
        self.path = path
        self.write_timeout = write_timeout
        self.on_failure: Callable[[str], None] | None = None
        """Called (in the writer thread) with the reason whenever a record is not written."""
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy_since: float | None = None
        self._lock = threading.Lock()
        self._pending_ends: list[dict[str, Any]] = []
        """``end`` records that could not be written: retried before the next record."""
        self._closed = False
        """Closed for good (its Runtime stopped): a fresh one of the cluster owns the file."""

    # -- records ------------------------------------------------------------------------------

    def begin(self, plan_id: str, plan: p.Plan) -> None:
        self.append({"type": "begin", "id": plan_id, **plan_to_json(plan)})

    def step_started(self, plan_id: str, index: int) -> None:
        self.append({"type": "start", "id": plan_id, "index": index})

    def step(self, plan_id: str, index: int, ok: bool, detail: str) -> None:
        self.append({"type": "step", "id": plan_id, "index": index, "ok": ok, "detail": detail})

    def end(self, plan_id: str, ok: bool, reason: str, promoted: str | None) -> None:
        """An ``end`` that cannot be written now is kept and written with the next record:
        a restart must not take a finished plan for an unfinished one once the disk is back.
        ``promoted``: the node the plan promoted, None when it promoted nothing."""
        record = {"type": "end", "id": plan_id, "ok": ok, "reason": reason, "promoted": promoted}
        try:
            self.append(record)
        except JournalUnwritable:
            with self._lock:
                self._pending_ends.append(record)
            raise

    def save_state(self, state: dict[str, Any]) -> None:
        self.append({"type": "state", "state": state})

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (and any ``end`` kept from before); JournalUnwritable."""
        if self._closed:  # what a stopped Runtime still sends lands nowhere
            raise JournalUnwritable(f"{self.path}: this journal was closed (its cluster stopped)")
        with self._lock:
            pending, self._pending_ends = self._pending_ends, []
        lines = [_line(r) for r in (*pending, record)]
        try:
            self._write_lines("".join(lines).encode("utf-8"))
        except OSError as exc:
            with self._lock:
                self._pending_ends[:0] = pending
            reason = f"{self.path}: {exc.strerror or exc}"
            if self.on_failure is not None:
                self.on_failure(reason)
            raise JournalUnwritable(reason) from None

    def _write_lines(self, data: bytes) -> None:
        """Append ``data`` whole and fsync it, or leave the file as it was (OSError)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a torn record: never glue a record to it
            try:
                written = os.write(fd, data)
                if written < len(data):
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
                os.fsync(fd)
            except OSError:
                _cut_back(fd, size)
                raise
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)

    # -- off the event loop, in order ------------------------------------------------------

    def post(self, method: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run a record method in the writer thread after everything posted before; do not
        wait. A failure goes to ``on_failure``. Closed: a failed future (JournalUnwritable),
        no writer thread started again."""
        if self._closed:
            failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
            failed.set_exception(
                JournalUnwritable(f"{self.path}: this journal was closed (its cluster stopped)")
            )
            return failed
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        return self._pool.submit(self._timed, method, *args)

    async def write(self, method: Callable[..., None], *args: Any) -> None:
        """Run a record method in the writer thread and wait until it is durable:
        JournalUnwritable when it fails, or when the writer is stuck or slower than
        ``write_timeout`` (the write may still land later, after every record before it)."""
        busy = self.busy_for()
        if busy is not None and busy > self.write_timeout:
            raise JournalUnwritable(f"{self.path}: a journal write has hung for {busy:.1f} s")
        job = asyncio.wrap_future(self.post(method, *args))
        try:
            async with asyncio.timeout(self.write_timeout):
                await asyncio.shield(job)
        except TimeoutError:
            raise JournalUnwritable(
                f"{self.path}: not written within {self.write_timeout:g} s (the disk hangs?)"
            ) from None

    async def flushed(self, timeout: float | None = None) -> bool:
        """Wait until everything posted so far is done (written or failed); False on timeout,
        at once when the writer is stuck. Closed: whether its last write has ended."""
        busy = self.busy_for()
        if busy is not None and busy > self.write_timeout:
            return False
        if self._closed:
            return busy is None
        job = asyncio.wrap_future(self.post(_nothing))
        try:
            async with asyncio.timeout(timeout or self.write_timeout):
                await asyncio.shield(job)
        except TimeoutError:
            return False
        return True

    def busy_for(self) -> float | None:
        """Seconds the writer thread has been on its current record, None when idle."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def close(self) -> None:
        """For good: every later write fails (JournalUnwritable), no writer thread again."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = None

    def _timed(self, method: Callable[..., Any], *args: Any) -> Any:
        self._busy_since = time.monotonic()
        try:
            return method(*args)
        finally:
            self._busy_since = None

    # -- health ---------------------------------------------------------------------------

    def check_space(self) -> Space:
        """Can a record be written (the file opens for appending, the filesystem has room),
        and how many bytes are free. Changes nothing but creating the folder and the file;
        writes the ``end`` records kept from a failure when it can."""
        try:
            if self.path.is_dir():
                return Space(False, None, f"{self.path} is a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            stats = os.statvfs(self.path.parent)
            free = stats.f_bavail * stats.f_frsize
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            return Space(False, None, f"{self.path}: {exc.strerror or exc}")
        if free < MIN_FREE:
            return Space(False, free, f"{self.path}: only {free} bytes free on its filesystem")
        with self._lock:
            pending, self._pending_ends = self._pending_ends, []
        if pending:
            try:
                self._write_lines("".join(_line(r) for r in pending).encode("utf-8"))
            except OSError as exc:
                with self._lock:
                    self._pending_ends[:0] = pending
                return Space(False, free, f"{self.path}: {exc.strerror or exc}")
        return Space(True, free)

    # -- at start-up ----------------------------------------------------------------------

    def load(self) -> Replay:
        """Replay the journal and compact it. JournalError when it cannot be read as a
        journal; a journal that reads but cannot be written is left as it was (``unwritable``
        says why)."""
        records, torn = read_records(self.path)
        try:
            unfinished, state = replay(records)
        except RecordError as exc:  # checked per record already; kept as a last guard
            raise JournalError(self.path, str(exc)) from None
        unwritable = None
        if records or torn:
            try:
                self._compact(unfinished, state)
            except OSError as exc:
                unwritable = f"{self.path}: {exc.strerror or exc}"
        return Replay(unfinished, state, torn, len(records), unwritable)

    def _compact(self, unfinished: Intent | None, state: dict[str, Any] | None) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write("".join(_line(r) for r in compacted(unfinished, state)))
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


def compacted(unfinished: Intent | None, state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The records a compacted journal holds: the state, and the unfinished plan's."""
    records: list[dict[str, Any]] = []
    if state is not None:
        records.append({"type": "state", "state": state})
    if unfinished is not None:
        plan_id = unfinished.plan_id
        records.append({"type": "begin", "id": plan_id, **plan_to_json(unfinished.plan)})
        records += [
            {"type": "step", "id": plan_id, "index": i, "ok": True, "detail": "done before restart"}
            for i in sorted(unfinished.done)
        ]
        records += [
            {"type": "start", "id": plan_id, "index": i} for i in sorted(unfinished.started)
        ]
    return records


def reset(path: Path) -> Path | None:
    """Move the journal aside (``<name>.<UTC time>.bak``, never deleted) and leave none: the
    controller starts with no unfinished plan and no kept state. Returns the copy (None: there
    was no journal); OSError when it cannot."""
    if not path.exists() and not path.is_symlink():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while kept.exists():
        kept, n = path.with_name(f"{path.name}.{stamp}.{n}.bak"), n + 1
    path.rename(kept)
    _fsync_dir(path.parent)
    return kept


def _line(record: dict[str, Any]) -> str:
    return json.dumps({"ts": time.time(), **record}, separators=(",", ":")) + "\n"


def _cut_back(fd: int, size: int) -> None:
    """Undo a partial append (best effort: shrinking a file needs no room)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)


def _nothing() -> None:
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
