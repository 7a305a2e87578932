"""MySQL connections with hard deadlines: every connect and every query under its own timeout.

aiomysql bounds only the TCP connect; a frozen server (SIGSTOP, a partition that drops
packets) accepts the TCP connection and then never sends its handshake. Here the whole
connect, handshake and authentication included, runs under ``asyncio.timeout``, and a
connection whose connect or query was cut short is closed at once: its protocol state is
unknown, and a leaked socket would pile up on a node that stays frozen.

A connection may also bound what it reads (``max_read``): every read from the server, the
handshake and each statement's answer, is charged its size plus ``READ_OVERHEAD`` against the
budget, so that a server streaming maximal (16 MiB) packets or a flood of tiny rows costs a few
reads and an ``AnswerTooLarge`` error, not memory and CPU. The budget is renewed at connect and
at each ``fetch_all``.

TLS: an ``Endpoint`` carries the TLS context of its connections (``endpoint_for`` builds it from
``mysql.tls`` or ``router.proxysql.tls``: one way for probes, actions, the ProxySQL admin and
the lease). With a context, a server that does not offer TLS is refused (2026): aiomysql alone
would go on in plain text, which a man in the middle gets by clearing one flag.
``tls_of(conn)`` says what a connection negotiated.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import pymysql
from pymysql.constants import CLIENT, COMMAND, CR

from hacontrol.mysqlwire import AnswerTooLarge, ColumnCache, TextAnswer
from hacontrol.settings import TlsSettings
from hacontrol.tlsconf import client_context, describe

Rows = list[dict[str, Any]]

READ_OVERHEAD = 128
"""What each read costs on top of its bytes: bounds the number of packets, not only bytes."""
CHUNK = 64 * 1024
"""Bytes one read of ``fetch_text`` asks for at most."""
LOST = "Lost connection to MySQL server during query"


CR_SSL_CONNECTION_ERROR = 2026


class TlsRefused(pymysql.err.OperationalError):
    """TLS is configured and the server does not offer it: no plain-text fallback."""


class BoundedConnection(aiomysql.Connection):
    """aiomysql's connection, refusing to read past ``read_budget`` (None: unbounded)."""

    def __init__(self, *args: Any, max_read: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_read = max_read
        self.read_budget = max_read

    def renew_budget(self) -> None:
        self.read_budget = self.max_read

    async def _request_authentication(self) -> None:
        if self._ssl_context is not None and not self.server_capabilities & CLIENT.SSL:
            self.close()
            raise TlsRefused(
                CR_SSL_CONNECTION_ERROR,
                f"TLS is required and the server at {self._host}:{self._port} does not offer it",
            )
        await super()._request_authentication()

    async def _read_bytes(self, num_bytes: int) -> bytes:
        if self.read_budget is not None:
            cost = num_bytes + READ_OVERHEAD
            if cost > self.read_budget:
                self.close()
                raise AnswerTooLarge(
                    2020, f"the server's answer is larger than {self.max_read} bytes"
                )
            self.read_budget -= cost
        return await super()._read_bytes(num_bytes)

    async def query_text(self, sql: str, columns: ColumnCache) -> list[Rows]:
        """``sql`` (one or several statements) and its result sets, read by
        ``mysqlwire.TextAnswer`` in one pass instead of aiomysql's cursor: the same rows."""
        self._ensure_alive()
        if self._result is not None and (self._result.has_next or self._result.unbuffered_active):
            raise pymysql.err.InternalError("a previous result was left unread")
        payload = sql.encode(self._encoding)
        if len(payload) + 1 >= 0xFFFFFF:
            raise ValueError("a text query must fit in one packet")
        self._write_bytes(struct.pack("<iB", len(payload) + 1, COMMAND.COM_QUERY) + payload)
        self._next_seq_id = 1
        answer = TextAnswer(columns)
        while not answer.feed(await self._read_chunk(answer)):
            pass
        return answer.results

    async def _read_chunk(self, answer: TextAnswer) -> bytes:
        """The next bytes of an answer, charged to the read budget: a packet announced larger
        than what is left of it fails at once, and so does a budget spent in small reads."""
        size = CHUNK
        if self.read_budget is not None:
            size = min(size, self.read_budget - READ_OVERHEAD)
            if size <= 0 or answer.wanted() > size:
                self.close()
                raise AnswerTooLarge(
                    2020, f"the server's answer is larger than {self.max_read} bytes"
                )
        try:
            data = await self._reader.read(size)
        except OSError as exc:
            self.close()
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, f"{LOST} ({exc})") from exc
        if not data:
            self.close()
            raise pymysql.err.OperationalError(CR.CR_SERVER_LOST, LOST)
        if self.read_budget is not None:
            self.read_budget -= len(data) + READ_OVERHEAD
        return data


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    """TLS for every connection to it (None: plain TCP)."""

    def __repr__(self) -> str:  # never print the password
        return f"Endpoint({self.user}@{self.host}:{self.port}{' tls' if self.tls else ''})"


def endpoint_for(host: str, port: int, user: str, password: str, tls: TlsSettings) -> Endpoint:
    """An endpoint whose connections use ``tls`` (``mysql.tls`` for the nodes,
    ``router.proxysql.tls`` for the ProxySQL admin). Contexts are built once per setting."""
    return Endpoint(host, port, user, password, tls_context(tls))


@functools.cache
def tls_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The client context of a TLS setting (check-config validated it): built once."""
    return client_context(tls.mode, tls.ca, tls.cert, tls.key)


def tls_of(conn: aiomysql.Connection) -> str | None:
    """What ``conn`` negotiated ("TLSv1.3 TLS_AES_256_GCM_SHA384"), None for plain TCP."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        return None
    return describe(transport.get_extra_info("ssl_object"))


async def connect(
    endpoint: Endpoint,
    timeout: float,
    *,
    multi_statements: bool = False,
    max_read: int | None = None,
) -> BoundedConnection:
    """An autocommit DictCursor connection, or an exception within ``timeout`` seconds.

    ``max_read``: bytes the connection may read for its handshake and for each statement's
    answer (AnswerTooLarge past it); None: unbounded."""
    conn = BoundedConnection(
        max_read=max_read,
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        # None: aiomysql then awaits the TCP connect directly instead of through
        # asyncio.wait_for, which on Python 3.11 can swallow a cancellation that arrives as
        # the connect completes. The whole connect is bounded by asyncio.timeout below.
        connect_timeout=None,
        autocommit=True,
        cursorclass=aiomysql.DictCursor,
        client_flag=CLIENT.MULTI_STATEMENTS if multi_statements else 0,
        program_name="hacontrol",
        ssl=endpoint.tls,
    )
    try:
        async with asyncio.timeout(timeout):
            await conn._connect()  # aiomysql.connect() is exactly this, minus the cleanup
    except BaseException:
        conn.close()
        raise
    return conn


async def fetch_all(
    conn: aiomysql.Connection, sql: str, params: Sequence[Any] | None = None, *, timeout: float
) -> list[Rows]:
    """Run ``sql`` (one or several statements) and return one row list per result set.

    On timeout or any error the connection is closed: the caller reconnects.
    """
    if isinstance(conn, BoundedConnection):
        conn.renew_budget()
    try:
        async with asyncio.timeout(timeout):
            cursor = await conn.cursor()
            await cursor.execute(sql, params)
            results = [list(await cursor.fetchall())]
            while await cursor.nextset():
                results.append(list(await cursor.fetchall()))
            await cursor.close()
    except BaseException:
        # Close the connection, never the cursor: closing a cursor reads what is left of the
        # result from the server, which on a cancelled or timed-out query may never come.
        conn.close()
        raise
    return results


async def fetch_text(
    conn: BoundedConnection, sql: str, columns: ColumnCache, *, timeout: float
) -> list[Rows]:
    """``fetch_all`` for a query without parameters, in one pass over the wire bytes
    (``BoundedConnection.query_text``): the probe's path. The same rows, the same errors;
    on timeout or any error the connection is closed."""
    conn.renew_budget()
    try:
        async with asyncio.timeout(timeout):
            return await conn.query_text(sql, columns)
    except BaseException:
        conn.close()
        raise


async def execute(
    conn: aiomysql.Connection, sql: str, params: Sequence[Any] | None = None, *, timeout: float
) -> Rows:
    """One statement; its rows (empty for statements without a result)."""
    return (await fetch_all(conn, sql, params, timeout=timeout))[0]


def describe_error(exc: BaseException) -> str:
    """One line for a log: MySQL errors keep their number, timeouts say so."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        if len(exc.args) >= 2 and isinstance(exc.args[0], int):
            cause = exc.__cause__
            text = f"{exc.args[0]}: {exc.args[1]}"
            return f"{text} ({cause})" if cause else text
        return str(exc.args[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
