"""The ProxySQL admin double as an asyncio MySQL-protocol server, plus a threaded wrapper."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from tests.proxysql_double import protocol as p
from tests.proxysql_double.admin import AdminDb, ErrorReply, OkReply, Reply, write_disk_servers
from tests.proxysql_double.schema import (
    HANDSHAKE_SERVER_VERSION,
    ReplicationHostgroupRow,
    ServerRow,
)

RuntimeSnapshot = list[tuple[int, str, int, str]]
T = TypeVar("T")

_SALT_ALPHABET = bytes(range(0x21, 0x7F))  # printable, never NUL (pymysql reads it as C string)


class _Closed(Exception):
    """The client went away."""


async def _read_packet(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    payload, seq = b"", 0
    while True:
        header = await reader.readexactly(4)
        length, seq = int.from_bytes(header[:3], "little"), header[3]
        payload += await reader.readexactly(length)
        if length < p.MAX_PAYLOAD:
            return payload, seq


class ProxySQLAdminDouble:
    """A stand-in for ProxySQL 2.7.1's admin port (see tests/README.md for what it is not).

    Lifecycle: `await start()` loads the disk database when present (as ProxySQL without
    `--initial`), else the seed rows, which it also saves to disk. `await stop()` closes the
    listener and aborts every client connection, like a crashed proxysql: memory and runtime are
    lost, only what was SAVEd TO DISK survives. `start()` again reuses the same port.
    """

    def __init__(
        self,
        *,
        datadir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "admin",
        password: str = "admin",
        seed_servers: Sequence[ServerRow] = (),
        seed_replication_hostgroups: Sequence[ReplicationHostgroupRow] = (),
    ) -> None:
        self.datadir = Path(datadir)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.seed_servers = tuple(seed_servers)
        self.seed_replication_hostgroups = tuple(seed_replication_hostgroups)
        self.delay = 0.0
        self.statements: list[str] = []
        self.runtime_history: list[RuntimeSnapshot] = []
        self._admin: AdminDb | None = None
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connection_ids = 0

    @property
    def disk_path(self) -> Path:
        return self.datadir / "proxysql.db"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, *, initial: bool = False) -> None:
        if self._server is not None:
            raise RuntimeError("the ProxySQL double is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._admin = AdminDb(
            self.disk_path,
            seed_servers=self.seed_servers,
            seed_replication_hostgroups=self.seed_replication_hostgroups,
            initial=initial,
        )
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task, writer in list(self._sessions.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await server.wait_closed()
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    async def __aenter__(self) -> ProxySQLAdminDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- inspection and fault hooks for tests ---------------------------------------------

    def runtime_rows(self) -> list[dict[str, Any]]:
        """Current runtime_mysql_servers, one dict per row (ints are ints here)."""
        return [asdict(row) for row in self._require_admin().runtime_servers()]

    def runtime_snapshot(self) -> RuntimeSnapshot:
        return [
            (row.hostgroup_id, row.hostname, row.port, row.status)
            for row in self._require_admin().runtime_servers()
        ]

    def runtime_variables(self) -> dict[str, str]:
        return self._require_admin().runtime_variables()

    def set_runtime_status(self, hostname: str, port: int, status: str) -> int:
        """Play ProxySQL's monitor: e.g. mark a backend SHUNNED in the runtime only."""
        return self._require_admin().set_runtime_status(hostname, port, status)

    def set_disk_rows(self, rows: Sequence[ServerRow]) -> None:
        """Replace disk.mysql_servers (e.g. stale rows); takes effect at the next start() or
        LOAD MYSQL SERVERS FROM DISK."""
        write_disk_servers(self.disk_path, rows)

    def _require_admin(self) -> AdminDb:
        if self._admin is None:
            raise RuntimeError("the ProxySQL double is not running")
        return self._admin

    # --- protocol -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = writer
        try:
            if await self._authenticate(reader, writer):
                await self._command_loop(reader, writer)
        except (_Closed, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels sessions; end quietly (asyncio's start_server callback would
            # log a cancelled session task as an error).
            pass
        finally:
            self._sessions.pop(task, None)
            writer.close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self._connection_ids += 1
        salt = bytes(secrets.choice(_SALT_ALPHABET) for _ in range(20))
        handshake = p.handshake_v10(HANDSHAKE_SERVER_VERSION, self._connection_ids, salt)
        await _send(writer, [handshake], first_seq=0)
        payload, seq = await _read_packet(reader)
        response = p.parse_handshake_response(payload)
        auth = response.auth_response
        if response.auth_plugin not in (None, p.NATIVE_PASSWORD):
            await _send(writer, [p.auth_switch_request(salt)], first_seq=seq + 1)
            auth, seq = await _read_packet(reader)
        expected = p.native_password_scramble(self.password, salt)
        if response.user == self.user and secrets.compare_digest(auth, expected):
            await _send(writer, [p.ok_packet()], first_seq=seq + 1)
            return True
        peer = writer.get_extra_info("peername") or ("?",)
        message = (
            f"ProxySQL Error: Access denied for user '{response.user}'@'{peer[0]}' "
            f"(using password: {'YES' if auth else 'NO'})"
        )
        await _send(writer, [p.err_packet(1045, "28000", message)], first_seq=seq + 1)
        return False

    async def _command_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            payload, _ = await _read_packet(reader)
            command = payload[:1]
            if command == bytes([p.COM_QUIT]):
                return
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            if command == bytes([p.COM_QUERY]):
                reply = self._execute(payload[1:].decode("utf-8", errors="replace"))
            elif command in (bytes([p.COM_PING]), bytes([p.COM_INIT_DB])):
                reply = OkReply()
            else:
                reply = ErrorReply(f"ProxySQL Admin Error: (test double) command {payload[:1]!r}")
            await _send(writer, _reply_payloads(reply), first_seq=1)

    def _execute(self, query: str) -> Reply:
        """One statement, recorded with the runtime it leaves behind (even if it failed)."""
        reply = self._require_admin().execute(query)
        self.statements.append(query)
        self.runtime_history.append(self.runtime_snapshot())
        return reply


def _reply_payloads(reply: Reply) -> list[bytes]:
    if isinstance(reply, OkReply):
        return [p.ok_packet(reply.affected_rows, reply.info)]
    if isinstance(reply, ErrorReply):
        return [p.err_packet(reply.code, reply.sqlstate, reply.message)]
    return p.result_set(reply.columns, reply.rows)


async def _send(writer: asyncio.StreamWriter, payloads: list[bytes], *, first_seq: int) -> None:
    if writer.is_closing():
        raise _Closed
    writer.write(b"".join(p.frame(payload, first_seq + i) for i, payload in enumerate(payloads)))
    await writer.drain()


class ThreadedProxySQLDouble:
    """The double on its own event loop in a background thread, for tests where the controller
    runs in another process (or another loop). Use as a context manager:

        with ThreadedProxySQLDouble(datadir=tmp_path / "proxysql") as proxysql:
            run_controller(admin_port=proxysql.port)
            proxysql.call(lambda d: d.runtime_snapshot())
    """

    def __init__(self, **kwargs: Any) -> None:
        self.double = ProxySQLAdminDouble(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="proxysql-double", daemon=True
        )

    @property
    def host(self) -> str:
        return self.double.host

    @property
    def port(self) -> int:
        return self.double.port

    @property
    def user(self) -> str:
        return self.double.user

    @property
    def password(self) -> str:
        return self.double.password

    def start(self, *, initial: bool = False) -> None:
        self._run(self.double.start(initial=initial))

    def stop(self) -> None:
        self._run(self.double.stop())

    def call(self, fn: Callable[[ProxySQLAdminDouble], T]) -> T:
        """Run fn(double) on the double's loop thread (read state or flip `delay` safely)."""

        async def in_loop() -> T:
            return fn(self.double)

        return self._run(in_loop())

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> ThreadedProxySQLDouble:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
