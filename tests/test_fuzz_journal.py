"""Fuzzing the journal reader: whatever the file holds (random bytes, records mutated from a
real journal, JSON values of any shape), ``Journal.load`` gives a replay or a JournalError
naming the file, the line and the problem; never another exception. And what it replays is
sound: an unfinished plan's steps are steps of that plan, a state loads as ``Persisted``.

Budget: ``HACONTROL_FUZZ_EXAMPLES`` (default 200 per target); docs/hardening.md shows how to
run longer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.journal import Journal, JournalError, state_from_json, state_to_json
from hacontrol.model import Consent, Persisted, Quarantined
from hacontrol.plan import (
    AlertKind,
    Hook,
    Notify,
    Plan,
    PlanKind,
    Promote,
    Repoint,
    Route,
    RouteFence,
    SetIOThreads,
    WaitApplied,
)
from hacontrol.routing import Membership

EXAMPLES = int(os.environ.get("HACONTROL_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

PLAN = Plan(
    "DeadPrimary",
    "node1 is dead",
    (
        Hook("pre_failover", (("old_primary", "node1"),), True),
        RouteFence("node1", required=True),
        SetIOThreads(("node2", "node3"), running=False),
        WaitApplied("node2", 30.0),
        Promote("node2", "node1"),
        Route(Membership.of(["node2"], ["node2"], ["node1", "node3"])),
        Repoint(("node3",), "node2"),
        Notify(AlertKind.FAILOVER, "node1", "failover", "dead", (("topology", "t"),)),
    ),
    PlanKind.FAILOVER,
    rollback=(SetIOThreads(("node2", "node3"), running=True),),
)
STATE = Persisted(
    paused=True,
    maintenance=frozenset({"node3"}),
    blocked_until=500.0,
    last_failover_at=100.0,
    quarantined={"node1": Quarantined("node1", "node2", 100.0, "0-1-5")},
    consents=(Consent("node5", "node1", "0-1-100", None, 90.0),),
)


def real_journal() -> list[str]:
    """The lines of a journal as the controller writes them: a state, a failover cut
    inside its Promote."""
    with tempfile.TemporaryDirectory() as folder:
        journal = Journal(Path(folder) / "journal.jsonl")
        journal.save_state(state_to_json(STATE, 100.0, 1_700_000_000.0))
        journal.begin("failover-1", PLAN)
        for index in range(4):
            journal.step("failover-1", index, True, "done")
        journal.step_started("failover-1", 4)
        journal.begin("switchover-2", PLAN)
        journal.end("switchover-2", False, "rolled back", None)
        return journal.path.read_text().splitlines()


LINES = real_journal()
RECORDS = [json.loads(line) for line in LINES]

ODD = [None, True, False, 0, -1, 2**63, 1.5, 1e308, "", "x" * 200, [], {}, [1, 2, 3], {"a": 1}]
ODD += ["begin", "Promote", "failover", "node1", "\x00", "é"]
scalars = st.sampled_from(ODD) | st.text(max_size=12) | st.integers() | st.floats()
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutate(value: Any, draw: st.DrawFn, depth: int = 0) -> Any:
    """One change somewhere in a JSON value: a field replaced, dropped or added."""
    if isinstance(value, dict) and value and depth < 6:
        key = draw(st.sampled_from(sorted(value)))
        choice = draw(st.sampled_from(["replace", "drop", "add", "descend"]))
        out = dict(value)
        if choice == "replace":
            out[key] = draw(json_values)
        elif choice == "drop":
            del out[key]
        elif choice == "add":
            out[draw(st.text(max_size=8))] = draw(json_values)
        else:
            out[key] = mutate(value[key], draw, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6:
        i = draw(st.integers(0, len(value) - 1))
        out = list(value)
        out[i] = mutate(value[i], draw, depth + 1)
        return out
    return draw(json_values)


@st.composite
def mutated_journals(draw: st.DrawFn) -> bytes:
    records = [dict(r) for r in RECORDS]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(records) - 1))
        records[i] = mutate(records[i], draw)
    lines = [json.dumps(r) for r in records]
    if draw(st.booleans()):  # and a torn or damaged line somewhere
        i = draw(st.integers(0, len(lines)))
        cut = draw(st.integers(0, len(LINES[0])))
        lines.insert(i, LINES[0][:cut])
    return ("\n".join(lines) + "\n").encode()


@st.composite
def byte_edits(draw: st.DrawFn) -> bytes:
    data = bytearray("\n".join(LINES).encode())
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def load(content: bytes) -> None:
    """Load must give a sound replay or a JournalError with a file and a problem."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "journal.jsonl"
        path.write_bytes(content)
        try:
            replay = Journal(path).load()
        except JournalError as exc:
            assert exc.path == path and exc.problem and "\n" not in exc.problem
            assert exc.line is None or exc.line >= 1
            assert str(exc).startswith(f"{path}")
            return
        if replay.unfinished is not None:
            intent = replay.unfinished
            steps = len(intent.plan.actions)
            assert all(0 <= i < steps for i in intent.done | intent.started)
        if replay.state is not None:
            state = state_from_json(replay.state, 0.0, 0.0)
            assert isinstance(state.paused, bool) and all(
                isinstance(n, str) for n in state.maintenance
            )
        again = Journal(path).load()  # the compacted file reads back the same
        assert again.unfinished == replay.unfinished and again.state == replay.state


def test_the_real_journal_replays():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "journal.jsonl"
        path.write_text("\n".join(LINES) + "\n")
        replay = Journal(path).load()
    assert replay.unfinished is not None and replay.unfinished.plan == PLAN
    assert replay.unfinished.done == {0, 1, 2, 3} and replay.unfinished.started == {4}
    assert state_from_json(replay.state, 100.0, 1_700_000_000.0) == STATE


@FUZZ
@given(mutated_journals())
def test_mutated_records(content: bytes):
    load(content)


@FUZZ
@given(byte_edits())
def test_bytes_changed_in_a_real_journal(content: bytes):
    load(content)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(content: bytes):
    load(content)


@FUZZ
@given(st.lists(json_values, max_size=5))
def test_json_values_of_any_shape(values: list):
    load(("\n".join(json.dumps(v) for v in values) + "\n").encode())
