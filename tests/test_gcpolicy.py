"""The collector policy applied once every cluster has started (``gcpolicy``): start-up's
garbage collected, what is alive frozen, the thresholds raised, one log line saying so. What
it does to the pauses is measured by bench/scale.py, not asserted here."""

from __future__ import annotations

import asyncio
import gc
import io
import json

import pytest

from hacontrol.gcpolicy import THRESHOLDS, settle_after_start
from hacontrol.jsonlog import JsonLog


@pytest.fixture
def collector_restored():
    """The process's collector as it was, whatever the test did to it."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_start_up_garbage_is_collected_what_lives_is_frozen_and_thresholds_raised(
    collector_restored,
):
    kept = Node()
    assert any(o is kept for o in gc.get_objects())  # walked by the collector
    dropped = Node()
    del dropped
    stream = io.StringIO()
    applied = settle_after_start(JsonLog(None, stream=stream, level="info"))
    assert applied.collected >= 1  # the dropped cycle (and its __dict__)
    assert gc.get_threshold() == THRESHOLDS == applied.thresholds
    assert applied.frozen > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen: walked no more
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["event"] == "gc_settled" and line["level"] == "info"
    assert line["after"] == "start-up"
    assert line["thresholds"] == list(THRESHOLDS) and line["frozen"] == applied.frozen


def test_without_a_log_it_applies_the_same_and_writes_nothing(collector_restored, capsys):
    applied = settle_after_start()
    assert gc.get_threshold() == THRESHOLDS and applied.frozen > 0
    assert capsys.readouterr().out == ""


async def test_what_the_first_probes_made_is_frozen_once_later(collector_restored):
    stream = io.StringIO()
    settle_after_start(JsonLog(None, stream=stream, level="info"), again_after=0.05)
    made_later = [Node() for _ in range(100)]  # connections, views, models of the first probes
    assert any(o is made_later[0] for o in gc.get_objects())
    await asyncio.sleep(0.3)
    assert not any(o is made_later[0] for o in gc.get_objects())
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [line["after"] for line in lines] == ["start-up", "first probes"]
    assert lines[1]["thresholds"] == list(THRESHOLDS)


async def test_the_second_freeze_collects_the_young_generation_only(collector_restored):
    """The middle generation holds what the first probes made (140,000 objects at 1,000 nodes):
    collecting it stopped every probe for 0.08 s. The second freeze walks the young one only."""
    settle_after_start(again_after=0.05)
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        await asyncio.sleep(0.3)
    finally:
        gc.callbacks.remove(note)
    assert seen == [0]
