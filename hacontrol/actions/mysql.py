"""Actions on database nodes: fence, wait_applied, promote, repoint, rejoin, set_writable.

Side effects only; what to do is decided elsewhere (``decide()``). Every action:

- opens ONE short-lived connection as the controller user (``hacontrol.mysqlconn.connect``)
  and runs entirely under its own deadline (``asyncio.timeout``): an unreachable or frozen
  node makes it fail within that deadline;
- detects the flavor from the server (``DETECT_SQL``), never from settings;
- re-reads the node's status with the flavor's status SQL right before changing anything,
  and changes nothing when its precondition does not hold;
- is idempotent: when the goal already holds it returns ``ok=True, changed=False`` with the
  reason "already done";
- never raises (except cancellation): it returns a frozen ``hacontrol.plan.ActionResult`` whose
  ``detail["steps"]`` lists every changing statement it ran (SQL text only, never parameters:
  CHANGE MASTER carries the replication password).

Decisions made here (see docs/mariadb.md for the server behaviour behind them):

- ``fence`` kills client connections but keeps the replication user's threads (the Binlog
  Dump threads that serve replicas). Once ``read_only`` is on nothing new is written, so the
  dump threads only deliver transactions that were already committed: keeping them lets the
  replicas receive the old primary's last transactions (a switchover loses nothing), and a
  replica that is being repointed stops its IO thread itself. Threads of the controller user
  (its probes), system threads and the event scheduler are kept too.
- Semi-sync: a promoted node gets the source side on and the replica side off; a repointed or
  rejoined node the replica side on. A MySQL server without the semi-sync plugin answers
  "unknown system variable" (1193): the step is skipped and listed in ``detail["skipped"]``.
- MariaDB rejoin: before ``CHANGE MASTER ... MASTER_USE_GTID=slave_pos``, ``gtid_slave_pos``
  is set to the union of the node's ``gtid_binlog_pos`` and ``gtid_slave_pos`` (what it wrote
  as primary and what it applied as replica), otherwise a node that was once a replica would
  fetch again from its stale replica position the transactions it wrote itself.
- A half-finished promotion (replication already reset, still read-only) is NOT resumed by
  ``promote``: its precondition no longer holds, and a read-only node without replication
  may as well be a fenced old primary. The caller finishes it with ``set_writable(node, True)``
  after checking its journal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import pymysql

from hacontrol import gtid
from hacontrol.addresses import same_address
from hacontrol.flavors import DETECT_SQL, Flavor, FlavorName, IoState, NodeStatus, detect
from hacontrol.flavors.base import ReplicationStatus, Sql, multi_statement
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.mysqlconn import Endpoint, connect, describe_error, endpoint_for, fetch_all
from hacontrol.plan import LEASE_LOST, ActionResult
from hacontrol.settings import Settings

DEFAULT_TIMEOUT = 10.0
"""Default deadline of one action, connect included (seconds)."""
DEFAULT_HEARTBEAT = 1.0
"""MASTER_HEARTBEAT_PERIOD when the node has no replication configuration to take it from."""
POLL = 0.1
"""Re-read interval while waiting for an IO thread or for applied transactions."""
WAIT_SLICE = 0.5
"""MASTER_GTID_WAIT runs in slices this long, so that an SQL error is seen at once."""
FAST_POLL = 0.02
"""Re-read interval while waiting for an IO thread's reconnect attempt to end."""
FIRST_RECONNECT_WAIT = 1.05
"""At most this long: a reconnect attempt lasts ``slave_net_timeout`` (1 s), plus a margin."""
KILL_SETTLE = 0.05
"""Between the KILL of an IO thread and STOP SLAVE: the thread reaches its kill connection."""

ER_UNKNOWN_THREAD = 1094
ER_UNKNOWN_SYSTEM_VARIABLE = 1193
ER_SOURCE_FATAL_READING_BINLOG = 1236

# System threads and the threads that must survive fencing (see the module doc).
_SYSTEM_USERS = frozenset({"system user", "event_scheduler"})
_KEPT_COMMANDS = frozenset({"daemon", "binlog dump", "binlog dump gtid", "killed"})

# SQL that hacontrol.flavors does not offer yet (to move there: both flavors spell it the same,
# except the heartbeat and the replica-position statements, which are per flavor).
_PROCESSLIST = Sql(
    "SELECT ID AS id, USER AS user, COMMAND AS command FROM information_schema.PROCESSLIST "
    "WHERE ID <> CONNECTION_ID()"
)
_HEARTBEAT = {
    FlavorName.MARIADB: Sql("SHOW GLOBAL STATUS LIKE 'Slave_heartbeat_period'"),
    FlavorName.MYSQL: Sql(
        "SELECT HEARTBEAT_INTERVAL AS Value "
        "FROM performance_schema.replication_connection_configuration WHERE CHANNEL_NAME = ''"
    ),
}


_OLDEST_TRX = Sql(
    "SELECT trx_id, trx_mysql_thread_id AS thread, "
    "TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) / 1000000 AS age "
    "FROM information_schema.INNODB_TRX ORDER BY trx_started LIMIT 1"
)


_KILL_CONN_TIMEOUT = Sql("SELECT @@global.rpl_semi_sync_slave_kill_conn_timeout AS value")
_IO_THREAD = Sql(
    "SELECT ID AS id FROM information_schema.PROCESSLIST "
    "WHERE USER = 'system user' AND COMMAND = 'Slave_IO'"
)
_SLAVE_NET_TIMEOUT = Sql("SELECT @@global.slave_net_timeout AS value")
RESTORE_TIMEOUT = 2.0
"""Seconds for putting a server setting back on a connection of its own, after a cut action."""


def _set_kill_conn_timeout_sql(seconds: int) -> Sql:
    """MariaDB only (MySQL has no such variable); needs REPLICATION SLAVE ADMIN."""
    return Sql("SET GLOBAL rpl_semi_sync_slave_kill_conn_timeout = %s", (seconds,))


async def _optional_query(session: _Session, stmt: Sql) -> list[dict[str, Any]]:
    """Rows of a query about a variable this server may not have (MySQL): none then."""
    try:
        return await session.query(stmt)
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] == ER_UNKNOWN_SYSTEM_VARIABLE:
            return []
        raise


def _kill_sql(thread_id: int) -> Sql:
    return Sql("KILL CONNECTION %s", (thread_id,))


def _set_replica_position_sql(position: str) -> Sql:
    """MariaDB only; needs every replication connection stopped."""
    return Sql("SET GLOBAL gtid_slave_pos = %s", (position,))


class ActionError(Exception):
    """A refused precondition or a failed step; the message is the one-line reason."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Done:
    """What an action body returns: the reason of its success and extra detail."""

    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


LeaseUntil = Callable[[], float]
"""Fleet: until when (monotonic) this instance holds its lease on a majority of the nodes."""


def _forever() -> float:
    return float("inf")


LeaseFence = Callable[[str], "tuple[str, int] | None"]
"""Fleet: for a node, the leader lock's name and this instance's lease session (connection id)
there while it holds the lock; None when it does not."""


class _Session:
    """One connection to one node under one deadline; records every changing statement.

    A changing statement is sent only while the lease (``lease_until``) stays valid at least
    ``margin`` longer: checked right before it is written, so that an instance frozen or
    stalled between the executor's check and this statement cannot send it late."""

    def __init__(
        self,
        endpoint: Endpoint,
        deadline: float,
        connect_timeout: float,
        lease_until: LeaseUntil = _forever,
        margin: float = 0.0,
        fence: Callable[[], tuple[str, int] | None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.lease_until = lease_until
        self.margin = margin
        self.fence = fence
        self.steps: list[str] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []
        """Said in the result's reason whatever the outcome (a cut action included)."""
        self.facts: dict[str, Any] = {}
        """Added to the result's detail whatever the outcome."""
        self.flavor: Flavor | None = None
        self.version = ""
        self._conn: aiomysql.Connection | None = None

    def remaining(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    async def open(self) -> Flavor:
        rows = await self.query(Sql(DETECT_SQL))
        self.version = str(rows[0]["version"])
        self.flavor = detect(self.version, str(rows[0]["version_comment"] or ""))
        return self.flavor

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _connection(self) -> aiomysql.Connection:
        """The connection; reopened when an error closed it (mysqlconn closes on any error)."""
        if self._conn is None or self._conn.closed:
            timeout = min(self.connect_timeout, self.remaining())
            self._conn = await connect(self.endpoint, timeout, multi_statements=True)
        return self._conn

    async def query(self, stmt: Sql, *, step: str | None = None) -> list[dict[str, Any]]:
        """``stmt``'s rows. ``step``: a changing statement, recorded as that step and sent only
        if the lease allows it, checked after the connection is (re)opened: nothing is awaited
        between the check and the write (a reconnect after an error may take seconds)."""
        conn = await self._connection()
        if step is not None:
            self.check_lease(step)
            self.steps.append(step)
        results = await fetch_all(conn, stmt.sql, stmt.params or None, timeout=self.remaining())
        return results[0]

    async def change(self, stmt: Sql, *, optional: bool = False) -> None:
        """A changing statement. ``optional``: an unknown variable (plugin absent) is skipped."""
        try:
            await self.query(stmt, step=stmt.sql)
        except pymysql.err.MySQLError as exc:
            if optional and exc.args and exc.args[0] == ER_UNKNOWN_SYSTEM_VARIABLE:
                self.steps.pop()
                self.skipped.append(f"{stmt.sql}: {describe_error(exc)}")
                return
            raise ActionError(f"{stmt.sql} failed: {describe_error(exc)}") from None

    async def make_writable(self) -> None:
        """read_only off. In a fleet (``fence``) the server applies it only while this
        instance's lease session on the node holds the node's leader lock: a leader whose
        clock stopped with it (a paused VM) would pass every local check after the servers
        freed its locks; this is the one step that makes a second writer."""
        assert self.flavor is not None
        if self.fence is None:
            for stmt in self.flavor.set_read_only_sql(False):
                await self.change(stmt)
            return
        held = self.fence()
        if held is None:
            raise ActionError(
                "lease: not making the node writable: this instance does not hold its leader lock",
                **{LEASE_LOST: True},
            )
        lock, holder = held
        for stmt in self.flavor.writable_if_holder_sql(lock, holder):
            await self.change(stmt)
        after = await self.status()
        if after.read_only or after.super_read_only:
            raise ActionError(
                f"lease: the node stayed read-only: its leader lock is no longer held by this "
                f"instance's lease session (connection {holder}) there",
                **{LEASE_LOST: True},
            )

    def check_lease(self, sql: str) -> None:
        """Raise unless the lease stays valid long enough to send ``sql`` now."""
        left = self.lease_until() - time.monotonic()
        if left < self.margin:
            raise ActionError(
                f"lease: not sending {sql!r}: the lease is valid {max(left, 0):.2f} s more, "
                f"less than the {self.margin:g} s a statement needs",
                **{LEASE_LOST: True},
            )

    async def status(self) -> NodeStatus:
        assert self.flavor is not None
        sql = multi_statement(self.flavor.status_sql())
        results = await fetch_all(await self._connection(), sql, timeout=self.remaining())
        return self.flavor.parse_status(self.version, results)


Body = Callable[[_Session], Awaitable[_Done]]


class MySQLActions:
    """The database side of failover, switchover and rejoin, as idempotent guarded actions.

    Nodes are named as in ``settings.nodes``; other servers (old or new primaries) are given
    by host and port. Credentials come from ``settings.mysql``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        default_heartbeat: float = DEFAULT_HEARTBEAT,
        lease_until: LeaseUntil = _forever,
        lease_fence: LeaseFence | None = None,
    ) -> None:
        mysql = settings.mysql
        self._lease_until = lease_until
        self._lease_fence = lease_fence if settings.controller.fleet else None
        self._margin = settings.lease.margin if settings.controller.fleet else 0.0
        self._nodes = {node.name: (node.host, node.port) for node in settings.nodes}
        self._user = mysql.user
        self._password = mysql.password.get_secret_value() if mysql.password else ""
        self._repl_user = mysql.replication_user
        self._repl_password = (
            mysql.replication_password.get_secret_value() if mysql.replication_password else ""
        )
        self._connect_timeout = mysql.connect_timeout
        self._timeout = timeout
        self._default_heartbeat = default_heartbeat
        self._tls = mysql.tls
        self._replication_tls = mysql.replication_tls

    # -- public actions ------------------------------------------------------------------------

    async def status(self, node: str, timeout: float | None = None) -> NodeStatus:
        """A fresh status of the node; raises ActionError with the reason when unreadable."""
        result: list[NodeStatus] = []

        async def body(session: _Session) -> _Done:
            result.append(await session.status())
            return _Done("read")

        outcome = await self._run("status", node, self._address(node), timeout, body)
        if not outcome.ok:
            raise ActionError(outcome.reason, **outcome.detail)
        return result[0]

    async def fence(self, node: str, timeout: float | None = None) -> ActionResult:
        """read_only (and super_read_only) on, semi-sync source off, client connections killed."""

        async def body(session: _Session) -> _Done:
            killed = await self._fence(session)
            status = await session.status()
            if not status.read_only:
                raise ActionError("read_only is still OFF after fencing")
            reason = "fenced" if session.steps else "already done: read-only, no client left"
            return _Done(reason, {"killed": killed, "gtid_executed": status.gtid_executed})

        return await self._run("fence", node, self._address(node), timeout, body)

    async def wait_applied(self, node: str, timeout: float) -> ActionResult:
        """Wait until the replica applied everything it received. ok=False on timeout/SQL error.

        The target is the received position read at the start; ``timeout`` bounds the whole
        action, connect included.
        """

        async def body(session: _Session) -> _Done:
            assert session.flavor is not None
            flavor = session.flavor
            status = await session.status()
            repl = _default_connection(status)
            if repl is None:
                raise ActionError("not a replica: no replication configured")
            target = repl.received_gtid
            while True:
                _check_sql_thread(repl)
                detail = {"received": target, "executed": status.gtid_executed}
                if _contains(status.gtid_executed, target, status.flavor):
                    return _Done("applied everything received", detail)
                if not repl.sql_running:
                    detail["sql_running"] = False
                left = session.deadline - time.monotonic() - 0.05
                if left <= 0.01:
                    why = "SQL thread stopped" if not repl.sql_running else "still applying"
                    return _Done(f"timed out waiting to apply {target} ({why})", detail, ok=False)
                stmt = flavor.wait_for_gtid_sql(target, round(min(WAIT_SLICE, left), 3))
                rows = await session.query(stmt)
                flavor.wait_for_gtid_reached(rows[0]["result"])
                status = await session.status()
                repl = _default_connection(status)
                if repl is None:
                    raise ActionError("replication was removed while waiting")

        return await self._run("wait_applied", node, self._address(node), timeout, body)

    async def promote(
        self,
        node: str,
        old_primary_host: str,
        old_primary_port: int,
        timeout: float | None = None,
    ) -> ActionResult:
        """Make a replica of the old primary the primary: stop and forget replication,
        semi-sync source on, read_only off. Refuses a node that has not applied all it got."""

        async def body(session: _Session) -> _Done:
            assert session.flavor is not None
            flavor = session.flavor
            status = await session.status()
            repl = _default_connection(status)
            if repl is None and not status.replication and not status.read_only:
                return _Done("already done: no replication, writable", _positions(status))
            if repl is None:
                raise ActionError(
                    "not a replica and read-only: not promoting "
                    "(a half-done promotion is finished with set_writable)",
                    half_done_promotion=True,
                )
            if not same_address(
                repl.source_host, repl.source_port, old_primary_host, old_primary_port
            ):
                raise ActionError(
                    f"replicates from {repl.source_host}:{repl.source_port}, "
                    f"not from the old primary {old_primary_host}:{old_primary_port}"
                )
            _check_sql_thread(repl)
            if not repl.sql_running:
                raise ActionError("SQL thread is not running")
            _check_applied(repl, status)

            await session.change(flavor.stop_replication_sql())
            stopped = await session.status()
            stopped_repl = _default_connection(stopped)
            if stopped_repl is not None and not _contains(
                stopped.gtid_executed, stopped_repl.received_gtid, stopped.flavor
            ):
                # Something arrived between the check and the stop: keep it, do not promote.
                await session.change(flavor.start_replication_sql())
                raise ActionError(
                    f"received {stopped_repl.received_gtid} but applied only "
                    f"{stopped.gtid_executed} when replication stopped: restarted it"
                )
            await session.change(flavor.reset_replication_sql())
            for stmt in flavor.semi_sync_sql(source=True, replica=False):
                await session.change(stmt, optional=True)
            await session.make_writable()
            promoted = await session.status()
            if promoted.read_only or promoted.replication:
                raise ActionError("still read-only or replicating after promotion")
            return _Done("promoted", _positions(promoted))

        return await self._run("promote", node, self._address(node), timeout, body)

    async def repoint(
        self,
        node: str,
        new_primary_host: str,
        new_primary_port: int,
        timeout: float | None = None,
    ) -> ActionResult:
        """Replicate from the new primary with GTID auto-positioning; wait for the IO thread."""
        address = self._address(node)

        async def body(session: _Session) -> _Done:
            if address == (new_primary_host, new_primary_port):
                raise ActionError("is the new primary itself")
            status = await session.status()
            if not status.read_only:
                raise ActionError("is writable: not repointing a node that may be a primary")
            if _replicates_from(status, new_primary_host, new_primary_port):
                return _Done("already done: replicating from the new primary", _positions(status))
            return await self._attach(session, status, new_primary_host, new_primary_port)

        return await self._run("repoint", node, address, timeout, body)

    async def rejoin(
        self,
        old_primary: str,
        new_primary_host: str,
        new_primary_port: int,
        timeout: float | None = None,
    ) -> ActionResult:
        """Fence the returning old primary, then make it a replica of the new primary, unless
        it has transactions the new primary lacks (``detail["errant"]``): then it stays fenced
        and not replicating. Never RESET MASTER, never injects empty transactions."""
        address = self._address(old_primary)

        async def body(session: _Session) -> _Done:
            if address == (new_primary_host, new_primary_port):
                raise ActionError("is the new primary itself")
            status = await session.status()
            if status.read_only and _replicates_from(status, new_primary_host, new_primary_port):
                return _Done("already done: replicating from the new primary", _positions(status))
            repl = _default_connection(status)
            if repl is not None and repl.io_state is not IoState.STOPPED:
                same = (repl.source_host, repl.source_port) == (new_primary_host, new_primary_port)
                if not same:
                    raise ActionError(
                        f"replicates from {repl.source_host}:{repl.source_port}, "
                        "not the new primary: use repoint"
                    )
            killed = await self._fence(session)
            if repl is not None and repl.last_io_errno == ER_SOURCE_FATAL_READING_BINLOG:
                return _diverged_below(repl, {"killed": killed})
            new = await self._peer_status(new_primary_host, new_primary_port, session)
            if new.read_only:
                raise ActionError(f"new primary {new_primary_host}:{new_primary_port} is read-only")
            if not new.log_bin:
                raise ActionError("new primary has no binary log: it cannot serve replicas")
            fenced = await session.status()
            errant = _errant(fenced, new)
            if errant is not None:
                return _Done(
                    f"errant transactions {errant['errant']}: not rejoined, left fenced",
                    {**errant, "killed": killed},
                    ok=False,
                )
            done = await self._attach(
                session, fenced, new_primary_host, new_primary_port, align_replica_position=True
            )
            done.detail["killed"] = killed
            return done

        return await self._run("rejoin", old_primary, address, timeout, body)

    async def set_io_thread(
        self, node: str, running: bool, timeout: float | None = None
    ) -> ActionResult:
        """Stop (or start) only the replication IO thread; the SQL thread keeps applying.

        Stopping is how a failover stops waiting on a frozen source: a replica's IO thread
        stuck on it makes every STOP SLAVE wait up to slave_net_timeout, so the failover does
        it once, for every replica at the same time."""

        async def body(session: _Session) -> _Done:
            assert session.flavor is not None
            status = await session.status()
            repl = _default_connection(status)
            if repl is None:
                return _Done("already done: not a replica")
            stopped = repl.io_state is IoState.STOPPED
            if stopped != running:
                return _Done(f"already done: IO thread {'running' if running else 'stopped'}")
            if running:
                await session.change(Sql(f"{session.flavor.start_replication_sql().sql} IO_THREAD"))
                return _Done("IO thread started", {"received": repl.received_gtid})
            waited = await self._stop_io_thread(session, status)
            final = _default_connection(await session.status())  # what it received is final
            received = final.received_gtid if final is not None else repl.received_gtid
            return _Done("IO thread stopped", {"received": received, **waited})

        return await self._run("set_io_thread", node, self._address(node), timeout, body)

    async def _stop_io_thread(self, session: _Session, status: NodeStatus) -> dict[str, Any]:
        """KILL of the IO thread, then STOP SLAVE IO_THREAD, with MariaDB's semi-sync kill
        connection bounded to 1 s.

        A semi-sync replica's IO thread, when it stops, connects to its source to KILL its own
        binlog dump thread there; to a frozen or cut-off source that connection hangs until
        ``rpl_semi_sync_slave_kill_conn_timeout`` (default 5 s; STOP SLAVE gives up waiting
        after 2 s and signals again), and STOP SLAVE waits for it: 2.0 s on 10.11, measured,
        whatever slave_net_timeout is (bench/io_thread_stop.py). With the timeout at 1 s (the
        smallest; 0 means none: the stop hangs, measured), 1.0 s. A KILL of the IO thread
        first makes no stop slower and some instant (docs/partitions.md). The server's own
        timeout is put back afterwards, on a connection of its own when the action was cut
        (its deadline, a lost lease): the result says whether it was."""
        assert session.flavor is not None
        stop = Sql(f"{session.flavor.stop_replication_sql().sql} IO_THREAD")
        rows = await _optional_query(session, _KILL_CONN_TIMEOUT)
        before = int(rows[0]["value"]) if rows and rows[0]["value"] is not None else None
        waited = await self._wait_out_first_reconnect(session, status)
        if before is None or before == 1:  # 0 is no timeout at all: the stop would hang
            await self._kill_io_thread(session, status)
            await session.change(stop)
            return waited
        await session.change(_set_kill_conn_timeout_sql(1))
        cut = True
        try:
            await self._kill_io_thread(session, status)
            await session.change(stop)
            cut = False
        finally:
            await self._put_back_kill_conn_timeout(session, before, cut=cut)
        return {"kill_conn_timeout": before, **waited}

    async def _wait_out_first_reconnect(
        self, session: _Session, status: NodeStatus
    ) -> dict[str, Any]:
        """MariaDB: wait (1 s at most) for the end of the IO thread's first reconnect attempt.

        A KILL then STOP ends an IO thread at once while it reads from its source or sleeps
        between reconnect attempts, but only after the semi-sync kill connection (1 s) while
        it is connecting (measured, docs/partitions.md). Its first attempt after a lost link
        shows as Connecting without an error; it ends with the error (2013) after the
        connect timeout, ``slave_net_timeout``, and the thread then sleeps MASTER_CONNECT_RETRY.
        Waiting for that error is never longer than the 1 s the stop would cost, so it is done
        only when ``slave_net_timeout`` is 1 s (the sandbox's, our recommendation)."""
        repl = _default_connection(status)
        if session.flavor is None or session.flavor.name is not FlavorName.MARIADB:
            return {}
        if repl is None or repl.io_state is not IoState.CONNECTING or repl.last_io_errno:
            return {}
        if not status.semi_sync.replica_enabled:
            return {}  # no kill connection to skip
        rows = await session.query(_SLAVE_NET_TIMEOUT)
        if int(rows[0]["value"]) > 1:
            return {}
        started = time.monotonic()
        while time.monotonic() - started < FIRST_RECONNECT_WAIT:
            await asyncio.sleep(FAST_POLL)
            repl = _default_connection(await session.status())
            if repl is None or repl.io_state is not IoState.CONNECTING or repl.last_io_errno:
                break
        waited: dict[str, Any] = {"waited_for_reconnect": round(time.monotonic() - started, 3)}
        if repl is not None and repl.io_state is IoState.RUNNING:
            # Its source answered again: the stop goes on (instant while it reads); the
            # failover's WaitApplied compares every stopped replica's received position.
            waited["source_answered_during_wait"] = True
            session.notes.append("its source answered again while the stop waited")
        return waited

    async def _kill_io_thread(self, session: _Session, status: NodeStatus) -> None:
        """KILL of the replication IO thread's own server thread (MariaDB, one replication
        connection only: the processlist does not say which connection a thread serves). It
        returns at once; the IO thread ends at its next check, which STOP SLAVE then waits for.
        Optional: refused or already gone, the stop goes on alone."""
        if session.flavor is None or session.flavor.name is not FlavorName.MARIADB:
            return
        if len(status.replication) != 1:
            return
        try:
            rows = await session.query(_IO_THREAD)
        except pymysql.err.MySQLError as exc:
            session.skipped.append(f"the IO thread's id: {describe_error(exc)}")
            return
        if len(rows) != 1:
            session.skipped.append(f"KILL of the IO thread: {len(rows)} Slave_IO threads seen")
            return
        thread_id = int(rows[0]["id"])
        try:
            await session.query(_kill_sql(thread_id), step=f"KILL CONNECTION {thread_id}")
        except pymysql.err.MySQLError as exc:
            session.steps.pop()
            session.skipped.append(
                f"KILL CONNECTION {thread_id} (IO thread): {describe_error(exc)}"
            )
            return
        await asyncio.sleep(KILL_SETTLE)  # STOP's signal must find it in its kill connection

    async def _put_back_kill_conn_timeout(
        self, session: _Session, value: int, *, cut: bool
    ) -> None:
        """``rpl_semi_sync_slave_kill_conn_timeout`` back to ``value``: on the action's session
        when it ran to its end, else (cut by its deadline, or the statement failed there) on a
        new connection of its own, bounded to a few seconds. Never once the lease is lost: the
        node is another instance's to change then; left at 1 s, the timeout only makes a later
        stop on that server quicker. The result says which."""
        stmt = _set_kill_conn_timeout_sql(value)
        try:
            session.check_lease(stmt.sql)
            if not cut:
                await session.change(stmt)
                return
        except ActionError as exc:  # a lease lost meanwhile, or the statement failed
            if session.steps and session.steps[-1] == stmt.sql:
                session.steps.pop()  # not done there
            if exc.detail.get(LEASE_LOST):
                self._lease_lost_for_put_back(session, value)
                return
        try:
            async with asyncio.timeout(self._connect_timeout + RESTORE_TIMEOUT):
                conn = await connect(session.endpoint, self._connect_timeout)
                try:
                    session.check_lease(stmt.sql)  # the connect may have taken its time
                    await fetch_all(conn, stmt.sql, stmt.params, timeout=RESTORE_TIMEOUT)
                finally:
                    conn.close()
        except ActionError:
            self._lease_lost_for_put_back(session, value)
            return
        except Exception as exc:
            session.facts["kill_conn_timeout_restored"] = False
            session.notes.append(
                f"rpl_semi_sync_slave_kill_conn_timeout NOT put back to {value} "
                f"({describe_error(exc)}): it stays 1"
            )
            return
        session.steps.append(stmt.sql)
        session.facts["kill_conn_timeout_restored"] = True
        session.notes.append(
            f"rpl_semi_sync_slave_kill_conn_timeout put back to {value} on a new connection"
        )

    @staticmethod
    def _lease_lost_for_put_back(session: _Session, value: int) -> None:
        session.facts.update({LEASE_LOST: True, "kill_conn_timeout_restored": False})
        session.notes.append(
            f"rpl_semi_sync_slave_kill_conn_timeout NOT put back to {value}: "
            "the lease was lost (it stays 1)"
        )

    async def check_transactions(
        self, node: str, max_age: float, timeout: float | None = None
    ) -> ActionResult:
        """Switchover pre-flight: ok=False when a transaction on ``node`` is older than
        ``max_age`` seconds (it would hold the switchover, or be killed by the fence)."""

        async def body(session: _Session) -> _Done:
            rows = await session.query(_OLDEST_TRX)
            if not rows:
                return _Done("no open transaction")
            age, trx, thread = rows[0]["age"], rows[0]["trx_id"], rows[0]["thread"]
            detail = {"trx_id": str(trx), "thread": thread, "age": float(age)}
            if float(age) > max_age:
                return _Done(
                    f"transaction {trx} (thread {thread}) has been open for "
                    f"{float(age):.1f} s, more than {max_age:g} s",
                    detail,
                    ok=False,
                )
            return _Done(f"oldest transaction {float(age):.1f} s old", detail)

        return await self._run("check_transactions", node, self._address(node), timeout, body)

    async def catch_up(
        self, node: str, source_host: str, source_port: int, timeout: float
    ) -> ActionResult:
        """Wait until replica ``node`` executed every transaction its source has written
        (read fresh from the source, which the caller made read-only first)."""

        async def body(session: _Session) -> _Done:
            assert session.flavor is not None
            flavor = session.flavor
            source = await self._peer_status(source_host, source_port, session)
            target = _own_transactions(source) or source.gtid_executed
            while True:
                status = await session.status()
                repl = _default_connection(status)
                if repl is None or not _replicates_from(status, source_host, source_port):
                    raise ActionError(f"not a replica of {source_host}:{source_port}")
                _check_sql_thread(repl)
                detail = {"target": target, "executed": status.gtid_executed}
                if _contains(status.gtid_executed, target, status.flavor):
                    return _Done("executed everything its source wrote", detail)
                left = session.deadline - time.monotonic() - 0.05
                if left <= 0.01:
                    return _Done(f"timed out catching up to {target}", detail, ok=False)
                stmt = flavor.wait_for_gtid_sql(target, round(min(WAIT_SLICE, left), 3))
                rows = await session.query(stmt)
                flavor.wait_for_gtid_reached(rows[0]["result"])

        return await self._run("catch_up", node, self._address(node), timeout, body)

    async def set_writable(
        self,
        node: str,
        on: bool,
        timeout: float | None = None,
        *,
        semi_sync_source: bool | None = None,
    ) -> ActionResult:
        """read_only off (on=True) or on (on=False). Refuses to make a running replica writable.

        ``semi_sync_source``: with ``on``, also set the semi-sync source side (a fence turned
        it off; a writable primary without it would acknowledge writes no replica has)."""

        async def body(session: _Session) -> _Done:
            assert session.flavor is not None
            status = await session.status()
            writable = not status.read_only and not status.super_read_only
            semi_ok = (
                not on
                or semi_sync_source is None
                or status.semi_sync.source_enabled == semi_sync_source
            )
            if writable == on and semi_ok:
                return _Done(f"already done: {'writable' if on else 'read-only'}")
            if on:
                repl = _default_connection(status)
                running = repl is not None and (
                    repl.sql_running or repl.io_state is not IoState.STOPPED
                )
                if running:
                    raise ActionError("is a running replica: not making it writable")
            if on and not semi_ok:
                assert semi_sync_source is not None
                source_sql = session.flavor.semi_sync_sql(source=semi_sync_source, replica=False)[0]
                await session.change(source_sql, optional=True)
            if writable != on and on:
                await session.make_writable()
            elif writable != on:
                for stmt in session.flavor.set_read_only_sql(True):
                    await session.change(stmt)
            return _Done("made writable" if on else "made read-only")

        return await self._run("set_writable", node, self._address(node), timeout, body)

    # -- steps shared by several actions --------------------------------------------------------

    async def _fence(self, session: _Session) -> list[dict[str, Any]]:
        """Kill clients, read_only on, kill clients that slipped in, then semi-sync source off.

        Clients are killed before read_only too: on MySQL ``SET GLOBAL read_only`` waits for
        open transactions and explicit table locks to end. Semi-sync goes off last, once no
        client is left: turning it off releases every commit waiting for a replica's
        acknowledgement *as a success* (measured on MariaDB 10.11), so a write that no replica
        has would be acknowledged by the old primary. A killed session gets an error instead.
        """
        assert session.flavor is not None
        flavor = session.flavor
        killed = await self._kill_clients(session)
        status = await session.status()
        if not status.read_only or status.super_read_only is False:
            for stmt in flavor.set_read_only_sql(True):
                await session.change(stmt)
        killed += await self._kill_clients(session)
        if status.semi_sync.source_enabled:
            replica = status.semi_sync.replica_enabled
            for stmt in flavor.semi_sync_sql(source=False, replica=replica):
                await session.change(stmt, optional=True)
        return killed

    async def _kill_clients(self, session: _Session) -> list[dict[str, Any]]:
        kept_users = {self._user, self._repl_user} | _SYSTEM_USERS
        killed = []
        for row in await session.query(_PROCESSLIST):
            user = str(row["user"] or "")
            command = str(row["command"] or "").lower()
            if user in kept_users or command in _KEPT_COMMANDS:
                continue
            thread_id = int(row["id"])
            try:
                await session.query(_kill_sql(thread_id), step=f"KILL CONNECTION {thread_id}")
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] == ER_UNKNOWN_THREAD:  # it ended meanwhile
                    session.steps.pop()
                    continue
                reason = f"KILL CONNECTION {thread_id} failed: {describe_error(exc)}"
                raise ActionError(reason) from None
            killed.append({"id": thread_id, "user": user})
        return killed

    async def _attach(
        self,
        session: _Session,
        status: NodeStatus,
        host: str,
        port: int,
        *,
        align_replica_position: bool = False,
    ) -> _Done:
        """Stop, CHANGE MASTER to host:port with GTID positioning, semi-sync replica on, start,
        then wait (bounded by the action's deadline) for a stable running IO thread."""
        assert session.flavor is not None
        flavor = session.flavor
        heartbeat = await self._heartbeat(session)
        if status.replication:
            await session.change(flavor.stop_replication_sql())
        detail: dict[str, Any] = {}
        if align_replica_position and flavor.name is FlavorName.MARIADB:
            position = _replica_position(await session.status())
            await session.change(_set_replica_position_sql(position))
            detail["gtid_slave_pos"] = position
        await session.change(
            flavor.change_source_sql(
                host,
                port,
                self._repl_user,
                self._repl_password,
                connect_retry=1,
                heartbeat=heartbeat,
                tls=self._replication_tls,
            )
        )
        for stmt in flavor.semi_sync_sql(source=False, replica=True):
            await session.change(stmt, optional=True)
        await session.change(flavor.start_replication_sql())
        running = await self._wait_io(session, host, port)
        detail.update(_positions(running), heartbeat=heartbeat)
        return _Done(f"replicating from {host}:{port}", detail)

    async def _wait_io(self, session: _Session, host: str, port: int) -> NodeStatus:
        """Until the IO thread runs on two reads in a row (a source that refuses the GTID
        position lets the IO thread show Yes for a moment before error 1236)."""
        streak = 0
        while True:
            status = await session.status()
            repl = _default_connection(status)
            if repl is None:
                raise ActionError("replication vanished after START")
            if repl.last_io_errno == ER_SOURCE_FATAL_READING_BINLOG:
                raise _DivergedBelow(repl)
            _check_sql_thread(repl)
            healthy = repl.io_state is IoState.RUNNING and repl.sql_running
            streak = streak + 1 if healthy and not repl.last_io_errno else 0
            if streak >= 2:
                return status
            if session.deadline - time.monotonic() < 2 * POLL:
                error = f"{repl.last_io_errno}: {repl.last_io_error}" if repl.last_io_errno else ""
                raise ActionError(
                    f"IO thread {repl.io_state.value} on {host}:{port}"
                    + (f" ({error})" if error else ""),
                    io_errno=repl.last_io_errno,
                    io_error=repl.last_io_error,
                )
            await asyncio.sleep(POLL)

    async def _heartbeat(self, session: _Session) -> float:
        """The node's current heartbeat period, or the default when it has none."""
        assert session.flavor is not None
        stmt = _HEARTBEAT.get(session.flavor.name)
        if stmt is None:
            return self._default_heartbeat
        try:
            rows = await session.query(stmt)
        except pymysql.err.MySQLError:
            return self._default_heartbeat
        try:
            value = float(rows[0]["Value"]) if rows else 0.0
        except (TypeError, ValueError):
            value = 0.0
        return value if value > 0 else self._default_heartbeat

    async def _peer_status(self, host: str, port: int, session: _Session) -> NodeStatus:
        """Status of another server, under the same deadline."""
        peer = _Session(self._endpoint(host, port), session.deadline, self._connect_timeout)
        try:
            await peer.open()
            return await peer.status()
        except ActionError:
            raise
        except Exception as exc:
            raise ActionError(f"cannot read {host}:{port}: {describe_error(exc)}") from None
        finally:
            peer.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _fence_of(self, node: str) -> Callable[[], tuple[str, int] | None] | None:
        fence = self._lease_fence
        return None if fence is None else (lambda: fence(node))

    def _address(self, node: str) -> tuple[str, int] | None:
        return self._nodes.get(node)

    def _endpoint(self, host: str, port: int) -> Endpoint:
        return endpoint_for(host, port, self._user, self._password, self._tls)

    async def _run(
        self,
        action: str,
        node: str,
        address: tuple[str, int] | None,
        timeout: float | None,
        body: Body,
    ) -> ActionResult:
        limit = self._timeout if timeout is None else timeout
        if address is None:
            return ActionResult(action, node, False, False, f"unknown node {node!r}")
        deadline = time.monotonic() + limit
        session = _Session(
            self._endpoint(*address),
            deadline,
            self._connect_timeout,
            self._lease_until,
            self._margin,
            self._fence_of(node),
        )
        ok, reason, detail = False, "", {}
        try:
            async with asyncio.timeout(limit):
                await session.open()
                done = await body(session)
            ok, reason, detail = done.ok, done.reason, dict(done.detail)
        except ActionError as exc:
            reason, detail = exc.reason, dict(exc.detail)
        except TimeoutError:
            reason = f"timed out after {limit:g} s"
        except ValueError as exc:  # flavor detection or status parsing
            reason = f"invalid answer: {exc}"
        except Exception as exc:
            reason = describe_error(exc)
        finally:
            session.close()
        detail.update(session.facts)
        reason = "; ".join([reason, *session.notes])
        detail["steps"] = list(session.steps)
        if session.skipped:
            detail["skipped"] = list(session.skipped)
        return ActionResult(action, node, ok, bool(session.steps), reason, detail)


# -- pure helpers --------------------------------------------------------------------------------


class _DivergedBelow(ActionError):
    """Error 1236 from the new primary: the node holds a GTID that is not in its binlog."""

    def __init__(self, repl: ReplicationStatus, **extra: Any) -> None:
        done = _diverged_below(repl, extra)
        super().__init__(done.reason, **done.detail)


def _diverged_below(repl: ReplicationStatus, extra: dict[str, Any]) -> _Done:
    """Error 1236 has two causes, told apart by its text: the node holds a GTID that is not in
    the source's binlog (a divergence the positions do not show), or the source purged the
    binlogs the node still needs. Neither is repaired here."""
    purged = "purged" in repl.last_io_error.lower()
    cause = (
        "the new primary purged binary logs this node still needs"
        if purged
        else "diverged: this node has a GTID that is not in the new primary's binlog"
    )
    return _Done(
        f"{cause} ({repl.last_io_errno}: {repl.last_io_error})",
        {
            **extra,
            "errant": "" if purged else "unknown: diverged below the last GTID",
            "binlogs_purged": purged,
            "io_errno": repl.last_io_errno,
            "io_error": repl.last_io_error,
        },
        ok=False,
    )


def _default_connection(status: NodeStatus) -> ReplicationStatus | None:
    """The unnamed connection (MariaDB) / default channel (MySQL): the only one we manage."""
    for repl in status.replication:
        if repl.connection_name == "":
            return repl
    return None


def _replicates_from(status: NodeStatus, host: str, port: int) -> bool:
    repl = _default_connection(status)
    return (
        repl is not None
        and same_address(repl.source_host, repl.source_port, host, port)
        and repl.io_state is IoState.RUNNING
        and repl.sql_running
    )


def _check_sql_thread(repl: ReplicationStatus) -> None:
    if not repl.sql_running and repl.last_sql_errno:
        raise ActionError(
            f"SQL thread stopped with error {repl.last_sql_errno}: {repl.last_sql_error}",
            sql_errno=repl.last_sql_errno,
            sql_error=repl.last_sql_error,
        )


def _contains(executed: str, received: str, flavor: str) -> bool:
    return gtid.parse(received, flavor) <= gtid.parse(executed, flavor)  # type: ignore[arg-type]


def _check_applied(repl: ReplicationStatus, status: NodeStatus) -> None:
    if not _contains(status.gtid_executed, repl.received_gtid, status.flavor):
        raise ActionError(
            f"has not applied everything it received (received {repl.received_gtid}, "
            f"executed {status.gtid_executed}): wait_applied first",
            received=repl.received_gtid,
            executed=status.gtid_executed,
        )


def _positions(status: NodeStatus) -> dict[str, Any]:
    detail: dict[str, Any] = {"gtid_executed": status.gtid_executed}
    if status.flavor == FlavorName.MARIADB:
        detail["gtid_binlog_pos"] = status.gtid_binlog_pos
        detail["gtid_slave_pos"] = status.gtid_slave_pos
    return detail


def _own_transactions(status: NodeStatus) -> str:
    """What a node holds, as GTID text: MariaDB binlog plus applied position, MySQL executed."""
    if status.flavor == FlavorName.MARIADB:
        return _replica_position(status)
    return status.gtid_executed


def _replica_position(status: NodeStatus) -> str:
    """MariaDB: the union of gtid_binlog_pos and gtid_slave_pos, the position to resume from."""
    binlog = gtid.parse(status.gtid_binlog_pos, "mariadb")
    applied = gtid.parse(status.gtid_slave_pos, "mariadb")
    try:
        return gtid.format_gtids(binlog | applied)
    except gtid.DivergedError as exc:
        raise ActionError(f"binlog and replica positions diverge on this node: {exc}") from None


def _errant(old: NodeStatus, new: NodeStatus) -> dict[str, Any] | None:
    """The old primary's transactions that the new primary lacks, or None when there are none:
    per (domain, server id) from both binlog states when both were read (a divergence below
    the last GTID included), else from positions. Unreadable states: ActionError (not rejoined).
    """
    flavor = old.flavor
    if new.flavor != flavor:
        raise ActionError(f"flavors differ: {flavor} and {new.flavor}")
    try:
        mine_state, theirs_state = binlog_state_of(old), binlog_state_of(new)
    except ValueError as exc:
        raise ActionError(f"binlog state unreadable, errant transactions unknown: {exc}") from None
    if mine_state is not None and theirs_state is not None:
        by_state = gtid.errant_by_state(mine_state, theirs_state)
        if by_state.is_empty():
            return None
        return {
            "errant": str(by_state),
            "errant_by": "gtid_binlog_state",
            "old_gtids": str(mine_state),
            "new_gtids": str(theirs_state),
        }
    mine_text = _own_transactions(old)
    theirs_text = new.gtid_binlog_pos if flavor == FlavorName.MARIADB else new.gtid_executed
    mine = gtid.parse(mine_text, flavor)  # type: ignore[arg-type]
    theirs = gtid.parse(theirs_text, flavor)  # type: ignore[arg-type]
    errant = mine - theirs
    if not errant:
        return None
    domains = gtid.diverged_domains(mine, theirs) if flavor == FlavorName.MARIADB else set()
    return {
        "errant": gtid.format_gtids(errant),
        "errant_count": errant.count(),
        "diverged_domains": sorted(domains),
        "old_gtids": mine_text,
        "new_gtids": theirs_text,
    }
