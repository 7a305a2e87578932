"""The fake fleet: one asyncio process serving every node of a spec, each on its own port.

Each node is a listener; each client connection a :class:`Session` (an ``asyncio.Protocol``,
no task per connection: a probe costs one ``data_received`` call and one write). Faults:

- ``kill``: the listener and every connection close at once, as when mariadbd crashes (new
  connections are refused); ``revive`` listens again on the same port, as a restarted server
  (read_only as configured, replication started, no lock, no connection);
- ``freeze``: connections are still accepted, but nothing is read, answered or greeted, and
  nothing is closed (SIGSTOP); ``revive`` (or ``thaw``) resumes everything that waited;
- ``lose_link``: a replica's IO thread reports a lost link (``restore_link`` ends it).

Every probe (a query that asks SHOW ALL SLAVES STATUS) is recorded with its arrival time per
node, so that a benchmark reads the probe cadence from here at no cost to the controller: the
time this process read it, and with ``kernel_stamps`` also the time the kernel received it
(``stamps``: this process's own lateness is not the controller's).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import hmac
import itertools
import os
import resource
import secrets
import struct
import time
from array import array
from collections.abc import Callable, Collection
from typing import Any, cast

from tests.fakefleet import answers, wire
from tests.fakefleet.history import position
from tests.fakefleet.model import Fleet, State
from tests.fakefleet.spec import FleetSpec, with_ports
from tests.fakefleet.sql import Select, ShowSlaves, Statement, parse
from tests.fakefleet.stamps import StampedReader
from tests.mysql_wire import (
    auth_switch_request,
    err_packet,
    native_password_scramble,
    parse_handshake_response,
)

_SALT_ALPHABET = bytes(range(0x21, 0x7F))


class FakeFleet:
    """Every node of ``spec`` listening on its host and port (0: any free port)."""

    def __init__(
        self,
        spec: FleetSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        kernel_stamps: bool = False,
    ) -> None:
        self.clock = clock
        self.kernel_stamps = kernel_stamps
        """Also record each probe's kernel receive time (``stamps``; the clock must then be
        the monotonic one)."""
        self._requested = spec
        self.spec = spec
        self.model: Fleet | None = None
        self.servers: dict[str, asyncio.Server] = {}
        self.sessions: dict[str, set[Session]] = {}
        self.probe_times: dict[str, array[float]] = {}
        self.kernel_times: dict[str, array[float]] = {}
        self.queries = 0
        self._next_id: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        ports = {}
        for _cluster, node in self._requested.nodes():
            server = await self._listen(node.name, node.host, node.port, start=False)
            ports[node.name] = server.sockets[0].getsockname()[1]
        self.spec = with_ports(self._requested, ports)
        self.model = Fleet(self.spec, self.clock())
        for name in self.servers:
            self.sessions[name] = set()
            self.probe_times[name] = array("d")
            self.kernel_times[name] = array("d")
            self._next_id[name] = 100
        for server in self.servers.values():
            await server.start_serving()

    async def _listen(self, name: str, host: str, port: int, *, start: bool) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Session(self, name),
            host,
            port,
            reuse_address=True,
            backlog=128,
            start_serving=start,
        )
        self.servers[name] = server
        return server

    async def stop(self) -> None:
        for name in list(self.servers):
            self._close_node(name)
        self.servers.clear()

    async def __aenter__(self) -> FakeFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- faults --------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """Close the node's listener and every connection at once (a crash)."""
        model = self._model()
        node = model.nodes[name]
        if node.state is State.KILLED:
            return
        model.kill(name, self.clock())
        self._close_node(name)

    def _close_node(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.close()
        for session in list(self.sessions.get(name, ())):
            session.abort()

    def freeze(self, name: str) -> None:
        """Accept connections, answer nothing, close nothing (SIGSTOP)."""
        model = self._model()
        if model.nodes[name].state is not State.UP:
            raise ValueError(f"{name} is {model.nodes[name].state}, not up")
        model.freeze(name, self.clock())
        for session in self.sessions[name]:
            session.pause()

    async def revive(self, name: str) -> None:
        """Restart a killed node on the same address, or thaw a frozen one."""
        node = self._model().nodes[name]
        if node.state is State.FROZEN:
            self.thaw(name)
        elif node.state is State.KILLED:
            self._model().revive(name, self.clock())
            await self._listen(name, *node.address, start=True)

    def thaw(self, name: str) -> None:
        """A frozen node resumes: it greets, reads and answers what waited (SIGCONT)."""
        model = self._model()
        if model.nodes[name].state is not State.FROZEN:
            raise ValueError(f"{name} is not frozen")
        model.revive(name, self.clock())
        for session in list(self.sessions[name]):
            session.resume()

    def lose_link(self, name: str) -> None:
        self._model().set_lost_link(name, True, self.clock())

    def restore_link(self, name: str) -> None:
        self._model().set_lost_link(name, False, self.clock())

    # -- reading -------------------------------------------------------------------------

    def _model(self) -> Fleet:
        if self.model is None:
            raise RuntimeError("the fake fleet is not started")
        return self.model

    def address(self, name: str) -> tuple[str, int]:
        return self._model().nodes[name].address

    def describe(self, name: str) -> dict[str, Any]:
        model = self._model()
        node = model.nodes[name]
        snap = model.snapshot(node, self.clock())
        link = snap.link
        role = "replica" if node.repl is not None else ("primary" if not node.read_only else "none")
        return {
            "name": name,
            "cluster": node.cluster,
            "host": node.address[0],
            "port": node.address[1],
            "server_id": node.server_id,
            "state": node.state.value,
            "role": role,
            "read_only": node.read_only,
            "gtid_current_pos": position(snap.current_pos),
            "source": f"{node.repl.host}:{node.repl.port}" if node.repl else None,
            "io": link.io if link else None,
            "sql": (node.repl.sql_on if node.repl else None),
            "connections": len(self.sessions.get(name, ())),
            "locks": {k: v[0] for k, v in node.locks.items()},
        }

    def cadence(
        self,
        since: float = 0.0,
        until: float = float("inf"),
        skip: Collection[str] = (),
        stamp: str = "loop",
    ) -> dict[str, Any]:
        """Probes received per node between ``since`` and ``until`` (this process's monotonic
        clock), the largest gap between two probes of one node, and every gap's summary.
        Nodes in ``skip`` (one that was killed, say) are left out. ``per_second``: the probes
        received in each whole second of the window, summarised, with the seconds (from
        ``since``) that received less than half the median: a stall of the whole prober shows
        there, one slow node does not. ``stamp``: "loop" (when this process read each probe)
        or "kernel" (when the kernel received it; only with ``kernel_stamps``)."""
        if stamp not in ("loop", "kernel"):
            raise ValueError(f"stamp is 'loop' or 'kernel', not {stamp!r}")
        if stamp == "kernel" and not self.kernel_stamps:
            raise ValueError("this fleet does not record kernel stamps")
        recorded = self.kernel_times if stamp == "kernel" else self.probe_times
        per_node = {}
        gaps: list[float] = []
        seconds: collections.Counter[int] = collections.Counter()
        for name, times in recorded.items():
            if name in skip:
                continue
            lo, hi = bisect.bisect_left(times, since), bisect.bisect_right(times, until)
            window = times[lo:hi]
            node_gaps = [b - a for a, b in itertools.pairwise(window)]
            gaps.extend(node_gaps)
            per_node[name] = {"probes": len(window), "max_gap": max(node_gaps, default=None)}
            seconds.update(int(t - since) for t in window)
        return {"nodes": per_node, "gaps": summary(gaps), "per_second": per_second(seconds)}

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "pid": os.getpid(),
            "cpu_user": usage.ru_utime,
            "cpu_system": usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "queries": self.queries,
            "probes": sum(len(t) for t in self.probe_times.values()),
            "connections": sum(len(s) for s in self.sessions.values()),
            "now": self.clock(),
        }

    # -- for sessions --------------------------------------------------------------------

    def connection_id(self, name: str) -> int:
        self._next_id[name] += 1
        return self._next_id[name]

    def record_probe(self, name: str, t: float, kernel: float | None = None) -> None:
        self.probe_times[name].append(t)
        if self.kernel_stamps:
            self.kernel_times[name].append(t if kernel is None else kernel)


def per_second(counts: collections.Counter[int]) -> dict[str, Any]:
    """Probes per whole second: their summary and the seconds below half the median."""
    if not counts:
        return {"summary": summary([]), "slow_seconds": []}
    first, last = min(counts), max(counts)
    series = [counts.get(i, 0) for i in range(first, last)]  # the last second may be partial
    median = sorted(series)[len(series) // 2] if series else 0
    slow = [i for i in range(first, last) if counts.get(i, 0) < median / 2]
    return {"summary": summary([float(c) for c in series]), "slow_seconds": slow}


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def internal_error(exc: Exception) -> answers.Failed:
    return answers.Failed(1105, "HY000", f"fake fleet internal error: {exc!r}")


class Session(asyncio.Protocol):
    """One client connection to one fake node."""

    def __init__(self, fleet: FakeFleet, node: str) -> None:
        self.fleet = fleet
        self.node_name = node
        self.id = 0
        self.user = ""
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._authenticated = False
        self._greeted = False
        self._salt = b""
        self._multi = False
        self._task: asyncio.Task[None] | None = None
        self._held: list[bytes] = []
        self._paused = False
        self._interrupted = False
        self._auth_seq = 2
        self._reader: StampedReader | None = None
        self._stamp: float | None = None
        """The kernel's receive time of the bytes read last (``kernel_stamps``)."""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.id = self.fleet.connection_id(self.node_name)
        self.fleet.sessions[self.node_name].add(self)
        self._salt = bytes(secrets.choice(_SALT_ALPHABET) for _ in range(20))
        if self.fleet.kernel_stamps:
            self._reader = StampedReader(transport, self._stamped_data, self._peer_closed)
        if self._node().state is State.FROZEN:
            self.pause()
        else:
            self._greet()
            if self._reader is not None:
                self._reader.resume()

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _stamped_data(self, data: bytes, kernel_stamp: float | None) -> None:
        self._stamp = kernel_stamp
        self.data_received(data)

    def _peer_closed(self) -> None:
        if self.transport is not None:
            self.transport.close()  # as a protocol whose eof_received returns None

    # -- faults --------------------------------------------------------------------------

    def abort(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        self._paused = True
        if self._reader is not None:
            self._reader.pause()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self.transport is None or self.transport.is_closing():
            return
        if self._reader is not None:
            self._reader.resume()
        else:
            self.transport.resume_reading()
        if not self._greeted:
            self._greet()
        held, self._held = self._held, []
        for data in held:
            self.transport.write(data)
        self._process()

    def _forget(self) -> None:
        if self._reader is not None:
            self._reader.close()
        sessions = self.fleet.sessions.get(self.node_name)
        if sessions is not None:
            sessions.discard(self)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        model = self.fleet.model
        if model is not None and self.id:
            model.release_all(model.nodes[self.node_name], self.id)

    # -- protocol ------------------------------------------------------------------------

    def _node(self):
        assert self.fleet.model is not None
        return self.fleet.model.nodes[self.node_name]

    def _send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._paused:
            self._held.append(data)
        else:
            self.transport.write(data)

    def _greet(self) -> None:
        self._greeted = True
        self._send(wire.frame_all([wire.handshake(self.id, self._salt)], 0))

    def _process(self) -> None:
        while not self._paused and self._task is None and self.transport is not None:
            packet = wire.read_packet(self._buffer)
            if packet is None:
                return
            try:
                if not self._authenticated:
                    self._authenticate(packet)
                else:
                    self._command(packet)
            except Exception as exc:  # a bug of the fake: said to the client, not hidden
                self._send(answers.encode([internal_error(exc)]))
                self.abort()

    def _authenticate(self, payload: bytes) -> None:
        """HandshakeResponse41, or the answer to an auth switch to mysql_native_password."""
        spec = self.fleet.spec
        if not self.user:
            try:
                response = parse_handshake_response(payload)
            except (ValueError, IndexError, struct.error, UnicodeDecodeError):
                self._send(wire.frame_all([err_packet(1043, "08S01", "Bad handshake")], 2))
                self.abort()
                return
            self.user = response.user or "?"
            self._multi = bool(wire.client_capabilities(payload) & wire.CLIENT.MULTI_STATEMENTS)
            if response.auth_plugin not in (None, wire.NATIVE_PASSWORD):
                self._send(wire.frame_all([auth_switch_request(self._salt)], 2))
                self._auth_seq = 4
                return
            auth = response.auth_response
        else:
            auth = payload
        expected = native_password_scramble(spec.password, self._salt)
        if self.user == spec.user and hmac.compare_digest(auth, expected):
            self._authenticated = True
            self._send(wire.frame_all([wire.ok()], self._auth_seq))
            return
        message = (
            f"Access denied for user '{self.user}'@'localhost' "
            f"(using password: {'YES' if auth else 'NO'})"
        )
        self._send(wire.frame_all([err_packet(1045, "28000", message)], self._auth_seq))
        self.abort()

    def _command(self, payload: bytes) -> None:
        command = payload[0] if payload else 0
        if command == wire.COM_QUERY:
            self._query(payload[1:].decode("utf-8", errors="replace"))
        elif command in (wire.COM_PING, wire.COM_INIT_DB):
            self._send(wire.frame_all([wire.ok()], 1))
        elif command == wire.COM_QUIT:
            self.abort()
        else:
            self._send(wire.frame_all([err_packet(1047, "08S01", "Unknown command")], 1))

    def _context(self) -> answers.Context:
        assert self.fleet.model is not None
        return answers.Context(
            self.fleet.model,
            self._node(),
            self.id,
            self.fleet.clock(),
            self._processlist,
            self._kill,
        )

    def _query(self, text: str) -> None:
        self.fleet.queries += 1
        statements = parse(text)
        if len(statements) > 1 and not self._multi:
            refused = answers.Failed(1064, "42000", "multi-statements are off for this client")
            self._send(answers.encode([refused]))
            return
        if any(isinstance(s, ShowSlaves) for s in statements):
            self.fleet.record_probe(self.node_name, self.fleet.clock(), self._stamp)
        if any(isinstance(s, Select) and s.blocking for s in statements):
            self._task = asyncio.get_running_loop().create_task(self._run_blocking(statements))
            return
        replies = []
        ctx = self._context()
        for stmt in statements:
            replies.append(answers.answer(stmt, ctx))
            if isinstance(replies[-1], answers.Failed):
                break
        self._send(answers.encode(replies))

    async def _run_blocking(self, statements: tuple[Statement, ...]) -> None:
        replies: list[answers.Reply] = []
        try:
            for stmt in statements:
                if isinstance(stmt, Select) and stmt.blocking:
                    reply = await answers.answer_blocking(stmt, self._context)
                else:
                    reply = answers.answer(stmt, self._context())
                replies.append(reply)
                if isinstance(reply, answers.Failed):
                    break
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            replies.append(answers.Failed(1317, "70100", "Query execution was interrupted"))
        except Exception as exc:  # a bug of the fake: said to the client, not hidden
            replies.append(internal_error(exc))
        self._interrupted = False
        self._task = None
        self._send(answers.encode(replies))
        self._process()

    def interrupt(self) -> None:
        """KILL QUERY: the running query ends with error 1317."""
        if self._task is not None:
            self._interrupted = True
            self._task.cancel()

    def _processlist(self) -> list[tuple[int, str, str]]:
        return [
            (s.id, s.user, "Query" if s._task is not None else "Sleep")
            for s in sorted(self.fleet.sessions[self.node_name], key=lambda s: s.id)
            if s._authenticated
        ]

    def _kill(self, thread: int, query_only: bool) -> bool:
        for session in list(self.fleet.sessions[self.node_name]):
            if session.id == thread:
                if query_only:
                    session.interrupt()
                else:
                    session.abort()
                return True
        return False
