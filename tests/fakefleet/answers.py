"""What a fake node answers to each statement: values from the model, columns as recorded.

``answer`` handles every statement that answers at once; ``answer_blocking`` the SELECT/DO
whose functions wait (SLEEP, MASTER_GTID_WAIT, GET_LOCK with a timeout). ``encode`` turns the
replies of one query into the bytes sent back (one result set per statement, the last one
without SERVER_MORE_RESULTS_EXISTS; an error ends the query, as on a real server).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.fakefleet import history as h
from tests.fakefleet import wire
from tests.fakefleet.model import FakeError, Fleet, Node, Snapshot
from tests.fakefleet.sql import (
    Call,
    ChangeMaster,
    Do,
    Expr,
    Ignored,
    Kill,
    Literal,
    Select,
    SetGlobal,
    Show,
    ShowSlaves,
    Slave,
    Statement,
    Table,
    Unsupported,
    Variable,
    waits,
)
from tests.mysql_wire import err_packet, text_row

POLL = 0.02
"""How often a waiting MASTER_GTID_WAIT or GET_LOCK looks again (seconds)."""
DUMP_THREAD_IDS = 1_000_000
"""Process ids shown for the Binlog Dump threads serving replicas."""


@dataclass(frozen=True)
class Rows:
    columns: wire.Columns
    rows: list[list[str | None]]


@dataclass(frozen=True)
class Done:
    affected: int = 0


@dataclass(frozen=True)
class Failed:
    code: int
    sqlstate: str
    message: str


Reply = Rows | Done | Failed


@dataclass
class Context:
    """One statement on one connection of one node, at one moment."""

    fleet: Fleet
    node: Node
    connection: int
    t: float
    sessions: Callable[[], list[tuple[int, str, str]]]
    """(id, user, command) of the node's client connections."""
    kill: Callable[[int, bool], bool]
    """Kill a connection (or only its query) of this node; False when there is no such id."""
    _snapshot: Snapshot | None = field(default=None, repr=False)

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = self.fleet.snapshot(self.node, self.t)
        return self._snapshot


# -- encoding --------------------------------------------------------------------------------


def encode(replies: Sequence[Reply]) -> bytes:
    out: list[bytes] = []
    seq = 1
    for i, reply in enumerate(replies):
        more = i < len(replies) - 1
        if isinstance(reply, Failed):
            out.append(wire.frame_all([err_packet(reply.code, reply.sqlstate, reply.message)], seq))
            break
        if isinstance(reply, Done):
            out.append(wire.frame_all([wire.ok(reply.affected, more=more)], seq))
            seq += 1
            continue
        out.append(reply.columns.framed(seq))
        seq += len(reply.columns.payloads)
        payloads = [text_row(row) for row in reply.rows]
        payloads.append(wire.eof(more=more))
        out.append(wire.frame_all(payloads, seq))
        seq += len(payloads)
    return b"".join(out)


def failed(error: FakeError) -> Failed:
    return Failed(error.code, error.sqlstate, error.message)


# -- statements ----------------------------------------------------------------------------


def answer(stmt: Statement, ctx: Context) -> Reply:
    """The reply to a statement that does not wait."""
    try:
        return _answer(stmt, ctx)
    except FakeError as exc:
        return failed(exc)


def _answer(stmt: Statement, ctx: Context) -> Reply:
    if isinstance(stmt, Unsupported):
        return Failed(stmt.code, "42000", stmt.message)
    if isinstance(stmt, Do):
        for item in stmt.items:
            evaluate(item.expr, ctx)
        return Done()
    if isinstance(stmt, Select):
        return Rows(select_columns(stmt), [[render(evaluate(i.expr, ctx)) for i in stmt.items]])
    if isinstance(stmt, ShowSlaves):
        return Rows(_SLAVES.columns, slave_rows(ctx.snapshot))
    if isinstance(stmt, Show):
        return show(stmt, ctx)
    if isinstance(stmt, Table):
        return table(stmt, ctx)
    if isinstance(stmt, Ignored):
        return Done()
    if isinstance(stmt, Kill):
        return kill(stmt, ctx)
    return change(stmt, ctx)


def change(stmt: Statement, ctx: Context) -> Reply:
    """Statements that change replication or variables."""
    fleet, node, t = ctx.fleet, ctx.node, ctx.t
    if isinstance(stmt, Slave):
        if stmt.verb == "stop":
            fleet.stop_slave(node, stmt.thread, t)
        elif stmt.verb == "start":
            fleet.start_slave(node, stmt.thread, t)
        else:
            fleet.reset_slave(node, stmt.everything, t)
    elif isinstance(stmt, ChangeMaster):
        fleet.change_master(node, dict(stmt.options), t)
    elif isinstance(stmt, SetGlobal):
        for name, value in stmt.assignments:
            fleet.set_global(node, name, value, t)
    else:
        return Failed(1235, "42000", f"The fake fleet does not imitate {type(stmt).__name__}")
    return Done()


def kill(stmt: Kill, ctx: Context) -> Reply:
    if ctx.kill(stmt.thread, stmt.query_only):
        return Done()
    return Failed(1094, "HY000", f"Unknown thread id: {stmt.thread}")


async def answer_blocking(
    stmt: Select, ctx_at: Callable[[], Context], sleep=asyncio.sleep
) -> Reply:
    """A SELECT or DO whose functions wait: each waiting function is awaited in turn, then
    the row is evaluated at the moment it is complete."""
    waited: dict[int, Any] = {}
    for index, item in enumerate(stmt.items):
        if waits(item.expr):
            assert isinstance(item.expr, Call)
            try:
                waited[index] = await _WAITING[item.expr.function](item.expr, ctx_at, sleep)
            except FakeError as exc:
                return failed(exc)
    ctx = ctx_at()
    try:
        values = [
            waited[i] if i in waited else evaluate(it.expr, ctx) for i, it in enumerate(stmt.items)
        ]
    except FakeError as exc:
        return failed(exc)
    if isinstance(stmt, Do):
        return Done()
    return Rows(select_columns(stmt), [[render(v) for v in values]])


# -- expressions -----------------------------------------------------------------------------


def render(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def evaluate(expr: Expr, ctx: Context) -> object:
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Variable):
        getter = _VARIABLES.get(expr.name)
        if getter is None:
            raise FakeError(1193, "HY000", f"Unknown system variable '{expr.name}'")
        return getter(ctx)
    function = _FUNCTIONS.get(expr.function)
    if function is None:
        raise FakeError(1305, "42000", f"FUNCTION {expr.function} does not exist")
    return function(ctx, *_args(expr))


def _args(call: Call) -> list[object]:
    return [arg.value for arg in call.args]


def _lock_name(value: object) -> str:
    if value is None:
        raise FakeError(3057, "42000", "Incorrect user-level lock name 'NULL'")
    return str(value)


def _get_lock(ctx: Context, name: object, timeout: object = 0) -> int:
    return ctx.fleet.get_lock(ctx.node, _lock_name(name), ctx.connection)


def _is_used_lock(ctx: Context, name: object) -> int | None:
    return ctx.fleet.lock_owner(ctx.node, _lock_name(name))


def _is_free_lock(ctx: Context, name: object) -> int:
    return int(_is_used_lock(ctx, name) is None)


def _release_lock(ctx: Context, name: object) -> int | None:
    return ctx.fleet.release_lock(ctx.node, _lock_name(name), ctx.connection)


def _release_all(ctx: Context) -> int:
    return ctx.fleet.release_all(ctx.node, ctx.connection)


def _gtid_reached(ctx: Context, position: object, timeout: object = None) -> int:
    return 0 if ctx.fleet.gtid_reached(ctx.node, str(position), ctx.t) else -1


_FUNCTIONS: dict[str, Callable[..., object]] = {
    "CONNECTION_ID": lambda ctx: ctx.connection,
    "GET_LOCK": _get_lock,
    "IS_USED_LOCK": _is_used_lock,
    "IS_FREE_LOCK": _is_free_lock,
    "RELEASE_LOCK": _release_lock,
    "RELEASE_ALL_LOCKS": _release_all,
    "MASTER_GTID_WAIT": _gtid_reached,
    "SLEEP": lambda ctx, seconds: 0,
}


async def _wait_until(ready: Callable[[], bool], timeout: float | None, sleep) -> bool:
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while not ready():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        left = POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic()))
        await sleep(left)
    return True


async def _sleep_fn(call: Call, ctx_at, sleep) -> int:
    (seconds,) = _args(call)
    await sleep(max(0.0, float(seconds or 0)))
    return 0


async def _gtid_wait_fn(call: Call, ctx_at, sleep) -> int:
    args = _args(call)
    position = str(args[0])
    timeout = float(args[1]) if len(args) > 1 and args[1] is not None else None

    def reached() -> bool:
        ctx = ctx_at()
        return ctx.fleet.gtid_reached(ctx.node, position, ctx.t)

    try:
        h.parse_position(position)
    except ValueError:
        raise FakeError(1941, "HY000", f"Could not parse GTID list '{position}'") from None
    return 0 if await _wait_until(reached, timeout, sleep) else -1


async def _get_lock_fn(call: Call, ctx_at, sleep) -> int:
    args = _args(call)
    name = _lock_name(args[0])
    timeout = float(args[1]) if len(args) > 1 and args[1] is not None else 0.0

    def taken() -> bool:
        ctx = ctx_at()
        return ctx.fleet.get_lock(ctx.node, name, ctx.connection) == 1

    return 1 if await _wait_until(taken, None if timeout < 0 else timeout, sleep) else 0


_WAITING = {"SLEEP": _sleep_fn, "MASTER_GTID_WAIT": _gtid_wait_fn, "GET_LOCK": _get_lock_fn}


# -- variables -------------------------------------------------------------------------------


def _version(ctx: Context) -> str:
    return wire.recorded_sets("probe_version")[0]["rows"][0][0]


def _version_comment(ctx: Context) -> str:
    return wire.recorded_sets("probe_version")[0]["rows"][0][1]


_VARIABLES: dict[str, Callable[[Context], object]] = {
    "version": _version,
    "version_comment": _version_comment,
    "server_id": lambda ctx: ctx.node.server_id,
    "read_only": lambda ctx: ctx.node.read_only,
    "log_bin": lambda ctx: True,
    "log_slave_updates": lambda ctx: True,
    "gtid_current_pos": lambda ctx: h.position(ctx.snapshot.current_pos),
    "gtid_binlog_pos": lambda ctx: h.position(ctx.snapshot.binlog),
    "gtid_slave_pos": lambda ctx: h.position(ctx.snapshot.slave_pos),
    "gtid_binlog_state": lambda ctx: h.binlog_state(ctx.snapshot.binlog),
    "gtid_domain_id": lambda ctx: 0,
    "gtid_strict_mode": lambda ctx: False,
    "rpl_semi_sync_master_enabled": lambda ctx: ctx.node.semi_master,
    "rpl_semi_sync_slave_enabled": lambda ctx: ctx.node.semi_slave,
    "slave_net_timeout": lambda ctx: round(ctx.fleet.spec.net_timeout),
    "port": lambda ctx: ctx.node.address[1],
    "hostname": lambda ctx: ctx.node.name,
}


def _heartbeat_period(ctx: Context) -> str:
    repl = ctx.node.repl
    return f"{repl.heartbeat_period:.3f}" if repl is not None else "0.000"


def _slave_running(ctx: Context) -> bool:
    link = ctx.snapshot.link
    return (
        link is not None and link.io == "Yes" and ctx.node.repl is not None and ctx.node.repl.sql_on
    )


_STATUS: dict[str, tuple[str, Callable[[Context], object]]] = {
    "rpl_semi_sync_master_clients": (
        "Rpl_semi_sync_master_clients",
        lambda ctx: ctx.snapshot.semi_clients,
    ),
    "rpl_semi_sync_master_status": (
        "Rpl_semi_sync_master_status",
        lambda ctx: ctx.node.semi_master and ctx.snapshot.semi_clients > 0,
    ),
    "rpl_semi_sync_slave_status": (
        "Rpl_semi_sync_slave_status",
        lambda ctx: ctx.node.semi_slave and _slave_running(ctx),
    ),
    "slave_heartbeat_period": ("Slave_heartbeat_period", _heartbeat_period),
    "slave_received_heartbeats": ("Slave_received_heartbeats", lambda ctx: ctx.snapshot.heartbeats),
    "slave_running": ("Slave_running", _slave_running),
    "threads_connected": ("Threads_connected", lambda ctx: len(ctx.sessions()) + 1),
    "uptime": ("Uptime", lambda ctx: int(ctx.t - ctx.node.started)),
}


def _on_off(value: object) -> str:
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    return str(value)


def show(stmt: Show, ctx: Context) -> Rows:
    if stmt.kind == "variables":
        table = {name: (name, getter) for name, getter in _VARIABLES.items()}
        columns = _SHOW_VARIABLES
    else:
        table, columns = _STATUS, _SHOW_STATUS
    if stmt.names is not None:
        wanted = [n for n in sorted(set(stmt.names)) if n in table]
    elif stmt.like is not None:
        pattern = like(stmt.like)
        wanted = sorted(n for n in table if pattern.fullmatch(n))
    else:
        wanted = sorted(table)
    rows = [[table[n][0], _on_off(table[n][1](ctx))] for n in wanted]
    return Rows(columns, rows)


def like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (``%``, ``_``, ``\\`` escapes) as a case-insensitive regex."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


# -- tables ---------------------------------------------------------------------------------


def table(stmt: Table, ctx: Context) -> Rows:
    if stmt.name == "innodb_trx":
        return Rows(_INNODB_TRX, [])
    rows = [[str(i), user, command] for i, user, command in ctx.sessions() if i != ctx.connection]
    for number, follower in enumerate(ctx.fleet.followers(ctx.node)):
        link = ctx.fleet.link(follower, ctx.t)
        if link is not None and link.io == "Yes" and follower.repl is not None:
            rows.append([str(DUMP_THREAD_IDS + number), follower.repl.user, "Binlog Dump"])
    return Rows(_PROCESSLIST, rows)


# -- SHOW ALL SLAVES STATUS ------------------------------------------------------------------


@dataclass
class _SlaveTemplate:
    columns: wire.Columns
    row: list[str | None]
    index: dict[str, int]


def _slave_template() -> _SlaveTemplate:
    recorded = wire.recorded_sets("status_replica")[1]
    names = [f["name"] for f in recorded["fields"]]
    return _SlaveTemplate(
        wire.Columns.recorded("status_replica", 1),
        list(recorded["rows"][0]),
        {name: i for i, name in enumerate(names)},
    )


_IO_STATE = {
    "Yes": "Waiting for master to send event",
    "Connecting": "Reconnecting after a failed master event read",
    "No": "",
}
_SQL_STATE = "Slave has read all relay log; waiting for more updates"


def slave_rows(snap: Snapshot) -> list[list[str | None]]:
    repl, link = snap.node.repl, snap.link
    if repl is None or link is None:
        return []
    log_pos = str(256 + 310 * h.seq(snap.received))
    values: dict[str, str | None] = {
        "Slave_SQL_State": _SQL_STATE if repl.sql_on else "",
        "Slave_IO_State": _IO_STATE[link.io],
        "Master_Host": repl.host,
        "Master_User": repl.user,
        "Master_Port": str(repl.port),
        "Connect_Retry": str(repl.connect_retry),
        "Read_Master_Log_Pos": log_pos,
        "Exec_Master_Log_Pos": log_pos,
        "Slave_IO_Running": link.io,
        "Slave_SQL_Running": "Yes" if repl.sql_on else "No",
        "Seconds_Behind_Master": "0" if link.io == "Yes" and repl.sql_on else None,
        "Last_IO_Errno": str(link.errno),
        "Last_IO_Error": link.error,
        "Master_Server_Id": str(snap.source_server_id),
        "Using_Gtid": repl.using_gtid,
        "Gtid_IO_Pos": h.position(snap.received),
        "Slave_SQL_Running_State": _SQL_STATE if repl.sql_on else "",
        "Slave_received_heartbeats": str(snap.heartbeats),
        "Slave_heartbeat_period": f"{repl.heartbeat_period:.3f}",
        "Gtid_Slave_Pos": h.position(snap.slave_pos),
    }
    row = list(_SLAVES.row)
    for name, value in values.items():
        row[_SLAVES.index[name]] = value
    return [row]


# -- columns ---------------------------------------------------------------------------------

# Which recorded expression column each kind of SELECT item takes its definition from.
_EXPRESSION_FIELD = {
    "GET_LOCK": 0,
    "IS_USED_LOCK": 1,
    "RELEASE_LOCK": 2,
    "IS_FREE_LOCK": 2,
    "RELEASE_ALL_LOCKS": 2,
    "CONNECTION_ID": 3,
    "MASTER_GTID_WAIT": 4,
    "SLEEP": 5,
    "@int": 5,
    "@text": 6,
    "version": 7,
    "version_comment": 8,
    "server_id": 9,
    "read_only": 10,
    "log_bin": 11,
    "log_slave_updates": 11,
    "gtid_current_pos": 12,
    "gtid_binlog_pos": 13,
    "gtid_slave_pos": 14,
    "gtid_binlog_state": 17,
    "rpl_semi_sync_master_enabled": 15,
    "rpl_semi_sync_slave_enabled": 15,
    "gtid_strict_mode": 15,
    "slave_net_timeout": 16,
    "gtid_domain_id": 16,
    "port": 16,
    "hostname": 8,
}
_select_columns: dict[Select, wire.Columns] = {}


def _field_kind(expr: Expr) -> str:
    if isinstance(expr, Call):
        return expr.function if expr.function in _EXPRESSION_FIELD else "@int"
    if isinstance(expr, Variable):
        return expr.name if expr.name in _EXPRESSION_FIELD else "@text"
    return "@int" if isinstance(expr.value, int) else "@text"


def select_columns(stmt: Select) -> wire.Columns:
    found = _select_columns.get(stmt)
    if found is None:
        fields = wire.recorded_sets("expressions")[0]["fields"]
        found = wire.Columns.of(
            (fields[_EXPRESSION_FIELD[_field_kind(item.expr)]], item.column) for item in stmt.items
        )
        if len(_select_columns) < 4096:
            _select_columns[stmt] = found
    return found


_SLAVES = _slave_template()
_SHOW_VARIABLES = wire.Columns.recorded("show_variables_like")
_SHOW_STATUS = wire.Columns.recorded("show_status_like")
_PROCESSLIST = wire.Columns.recorded("processlist")
_INNODB_TRX = wire.Columns.recorded("oldest_trx")
