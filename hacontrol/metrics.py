"""Prometheus metrics of one cluster, in a registry of its own (no global registry).

The decision task feeds plain values in (``observe_probe``, ``observe_view``, ``observe_plan``,
``observe_loop``, ``set_halt``, ``set_mail``); ``render()`` is the exposition text served on
``GET /metrics``. Every series carries the label ``cluster``: a process that runs several
clusters serves them in one exposition (``render_all``), each family once with every cluster's
samples.

Unknown is never written as zero: a replica whose lag is NULL (``Seconds_Behind_Master`` NULL:
replication stopped or not yet connected) is exported as NaN, and the lag series of a node that
is not a reachable replica is absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from hacontrol.events import PlanFinished, ProbeResult
from hacontrol.plan import PlanKind, Promote, Repoint, Route, RouteFence, WaitApplied
from hacontrol.view import ClusterView, Code

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

PHASE_OF_ACTION: Mapping[str, str] = {
    RouteFence.__name__: "fence",
    WaitApplied.__name__: "promote",
    Promote.__name__: "promote",
    Repoint.__name__: "repoint",
    Route.__name__: "route",
}
"""Failover step (its action's name) -> phase of ``hacontrol_last_failover_phase_seconds``."""
PHASES = ("detect", "fence", "promote", "repoint", "route", "total")
OUTCOMES = ("ok", "failed", "rolled_back")


class MailCounters(Protocol):
    """What the notifier exposes (``actions.notify.Notifier`` has these attributes)."""

    queued: int
    sent: int
    failed: int
    dropped: int


def plan_outcome(finished: PlanFinished) -> str:
    """ok, rolled_back (a stopped switchover that put the old primary back) or failed."""
    if finished.ok:
        return "ok"
    if "rolled back" in finished.reason.lower() or "rolled_back" in finished.reason.lower():
        return "rolled_back"
    return "failed"


def failover_phases(finished: PlanFinished, detect_seconds: float | None) -> dict[str, float]:
    """Seconds per phase of a failover plan, from its step timings. Pure.

    Only phases whose steps ran appear (a failover stopped at WaitApplied has no route phase);
    ``total`` is the detection time plus the whole plan.
    """
    phases: dict[str, float] = {}
    for step in finished.steps:
        phase = PHASE_OF_ACTION.get(step.action)
        if phase is not None:
            phases[phase] = phases.get(phase, 0.0) + step.seconds
    if detect_seconds is not None:
        phases["detect"] = detect_seconds
    phases["total"] = (detect_seconds or 0.0) + finished.seconds
    return phases


class Metrics:
    """The metrics of one cluster. Not thread-safe by design: fed from the event loop only."""

    def __init__(self, cluster: str, *, mail: MailCounters | None = None) -> None:
        self.cluster = cluster
        self.registry = CollectorRegistry(auto_describe=True)
        self._mail_source = mail
        self._mail: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._lag_nodes: set[str] = set()
        self._lease_changes_seen = 0
        self._node_series()
        self._cluster_series()
        self._lease_series()
        self._plan_series()
        self._api_series()
        for outcome in OUTCOMES:  # export zeros, so that rate() works from the first failover
            self._failovers.labels(cluster, outcome)
            self._switchovers.labels(cluster, outcome)
        self._queue.labels(cluster).set(0)
        self._halt.labels(cluster).set(0)
        self.registry.register(_MailCollector(self))
        # Series fed on every event, looked up once (``labels`` validates and locks each time).
        self._loop_child = self._loop_lag.labels(cluster)
        self._queue_child = self._queue.labels(cluster)
        self._queue_shown: int | None = None
        self._probe_children: dict[tuple[str, bool], tuple[Counter, Histogram]] = {}

    def _node_series(self) -> None:
        reg, node = self.registry, ("cluster", "node")
        self._probe_rtt = Histogram(
            "hacontrol_probe_rtt_seconds",
            "Round trip of successful node probes",
            node,
            buckets=PROBE_BUCKETS,
            registry=reg,
        )
        self._probes = Counter(
            "hacontrol_probes",
            "Node probes by result (ok, failed)",
            (*node, "result"),
            registry=reg,
        )
        self._up = Gauge(
            "hacontrol_node_up",
            "1 when the node is reachable in the controller's view, else 0",
            node,
            registry=reg,
        )
        self._lag = Gauge(
            "hacontrol_replica_lag_seconds",
            "Seconds_Behind_Master of reachable replicas; NaN when the server reports NULL",
            node,
            registry=reg,
        )
        self._primary = Gauge(
            "hacontrol_node_is_primary",
            "1 for the node the view sees as primary",
            node,
            registry=reg,
        )

    def _cluster_series(self) -> None:
        reg = self.registry
        self._quorum = Gauge(
            "hacontrol_quorum",
            "1 when a strict majority of nodes is reachable",
            ("cluster",),
            registry=reg,
        )
        self._problems = Gauge(
            "hacontrol_problems",
            "Problems currently detected, by code",
            ("cluster", "code"),
            registry=reg,
        )
        self._loop_lag = Histogram(
            "hacontrol_decision_loop_lag_seconds",
            "Seconds between an event's observation and its handling by the decision task",
            ("cluster",),
            buckets=LOOP_BUCKETS,
            registry=reg,
        )
        self._queue = Gauge(
            "hacontrol_queue_depth",
            "Events waiting for the decision task",
            ("cluster",),
            registry=reg,
        )
        self._halt = Gauge(
            "hacontrol_halt_active",
            "1 while the controller is halted (no automatic change until an operator acts)",
            ("cluster",),
            registry=reg,
        )
        self._journal_writable = Gauge(
            "hacontrol_journal_writable",
            "1 when the intent journal can be written (last check or write), else 0",
            ("cluster",),
            registry=reg,
        )
        self._journal_free = Gauge(
            "hacontrol_journal_free_bytes",
            "Bytes free on the journal's filesystem at the last check",
            ("cluster",),
            registry=reg,
        )

    def _lease_series(self) -> None:
        reg = self.registry
        self._leader = Gauge(
            "hacontrol_lease_leader",
            "1 while this instance leads its fleet (always 1 for a single instance)",
            ("cluster", "instance"),
            registry=reg,
        )
        self._lease_changes = Counter(
            "hacontrol_lease_changes",
            "Times this instance took or lost the fleet's lease",
            ("cluster", "instance"),
            registry=reg,
        )
        self._locks = Gauge(
            "hacontrol_lease_lock_held",
            "1 for each node whose leader lock this instance holds (valid), else 0",
            ("cluster", "instance", "node"),
            registry=reg,
        )

    def _api_series(self) -> None:
        reg = self.registry
        self._api_restarts_seen = 0
        self._api_up = Gauge(
            "hacontrol_api_process_up",
            "1 while the HTTP API's process serves, 0 while it is being restarted",
            ("cluster",),
            registry=reg,
        )
        self._api_restarts = Counter(
            "hacontrol_api_process_restarts",
            "Times the HTTP API's process died (it is started again after a back-off)",
            ("cluster",),
            registry=reg,
        )

    def _plan_series(self) -> None:
        reg = self.registry
        self._failovers = Counter(
            "hacontrol_failovers",
            "Failover plans finished, by outcome",
            ("cluster", "outcome"),
            registry=reg,
        )
        self._switchovers = Counter(
            "hacontrol_switchovers",
            "Switchover plans finished, by outcome",
            ("cluster", "outcome"),
            registry=reg,
        )
        self._phase = Gauge(
            "hacontrol_last_failover_phase_seconds",
            "Duration of each phase of the last failover (detect, fence, promote, repoint, "
            "route, total)",
            ("cluster", "phase"),
            registry=reg,
        )

    # -- inputs --------------------------------------------------------------------------------

    def observe_probe(self, result: ProbeResult) -> None:
        key = (result.node, result.ok)
        children = self._probe_children.get(key)
        if children is None:
            outcome = "ok" if result.ok else "failed"
            children = (
                self._probes.labels(self.cluster, result.node, outcome),
                self._probe_rtt.labels(self.cluster, result.node),
            )
            self._probe_children[key] = children
        children[0].inc()
        if result.ok and result.rtt is not None:
            children[1].observe(result.rtt)

    def observe_view(self, view: ClusterView) -> None:
        """Node up, replica lag, primary, quorum and problems from the current view."""
        c = self.cluster
        lag_nodes: set[str] = set()
        for name, node in view.nodes.items():
            self._up.labels(c, name).set(1 if node.reachable else 0)
            self._primary.labels(c, name).set(1 if name == view.primary else 0)
            channel = node.channel
            if node.reachable and channel is not None:
                lag = channel.seconds_behind
                self._lag.labels(c, name).set(math.nan if lag is None else float(lag))
                lag_nodes.add(name)
        for name in self._lag_nodes - lag_nodes:
            self._lag.remove(c, name)
        self._lag_nodes = lag_nodes
        self._quorum.labels(c).set(1 if view.quorum.ok else 0)
        for code in Code:
            count = sum(1 for p in view.problems if p.code is code)
            self._problems.labels(c, code.value).set(count)

    def observe_plan(
        self,
        finished: PlanFinished,
        detect_seconds: float | None = None,
        *,
        outcome: str | None = None,
    ) -> None:
        """Count failovers/switchovers by outcome; a failover also sets the phase durations.

        ``detect_seconds``: from the first failed probe of the primary to the plan's start
        (the caller knows both). ``outcome`` overrides ``plan_outcome(finished)``.
        """
        outcome = outcome or plan_outcome(finished)
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if finished.kind == PlanKind.SWITCHOVER:
            self._switchovers.labels(self.cluster, outcome).inc()
        elif finished.kind == PlanKind.FAILOVER:
            self._failovers.labels(self.cluster, outcome).inc()
            self._phase.clear()  # phases of an older failover must not mix with this one
            for phase, seconds in failover_phases(finished, detect_seconds).items():
                self._phase.labels(self.cluster, phase).set(seconds)

    def observe_loop(self, lag_seconds: float, queue_depth: int) -> None:
        self._loop_child.observe(max(0.0, lag_seconds))
        if queue_depth != self._queue_shown:  # on every event: set when it moved (mostly 0)
            self._queue_child.set(queue_depth)
            self._queue_shown = queue_depth

    def observe_lease(
        self, instance: str, leader: bool, changes: int, held: Mapping[str, bool]
    ) -> None:
        """The lease of this instance: leader or not, how often it changed, the locks held."""
        c = self.cluster
        self._leader.labels(c, instance).set(1 if leader else 0)
        counter = self._lease_changes.labels(c, instance)
        if changes > self._lease_changes_seen:
            counter.inc(changes - self._lease_changes_seen)
            self._lease_changes_seen = changes
        for node, on in held.items():
            self._locks.labels(c, instance, node).set(1 if on else 0)

    def set_halt(self, active: bool) -> None:
        self._halt.labels(self.cluster).set(1 if active else 0)

    def observe_journal(self, writable: bool, free_bytes: int | None) -> None:
        self._journal_writable.labels(self.cluster).set(1 if writable else 0)
        if free_bytes is not None:
            self._journal_free.labels(self.cluster).set(free_bytes)

    def set_api(self, up: bool, restarts: int) -> None:
        self._api_up.labels(self.cluster).set(1 if up else 0)
        if restarts > self._api_restarts_seen:
            self._api_restarts.labels(self.cluster).inc(restarts - self._api_restarts_seen)
            self._api_restarts_seen = restarts

    def set_mail(self, queued: int, sent: int, failed: int, dropped: int) -> None:
        """Mail counters pushed by the caller; ignored when a notifier was given at creation."""
        self._mail = (queued, sent, failed, dropped)

    def mail_counts(self) -> tuple[int, int, int, int]:
        source = self._mail_source
        if source is None:
            return self._mail
        return (source.queued, source.sent, source.failed, source.dropped)

    # -- output --------------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_all(clusters: Sequence[Metrics]) -> bytes:
    """One exposition for several clusters: each family (its HELP and TYPE lines) once,
    with the samples of every cluster, in the order given."""
    if len(clusters) == 1:
        return clusters[0].render()
    return generate_latest(_Merged([m.registry for m in clusters]))  # type: ignore[arg-type]


class _Merged:
    """Several clusters' registries seen as one: families of the same name merged."""

    def __init__(self, registries: Sequence[CollectorRegistry]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for registry in self._registries:
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(family.samples)
        yield from merged.values()


class _MailCollector(Collector):
    """Reads the notifier's counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [CounterMetricFamily("hacontrol_mails", "", labels=("cluster", "state"))]

    def collect(self) -> Iterator[CounterMetricFamily]:
        queued, sent, failed, dropped = self._metrics.mail_counts()
        family = CounterMetricFamily(
            "hacontrol_mails",
            "Alert mails: queued, sent, failed (failed attempts), dropped (given up)",
            labels=("cluster", "state"),
        )
        cluster = self._metrics.cluster
        for state, value in (
            ("queued", queued),
            ("sent", sent),
            ("failed", failed),
            ("dropped", dropped),
        ):
            family.add_metric((cluster, state), value)
        yield family
