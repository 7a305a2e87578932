"""A real ProxySQL for tests: find it, start it, fault it, watch its admin port.

- ``proxysql_binary()`` / ``describe_proxysql()`` / ``require_proxysql()``: the ``proxysql`` on
  PATH (CI puts ../shared/bin there), its version for the test report, or a skip whose reason
  says how to get one.
- ``RealProxySQL``: one ProxySQL process with its own datadir and admin port. ``start()`` the
  first time with ``--initial`` (the config file), later without (what was SAVEd TO DISK wins,
  as in production); ``kill()`` is SIGKILL; ``freeze()`` / ``thaw()`` SIGSTOP / SIGCONT.
  ``reset(rows)`` puts a running one back to a known ``mysql_servers`` for the next test.
- ``AdminTap``: a TCP relay in front of the admin port that sees every statement a client sends
  and runs hooks *before* forwarding it (the client sends statement N+1 only after statement N
  was answered, so a hook sees the effect of everything before): a runtime snapshot after every
  statement of the router under test, an operator's write slipped in at the worst moment, a
  crash or freeze in the middle of an apply.
- ``WriterSampler``: samples the writer hostgroup of ``runtime_mysql_servers`` from a second
  connection every few milliseconds, across restarts, for "never two writers at any instant".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomysql
import pymysql
import pytest

from tests.mysql_wire import COM_QUERY
from tests.support import cancel_and_wait, free_port

HOWTO = (
    "install ProxySQL 2.7 from ProxySQL's own packages (Debian/Ubuntu: the apt repository at "
    "repo.proxysql.com, or a .deb from github.com/sysown/proxysql/releases) and put `proxysql` "
    "on PATH; CI (.ci/run) adds ../shared/bin when it exists"
)
ROUTING = ("ONLINE", "SHUNNED")


def proxysql_binary() -> str | None:
    return shutil.which("proxysql")


@functools.cache
def proxysql_version(binary: str) -> str:
    """'2.7.1-0-g0d9e1ac' from `proxysql --version` ('ProxySQL version 2.7.1-0-g0d9e1ac, ...')."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    words = out.split()
    return words[2].rstrip(",") if len(words) > 2 and words[1] == "version" else out.strip()


def describe_proxysql() -> str:
    """One line for the test report: which ProxySQL the tests use, or why none."""
    binary = proxysql_binary()
    if binary is None:
        return f"none on PATH: ProxySQL tests are skipped ({HOWTO})"
    return f"{binary} (ProxySQL {proxysql_version(binary)})"


def require_proxysql() -> str:
    binary = proxysql_binary()
    if binary is None:
        pytest.skip(f"needs a real ProxySQL: {HOWTO}")
    return binary


def admin_statements(
    endpoint: tuple[str, int, str, str], *statements: str
) -> list[tuple[str | None, ...]]:
    """Statements on one new connection to a ProxySQL admin port (host, port, user, password),
    blocking; the rows of the last one."""
    host, port, user, password = endpoint
    conn = pymysql.connect(host=host, port=port, user=user, password=password, connect_timeout=2)
    try:
        with conn.cursor() as cur:
            rows: list[tuple[str | None, ...]] = []
            for sql in statements:
                cur.execute(sql)
                rows = list(cur.fetchall())
            return rows
    finally:
        conn.close()


# ---- one ProxySQL process ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A mysql_servers row as a test seeds it (the other columns keep ProxySQL's defaults)."""

    hostgroup_id: int
    hostname: str
    port: int = 3306
    status: str = "ONLINE"
    weight: int = 1
    max_connections: int = 1000
    max_replication_lag: int = 0
    comment: str = ""

    def insert_sql(self) -> str:
        values = (
            self.hostgroup_id,
            quote(self.hostname),
            self.port,
            quote(self.status),
            self.weight,
            self.max_connections,
            self.max_replication_lag,
            quote(self.comment),
        )
        return (
            "INSERT INTO mysql_servers (hostgroup_id, hostname, port, status, weight, "
            "max_connections, max_replication_lag, comment) VALUES "
            f"({', '.join(str(v) for v in values)})"
        )


def quote(text: str) -> str:
    """A SQLite string literal (the admin port runs SQLite)."""
    return "'" + text.replace("'", "''") + "'"


def pair_sql(writer: int, reader: int, check_type: str = "read_only") -> str:
    return (
        "INSERT INTO mysql_replication_hostgroups (writer_hostgroup, reader_hostgroup, "
        f"check_type) VALUES ({writer}, {reader}, {quote(check_type)})"
    )


class RealProxySQL:
    """One ProxySQL process. Synchronous process control (usable from any fixture scope);
    ``a*`` variants run it in a thread for tests whose event loop must keep running."""

    def __init__(
        self,
        datadir: Path,
        *,
        binary: str | None = None,
        monitor: tuple[str, str] | None = None,
        config: str = "",
        user: str = "admin",
        password: str = "admin-secret",
    ) -> None:
        """``monitor``: (user, password) of the backends' monitor user, to run ProxySQL's
        monitor; None starts ProxySQL without it (``-M``), for servers that are only names."""
        self.binary = binary or require_proxysql()
        self.datadir = Path(datadir)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.traffic_port = free_port()
        self.user = user
        self.password = password
        self.monitor = monitor
        self.extra_config = config
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def config_text(self) -> str:
        return "\n".join(
            [
                f'datadir="{self.datadir}"',
                "admin_variables=",
                "{",
                f'    admin_credentials="{self.user}:{self.password}"',
                f'    mysql_ifaces="{self.host}:{self.port}"',
                "}",
                "mysql_variables=",
                "{",
                "    threads=1",
                f'    interfaces="{self.host}:{self.traffic_port}"',
                *self._monitor_lines(),
                "}",
                self.extra_config,
                "",
            ]
        )

    def _monitor_lines(self) -> list[str]:
        if self.monitor is None:
            return []
        user, password = self.monitor
        return [
            f'    monitor_username="{user}"',
            f'    monitor_password="{password}"',
            "    monitor_ping_interval=1000",
            "    monitor_ping_timeout=500",
        ]

    def start(self, *, initial: bool | None = None) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("proxysql is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        config = self.datadir / "proxysql.cnf"
        config.write_text(self.config_text())
        argv = [self.binary, "-f", "--no-version-check", "-c", str(config), "-D", str(self.datadir)]
        if self.monitor is None:
            argv.append("-M")
        if initial if initial is not None else not self._started_once:
            argv.append("--initial")
        with (self.datadir / "proxysql.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._started_once = True
        self._wait_ready(30.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"proxysql exited with {self.process.returncode}: {self.tail()}")
            try:
                conn = pymysql.connect(
                    host=self.host, port=self.port, user=self.user, password=self.password
                )
                conn.close()
                return
            except pymysql.MySQLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def tail(self, lines: int = 15) -> str:
        path = self.datadir / "proxysql.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: nothing that was not SAVEd TO DISK survives."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(30)

    def __enter__(self) -> RealProxySQL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def terminate(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    # -- admin statements (blocking, short: for setup and checks) --

    def admin(self, *statements: str) -> list[tuple[str | None, ...]]:
        """Run statements on one admin connection; the rows of the last one."""
        return admin_statements((self.host, self.port, self.user, self.password), *statements)

    def reset(self, rows: Iterable[Row] = (), pairs: Iterable[str] = ()) -> None:
        """mysql_servers and mysql_replication_hostgroups as given, in memory, runtime and
        disk (running again first if a test killed it)."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.admin(
            "DELETE FROM mysql_servers",
            "DELETE FROM mysql_replication_hostgroups",
            *(row.insert_sql() for row in rows),
            *pairs,
            "LOAD MYSQL SERVERS TO RUNTIME",
            "SAVE MYSQL SERVERS TO DISK",
        )

    def servers(self, table: str = "runtime_mysql_servers") -> list[tuple[int, str, int, str]]:
        rows = self.admin(
            f"SELECT hostgroup_id, hostname, port, status FROM {table} "
            "ORDER BY hostgroup_id, hostname, port"
        )
        return [(int(str(g)), str(h), int(str(p)), str(s)) for g, h, p, s in rows]

    def set_disk_rows(self, rows: Iterable[Row]) -> None:
        """Plant rows in disk.mysql_servers (what a restart without --initial comes back with),
        leaving memory and runtime as they are."""
        self.admin(
            "DELETE FROM disk.mysql_servers",
            *(
                r.insert_sql().replace(
                    "INSERT INTO mysql_servers", "INSERT INTO disk.mysql_servers"
                )
                for r in rows
            ),
        )


# ---- the tap: every statement, with hooks before it is forwarded -------------------------------

Hook = Callable[[str, str | None], Awaitable[None]]
"""hook(next statement, previous statement or None)."""


class AdminTap:
    """A relay in front of a ProxySQL admin port, recording every COM_QUERY its clients send.

    ``snapshot`` (when given) is called before each statement is forwarded and once more by
    ``settle()``: ``history[i]`` is the runtime after ``statements[i]`` was answered.
    ``hooks`` run before forwarding, in order, with (statement, previous statement).
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        snapshot: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = 0
        self.statements: list[str] = []
        self.history: list[object] = []
        self.hooks: list[Hook] = []
        self._snapshot = snapshot
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = asyncio.Lock()

    async def start(self) -> AdminTap:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()  # each relay then ends on its own
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def settle(self) -> None:
        """The snapshot after the last statement."""
        async with self._lock:
            if self._snapshot is not None and len(self.history) < len(self.statements):
                self.history.append(await self._snapshot())

    async def _before(self, sql: str) -> None:
        async with self._lock:
            previous = self.statements[-1] if self.statements else None
            if self._snapshot is not None and self.statements:
                self.history.append(await self._snapshot())
            for hook in list(self.hooks):
                await hook(sql, previous)
            self.statements.append(sql)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        down = asyncio.create_task(_pump(up_reader, writer))
        try:
            while True:
                header = await reader.readexactly(4)
                payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
                if header[3] == 0 and payload[:1] == bytes([COM_QUERY]):
                    await self._before(payload[1:].decode(errors="replace"))
                up_writer.write(header + payload)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for w in (up_writer, writer):
                w.close()
                self._writers.discard(w)
            await asyncio.gather(down, return_exceptions=True)
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def runtime_rows(proxysql: RealProxySQL) -> list[tuple[int, str, int, str]]:
    """runtime_mysql_servers on a connection of its own (never through a tap)."""
    conn = await aiomysql.connect(
        host=proxysql.host, port=proxysql.port, user=proxysql.user, password=proxysql.password
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT hostgroup_id, hostname, port, status FROM runtime_mysql_servers "
                "ORDER BY hostgroup_id, hostname, port"
            )
            rows = await cur.fetchall()
    finally:
        conn.close()
    return [(int(g), str(h), int(p), str(s)) for g, h, p, s in rows]


def writers_in(
    rows: Iterable[tuple[int, str, int, str]], managed: Iterable[tuple[str, int]], hostgroup=10
) -> list[tuple[str, int, str]]:
    """The managed servers a runtime snapshot routes writes to (ONLINE or SHUNNED)."""
    ours = set(managed)
    return [(h, p, s) for g, h, p, s in rows if g == hostgroup and (h, p) in ours and s in ROUTING]


# ---- the sampler: the writer hostgroup, every few milliseconds --------------------------------


@dataclass
class WriterSampler:
    """Reads the writer hostgroup of runtime_mysql_servers from its own connection every
    ``period`` seconds until stopped; reconnects when ProxySQL is down or restarted."""

    host: str
    port: int
    user: str
    password: str
    managed: Sequence[tuple[str, int]]
    hostgroup: int = 10
    period: float = 0.003
    samples: list[tuple[float, tuple[tuple[str, int, str], ...]]] = field(default_factory=list)
    failures: int = 0
    _task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, proxysql: RealProxySQL, managed: Sequence[tuple[str, int]]) -> WriterSampler:
        return cls(proxysql.host, proxysql.port, proxysql.user, proxysql.password, managed)

    def start(self) -> WriterSampler:
        self._task = asyncio.create_task(self._run(), name="writer-sampler")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # its reconnects use wait_for: cancel until done

    async def _run(self) -> None:
        sql = (
            "SELECT hostgroup_id, hostname, port, status FROM runtime_mysql_servers "
            f"WHERE hostgroup_id = {self.hostgroup}"
        )
        conn = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(
                            aiomysql.connect(
                                host=self.host,
                                port=self.port,
                                user=self.user,
                                password=self.password,
                                autocommit=True,
                            ),
                            1.0,
                        )
                    async with asyncio.timeout(1.0), conn.cursor() as cur:
                        await cur.execute(sql)
                        rows = await cur.fetchall()
                    found = writers_in(
                        [(int(g), str(h), int(p), str(s)) for g, h, p, s in rows],
                        self.managed,
                        self.hostgroup,
                    )
                    self.samples.append((time.monotonic(), tuple(found)))
                except (OSError, TimeoutError, pymysql.MySQLError):
                    self.failures += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                await asyncio.sleep(self.period)
        finally:
            if conn is not None:
                conn.close()

    def with_two_writers(self) -> list[tuple[float, tuple[tuple[str, int, str], ...]]]:
        return [(t, found) for t, found in self.samples if len(found) > 1]
