"""Probe of one MySQL/MariaDB node: one asyncio task per node, never raising, never deciding.

Probes run on a fixed grid: the k-th is due at ``anchor + k * interval``, the anchor being the
first probe's start plus ``phase`` (``runtime.node_probes``: ``phase_of`` the cluster's name).
A probe that starts late (the controller's loop busy, a collection, the process not
scheduled) moves only itself, not every later one; the nodes of one cluster are probed
together (one moment of the cluster in its view), and the clusters of one process are spread
over the interval instead of all being due in the same millisecond.

Each probe runs the flavor's status statements as one multi-statement query on a kept
connection (one round trip), under ``probes.timeout`` for the connect and for the query. A
failure closes the connection; the next probe reconnects. Anything unexpected, a garbage
answer included, is an unreachable result with its reason, never an exception.

A second, idle *watch* connection per node runs ``DO SLEEP(...)``: a crashed server closes it
at once, which becomes a ``ConnectionLost`` event, so the controller re-probes without waiting
for the next interval. A frozen or partitioned server closes nothing; for it the probe timeouts
and the replicas' stalled heartbeats are the signal. A sleep that ends early (a server, or a
proxy in front of it, that answers ``DO SLEEP`` at once; a ``max_statement_time``; a KILL
QUERY) is re-issued after a back-off that doubles from the probe interval up to
``WATCH_BACKOFF_MAX``, never in a busy loop; an error the server answered is not a crash.

A probe reads at most ``PROBE_MAX_READ`` bytes per answer, the watch ``WATCH_MAX_READ``: a
server that streams endless or maximal packets is unhealthy at once (``mysqlconn``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiomysql
import pymysql

from hacontrol.events import ConnectionLost, Event, ProbeResult
from hacontrol.flavors import detect
from hacontrol.flavors.base import (
    Flavor,
    NodeStatus,
    multi_statement,
    with_semi_sync_settings,
)
from hacontrol.mysqlconn import (
    BoundedConnection,
    ColumnCache,
    Endpoint,
    connect,
    describe_error,
    execute,
    fetch_text,
)
from hacontrol.mysqlwire import Rows
from hacontrol.spread import fraction_of

Emit = Callable[[Event], None]
Clock = Callable[[], float]

WATCH_SECONDS = 3600
"""Length of the watch connection's idle ``DO SLEEP``; it is re-issued when it ends."""
WATCH_EARLY = 1.0
"""A watch query that ends sooner than this (seconds) ended early: back off before the next."""
WATCH_BACKOFF_MAX = 60.0
PROBE_MAX_READ = 1024 * 1024
"""Bytes one probe answer may take (a status answer is a few KiB)."""
WATCH_MAX_READ = 64 * 1024
TIMER_SLACK = 0.001
"""A wait for the next probe counts as done this close (seconds) to its end. uvloop's timers
have a resolution of one millisecond and its clock is read once per loop iteration, so a timer
for "in 0.4 ms" fires at once, and a wait that sleeps again for what is left spins: about ten
wake-ups per wait, measured, for every node every interval."""


class NodeProbe:
    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        interval: float,
        timeout: float,
        emit: Emit,
        clock: Clock = time.monotonic,
        watch: bool = True,
        phase: float = 0.0,
    ) -> None:
        self.name = name
        self._phase = phase
        self._endpoint = endpoint
        self._interval = interval
        self._timeout = timeout
        self._emit = emit
        self._clock = clock
        self._watch_enabled = watch
        self._conn: BoundedConnection | None = None
        self._columns: ColumnCache | None = None
        self._parsed: tuple[list[Rows], NodeStatus] | None = None
        """The last answer and its status: an answer whose every result set is the same rows
        (``ColumnCache.rows``: the same bytes) is that status again, not parsed again."""
        self._sql = ""
        self._flavor: Flavor | None = None
        self._version = ""
        self._wake = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None
        """What the wait for the next probe awaits: done by its timer or by ``wake``."""
        self._watching = False
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_conn: aiomysql.Connection | None = None
        self._last_start = float("-inf")
        self._anchor: float | None = None
        """The grid's origin: the first probe's start plus ``phase``."""
        self._due = float("-inf")
        """When the probe under way (or the next) was due on the grid."""

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every interval, or at once when woken; emit every result. Runs until cancelled."""
        try:
            while True:
                self._last_start = self._clock()
                result = await self.probe()
                self._emit(result)
                if result.ok:
                    self._arm_watch()
                await self._sleep_until_next()
        finally:
            await self.close()

    def wake(self) -> None:
        """Probe again now instead of at the next interval (fast confirmation)."""
        self._wake.set()
        _set_done(self._waiter)

    def next_due(self, min_gap: float) -> float:
        """The first slot of the grid at least ``min_gap`` after the last start: a start that
        was late (or woken early) does not move the slots after it. Never later than one
        interval after the last start (the schedule before the grid): a start woken within
        ``min_gap`` of a slot takes that instead of the slot after."""
        if self._anchor is None:
            self._anchor = self._last_start + self._phase
        slots = (self._last_start + min_gap - self._anchor) // self._interval + 1
        slot = self._anchor + max(0.0, slots) * self._interval
        return min(slot, self._last_start + self._interval)

    async def _sleep_until_next(self) -> None:
        # A wake is honoured, but not more often than every interval/10: a node that refuses
        # connections instantly must not turn fast confirmation into a busy loop.
        min_gap = self._interval / 10
        deadline = self._due = self.next_due(min_gap)
        while True:
            now = self._clock()
            if now + TIMER_SLACK >= deadline:
                return
            if self._wake.is_set() and now + TIMER_SLACK >= self._last_start + min_gap:
                self._wake.clear()
                return
            wait = deadline - now if not self._wake.is_set() else self._last_start + min_gap - now
            await self._nap(wait)

    async def _nap(self, seconds: float) -> None:
        """Until ``seconds`` passed or ``wake`` was called: one future and one timer. (An
        ``asyncio.timeout`` around ``Event.wait`` cancelled the task at every expiry and
        raised through it: about 45 us of CPU more per wait, for every node every interval.)"""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(seconds, _set_done, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    # -- one probe ----------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """One probe. Never raises (except cancellation).

        A good result is stamped with the time the status query was sent (``at``) and takes
        ``rtt`` to come back: the answer describes the server at some moment in between. Not
        the time the probe started: a reconnect, or the controller's own loop stalled before
        the query went out, would back-date an answer read seconds later (``view``)."""
        started = self._clock()
        try:
            conn = await self._connection()
            assert self._flavor is not None and self._columns is not None
            sent = self._clock()
            results = await fetch_text(conn, self._sql, self._columns, timeout=self._timeout)
            rtt = self._clock() - sent
            status = self._status(self._flavor, results)
        except ValueError as exc:  # the node answered, but garbage: unhealthy, not a crash
            self._drop()
            return ProbeResult(self.name, started, None, None, f"invalid answer: {exc}")
        except Exception as exc:
            self._drop()
            return ProbeResult(self.name, started, None, None, describe_error(exc))
        return ProbeResult(self.name, sent, rtt, status)

    def _status(self, flavor: Flavor, results: list[Rows]) -> NodeStatus:
        parsed = self._parsed
        if parsed is not None and _same_rows(results, parsed[0]):
            return parsed[1]
        status = flavor.parse_status(self._version, results[:-1])
        settings = flavor.parse_semi_sync_settings(results[-1] if results else [])
        status = with_semi_sync_settings(status, settings)
        self._parsed = (results, status)
        return status

    async def _connection(self) -> BoundedConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        conn: BoundedConnection = await connect(
            self._endpoint, self._timeout, multi_statements=True, max_read=PROBE_MAX_READ
        )
        try:
            rows = await execute(
                conn,
                "SELECT @@version AS version, @@version_comment AS comment",
                timeout=self._timeout,
            )
            self._version = str(rows[0]["version"])
            self._flavor = detect(self._version, str(rows[0]["comment"] or ""))
            # The status, and in the same round trip the semi-sync settings (how long a commit
            # may wait for an acknowledgement before the primary falls back to asynchronous
            # replication: what a failover's alert says may be at risk).
            statements = (*self._flavor.status_sql(), self._flavor.semi_sync_settings_sql())
            self._sql = multi_statement(statements)
            self._columns = ColumnCache(conn.encoding)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._parsed = None, None

    # -- the watch connection -----------------------------------------------------------------

    def _arm_watch(self) -> None:
        if self._watch_enabled and not self._watching:
            self._watching = True
            self._watch_task = asyncio.create_task(self._watch(), name=f"watch:{self.name}")

    async def _watch(self) -> None:
        """Hold an idle query open; its connection closing is a crash signal."""
        conn: aiomysql.Connection | None = None
        try:
            conn = await self._watch_connect()
            backoff = self._interval
            while True:
                started = self._clock()
                try:
                    await execute(conn, f"DO SLEEP({WATCH_SECONDS})", timeout=WATCH_SECONDS + 60)
                except pymysql.err.MySQLError as exc:
                    if not answered_by_server(exc):
                        raise
                if conn.closed:  # it answered an error (fetch_all closed it): reconnect now,
                    conn = await self._watch_connect()  # a server shutting down refuses here
                if self._clock() - started < WATCH_EARLY:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, WATCH_BACKOFF_MAX)
                else:
                    backoff = self._interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if conn is not None:  # it was established, then lost: the server side closed it
                self._emit(ConnectionLost(self.name, self._clock(), describe_error(exc)))
        finally:
            if self._watch_conn is not None:
                self._watch_conn.close()
            self._watch_conn = None
            self._watching = False

    async def _watch_connect(self) -> aiomysql.Connection:
        conn = await connect(self._endpoint, self._timeout, max_read=WATCH_MAX_READ)
        self._watch_conn = conn
        return conn

    async def close(self) -> None:
        """Close both connections. Closing the watch connection ends its pending query even if
        a cancellation were lost on the way, so this never waits on the server."""
        self._drop()
        self._watch_enabled = False
        if self._watch_conn is not None:
            self._watch_conn.close()
        task, self._watch_task = self._watch_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)


def _set_done(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def phase_of(name: str, interval: float) -> float:
    """Where in the interval the probes of ``name`` (a cluster) fall, in [0, interval): the
    same on every start, spread evenly over many names."""
    return fraction_of(name) * interval


def _same_rows(new: list[Rows], old: list[Rows]) -> bool:
    """Every result set is the very same rows (the reader gives them again for equal bytes)."""
    return len(new) == len(old) and all(a is b for a, b in zip(new, old, strict=True))


def answered_by_server(exc: pymysql.err.MySQLError) -> bool:
    """The server sent this error (1xxx numbers): it is alive. Client-side errors (2xxx: lost
    connection, cannot connect, packet too large) are not."""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and 1000 <= code < 2000
