"""The fleet's lease on the database nodes: its I/O, as an edge like the probes.

One dedicated session per node (never the probes' connections), opened with
``SET SESSION wait_timeout = W`` and never reconnected behind anyone's back: when it breaks,
the locks it held are gone, a ``LeaseObserved`` with the error says so, and the next round
opens a new session that holds nothing. Every ``lease.keepalive`` seconds each node gets one
round trip that reads ``CONNECTION_ID()`` and who holds the two locks
(``IS_USED_LOCK('hacontrol.<cluster>.leader')`` and ``...primary``, with the holder's client
address); in ``ACQUIRE`` mode the same round trip first takes the leader lock where it is free
(``GET_LOCK(name, 0)``, never twice in one session: MariaDB counts re-entrant locks). One
timer for the cluster asks every node at once. Each round trip becomes a ``LeaseObserved``
event on the cluster's queue, stamped with the time it was sent: at once when it says
something new, and a keepalive that only confirms what its node said last with the rest of
its round, at most ``COALESCE`` later (one wake-up of the decision task per round). What to
do (``LeaseMode``) is the lease rules' decision (``rules.lease``); a change of mode runs a
round at once, and ``RELEASE`` closes every session that holds a lock (and any
round that finds one still holding it: a take that was on the wire when the mode changed).

``publish(node)`` (a plan's ``Publish`` step, the leader only) releases the primary lock
wherever this instance holds it, then takes it on ``node``'s session, which must hold the
leader lock there: a session that was killed cannot publish.

Every statement after the handshake is text rendered once per session (the lock names quoted
by that connection), and its answer is read in one pass over the wire bytes
(``mysqlconn.fetch_text``), as the probes read theirs: a keepalive runs several times a second
per node, and aiomysql's cursor was most of its cost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hacontrol.events import Event, LeaseObserved
from hacontrol.model import LeaseMode
from hacontrol.mysqlconn import (
    BoundedConnection,
    ColumnCache,
    Endpoint,
    connect,
    describe_error,
    endpoint_for,
    fetch_text,
)
from hacontrol.plan import ActionResult
from hacontrol.settings import Settings

COALESCE = 0.002
"""Seconds a keepalive that changed nothing may wait for the rest of its round before it is
sent (the nodes of a round are asked at once and answer within a millisecond or two of each
other): the decision task then wakes once per round, not once per node. Far below what the
lease's rules leave between a keepalive's answer and the end of the lock it confirms
(V - K - round trip >= ``lease.margin``); and a delayed confirmation only makes this instance
believe its lock ends sooner than it does, never later (validity counts from the time sent).
One that renews a lock with less than ``lease.margin`` left is sent at once (``_ending``)."""

MAX_READ = 64 * 1024
"""Bytes one answer on a lease session may take (a row of four short values)."""

Emit = Callable[[Event], None]
Clock = Callable[[], float]

_READ = (
    "SELECT CONNECTION_ID() AS session, IS_USED_LOCK({leader}) AS leader, "
    "IS_USED_LOCK({primary}) AS primary_lock, "
    "(SELECT HOST FROM information_schema.PROCESSLIST "
    "WHERE ID = IS_USED_LOCK({leader})) AS holder"
)
_TAKE = "DO IF(IS_USED_LOCK({leader}) <=> CONNECTION_ID(), 1, GET_LOCK({leader}, 0))"
_PUBLISH = (
    "SELECT IF(IS_USED_LOCK({leader}) <=> CONNECTION_ID(), "
    "IF(IS_USED_LOCK({primary}) <=> CONNECTION_ID(), 1, GET_LOCK({primary}, 0)), -1) AS got"
)
_UNPUBLISH = "DO IF(IS_USED_LOCK({primary}) <=> CONNECTION_ID(), RELEASE_LOCK({primary}), 0)"


def lock_names(cluster: str) -> dict[str, str]:
    """The two locks of a cluster (the cluster name is checked at load: letters, digits,
    ``_.-``; quoted anyway)."""
    return {"leader": f"hacontrol.{cluster}.leader", "primary": f"hacontrol.{cluster}.primary"}


@dataclass(frozen=True)
class LeaseSql:
    """A session's statements, the lock names quoted as literals by ``quote`` (the
    connection's own escaping, which knows its SQL mode)."""

    read: str
    take_and_read: str
    publish: str
    unpublish: str

    @classmethod
    def render(cls, names: dict[str, str], quote: Callable[[str], str]) -> LeaseSql:
        quoted = {key: quote(name) for key, name in names.items()}
        read = _READ.format(**quoted)
        return cls(
            read,
            f"{_TAKE.format(**quoted)}; {read}",
            _PUBLISH.format(**quoted),
            _UNPUBLISH.format(**quoted),
        )


@dataclass
class _Session:
    """This instance's lease session to one node; one statement at a time."""

    node: str
    endpoint: Endpoint
    conn: BoundedConnection | None = None
    sql: LeaseSql | None = None
    """The statements, rendered for ``conn``."""
    columns: ColumnCache | None = None
    """What ``conn``'s answers taught (their column definitions repeat on every keepalive)."""
    id: int | None = None
    holds: bool = False
    """The leader lock was held at the last round trip."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def drop(self) -> None:
        """Close the session: the server frees every lock it held."""
        if self.conn is not None:
            self.conn.close()
        self.conn, self.sql, self.columns, self.id, self.holds = None, None, None, None, False


class LeaseKeeper:
    """The lease sessions of one cluster, one task per node."""

    def __init__(
        self,
        settings: Settings,
        emit: Emit,
        *,
        clock: Clock = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        mysql = settings.mysql
        password = mysql.password.get_secret_value() if mysql.password else ""
        self._sessions = {
            n.name: _Session(n.name, endpoint_for(n.host, n.port, mysql.user, password, mysql.tls))
            for n in settings.nodes
        }
        self._names = lock_names(settings.cluster.name)
        self._wait_timeout = settings.lease.wait_timeout
        self._keepalive = settings.lease.keepalive
        self._timeout = settings.lease.wait_timeout / 2
        self._connect_timeout = settings.probes.timeout
        self._emit, self._clock, self._draw = emit, clock, draw
        self._mode = LeaseMode.HOLD
        self._wake = {name: asyncio.Event() for name in self._sessions}
        self._beat_wake = asyncio.Event()
        self._round: set[str] = set()
        """The nodes of the current beat that have not answered yet."""
        self._said: dict[str, tuple[object, ...] | None] = {}
        """What each node's last observation sent said (``_said``)."""
        self._sent_at: dict[str, float] = {}
        """When each node's last observation sent was sent to the node (its ``at``)."""
        self._validity, self._margin = settings.lease.validity, settings.lease.margin
        self._pending: list[LeaseObserved] = []
        self._flush_due: asyncio.TimerHandle | None = None
        self._failed: Exception | None = None
        """What the timer's flush raised (``_flush_late``), for the loops to raise."""
        self._releases: set[asyncio.Task[object]] = set()

    @property
    def mode(self) -> LeaseMode:
        return self._mode

    def set_mode(self, mode: LeaseMode) -> None:
        """From the lease rules: act on it at once (a round now; RELEASE closes the sessions
        that hold a lock, so that the server frees them now)."""
        self._mode = mode
        if mode is LeaseMode.RELEASE:
            for session in self._sessions.values():
                if session.holds:
                    session.drop()
        for wake in self._wake.values():
            wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """One keepalive loop per node and one clock for them all, until cancelled; every
        session closed on the way out."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._beat(), name="lease:beat")
                for name in self._sessions:
                    group.create_task(self._loop(name), name=f"lease:{name}")
        finally:
            self.close()

    def close(self) -> None:
        for task in self._releases:
            task.cancel()
        self._flush()
        for session in self._sessions.values():
            session.drop()

    async def _beat(self) -> None:
        """Every ``lease.keepalive`` seconds, a round on every node at once: one timer for
        the cluster (it sets each node's wake event), not one per node."""
        loop = asyncio.get_running_loop()
        while True:
            self._beat_wake.clear()
            started = self._clock()
            self._flush()
            self._round = set(self._sessions)
            for wake in self._wake.values():
                wake.set()
            due = loop.call_later(
                max(0.0, started + self._keepalive - self._clock()), self._beat_wake.set
            )
            try:
                await self._beat_wake.wait()
            finally:
                due.cancel()

    async def _loop(self, name: str) -> None:
        """A round whenever woken: by the beat, or at once by a change of mode. A wake that
        comes during a round (a node slower than K) runs the next one right after it."""
        wake = self._wake[name]
        while True:
            await wake.wait()
            wake.clear()
            if self._failed is not None:
                raise self._failed
            self._deliver(await self.round(name))

    # -- delivery: what reaches the decision task, and when ------------------------------------

    def _deliver(self, observed: LeaseObserved) -> None:
        """A keepalive that says what this node said last (the same session, the same holders,
        no error; only its time moved) waits for the others of its round, at most
        ``COALESCE`` seconds, so that one round reaches the decision task in one wake-up.
        Anything else (an error, a new session, a lock taken, freed or published, the first
        word of a node) is sent at once, after the ones waiting (per node, in order)."""
        said = _said(observed)
        node = observed.node
        unchanged = said is not None and self._said.get(node) == said
        self._round.discard(node)
        if not unchanged or self._ending(node):
            self._send(observed)
            return
        self._pending.append(observed)
        if not self._round:
            self._flush()
        elif self._flush_due is None:
            self._flush_due = asyncio.get_running_loop().call_later(COALESCE, self._flush_late)

    def _flush_late(self) -> None:
        """The timer's flush: a loop callback, outside the keeper's tasks, so what it raises
        is handed to them (each node's loop raises it: the lease worker crashes, as when a
        send fails in a loop), never left to the loop's exception log."""
        try:
            self._flush()
        except Exception as exc:
            self._failed = exc
            for wake in self._wake.values():
                wake.set()

    def _ending(self, node: str) -> bool:
        """The last confirmation sent for ``node`` is valid for less than ``lease.margin``
        more (a slow round trip): this one goes at once, so that waiting never lets a lock
        lapse that it renews (an instance acts only with a margin left anyway)."""
        sent = self._sent_at.get(node)
        return sent is None or sent + self._validity - self._clock() < self._margin

    def _send(self, observed: LeaseObserved) -> None:
        """Emit now, after every observation still waiting (the order stays as observed)."""
        self._flush()
        self._said[observed.node] = _said(observed)
        self._sent_at[observed.node] = observed.at
        self._emit(observed)

    def _flush(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        pending, self._pending = self._pending, []
        for observed in pending:
            self._sent_at[observed.node] = observed.at
            self._emit(observed)

    async def round(self, name: str) -> LeaseObserved:
        """One round trip to ``name``: (take, if asked, then) read. Never raises."""
        session = self._sessions[name]
        async with session.lock:
            take = self._mode is LeaseMode.ACQUIRE and not session.holds
            observed = await self._round_trip(session, take=take)
            if self._mode is LeaseMode.RELEASE and session.holds:
                # Letting go, yet held: a take that was on the wire when the mode changed
                # (``set_mode`` closed only the sessions that held a lock then).
                session.drop()
                why = "closed to let go of the leader lock"
                return LeaseObserved(name, observed.at, error=why, jitter=observed.jitter)
            return observed

    async def _round_trip(self, session: _Session, *, take: bool) -> LeaseObserved:
        sent = self._clock()
        try:
            conn, sql, columns = await self._connection(session)
            sent = self._clock()
            statements = sql.take_and_read if take else sql.read
            results = await fetch_text(conn, statements, columns, timeout=self._timeout)
            row = results[-1][0]
            observed = self._observed(session, sent, row)
        except Exception as exc:  # a broken session: its locks are gone
            session.drop()
            return LeaseObserved(session.node, sent, error=describe_error(exc), jitter=self._draw())
        except BaseException as exc:  # cancelled mid-statement: fetch_text closed it
            session.drop()
            self._send(LeaseObserved(session.node, sent, error=describe_error(exc)))
            raise
        return observed

    def _observed(self, session: _Session, sent: float, row: dict[str, Any]) -> LeaseObserved:
        own = int(row["session"])
        leader = _connection_id(row["leader"])
        session.id, session.holds = own, leader == own
        holder = row.get("holder")
        return LeaseObserved(
            session.node,
            sent,
            own,
            leader,
            _connection_id(row["primary_lock"]),
            holder=str(holder) if holder else None,
            jitter=self._draw(),
        )

    async def _connection(
        self, session: _Session
    ) -> tuple[BoundedConnection, LeaseSql, ColumnCache]:
        conn, sql, columns = session.conn, session.sql, session.columns
        if conn is not None and not conn.closed and sql is not None and columns is not None:
            return conn, sql, columns
        session.drop()  # a closed connection is a new session: it holds nothing
        conn = await connect(
            session.endpoint, self._connect_timeout, multi_statements=True, max_read=MAX_READ
        )
        try:
            columns = ColumnCache(conn.encoding)
            wait = int(self._wait_timeout)
            await fetch_text(
                conn, f"SET SESSION wait_timeout = {wait}", columns, timeout=self._timeout
            )
            sql = LeaseSql.render(self._names, conn.escape)
        except BaseException:
            conn.close()
            raise
        session.conn, session.sql, session.columns = conn, sql, columns
        return conn, sql, columns

    # -- publication (the leader's plan steps) ------------------------------------------------

    async def publish(self, node: str, timeout: float) -> ActionResult:
        """Hold the primary lock on ``node``'s lease session (which holds the leader lock
        there), and release it on every other session of this instance. The releases run
        beside it and are not waited for: an old primary that is frozen must not hold up the
        routers (two publications for a moment read as none: no writer, never a stale one)."""
        releasing = self._unpublish_elsewhere(node)
        try:
            async with asyncio.timeout(timeout):
                got = await self._publish_on(node)
        except TimeoutError:
            return ActionResult("publish", node, False, False, f"timed out after {timeout:g} s")
        detail = {"releasing_on": releasing}
        if got == 1:
            return ActionResult("publish", node, True, True, f"published {node}", detail)
        why = {
            0: "another session holds the primary lock there (an old leader's, until it ends)",
            -1: "this instance does not hold the leader lock there",
        }.get(got, f"cannot reach its lease session ({got})")
        return ActionResult("publish", node, False, False, f"not published: {why}", detail)

    def _unpublish_elsewhere(self, node: str) -> list[str]:
        """Release the primary lock on every other session, each in a task of its own (owned:
        ``close`` cancels them); the nodes asked."""
        others = [s for s in self._sessions.values() if s.node != node and s.conn is not None]
        for session in others:
            task = asyncio.create_task(
                self._statement(session, "unpublish"), name=f"lease:unpublish:{session.node}"
            )
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        return [s.node for s in others]

    async def _publish_on(self, node: str) -> int | str:
        session = self._sessions[node]
        if session.conn is None:
            return "no session"
        rows = await self._statement(session, "publish")
        if isinstance(rows, str):
            return rows
        if rows is None:
            return "no session"
        got = rows[0]["got"] if rows else None
        return int(got) if got is not None else "GET_LOCK answered NULL"

    async def _statement(
        self, session: _Session, which: Literal["publish", "unpublish"]
    ) -> list[dict[str, Any]] | str | None:
        """The ``publish`` or ``unpublish`` statement on the session, then a read of the locks
        (emitted); the statement's rows, an error text, or None when there is no session."""
        async with session.lock:
            conn, sql, columns = session.conn, session.sql, session.columns
            if conn is None or conn.closed or sql is None or columns is None:
                return None
            statement = sql.publish if which == "publish" else sql.unpublish
            try:
                rows = (await fetch_text(conn, statement, columns, timeout=self._timeout))[0]
            except BaseException as exc:  # cancelled too: fetch_text closed the connection
                session.drop()
                self._send(LeaseObserved(session.node, self._clock(), error=describe_error(exc)))
                if not isinstance(exc, Exception):
                    raise
                return describe_error(exc)
            self._send(await self._round_trip(session, take=False))
            return rows


def _said(observed: LeaseObserved) -> tuple[object, ...] | None:
    """What an observation says about the locks, its times aside; None for an error."""
    if not observed.ok:
        return None
    return (observed.session, observed.leader, observed.primary, observed.holder)


def _connection_id(value: Any) -> int | None:
    return None if value is None else int(value)
