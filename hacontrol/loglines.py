"""What is worth a log line, as Log effects: events as they arrive, the view's state changes
and the periodic one-line summary of the cluster.

Routine probes are debug lines, and so are failures that repeat what was told (a node
already unreachable, a router failing as before); a first failure, a lost connection and
every change are info or above. Plan results and operator commands are logged by the rules
with their outcome.
"""

from __future__ import annotations

from hacontrol.effects import Log, log
from hacontrol.events import (
    CallerGone,
    ConnectionLost,
    Event,
    JournalStatus,
    LeaseObserved,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Stop,
    Tick,
)
from hacontrol.flavors.base import NodeStatus
from hacontrol.view import ClusterView, Health, changes


def event_lines(event: Event, before: ClusterView) -> tuple[Log, ...]:
    """The event's own line. A failed probe of a node already unreachable, and a router probe
    failing as it failed last time, are debug lines: the state change was told once."""
    match event:
        case ProbeResult(ok=True):
            assert event.status is not None
            rtt_ms = round((event.rtt or 0) * 1000, 2)
            return (
                log(
                    "probe", event.node, "debug", ok=True, rtt_ms=rtt_ms, **summarize(event.status)
                ),
            )
        case ProbeResult():
            node = before.nodes.get(event.node)
            told = node is not None and node.health is Health.UNREACHABLE
            level = "debug" if told else "info"
            return (log("probe", event.node, level, ok=False, error=event.error),)
        case ConnectionLost():
            return (log("connection_lost", event.node, "warning", reason=event.reason),)
        case RouterProbeResult(ok=True):
            assert event.membership is not None
            membership = event.membership.to_json()
            warnings = list(event.warnings)
            return (
                log(
                    "router_probe",
                    None,
                    "debug",
                    kind=event.kind,
                    membership=membership,
                    warnings=warnings,
                ),
            )
        case RouterProbeResult():
            level = "debug" if before.router.error == event.error else "warning"
            return (log("router_probe", None, level, kind=event.kind, error=event.error),)
        case Stop():
            return (log("stop_requested", None, "info", reason=event.reason),)
        case (
            Tick()
            | PlanFinished()
            | OperatorCommand()
            | CallerGone()
            | JournalStatus()
            | LeaseObserved()
        ):
            # Ticks drive timers; keepalives come several times a second and what they change
            # is logged with the view's changes; the others by the rules with their outcome.
            return ()


def change_lines(old: ClusterView, new: ClusterView) -> tuple[Log, ...]:
    return tuple(Log(c.event, c.node, c.level, c.fields) for c in changes(old, new))


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


def summary_line(view: ClusterView, model_fields: dict[str, object], probes: int) -> Log:
    """The cluster in one info line: primary, each node's health, problems, the router's
    writer, what holds changes back, the last decision, and the probes since the last line."""
    membership = view.router.membership
    return log(
        "cluster_summary",
        None,
        "info",
        primary=view.primary,
        nodes={name: node.health.value for name, node in view.nodes.items()},
        problems=[p.code.value for p in view.problems],
        router_writer=membership.writer if membership is not None else None,
        probes=probes,
        **model_fields,
    )
