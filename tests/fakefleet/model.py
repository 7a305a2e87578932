"""What the fake fleet's servers are: replication state, evaluated lazily from the time.

Pure: no I/O, no clock of its own; every method takes ``t`` (seconds, monotonic). Nothing
runs between queries: a writable primary's GTID is ``its position when last settled + rate x
elapsed``; a replica with a working link has received (and, lag 0, applied) exactly its
source's position and counts one heartbeat per heartbeat period. Whenever something changes
(a fault, a statement that changes replication), the nodes it can affect are *settled* first:
their values at ``t`` are stored and become the new starting point.

What a replica reports about its IO thread (:class:`Link`) follows MariaDB 10.11:
- source killed or unknown: ``Connecting``, error 2003 (connection refused), at once;
- source frozen: ``Yes`` but nothing arrives for ``net_timeout`` (slave_net_timeout), then
  ``Connecting`` with error 2013;
- a lost link (scripted): ``Connecting``, error 2003 (timed out);
- a replica whose last GTID its source never had: IO thread stopped with error 1236 (checked
  when the IO thread (re)connects: START SLAVE, the source coming back, the link restored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from tests.fakefleet import history as h
from tests.fakefleet.history import History
from tests.fakefleet.spec import FleetSpec, NodeSpec

ER_SLAVE_MUST_STOP = 1198
ER_BAD_SLAVE = 1200
ER_UNKNOWN_SYSTEM_VARIABLE = 1193
ER_WRONG_VALUE_FOR_VAR = 1231
ER_MASTER_FATAL_READING_BINLOG = 1236
CR_CONN_HOST_ERROR = 2003
CR_SERVER_LOST = 2013


class FakeError(Exception):
    """A statement the server refuses: MySQL error number, SQLSTATE, message."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.sqlstate, self.message = code, sqlstate, message


def must_stop() -> FakeError:
    return FakeError(
        ER_SLAVE_MUST_STOP,
        "HY000",
        "This operation cannot be performed as you have a running slave ''; "
        "run STOP SLAVE '' first",
    )


class State(StrEnum):
    UP = "up"
    KILLED = "killed"
    FROZEN = "frozen"


@dataclass(frozen=True)
class Link:
    """The IO thread as SHOW SLAVE STATUS shows it at one moment."""

    io: str  # Yes / Connecting / No
    errno: int = 0
    error: str = ""
    receiving: bool = False


@dataclass
class Replication:
    """The default replication connection of a node (what CHANGE MASTER configured)."""

    host: str
    port: int
    user: str
    heartbeat_period: float
    connect_retry: int = 1
    using_gtid: str = "Slave_Pos"
    io_on: bool = True
    sql_on: bool = True
    source_server_id: int = 0
    io_errno: int = 0  # a fatal error that stopped the IO thread (1236), until START SLAVE
    io_error: str = ""
    received: History = h.EMPTY
    heartbeats: int = 0
    lost_link: bool = False


@dataclass
class Node:
    spec: NodeSpec
    cluster: str
    read_only: bool
    semi_master: bool
    semi_slave: bool
    binlog: History
    slave_pos: History
    repl: Replication | None
    anchor: float
    started: float
    state: State = State.UP
    frozen_at: float = 0.0
    locks: dict[str, list[int]] = field(default_factory=dict)  # name -> [connection id, count]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def server_id(self) -> int:
        return self.spec.server_id

    @property
    def address(self) -> tuple[str, int]:
        return (self.spec.host, self.spec.port)


@dataclass
class Cluster:
    name: str
    members: tuple[str, ...]
    write_rate: float
    writer: str | None
    """The node the cluster's clients write on: the one made writable last."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one query may read of one node, at one moment."""

    node: Node
    binlog: History
    slave_pos: History
    received: History
    link: Link | None
    heartbeats: int
    source_server_id: int
    semi_clients: int

    @property
    def current_pos(self) -> History:
        """MariaDB's gtid_current_pos: the binlog's last GTID when this server wrote it and
        it is newer than the replica position, else the replica position."""
        last = h.tip(self.binlog)
        if last is not None and last[0] == self.node.server_id and last[1] > h.seq(self.slave_pos):
            return self.binlog
        return self.slave_pos


def _address(host: str, port: int) -> tuple[str, int]:
    return ("127.0.0.1" if host.lower() == "localhost" else host.lower(), port)


class Fleet:
    """Every node and cluster of a spec whose ports are bound (no port 0 left)."""

    def __init__(self, spec: FleetSpec, t: float) -> None:
        self.spec = spec
        self.nodes: dict[str, Node] = {}
        self.clusters: dict[str, Cluster] = {}
        self._by_address: dict[tuple[str, int], str] = {}
        self._followers: dict[tuple[str, int], set[str]] = {}
        for cluster in spec.clusters:
            primary = next(n for n in cluster.nodes if n.name == cluster.primary)
            start = ((primary.server_id, spec.start_seq),)
            for node in cluster.nodes:
                self._add(node, cluster.name, primary, start, t)
            members = tuple(n.name for n in cluster.nodes)
            self.clusters[cluster.name] = Cluster(
                cluster.name, members, cluster.write_rate, primary.name
            )

    def _add(self, node: NodeSpec, cluster: str, primary: NodeSpec, start: History, t: float):
        is_primary = node.name == primary.name
        repl = None
        if not is_primary:
            repl = Replication(
                primary.host,
                primary.port,
                self.spec.replication_user,
                self.spec.heartbeat_period,
                received=start,
                source_server_id=primary.server_id,
            )
        self.nodes[node.name] = Node(
            spec=node,
            cluster=cluster,
            read_only=not is_primary,
            semi_master=self.spec.semi_sync and is_primary,
            semi_slave=self.spec.semi_sync,
            binlog=start,
            slave_pos=h.EMPTY if is_primary else start,
            repl=repl,
            anchor=t,
            started=t,
        )
        self._by_address[_address(node.host, node.port)] = node.name
        self._index(self.nodes[node.name])

    def _index(self, node: Node) -> None:
        if node.repl is not None:
            key = _address(node.repl.host, node.repl.port)
            self._followers.setdefault(key, set()).add(node.name)

    def _unindex(self, node: Node) -> None:
        if node.repl is not None:
            key = _address(node.repl.host, node.repl.port)
            self._followers.get(key, set()).discard(node.name)

    # -- evaluation ----------------------------------------------------------------------

    def source(self, node: Node) -> Node | None:
        if node.repl is None:
            return None
        name = self._by_address.get(_address(node.repl.host, node.repl.port))
        return None if name is None else self.nodes[name]

    def followers(self, node: Node) -> list[Node]:
        names = self._followers.get(_address(*node.address), ())
        return [self.nodes[name] for name in sorted(names)]

    def link(self, node: Node, t: float) -> Link | None:
        repl = node.repl
        if repl is None:
            return None
        if not repl.io_on:
            return Link("No", repl.io_errno, repl.io_error) if repl.io_errno else _STOPPED
        source = self.source(node)
        if not repl.lost_link and source is not None and source.state is State.UP:
            return _RECEIVING if node.state is State.UP else _RUNNING
        if source is not None and source.state is State.FROZEN and not repl.lost_link:
            if t - source.frozen_at < self.spec.net_timeout:
                return _RUNNING
            return _connecting(repl, CR_SERVER_LOST, _HANDSHAKE_LOST)
        refused = '110 "Connection timed out"' if repl.lost_link else '111 "Connection refused"'
        why = f"Can't connect to server on '{repl.host}' ({refused})"
        return _connecting(repl, CR_CONN_HOST_ERROR, why)

    def writing(self, node: Node) -> bool:
        cluster = self.clusters[node.cluster]
        return (
            cluster.writer == node.name
            and node.state is State.UP
            and not node.read_only
            and cluster.write_rate > 0
        )

    def binlog(self, node: Node, t: float, depth: int = 0) -> History:
        if self.writing(node):
            written = math.floor((t - node.anchor) * self.clusters[node.cluster].write_rate)
            return h.extend(node.binlog, node.server_id, h.seq(node.binlog) + written)
        if self._applying(node):
            applied = self.applied(node, t, depth)
            return applied if h.contains(applied, node.binlog) else node.binlog
        return node.binlog

    def received(self, node: Node, t: float, depth: int = 0) -> History:
        assert node.repl is not None
        link = self.link(node, t)
        source = self.source(node)
        if link is not None and link.receiving and source is not None and depth < len(self.nodes):
            return self.binlog(source, t, depth + 1)  # a cycle of sources stops receiving
        return node.repl.received

    def applied(self, node: Node, t: float, depth: int = 0) -> History:
        """gtid_slave_pos: a running SQL thread has applied all it received (lag 0)."""
        if self._applying(node):
            return self.received(node, t, depth)
        return node.slave_pos

    def _applying(self, node: Node) -> bool:
        return node.repl is not None and node.repl.sql_on and node.state is State.UP

    def heartbeats(self, node: Node, t: float) -> int:
        assert node.repl is not None
        link = self.link(node, t)
        if link is None or not link.receiving:
            return node.repl.heartbeats
        return node.repl.heartbeats + math.floor((t - node.anchor) / node.repl.heartbeat_period)

    def snapshot(self, node: Node, t: float) -> Snapshot:
        link = self.link(node, t)
        repl = node.repl
        source = self.source(node)
        clients = 0
        if node.semi_master:
            clients = sum(
                1 for f in self.followers(node) if f.semi_slave and _receiving(self.link(f, t))
            )
        return Snapshot(
            node=node,
            binlog=self.binlog(node, t),
            slave_pos=self.applied(node, t),
            received=self.received(node, t) if repl else h.EMPTY,
            link=link,
            heartbeats=self.heartbeats(node, t) if repl else 0,
            source_server_id=(
                source.server_id
                if source is not None and _receiving(link)
                else (repl.source_server_id if repl else 0)
            ),
            semi_clients=clients,
        )

    def gtid_reached(self, node: Node, position: str, t: float) -> bool:
        """MASTER_GTID_WAIT's condition: gtid_slave_pos holds the position's GTID."""
        return h.holds(self.applied(node, t), h.parse_position(position))

    # -- settling ------------------------------------------------------------------------

    def _affected(self, node: Node) -> list[Node]:
        """The node's cluster and every node that replicates, directly or not, from it."""
        seen = {name: self.nodes[name] for name in self.clusters[node.cluster].members}
        queue = list(seen.values())
        while queue:
            for follower in self.followers(queue.pop()):
                if follower.name not in seen:
                    seen[follower.name] = follower
                    queue.append(follower)
        return list(seen.values())

    def settle(self, node: Node, t: float) -> None:
        """Store the values at ``t`` of every node a change of ``node`` can affect."""
        nodes = self._affected(node)
        values = [(n, self.snapshot(n, t)) for n in nodes]
        for n, snap in values:
            n.binlog, n.slave_pos, n.anchor = snap.binlog, snap.slave_pos, t
            if n.repl is not None:
                n.repl.received, n.repl.heartbeats = snap.received, snap.heartbeats
                n.repl.source_server_id = snap.source_server_id

    def _check_position(self, node: Node, t: float) -> None:
        """An IO thread (re)connecting: refused (1236) when the source lacks its last GTID."""
        repl, source = node.repl, self.source(node)
        if repl is None or not repl.io_on or source is None or source.state is not State.UP:
            return
        wanted = (
            node.slave_pos if repl.using_gtid == "Slave_Pos" else self.snapshot(node, t).current_pos
        )
        if h.contains(self.binlog(source, t), wanted):
            return
        repl.io_on = False
        repl.io_errno = ER_MASTER_FATAL_READING_BINLOG
        repl.io_error = (
            "Got fatal error 1236 from master when reading data from binary log: "
            f"'Error: connecting slave requested to start from GTID "
            f"{h.position(wanted)}, which is not in the master's binlog'"
        )

    def _reconnect(self, node: Node, t: float) -> None:
        """The node and its replicas reconnect their IO threads (after it came back)."""
        for n in (node, *self.followers(node)):
            self._check_position(n, t)

    # -- faults --------------------------------------------------------------------------

    def kill(self, name: str, t: float) -> None:
        node = self.nodes[name]
        self.settle(node, t)
        node.state = State.KILLED
        node.locks.clear()

    def freeze(self, name: str, t: float) -> None:
        node = self.nodes[name]
        self.settle(node, t)
        node.state, node.frozen_at = State.FROZEN, t

    def revive(self, name: str, t: float) -> None:
        """A killed node restarts (configured read_only, replication started, status counters
        reset, no lock); a frozen one resumes as it was."""
        node = self.nodes[name]
        self.settle(node, t)
        if node.state is State.KILLED:
            node.read_only = node.spec.read_only
            node.semi_master = self.spec.semi_sync and not node.spec.read_only
            node.semi_slave = self.spec.semi_sync
            node.started = t
            if node.repl is not None:
                node.repl.io_on = node.repl.sql_on = True
                node.repl.io_errno, node.repl.io_error = 0, ""
                node.repl.heartbeats = 0
        node.state = State.UP
        self._reconnect(node, t)

    def set_lost_link(self, name: str, lost: bool, t: float) -> None:
        node = self.nodes[name]
        if node.repl is None:
            raise FakeError(ER_BAD_SLAVE, "HY000", f"{name} is not a replica")
        self.settle(node, t)
        node.repl.lost_link = lost
        if not lost:
            self._check_position(node, t)

    # -- replication statements ----------------------------------------------------------

    def stop_slave(self, node: Node, thread: str | None, t: float) -> None:
        if node.repl is None:
            return  # MariaDB: a note, "Slave already has been stopped"
        self.settle(node, t)
        if thread in (None, "io"):
            node.repl.io_on = False
        if thread in (None, "sql"):
            node.repl.sql_on = False

    def start_slave(self, node: Node, thread: str | None, t: float) -> None:
        if node.repl is None:
            raise FakeError(
                ER_BAD_SLAVE,
                "HY000",
                "Misconfigured slave: MASTER_HOST was not set; "
                "Fix in config file or with CHANGE MASTER TO",
            )
        self.settle(node, t)
        if thread in (None, "sql"):
            node.repl.sql_on = True
        if thread in (None, "io") and not node.repl.io_on:
            node.repl.io_on = True
            node.repl.io_errno, node.repl.io_error = 0, ""
            self._check_position(node, t)

    def reset_slave(self, node: Node, everything: bool, t: float) -> None:
        if node.repl is None:
            return
        if node.repl.io_on or node.repl.sql_on:
            raise must_stop()
        self.settle(node, t)
        if everything:
            self._unindex(node)
            node.repl = None
        else:
            node.repl.received, node.repl.heartbeats = h.EMPTY, 0

    def change_master(self, node: Node, options: dict[str, object], t: float) -> None:
        """CHANGE MASTER TO: replication stopped first; every option checked before any is
        applied (a refused statement changes nothing)."""
        if node.repl is not None and (node.repl.io_on or node.repl.sql_on):
            raise must_stop()
        changes = {}
        for key, value in options.items():
            if key not in _CHANGE_MASTER:
                raise FakeError(1064, "42000", f"unknown CHANGE MASTER option {key!r}")
            attribute, convert = _CHANGE_MASTER[key]
            try:
                changes[attribute] = convert(value)
            except (TypeError, ValueError) as exc:
                raise FakeError(1064, "42000", f"{key}: {exc}") from None
        self.settle(node, t)
        repl = node.repl or Replication(
            "", 3306, "", self.spec.net_timeout / 2, io_on=False, sql_on=False
        )
        if node.repl is None:
            repl.received = node.slave_pos
        self._unindex(node)
        for attribute, value in changes.items():
            if attribute:
                setattr(repl, attribute, value)
        repl.source_server_id, repl.heartbeats = 0, 0
        node.repl = repl
        self._index(node)

    def set_global(self, node: Node, name: str, value: object, t: float) -> None:
        name = name.lower()
        if name == "gtid_slave_pos":
            if node.repl is not None and (node.repl.io_on or node.repl.sql_on):
                raise must_stop()
            self.settle(node, t)
            gtid = h.parse_position(str(value))
            like = node.binlog if h.holds(node.binlog, gtid) else node.slave_pos
            node.slave_pos = h.from_position(str(value), like)
            return
        if name not in _SETTABLE:
            raise FakeError(
                ER_UNKNOWN_SYSTEM_VARIABLE, "HY000", f"Unknown system variable '{name}'"
            )
        on = _switch(name, value)
        if name == "read_only":
            self._set_read_only(node, on, t)
        elif name == "rpl_semi_sync_master_enabled":
            node.semi_master = on
        else:
            node.semi_slave = on

    def _set_read_only(self, node: Node, on: bool, t: float) -> None:
        self.settle(node, t)
        node.read_only = on
        if not on:
            self.clusters[node.cluster].writer = node.name

    # -- user locks (GET_LOCK) -------------------------------------------------------------

    @staticmethod
    def get_lock(node: Node, name: str, connection: int) -> int:
        """1 when taken (again, by the same connection: counted), 0 when another holds it."""
        held = node.locks.get(name)
        if held is None:
            node.locks[name] = [connection, 1]
            return 1
        if held[0] == connection:
            held[1] += 1
            return 1
        return 0

    @staticmethod
    def release_lock(node: Node, name: str, connection: int) -> int | None:
        held = node.locks.get(name)
        if held is None:
            return None
        if held[0] != connection:
            return 0
        held[1] -= 1
        if held[1] == 0:
            del node.locks[name]
        return 1

    @staticmethod
    def lock_owner(node: Node, name: str) -> int | None:
        held = node.locks.get(name)
        return None if held is None else held[0]

    @staticmethod
    def release_all(node: Node, connection: int) -> int:
        mine = [name for name, held in node.locks.items() if held[0] == connection]
        count = sum(node.locks.pop(name)[1] for name in mine)
        return count


_STOPPED = Link("No")
_RUNNING = Link("Yes")
_RECEIVING = Link("Yes", receiving=True)
_HANDSHAKE_LOST = (
    "Lost connection to server at 'handshake: reading initial communication packet', "
    "system error: 110"
)


def _connecting(repl: Replication, errno: int, why: str) -> Link:
    verb = "reconnecting" if repl.source_server_id else "connecting"
    return Link(
        "Connecting",
        errno,
        f"error {verb} to master '{repl.user}@{repl.host}:{repl.port}' - retry-time: "
        f"{repl.connect_retry}  maximum-retries: 100000  message: {why}",
    )


def _receiving(link: Link | None) -> bool:
    return link is not None and link.receiving


def _using_gtid(value: object) -> str:
    spelled = {"slave_pos": "Slave_Pos", "current_pos": "Current_Pos", "no": "No"}
    if str(value).lower() not in spelled:
        raise ValueError("MASTER_USE_GTID must be slave_pos, current_pos or no")
    return spelled[str(value).lower()]


_SETTABLE = ("read_only", "rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled")
_CHANGE_MASTER = {
    "master_host": ("host", str),
    "master_port": ("port", int),
    "master_user": ("user", str),
    "master_password": ("", str),
    "master_connect_retry": ("connect_retry", int),
    "master_heartbeat_period": ("heartbeat_period", float),
    "master_use_gtid": ("using_gtid", _using_gtid),
}


def _switch(name: str, value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "on", "true"):
        return True
    if text in ("0", "off", "false"):
        return False
    raise FakeError(
        ER_WRONG_VALUE_FOR_VAR, "42000", f"Variable '{name}' can't be set to the value of '{value}'"
    )
