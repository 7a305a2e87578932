"""Errant transactions found from binlog states (per domain and server id), not only from
positions: a divergence below the last GTID is caught before any rejoin is tried. Pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.actions.mysql import ActionError, _errant
from hacontrol.decide import decide
from hacontrol.events import ProbeResult
from hacontrol.model import ControllerState
from hacontrol.plan import Notify, Promote, Rejoin
from hacontrol.rules.candidates import errant_between
from tests.factories import (
    DEAD_IO,
    NOW,
    QUARANTINE,
    S,
    down,
    healthy_round,
    old_primary_view,
    replica,
    status,
    view_of,
)

# The drill's case: node1 wrote 0-1-65 that nobody received, then node2 was promoted and wrote
# 0-2-65..106. Positions: 0-1-65 "within" 0-2-106. Binlog states: node2 never had 0-1-65.
OLD = replace(status(1, read_only=True, gtid="0-1-65"), gtid_binlog_state="0-1-65")
NEW = replace(status(2, read_only=False, gtid="0-2-106"), gtid_binlog_state="0-1-64,0-2-106")


def with_state(result: ProbeResult, state: str | None) -> ProbeResult:
    assert result.status is not None
    return replace(result, status=replace(result.status, gtid_binlog_state=state))


def old_primary_case(old_status, new_state: str | None = "0-1-64,0-2-106"):
    """The view after a failover node1 -> node2 whose node2 reports ``new_state``."""
    view = old_primary_view(old_status)
    node2 = view.nodes["node2"]
    assert node2.status is not None
    fixed = replace(
        node2.status, gtid_executed="0-2-106", gtid_binlog_pos="0-2-106",
        gtid_slave_pos="0-1-64", gtid_binlog_state=new_state,
    )  # fmt: skip
    return replace(view, nodes={**view.nodes, "node2": replace(node2, status=fixed)})


def test_divergence_below_the_last_gtid_is_quarantined_not_rejoined():
    d = decide(old_primary_case(OLD), QUARANTINE, S, NOW)
    assert d.plan.rule == "ErrantOldPrimary", d.plan.reason
    assert not any(isinstance(a, Rejoin) for a in d.plan.actions)
    (alert,) = d.plan.actions
    assert "0-1-65" in alert.summary
    assert d.state.quarantined["node1"].errant == "0-1-65"


def test_the_same_case_from_positions_alone_would_have_been_rejoined():
    """Why the states matter: without them the rule sees 0-1-65 within 0-2-106."""
    no_state = replace(OLD, gtid_binlog_state=None)
    d = decide(old_primary_case(no_state, new_state=None), QUARANTINE, S, NOW)
    assert d.plan.rule == "RejoinOldPrimary"


def test_clean_by_state_is_rejoined_and_says_how_it_was_found_clean():
    clean = replace(OLD, gtid_executed="0-1-64", gtid_binlog_pos="0-1-64",
                    gtid_slave_pos="0-1-64", gtid_binlog_state="0-1-64")  # fmt: skip
    d = decide(old_primary_case(clean), QUARANTINE, S, NOW)
    assert d.plan.rule == "RejoinOldPrimary"
    assert d.plan.actions == (Rejoin("node1", "node2"),)
    assert "binlog state 0-1-64 within 0-1-64,0-2-106" in d.plan.reason


@pytest.mark.parametrize("bad", ["0-1-x", "0-1-5,0-1-6", "garbage"])
def test_an_unreadable_state_is_unknown_quarantined_with_the_reason(bad):
    d = decide(old_primary_case(replace(OLD, gtid_binlog_state=bad)), QUARANTINE, S, NOW)
    assert d.plan.rule == "ErrantOldPrimary"
    assert "unknown (binlog state unreadable" in d.state.quarantined["node1"].errant


def test_one_state_missing_falls_back_to_positions():
    mysql_like = replace(OLD, gtid_binlog_state=None, gtid_executed="0-1-107",
                         gtid_binlog_pos="0-1-107", gtid_slave_pos="0-1-107")  # fmt: skip
    d = decide(old_primary_case(mysql_like), QUARANTINE, S, NOW)
    assert d.plan.rule == "ErrantOldPrimary"
    assert d.state.quarantined["node1"].errant == "0-1-107..107"


@pytest.mark.parametrize(
    ("mine", "position", "errant", "by_state"),
    [
        ("0-1-65", "0-1-65", "0-1-65", True),
        ("0-1-64", "0-1-64", "", True),
        ("0-1-64,0-3-70", "0-3-70", "0-3-70", True),
        (None, "0-1-65", "", False),  # positions: 0-1-65 within 0-2-106
    ],
)
def test_errant_between(mine, position, errant, by_state):
    node = replace(OLD, gtid_binlog_state=mine, gtid_executed=position,
                   gtid_binlog_pos=position, gtid_slave_pos=position)  # fmt: skip
    found = errant_between(node, NEW)
    assert (found.gtids, found.by_state, found.unknown) == (errant, by_state, None)
    assert bool(found) == bool(errant)


def test_a_replica_with_a_divergence_below_the_last_gtid_is_no_candidate():
    """node2 wrote 0-2-50 of its own long ago (gone from positions since node1 wrote on)."""
    rounds = [healthy_round(t) for t in (1.0, 2.0, 3.0)]
    for t in (4.0, 5.0, 6.0):
        node1 = down("node1", t)
        node2 = with_state(replica("node2", t, **DEAD_IO), "0-1-100,0-2-50")
        node3 = with_state(replica("node3", t, **DEAD_IO), "0-1-100")
        rounds.append([node1, node2, node3])
    # node1's last answer (round 3) had its state: give it one.
    rounds[2][0] = with_state(rounds[2][0], "0-1-100")
    d = decide(view_of(*rounds), ControllerState(), S, NOW)
    assert next(a for a in d.plan.actions if isinstance(a, Promote)).node == "node3"
    table = dict(next(a for a in d.plan.actions if isinstance(a, Notify)).sections)["candidates"]
    assert "errant transactions 0-2-50" in table


def test_rejoin_action_refuses_by_state_before_attaching():
    found = _errant(OLD, NEW)
    assert found is not None and found["errant"] == "0-1-65"
    assert found["errant_by"] == "gtid_binlog_state"
    clean = replace(OLD, gtid_executed="0-1-64", gtid_binlog_pos="0-1-64",
                    gtid_slave_pos="0-1-64", gtid_binlog_state="0-1-64")  # fmt: skip
    assert _errant(clean, NEW) is None
    with pytest.raises(ActionError, match="binlog state unreadable"):
        _errant(replace(OLD, gtid_binlog_state="nonsense"), NEW)
