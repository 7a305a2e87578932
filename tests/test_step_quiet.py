"""The shortcuts of the hot path give what the whole path gives: a differential test.

``fold`` skips ``derive`` when a probe changed no fact (``view.node_facts``), when the router
says what it said (``view.same_router``) and for events that touch no node; ``step`` stops
after the fold when such a probe, or a tick, arrives in a cluster as desired with nothing
pending (``step.quiet``). Over random event sequences (healthy rounds,
values that move on every probe, crashes, broken and lagging replicas, router changes,
operator commands, plans finishing well or badly, ticks, a clock that moves freely):

- after every event, the folded view equals the view derived again from its facts;
- ``step`` and ``full_step`` (no shortcut) give equal models and equal effects on every event.

Also: at rest most probes take the shortcut, and the shortcut really skips the work.
"""

from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.events import (
    ConnectionLost,
    Event,
    OperatorCommand,
    PlanFinished,
    ProbeResult,
    RouterProbeResult,
    Tick,
)
from hacontrol.flavors.base import IoState
from hacontrol.model import Model
from hacontrol.routing import Membership
from hacontrol.step import boot, full_step, step
from hacontrol.view import derive, fold, initial
from tests.factories import down, primary, replica, router
from tests.factories import settings as make_settings

EXAMPLES = int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200"))
NODES = ("node1", "node2", "node3")
S = make_settings(failover={"recovery_block": 30})

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


def start() -> Model:
    view = initial(S)
    model, _ = boot(
        view, S, kept=None, unfinished=None, acknowledge_block=False, paused=False,
        acting=True, wall_offset=1000.0,
    )  # fmt: skip
    return model


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
    ``log.summary_every`` (the first one period after the first tick), counting the probes."""
    every = 600.0
    quiet = make_settings(failover={"recovery_block": 30}, log={"summary_every": every})
    model = start()
    info: list[object] = []
    for beat in range(3600):
        now = 10.0 + beat
        for event in [*healthy(now, beat), Tick(now)]:
            model, effects = step(model, event, quiet, now)
            if beat >= 5:  # past the start-up: changes and the first decision
                info += [e for e in effects if getattr(e, "level", "debug") != "debug"]
    assert [getattr(e, "event", None) for e in info] == ["cluster_summary"] * 5
    first = info[0].fields  # type: ignore[attr-defined]
    assert first["primary"] == "node1" and first["problems"] == []
    assert first["nodes"] == {"node1": "healthy", "node2": "healthy", "node3": "healthy"}
    assert first["probes"] == 3 * 600 and first["last_decision"] == "Nothing"


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
