"""An independent checker for the chaos drill: what the servers and the routers really say.

It shares no code with the controller's decisions (an import contract in ``.importlinter``
keeps it so): its own connections, its own queries, its own idea of a converged cluster.

- Every node's ``@@read_only`` and every router's writer set are sampled every ``period``
  (50 ms), each node and router by a task of its own so that a frozen node does not slow the
  others; ``hacontrol.drill.invariants`` judges the samples.
- ``convergence()``: one writable node, every other node read-only and replicating from it
  with both threads running, every router's writers exactly that node.
- ``final_check()``: replicas caught up, ``CHECKSUM TABLE`` equal on every node, every
  acknowledged id present on the primary.
"""

from __future__ import annotations

import asyncio
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomysql

from hacontrol.drill.invariants import Invariants
from hacontrol.drill.load import bounded_connect

SAMPLE = (
    "SELECT @@read_only, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'UPTIME'"
)
"""read_only, and the uptime that tells a restarted server from one that was always up."""


@dataclass(frozen=True)
class Node:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Login:
    user: str
    password: str


class RouterWatch(Protocol):
    name: str

    async def writers(self) -> set[tuple[str, int]]: ...
    def close(self) -> None: ...


async def _connect(address: tuple[str, int], login: Login, timeout: float) -> Any:
    host, port = address
    return await bounded_connect(
        timeout, host=host, port=port, user=login.user, password=login.password
    )


class _Conn:
    """One kept connection; reconnects after any error; every call bounded by ``timeout``."""

    def __init__(self, address: tuple[str, int], login: Login, timeout: float) -> None:
        self.address, self.login, self.timeout = address, login, timeout
        self._conn: Any = None
        self.columns: list[str] = []

    async def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        try:
            async with asyncio.timeout(self.timeout):
                if self._conn is None:
                    self._conn = await _connect(self.address, self.login, self.timeout)
                async with self._conn.cursor() as cur:
                    await cur.execute(sql, params)
                    rows = list(await cur.fetchall())
                    self.columns = [d[0] for d in cur.description or ()]
                    return rows
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ProxySQLWatch:
    """The writer hostgroup's ONLINE servers in ``runtime_mysql_servers`` (what ProxySQL
    really routes to), through the admin interface."""

    def __init__(
        self, name: str, admin: tuple[str, int], login: Login, hostgroup: int = 10
    ) -> None:
        self.name = name
        self.hostgroup = hostgroup
        self._conn = _Conn(admin, login, 0.5)

    async def writers(self) -> set[tuple[str, int]]:
        rows = await self._conn.rows(
            "SELECT hostname, port FROM runtime_mysql_servers "
            f"WHERE hostgroup_id = {int(self.hostgroup)} AND status = 'ONLINE'"
        )
        return {(str(h), int(p)) for h, p in rows}

    def close(self) -> None:
        self._conn.close()


class HAProxyWatch:
    """Servers of the writer backend that are up and not in maintenance, from the runtime
    API's ``show servers state`` (op_state 2 = running, admin_state bit 1 = maintenance)."""

    def __init__(self, name: str, socket_path: str, backend: str = "writer") -> None:
        self.name = name
        self.path = socket_path
        self.backend = backend

    def _ask(self) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(self.path)
            sock.sendall(f"show servers state {self.backend}\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    async def writers(self) -> set[tuple[str, int]]:
        text = await asyncio.to_thread(self._ask)
        found = set()
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 19 or not fields[0].isdigit():
                continue
            addr, op_state, admin_state, port = fields[4], fields[5], fields[6], fields[18]
            if op_state == "2" and not int(admin_state) & 0x1:
                found.add((addr, int(port)))
        return found

    def close(self) -> None:
        pass


@dataclass
class Checker:
    nodes: Sequence[Node]
    monitor: Login
    """Reads read_only and the replication status (SLAVE MONITOR)."""
    app: Login
    """Reads the drill's table (CHECKSUM TABLE, the acknowledged ids)."""
    routers: Sequence[RouterWatch] = ()
    period: float = 0.05
    timeout: float = 0.3
    invariants: Invariants = field(default_factory=Invariants)
    latest: dict[str, bool | None] = field(default_factory=dict)
    latest_writers: dict[str, frozenset[str] | None] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Checker:
        self._tasks = [
            asyncio.create_task(self._sample_node(n), name=f"check-{n.name}") for n in self.nodes
        ] + [
            asyncio.create_task(self._sample_router(r), name=f"check-{r.name}")
            for r in self.routers
        ]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for router in self.routers:
            router.close()
        self.invariants.finish(time.monotonic())

    def node_of(self, address: tuple[str, int]) -> str:
        for node in self.nodes:
            if (node.host, node.port) == address:
                return node.name
        return f"{address[0]}:{address[1]}"

    async def _sample_node(self, node: Node) -> None:
        conn = _Conn((node.host, node.port), self.monitor, self.timeout)
        try:
            while True:
                sent = time.monotonic()
                value: bool | None
                uptime: float | None
                try:
                    ((value, uptime),) = await conn.rows(SAMPLE)
                    value, uptime = bool(value), float(uptime)
                except (OSError, TimeoutError, aiomysql.Error, ValueError, TypeError):
                    value = uptime = None
                recv = time.monotonic()
                self.latest[node.name] = value
                self.invariants.node(node.name, sent, recv, value, uptime)
                await asyncio.sleep(max(0.0, self.period - (recv - sent)))
        finally:
            conn.close()

    async def _sample_router(self, router: RouterWatch) -> None:
        while True:
            sent = time.monotonic()
            names: frozenset[str] | None
            try:
                names = frozenset(self.node_of(a) for a in await router.writers())
            except (OSError, TimeoutError, aiomysql.Error, ValueError):
                names = None
            recv = time.monotonic()
            self.latest_writers[router.name] = names
            self.invariants.router(router.name, sent, recv, names)
            await asyncio.sleep(max(0.0, self.period - (recv - sent)))

    # -- convergence ----------------------------------------------------------------------------

    async def _node_state(self, node: Node) -> dict[str, Any] | None:
        conn = _Conn((node.host, node.port), self.monitor, 2.0)
        try:
            ((read_only, binlog_pos),) = await conn.rows("SELECT @@read_only, @@gtid_binlog_pos")
            channels = [
                dict(zip(conn.columns, row, strict=True))
                for row in await conn.rows("SHOW ALL SLAVES STATUS")
            ]
        except (OSError, TimeoutError, aiomysql.Error, ValueError):
            return None
        finally:
            conn.close()
        return {
            "read_only": bool(read_only),
            "binlog_pos": binlog_pos,
            "channels": [_channel(row) for row in channels],
        }

    async def convergence(self) -> str | None:
        """None when converged, else why not (one sentence)."""
        states = dict(
            zip(
                [n.name for n in self.nodes],
                await asyncio.gather(*(self._node_state(n) for n in self.nodes)),
                strict=True,
            )
        )
        return converged_reason(self.nodes, states, dict(self.latest_writers))

    async def convergence_ok(self) -> bool:
        return await self.convergence() is None

    # -- the end --------------------------------------------------------------------------------

    async def final_check(self, table: str, acknowledged: Iterable[int]) -> dict[str, Any]:
        """Replicas caught up, checksums, lost acknowledged writes. Call once converged."""
        states = {n.name: await self._node_state(n) for n in self.nodes}
        writable = [n for n, s in states.items() if s is not None and not s["read_only"]]
        if len(writable) != 1:
            return {"error": f"no single writable node at the end: {writable}", "lost": None}
        primary = next(n for n in self.nodes if n.name == writable[0])
        pos = states[primary.name]["binlog_pos"]  # type: ignore[index]
        caught_up = {}
        for node in self.nodes:
            if node is primary:
                continue
            conn = _Conn((node.host, node.port), self.app, 35.0)
            try:
                ((done,),) = await conn.rows("SELECT MASTER_GTID_WAIT(%s, 30)", (pos,))
                caught_up[node.name] = done == 0
            finally:
                conn.close()
        checksums = {n.name: await self._checksum(n, table) for n in self.nodes}
        present = await self._ids(primary, table)
        acked = set(acknowledged)
        lost = sorted(acked - present)
        return {
            "primary": primary.name,
            "caught_up": caught_up,
            "checksums": checksums,
            "checksums_equal": len(set(checksums.values())) == 1,
            "acknowledged": len(acked),
            "lost": len(lost),
            "lost_ids": lost[:20],
        }

    async def _checksum(self, node: Node, table: str) -> int | None:
        conn = _Conn((node.host, node.port), self.app, 10.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ((_, value),) = await conn.rows(f"CHECKSUM TABLE {table}")
            return None if value is None else int(value)
        finally:
            conn.close()

    async def _ids(self, node: Node, table: str) -> set[int]:
        conn = _Conn((node.host, node.port), self.app, 30.0)
        try:
            return {int(r[0]) for r in await conn.rows(f"SELECT id FROM {table}")}
        finally:
            conn.close()


def _channel(row: dict[str, Any]) -> dict[str, Any]:
    """The few fields of a SHOW ALL SLAVES STATUS row the checker needs."""
    return {
        "host": row["Master_Host"],
        "port": int(row["Master_Port"]),
        "io": row["Slave_IO_Running"],
        "sql": row["Slave_SQL_Running"],
    }


def converged_reason(
    nodes: Sequence[Node],
    states: dict[str, dict[str, Any] | None],
    writers: dict[str, frozenset[str] | None],
) -> str | None:
    """Pure: None when the cluster is converged, else the first reason it is not."""
    if down := [n for n, s in states.items() if s is None]:
        return f"not answering: {', '.join(down)}"
    writable = [n for n, s in states.items() if s is not None and not s["read_only"]]
    if len(writable) != 1:
        return f"writable nodes: {writable or 'none'}"
    primary = next(n for n in nodes if n.name == writable[0])
    for node in nodes:
        state = states[node.name]
        assert state is not None
        channels = state["channels"]
        if node is primary:
            if channels:
                return f"the writable node {node.name} replicates"
            continue
        if len(channels) != 1 or channels[0]["port"] != primary.port:
            return f"{node.name} does not replicate from {primary.name}"
        if channels[0]["io"] != "Yes" or channels[0]["sql"] != "Yes":
            return f"{node.name}: IO {channels[0]['io']}, SQL {channels[0]['sql']}"
    for router, names in writers.items():
        if names != frozenset({primary.name}):
            return f"router {router} writers {sorted(names) if names is not None else None}"
    return None
