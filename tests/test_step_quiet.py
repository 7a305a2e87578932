"""The shortcuts of the hot path give what the whole path gives: a differential test.

``fold`` skips ``derive`` when a probe changed no fact (``view.node_facts``), when the router
says what it said (``view.same_router``) and for events that touch no node; ``step`` stops
after the fold when such a probe, or a tick, arrives in a cluster as desired with nothing
pending (``step.quiet``). Over random event sequences (healthy rounds,
values that move on every probe, crashes, broken and lagging replicas, router changes,
operator commands, plans finishing well or badly, ticks, a clock that moves freely):

- after every event, the folded view equals the view derived again from its facts;
- ``step`` and ``full_step`` (no shortcut) give equal models and equal effects on every event.

The same for an instance of a fleet, whose lease moves with its keepalives and with time alone:
keepalives that confirm the locks, locks taken by others, freed, published or unreadable, new
sessions, and gaps longer than the lease's validity (a lock that expires between two events).

Also: at rest most probes take the shortcut, and the shortcut really skips the work.
"""

from __future__ import annotations

import collections
import math
import os
import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.events import (
    ConnectionLost,
    Event,
    LeaseObserved,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Tick,
)
from hacontrol.flavors.base import IoState
from hacontrol.model import LeaseMode, Model
from hacontrol.plan import PlanKind
from hacontrol.routing import Membership
from hacontrol.spread import fraction_of
from hacontrol.step import boot, full_step, step
from hacontrol.view import derive, fold, initial
from tests.factories import down, fleet, lock, primary, replica, router
from tests.factories import settings as make_settings

EXAMPLES = int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200"))
NODES = ("node1", "node2", "node3")
S = make_settings(failover={"recovery_block": 30})
FLEET = fleet(failover={"recovery_block": 30})
OTHER = 99
"""Another instance's lease session (ours are numbered from 1)."""

# -- events ------------------------------------------------------------------------------------

moving = st.fixed_dictionaries(  # what moves on every probe of a healthy node
    {
        "received_gtid": st.sampled_from(["0-1-100", "0-1-101", "0-1-102", "0-1-250"]),
        "heartbeats_received": st.integers(0, 5),
    }
)
facts = st.fixed_dictionaries(  # what a replica's probe may change that matters
    {},
    optional={
        "io_state": st.sampled_from([IoState.RUNNING, IoState.CONNECTING, IoState.STOPPED]),
        "sql_running": st.booleans(),
        "seconds_behind": st.sampled_from([None, 0, 0, 3, 500]),
        "last_io_errno": st.sampled_from([0, 2003, 1236]),
        "last_io_error": st.sampled_from(["", "refused"]),
    },
)


def steady(node: str, at: float, beat: int) -> Event:
    """A healthy node1-primary cluster: only what moves on every probe differs."""
    if node == "router":
        return router(at=at)
    if node == "node1":
        return primary(at=at, gtid=f"0-1-{100 + beat}")
    return replica(node, at, heartbeats_received=beat, received_gtid=f"0-1-{100 + beat}")


@st.composite
def probe(draw: st.DrawFn, at: float) -> ProbeResult:
    """Anything a probe may answer: down, a primary anywhere, a replica of anyone with any
    state of its threads, lag and positions."""
    node = draw(st.sampled_from(NODES))
    kind = draw(st.sampled_from(["primary", "replica", "replica", "down"]))
    if kind == "down":
        return down(node, at, draw(st.sampled_from(["timed out", "2003: refused"])))
    if kind == "primary":
        gtid = draw(st.sampled_from(["0-1-100", "0-1-101", "0-1-102", "0-2-5"]))
        return primary(node, at, gtid=gtid)
    source = draw(st.sampled_from(["node1", "node1", "node2", "node3"]))
    fields = draw(moving)
    fields.update(draw(facts))
    result = replica(node, at, source=source if source != node else "node1", **fields)
    gtid = draw(st.sampled_from(["0-1-100", "0-1-101", "0-1-99"]))
    assert result.status is not None
    return replace(result, status=replace(result.status, gtid_executed=gtid))


@st.composite
def other(draw: st.DrawFn, at: float, model: Model) -> Event:
    kind = draw(st.sampled_from(["tick", "router", "lost", "command", "finished"]))
    if kind == "tick":
        return Tick(at)
    if kind == "router":
        writers = draw(st.sampled_from([("node1",), ("node2",), (), ("node1", "node2")]))
        readers = draw(st.sets(st.sampled_from(NODES)))
        return RouterProbeResult("haproxy", at, Membership.of(writers, readers, (), ()))
    if kind == "lost":
        return ConnectionLost(draw(st.sampled_from(NODES)), at, "Lost connection")
    if kind == "command":
        command = draw(st.sampled_from(["pause", "resume", "ack", "maintenance"]))
        node = draw(st.sampled_from(NODES)) if command == "maintenance" else None
        on = draw(st.booleans()) if command == "maintenance" else None
        return OperatorCommand(at, command, node, on)
    if model.running is None:
        return Tick(at)
    return finished(model, at, ok=draw(st.booleans()))


def finished(model: Model, at: float, *, ok: bool) -> PlanFinished:
    """The running plan's result, as the executor reports it."""
    assert model.running is not None
    plan = model.running.plan
    touched = frozenset(node for action in plan.actions for node in action.targets())
    return PlanFinished(
        at, model.running.plan_id, plan.rule, plan.kind, ok, "done" if ok else "failed",
        None if ok else 0, (), 0.1, touched=touched, routed=True,
    )  # fmt: skip


def start(settings=S) -> Model:
    view = initial(settings)
    model, _ = boot(
        view, settings, kept=None, unfinished=None, acknowledge_block=False, paused=False,
        acting=True, wall_offset=1000.0,
    )  # fmt: skip
    return model


# -- a fleet's lease ---------------------------------------------------------------------------


class Edge:
    """What a lone instance's lease edge would see: its own sessions (a new one after a broken
    or closed session), holding the leader lock in ACQUIRE mode, letting go in RELEASE; node1
    published once a plan that publishes it succeeded (a failed one is retried later)."""

    def __init__(self) -> None:
        self.sessions = {node: i + 1 for i, node in enumerate(NODES)}
        self.published = False

    def renew(self, node: str) -> None:
        self.sessions[node] = max(self.sessions.values()) + 1
        if node == "node1":
            self.published = False

    def finished(self, event: PlanFinished) -> None:
        if event.ok and event.kind is PlanKind.PUBLISH:
            self.published = True

    def keepalive(self, node: str, at: float, mode: LeaseMode, jitter: float) -> LeaseObserved:
        if mode is LeaseMode.RELEASE:  # the edge closed the session: a new one holds nothing
            self.renew(node)
        own = self.sessions[node]
        held = own if mode is LeaseMode.ACQUIRE else None
        published = held if node == "node1" and self.published else None
        return lock(node, at, session=own, leader=held, primary=published, jitter=jitter)


@st.composite
def lease_event(draw: st.DrawFn, at: float, edge: Edge) -> LeaseObserved:
    """Anything a keepalive may say: the lock free, ours, another instance's; the primary lock
    anywhere; an error (the session is gone: the next one is new)."""
    node = draw(st.sampled_from(NODES))
    jitter = draw(st.sampled_from([0.0, 0.3, 0.99]))
    if draw(st.integers(0, 4)) == 0:
        edge.renew(node)
        return lock(node, at, error="2013: Lost connection", jitter=jitter)
    own = edge.sessions[node]
    leader = draw(st.sampled_from([own, own, OTHER, None]))
    published = draw(st.sampled_from([None, leader, OTHER]))
    return lock(node, at, session=own, leader=leader, primary=published, jitter=jitter)


# -- the property ------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_step_with_and_without_the_shortcut_agree(data: st.DataObject) -> None:
    """Long healthy stretches (where the shortcut applies) broken by anything else, at a rate
    drawn per example."""
    shortcut = reference = start()
    now = 10.0
    chaos = data.draw(st.sampled_from([0.02, 0.1, 0.3, 0.7]))
    dice = data.draw(st.randoms(use_true_random=False))
    for beat in range(80):
        now += data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 7.0]))
        at = now - data.draw(st.sampled_from([0.0, 0.001, 0.4]))
        if reference.running is not None and data.draw(st.booleans()):
            event: Event = finished(reference, at, ok=data.draw(st.booleans()))
        elif dice.random() >= chaos:
            event = steady(data.draw(st.sampled_from((*NODES, "router"))), at, beat)
        elif data.draw(st.booleans()):
            event = data.draw(probe(at))
        else:
            event = data.draw(other(at, reference))
        shortcut, quick = step(shortcut, event, S, now)
        reference, whole = full_step(reference, event, S, now)
        assert shortcut == reference, event
        assert quick == whole, event
        assert derive(shortcut.view, S) == shortcut.view, event


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.sampled_from([0.0, 0.4, 1.0])), max_size=80))
def test_fold_without_derive_equals_derive(plan: list[tuple[int, float]]) -> None:
    """Any order of probes, steady or not: the shortcut's view is the derived view."""
    view = initial(S)
    at = 1.0
    for pick, dt in plan:
        at += dt
        events = [
            primary(at=at),
            replica("node2", at, heartbeats_received=pick),
            replica("node3", at, received_gtid=f"0-1-{100 + pick}"),
            down("node2", at),
            down("node1", at),
            replica("node3", at, seconds_behind=None),
            replica("node2", at, io_state=IoState.CONNECTING, last_io_errno=2003),
            router(at=at),
            Tick(at),
            ConnectionLost("node1", at, "gone"),
            replica("node3", at, source="node2"),
        ]
        view = fold(view, events[pick], S)
        assert derive(view, S) == view


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_fleet_instance_with_and_without_the_shortcut_agree(data: st.DataObject) -> None:
    """A fleet of one: keepalives a few times a second interleaved with probes, broken by
    anything else, by keepalives that say something new, and by gaps past the lease's validity
    (V 1.5 s: the locks expire, the lease is lost and taken again, a publication fails and is
    retried)."""
    shortcut = reference = start(FLEET)
    edge = Edge()
    now = 10.0
    chaos = data.draw(st.sampled_from([0.02, 0.1, 0.3, 0.7]))
    # The steady flow from a seeded generator: hypothesis' own random numbers lean to their
    # simplest values (0.0 for every gap draw), which would rarely let the lease settle.
    dice = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    for beat in range(150):
        gap = dice.random() < chaos / 4
        now += dice.choice([1.6, 7.0] if gap else [0.0, 0.05, 0.1, 0.2])
        at = now - dice.choice([0.0, 0.001, 0.1])
        if reference.running is not None and dice.random() < 0.5:
            event: Event = finished(reference, at, ok=dice.random() < 0.5)
            edge.finished(event)
        elif dice.random() >= chaos:
            which = dice.choice((*NODES, *NODES, "router", "tick"))
            if which == "tick":
                event = Tick(at)
            elif which in NODES and dice.random() < 0.6:
                event = edge.keepalive(which, at, reference.lease.mode, dice.choice([0.1, 0.7]))
            else:
                event = steady(which, at, beat)
        elif data.draw(st.booleans()):
            event = data.draw(lease_event(at, edge))
        elif data.draw(st.booleans()):
            event = data.draw(probe(at))
        else:
            event = data.draw(other(at, reference))
        shortcut, quick = step(shortcut, event, FLEET, now)
        reference, whole = full_step(reference, event, FLEET, now)
        assert shortcut == reference, event
        assert quick == whole, event
        assert derive(shortcut.view, FLEET) == shortcut.view, event


# -- at rest -------------------------------------------------------------------------------------


def healthy(at: float, beat: int) -> list[Event]:
    return [
        primary(at=at, gtid=f"0-1-{100 + beat}"),
        replica("node2", at, heartbeats_received=beat, received_gtid=f"0-1-{100 + beat}"),
        replica("node3", at, heartbeats_received=beat, received_gtid=f"0-1-{100 + beat}"),
        router(at=at),
    ]


def test_at_rest_probes_take_the_shortcut_and_skip_derive_and_decide() -> None:
    model = start()
    for beat in range(5):  # past the start-up grace, as desired
        for event in healthy(10.0 + beat, beat):
            model, _ = step(model, event, S, 10.0 + beat)
    assert model.last_logged is not None and model.last_logged[0] == "Nothing"
    generation, decisions = model.view.generation, model.decisions
    for beat in range(5, 50):
        for event in [*healthy(10.0 + beat, beat), Tick(10.0 + beat)]:
            model, effects = step(model, event, S, 10.0 + beat)
            assert [type(e).__name__ for e in effects] == ["Log"] * (
                not isinstance(event, Tick)
            )  # the debug probe line only
    assert model.view.generation == generation  # never derived again
    assert model.decisions == decisions
    assert model.view.nodes["node2"].status.replication[0].heartbeats_received == 49


def leading_at_rest() -> tuple[Model, Edge, float]:
    """A fleet of one past its takeover: leading, acting, node1 published, deciding Nothing."""
    model, edge, now = start(FLEET), Edge(), 10.0
    for beat in range(40):  # keepalives every 0.25 s, probes every second
        now += 0.25
        events: list[Event] = [edge.keepalive(n, now, model.lease.mode, 0.5) for n in NODES]
        if beat % 4 == 0:
            events += [steady(n, now, beat) for n in (*NODES, "router")]
        for event in events:
            model, _ = step(model, event, FLEET, now)
            if model.running is not None:
                done = finished(model, now, ok=True)
                edge.finished(done)
                model, _ = step(model, done, FLEET, now)
    assert model.lease.acting(now) and model.view.published == "node1"
    assert model.last_logged is not None and model.last_logged[0] == "Nothing"
    return model, edge, now


def test_a_leaders_keepalives_at_rest_take_the_shortcut() -> None:
    model, edge, now = leading_at_rest()
    generation, decided = model.view.generation, model.decided_at
    for beat in range(200):
        now += 0.25
        events: list[Event] = [
            edge.keepalive(n, now, model.lease.mode, 0.1 * (beat % 9)) for n in NODES
        ]
        if beat % 4 == 0:
            events += [*healthy(now, beat), Tick(now)]
        for event in events:
            model, effects = step(model, event, FLEET, now)
            assert all(e.level == "debug" for e in effects), effects  # type: ignore[attr-defined]
    assert model.view.generation == generation  # never derived again
    assert model.decided_at == decided  # never decided again
    assert model.lease.acting(now) and model.lease.jitter == 0.1 * (199 % 9)


def test_a_lease_that_expires_between_two_events_is_not_hidden_by_the_shortcut() -> None:
    """No keepalive for longer than V: the next tick finds the majority gone and lets go."""
    model, _, now = leading_at_rest()
    now += FLEET.lease.validity + 0.01
    model, effects = step(model, Tick(now), FLEET, now)
    assert model.lease.leader_since is None and model.lease.mode is LeaseMode.RELEASE
    assert [getattr(e, "event", None) for e in effects][:1] == ["lease"]


def test_a_probe_that_changes_a_fact_takes_the_whole_path() -> None:
    model = start()
    for beat in range(5):
        for event in healthy(10.0 + beat, beat):
            model, _ = step(model, event, S, 10.0 + beat)
    generation = model.view.generation
    model, effects = step(model, replica("node2", 20.0, seconds_behind=500), S, 20.0)
    assert model.view.generation == generation + 1
    assert model.view.nodes["node2"].health.value == "lagging"
    assert any(getattr(e, "event", None) == "node_state" for e in effects)


def test_at_rest_info_lines_are_the_periodic_summary_only() -> None:
    """An hour at rest, probed every second: at info level, one ``cluster_summary`` line per
    ``log.summary_every``, the first one at the cluster's point between half a period and a
    period after the first tick (``spread``), each counting the probes since the last."""
    every = 600.0
    quiet = make_settings(failover={"recovery_block": 30}, log={"summary_every": every})
    first_due = 10.0 + every * (1 + fraction_of(quiet.cluster.name)) / 2
    model = start()
    info: list[tuple[float, object]] = []
    for beat in range(3600):
        now = 10.0 + beat
        for event in [*healthy(now, beat), Tick(now)]:
            model, effects = step(model, event, quiet, now)
            if beat >= 5:  # past the start-up: changes and the first decision
                info += [(now, e) for e in effects if getattr(e, "level", "debug") != "debug"]
    first_at = float(math.ceil(first_due))  # the first tick at or after it
    assert [at for at, _ in info] == [
        first_at + k * every for k in range(6) if first_at + k * every < 3610
    ]
    assert {getattr(e, "event", None) for _, e in info} == {"cluster_summary"}
    first, second = info[0][1].fields, info[1][1].fields  # type: ignore[attr-defined]
    assert first["primary"] == "node1" and first["problems"] == []
    assert first["nodes"] == {"node1": "healthy", "node2": "healthy", "node3": "healthy"}
    assert first["last_decision"] == "Nothing"
    assert first["probes"] == 3 * (math.ceil(first_due) - 10) and second["probes"] == 3 * 600


def test_clusters_write_their_summaries_spread_over_the_period() -> None:
    """300 clusters started in the same second write their first ``cluster_summary`` lines
    over the second half of the period, never more than a few in one second (measured at
    1,000 nodes: all 300 in the same second made probes late)."""
    every = 600.0
    seconds = collections.Counter(
        math.ceil(every * (1 + fraction_of(f"c{k:03d}")) / 2) for k in range(300)
    )
    assert min(seconds) >= every / 2 and max(seconds) <= every
    assert max(seconds.values()) <= 5


def test_failures_that_repeat_what_was_told_are_debug_lines() -> None:
    """A dead node: its failed probes are info until the state change says unreachable, then
    debug. A router that keeps failing the same way: a warning once, then debug."""
    model = start()
    for beat in range(5):
        for event in healthy(10.0 + beat, beat):
            model, _ = step(model, event, S, 10.0 + beat)
    levels = []
    for beat in range(6):
        model, effects = step(model, down("node3", 20.0 + beat), S, 20.0 + beat)
        levels += [e.level for e in effects if getattr(e, "event", None) == "probe"]
    assert levels == ["info"] * 3 + ["debug"] * 3
    assert model.view.nodes["node3"].health.value == "unreachable"
    failing = [RouterProbeResult("haproxy", 30.0 + i, None, "refused") for i in range(3)]
    router_levels = []
    for event in failing:
        model, effects = step(model, event, S, event.at)
        router_levels += [e.level for e in effects if getattr(e, "event", None) == "router_probe"]
    assert router_levels == ["warning", "debug", "debug"]
