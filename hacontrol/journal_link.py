"""The controller's link to its journal: loading it at start, records written in order off the
loop, failures and the periodic check turned into ``JournalStatus`` events. I/O only; what a
status means is the rules' business (``rules/journal.py``).

Journal writes go to the journal's writer thread, in order, and never block the loop; one that
fails comes back as a ``JournalStatus`` event, and so does the journal's check, every
``JOURNAL_CHECK_EVERY`` seconds (room left, writable or not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hacontrol.events import Event, JournalStatus
from hacontrol.journal import Journal, JournalUnwritable, Replay, Space
from hacontrol.jsonlog import JsonLog

JOURNAL_CHECK_EVERY = 5.0
"""Seconds between two checks of the journal (writable, room left)."""


class JournalLink:
    """One journal, seen from the decision loop: events out of its failures, never
    exceptions."""

    def __init__(
        self,
        journal: Journal,
        log: JsonLog,
        queue: asyncio.Queue[Event],
        clock: Callable[[], float],
        check_every: float = JOURNAL_CHECK_EVERY,
    ) -> None:
        self.journal, self.log, self.queue = journal, log, queue
        self._clock, self._every = clock, check_every
        self.loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> Replay:
        """The journal's records (JournalError: not a journal; the caller says so)."""
        journal = self.journal
        replay = journal.load()
        journal.on_failure = self._failed
        if replay.torn:
            self.log.emit(
                "journal_torn_records",
                None,
                "warning",
                path=str(journal.path),
                lines=list(replay.torn),
                reason="records cut by a crash mid-write: skipped, they never counted",
            )
        if replay.unwritable:
            self.log.emit("journal_unwritable", None, "error", reason=replay.unwritable)
        return replay

    def write(self, at_boot: bool, record: Callable[..., None], *args: Any) -> None:
        """A journal record: in the writer thread (in order, off the loop), or at once before
        the loop runs. A failure comes back as a JournalStatus event, never as an exception."""
        if not at_boot:
            self.journal.post(record, *args)
            return
        try:
            record(*args)
        except JournalUnwritable as exc:
            self.log.emit("journal_write_failed", None, "error", reason=str(exc))

    def _failed(self, reason: str) -> None:
        """From the writer thread: a record was not written."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        event = JournalStatus(self._clock(), False, reason)
        loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def check_often(self) -> None:
        while True:
            self.queue.put_nowait(await self.check())
            await asyncio.sleep(self._every)

    async def check(self) -> JournalStatus:
        """Writable, and the room left, checked in the writer thread (bounded)."""
        journal = self.journal
        timeout = 2 * journal.write_timeout
        try:
            job = asyncio.wrap_future(journal.post(journal.check_space))
            async with asyncio.timeout(timeout):
                space = await asyncio.shield(job)
        except TimeoutError:
            space = Space(False, None, f"{journal.path}: the check did not return in {timeout:g} s")
        except Exception as exc:  # the check must not end the loop
            space = Space(False, None, f"{journal.path}: {type(exc).__name__}: {exc}")
        return JournalStatus(
            self._clock(), space.writable, space.reason, space.free_bytes, space.low
        )
