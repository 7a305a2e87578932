"""The single decision task: consumes the event queue in order and keeps the cluster view.

First form: it folds every event into the view, logs every event and every derived state
change as one JSON line, and asks the probes for a fast re-probe when the primary may have
died. It changes nothing in the cluster yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from hacontrol.events import ConnectionLost, Event, ProbeResult, RouterProbeResult, Stop, Tick
from hacontrol.flavors.base import NodeStatus
from hacontrol.jsonlog import JsonLog
from hacontrol.settings import Settings
from hacontrol.view import ClusterView, changes, fold, initial

Reprobe = Callable[[Iterable[str]], None]


def reprobe_targets(before: ClusterView, event: Event, settings: Settings) -> frozenset[str]:
    """Nodes to probe again at once, without waiting for their next interval. Pure.

    A lost watch connection (a crash closes it) or a failed probe of the primary, while that
    failure is not yet confirmed, sends every node to be probed again: the primary to confirm,
    the replicas because their IO threads saw the same closed connection at the same moment.
    """
    every = frozenset(before.nodes)
    if isinstance(event, ConnectionLost) and event.node in before.nodes:
        return every
    if isinstance(event, ProbeResult) and not event.ok and event.node == before.primary:
        failures = before.nodes[event.node].failures + 1
        if failures < settings.probes.failure_threshold:
            return every
    return frozenset()


class Controller:
    def __init__(
        self,
        settings: Settings,
        log: JsonLog,
        queue: asyncio.Queue[Event],
        *,
        reprobe: Reprobe = lambda nodes: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.queue = queue
        self.view = initial(settings)
        self._reprobe = reprobe
        self._clock = clock

    async def run(self) -> None:
        """Consume events until a Stop event."""
        while True:
            event = await self.queue.get()
            self.handle(event)
            if isinstance(event, Stop):
                return

    def handle(self, event: Event) -> None:
        log_event(self.log, event)
        before = self.view
        self.view = fold(before, event, self.settings)
        for change in changes(before, self.view):
            self.log.emit(change.event, change.node, change.level, **change.fields)
        if targets := reprobe_targets(before, event, self.settings):
            self.log.emit(
                "fast_reprobe",
                getattr(event, "node", None),
                "info",
                nodes=sorted(targets),
                cause=type(event).__name__,
            )
            self._reprobe(targets)


def log_event(log: JsonLog, event: Event) -> None:
    match event:
        case ProbeResult(ok=True):
            assert event.status is not None
            log.emit(
                "probe",
                event.node,
                "debug",
                ok=True,
                rtt_ms=round((event.rtt or 0) * 1000, 2),
                **summarize(event.status),
            )
        case ProbeResult():
            log.emit("probe", event.node, "info", ok=False, error=event.error)
        case ConnectionLost():
            log.emit("connection_lost", event.node, "warning", reason=event.reason)
        case RouterProbeResult(ok=True):
            assert event.membership is not None
            log.emit(
                "router_probe",
                None,
                "debug",
                kind=event.kind,
                membership=event.membership.to_json(),
                warnings=list(event.warnings),
            )
        case RouterProbeResult():
            log.emit("router_probe", None, "warning", kind=event.kind, error=event.error)
        case Tick():
            pass  # ticks drive timers; a line each second would say nothing
        case Stop():
            log.emit("stop_requested", None, "info", reason=event.reason)


def summarize(status: NodeStatus) -> dict[str, object]:
    """The few fields of a status worth a log line."""
    out: dict[str, object] = {
        "server_id": status.server_id,
        "read_only": status.read_only,
        "gtid": status.gtid_executed,
    }
    if status.replication:
        ch = status.replication[0]
        out.update(
            source=f"{ch.source_host}:{ch.source_port}",
            io=ch.io_state.value,
            sql=ch.sql_running,
            lag=ch.seconds_behind,
            received=ch.received_gtid,
            heartbeats=ch.heartbeats_received,
        )
        if ch.last_io_errno or ch.last_sql_errno:
            out["errors"] = {
                "io": [ch.last_io_errno, ch.last_io_error],
                "sql": [ch.last_sql_errno, ch.last_sql_error],
            }
    return out
