"""Client load through the router, as an application feels it, and the controller's log capture.

``WriteLoad`` inserts one row every ``period`` through the router's writer port (a plain
autocommit INSERT) and keeps each
acknowledged id with the monotonic time the COMMIT returned; ``ReadLoad`` runs a cheap query
through the reader port at the same pace. Both reconnect after an error, like a pooled client,
and count errors by kind (exception class and MySQL/OS error number).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import aiomysql

TABLE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}\.[A-Za-z0-9_]{1,64}$")

Address = tuple[str, int] | str
"""(host, port), or the path of a unix socket (a sandbox on hosts of its own: the router's)."""


@dataclass(frozen=True)
class Access:
    """Where and as whom the application connects: router ports and application credentials."""

    writer: Address
    reader: Address
    user: str
    password: str
    table: str = "app.drill"
    timeout: float = 2.0
    """Connect and query timeout of the clients (seconds)."""

    def __post_init__(self) -> None:
        if not TABLE_NAME.match(self.table):
            raise ValueError(f"table must be schema.name, got {self.table!r}")


async def connect(access: Access, address: Address) -> aiomysql.Connection:
    where: dict[str, Any] = (
        {"unix_socket": address}
        if isinstance(address, str)
        else {"host": address[0], "port": address[1]}
    )
    return await bounded_connect(
        access.timeout, **where, user=access.user, password=access.password
    )


async def bounded_connect(timeout: float, **params: Any) -> aiomysql.Connection:
    """An autocommit connection within ``timeout`` seconds, closed on any failure.

    Bounded by ``asyncio.timeout`` with aiomysql's ``connect_timeout`` off: aiomysql bounds
    its connect with ``asyncio.wait_for``, which on Python 3.11 can lose a cancellation that
    arrives as the connect completes (a load or a checker told to stop would go on). Built
    here rather than by ``aiomysql.connect``, which leaves the socket open when cancelled
    (docs/asyncio-notes.md)."""
    conn = aiomysql.Connection(**params, autocommit=True, connect_timeout=None)
    try:
        async with asyncio.timeout(timeout):
            await conn._connect()
    except BaseException:
        conn.close()
        raise
    return conn


async def execute(access: Access, address: Address, sql: str, params=None) -> list[Any]:
    conn = await connect(access, address)
    try:
        async with asyncio.timeout(access.timeout * 5), conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def ensure_table(access: Access) -> None:
    """The drill's own table, created through the writer (it replicates like any write)."""
    with warnings.catch_warnings():  # "table already exists" is a note, not news
        warnings.simplefilter("ignore")
        await execute(
            access,
            access.writer,
            f"CREATE TABLE IF NOT EXISTS {access.table} (id BIGINT PRIMARY KEY, "
            "node INT, ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
        )


async def present_ids(access: Access, node: Address, low: int, high: int) -> list[int]:
    """Ids in [low, high] on one node, read from it directly (not through the router)."""
    rows = await execute(
        access, node, f"SELECT id FROM {access.table} WHERE id BETWEEN %s AND %s", (low, high)
    )
    return [int(r[0]) for r in rows]


def error_kind(exc: BaseException) -> str:
    """'OperationalError(2013)', 'TimeoutError', 'ConnectionRefusedError(111)' ..."""
    kind = type(exc).__name__
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
    return f"{kind}({code})" if code is not None else kind


class _Loop:
    """One client: an operation every ``period`` on a kept connection; reconnect on error."""

    name = "load"

    def __init__(self, access: Access, address: Address, period: float) -> None:
        self.access = access
        self.address = address
        self.period = period
        self.ok_times: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def _operation(self, conn: aiomysql.Connection) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        conn: aiomysql.Connection | None = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await connect(self.access, self.address)
                    async with asyncio.timeout(self.access.timeout):
                        await self._operation(conn)
                    self.ok_times.append(time.monotonic())
                except (OSError, TimeoutError, aiomysql.Error) as exc:
                    self.errors.append((time.monotonic(), error_kind(exc)))
                    if conn is not None:
                        conn.close()
                    conn = None
                await asyncio.sleep(self.period)
        finally:
            if conn is not None:
                conn.close()

    def start(self) -> _Loop:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def ok_since(self, t: float) -> int:
        return sum(1 for a in self.ok_times if a > t)

    def error_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, kind in self.errors:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


class WriteLoad(_Loop):
    """Inserts ids ``start_id``, ``start_id + 1`` ... through the writer port."""

    name = "drill-writes"

    def __init__(
        self,
        access: Access,
        start_id: int,
        period: float = 0.01,
        address: Address | None = None,
    ) -> None:
        super().__init__(access, access.writer if address is None else address, period)
        self.start_id = start_id
        self._next = start_id
        self.acknowledged: list[int] = []

    async def _operation(self, conn: aiomysql.Connection) -> None:
        row = self._next
        self._next += 1  # an id is tried once: after an error it is never re-sent
        async with conn.cursor() as cur:
            # A plain autocommit INSERT, as an application sends it. No `@@server_id` here:
            # through ProxySQL, a statement naming a variable disables multiplexing and pins
            # the session to one backend connection, which a writer move then cuts (2013).
            await cur.execute(f"INSERT INTO {self.access.table} (id) VALUES (%s)", (row,))
        self.acknowledged.append(row)

    @property
    def last_id(self) -> int:
        return self._next - 1


class ReadLoad(_Loop):
    """``SELECT 1`` through the reader port."""

    name = "drill-reads"

    def __init__(self, access: Access, period: float = 0.01) -> None:
        super().__init__(access, access.reader, period)

    async def _operation(self, conn: aiomysql.Connection) -> None:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await cur.fetchall()


class LogCapture:
    """A JsonLog stream that keeps every line, parsed, with the monotonic time it was written.

    The drill runs the controller in-process, so a line is written the moment the controller
    emits it: ``_mono`` is the exact time of the event on the drill's clock.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, text: str) -> int:
        now = time.monotonic()
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                record["_mono"] = now
                self.records.append(record)
        return len(text)

    def flush(self) -> None:
        pass

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.records[mark:]
