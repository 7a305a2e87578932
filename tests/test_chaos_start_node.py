"""The chaos drill's choice when it starts a stopped node again (pure): read-only behind a
writer, writable only when no other running node can be one. An unknown sample (a read that
timed out under load) is "ask again", never "no writer": the drill once restarted the old
primary writable beside the promoted node (kill-controller-mid-plan under load)."""

from __future__ import annotations

import pytest

from hacontrol.drill.chaos import READ_ONLY, start_option

WRITABLE = "--read-only=OFF"


@pytest.mark.parametrize(
    ("latest", "down", "expected"),
    [
        ({"node1": None, "node2": False, "node3": True}, {"node1"}, READ_ONLY),
        ({"node1": None, "node2": False, "node3": None}, {"node1"}, READ_ONLY),
        ({"node1": None, "node2": True, "node3": True}, {"node1"}, WRITABLE),
        ({"node1": None, "node2": None, "node3": True}, {"node1"}, None),
        ({"node1": None, "node2": True, "node3": None}, {"node1"}, None),
        ({"node1": None, "node2": None, "node3": True}, {"node1", "node2"}, WRITABLE),
        ({"node1": False, "node2": False, "node3": True}, {"node1", "node2"}, WRITABLE),
    ],
    ids=[
        "another-writer",
        "another-writer-beside-an-unknown",
        "every-other-read-only",
        "the-promoted-node-unknown",
        "a-replica-unknown",
        "an-unknown-node-is-down-too",
        "a-stale-writable-sample-of-a-down-server",
    ],
)
def test_how_a_stopped_node_starts_again(latest, down, expected):
    assert start_option(latest, "node1", down) == expected
