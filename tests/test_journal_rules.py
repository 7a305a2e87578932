"""When the journal cannot be written: the rule (``rules.journal``) as a table, and what
``step`` does with it. Pure: plain values, no file, no loop."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.effects import PersistState, SendAlert, StartPlan
from hacontrol.events import JournalStatus, ProbeResult, Tick
from hacontrol.model import ControllerState, JournalHealth, Model, Quarantined, persisted
from hacontrol.plan import (
    AlertKind,
    Fence,
    Plan,
    PlanKind,
    Promote,
    Rejoin,
    Route,
    RouteFence,
    WaitApplied,
)
from hacontrol.routing import Membership
from hacontrol.rules.journal import UNWRITABLE, goes_on_without_journal, refusal
from tests.factories import (
    S,
    cmd,
    dead,
    lines,
    model,
    of,
    primary,
    replica,
    replies,
    router,
    status,
    steps,
)
from tests.support import fold_all

FULL = JournalHealth(False, "/j/journal.jsonl: No space left on device", since=1.0)
OK = JournalHealth()

FAILOVER = Plan(
    "DeadPrimary",
    "node1 is dead",
    (RouteFence("node1"), WaitApplied("node2", 5), Promote("node2", "node1")),
    PlanKind.FAILOVER,
)
SWITCHOVER = Plan("Switchover", "to node2", (Promote("node2", "node1"),), PlanKind.SWITCHOVER)
REJOIN = Plan("RejoinOldPrimary", "clean", (Rejoin("node1", "node2"),), PlanKind.REJOIN)
FENCE = Plan("FenceReturningPrimary", "back", (Fence("node1"),), PlanKind.FENCE)
ROUTE = Plan("RouteReconcile", "r", (Route(Membership.of(["node1"])),), PlanKind.ROUTE)


@pytest.mark.parametrize(
    ("plan", "journal", "refused"),
    [
        (FAILOVER, FULL, False),  # a dead primary: the outage is certain, the crash is not
        (SWITCHOVER, FULL, True),  # planned: it can wait for the journal
        (REJOIN, FULL, True),
        (FENCE, FULL, False),  # one statement, never journaled
        (ROUTE, FULL, False),
        (SWITCHOVER, OK, False),
        (REJOIN, OK, False),
    ],
    ids=lambda v: (
        v.rule
        if isinstance(v, Plan)
        else ("writable" if v.writable else "unwritable")
        if isinstance(v, JournalHealth)
        else ("refused" if v else "starts")
    ),
)
def test_which_plans_start_while_the_journal_cannot_be_written(plan, journal, refused):
    withheld = refusal(plan, journal)
    assert (withheld is not None) is refused
    if withheld is not None:
        assert withheld.rule == UNWRITABLE and not withheld.actions
        assert "No space left on device" in withheld.reason and plan.rule in withheld.reason


@pytest.mark.parametrize(
    ("kind", "promoted", "goes_on"),
    [
        (PlanKind.FAILOVER, False, True),  # before its promotion: still the only way out
        (PlanKind.FAILOVER, True, True),
        (PlanKind.SWITCHOVER, False, False),  # stops after the step in flight, rolls back
        (PlanKind.SWITCHOVER, True, True),  # past the point of no return: always finished
        (PlanKind.REJOIN, False, False),
    ],
)
def test_a_running_plan_whose_record_fails(kind, promoted, goes_on):
    plan = replace(FAILOVER, kind=kind)
    assert goes_on_without_journal(plan, promoted) is goes_on


def unwritable(at: float = 100.0, reason: str = FULL.reason) -> JournalStatus:
    return JournalStatus(at, False, reason)


def writable(at: float = 100.0, free: int = 10**9) -> JournalStatus:
    return JournalStatus(at, True, "", free, low=False)


def test_the_journal_going_down_alerts_once_and_coming_back_writes_the_state():
    m = replace(model(), state=replace(model().state, paused=True))
    m, effects = steps(m, unwritable())
    assert m.state.journal.writable is False and m.state.journal.since == 100.0
    (alert,) = of(effects, SendAlert)
    assert (
        alert.alert.kind is AlertKind.JOURNAL_UNWRITABLE and "No space left" in alert.alert.reason
    )
    assert "A failover still runs" in alert.alert.reason
    assert lines(effects, "journal_unwritable")[0].level == "error"
    m, effects = steps(m, unwritable(101.0), JournalStatus(102.0, False, "hung"))
    assert not of(effects, SendAlert) and m.state.journal.since == 100.0  # once
    m, effects = steps(m, writable(110.0))
    assert m.state.journal == JournalHealth(True, "", None, False, 10**9)
    assert lines(effects, "journal_writable")
    (persist,) = of(effects, PersistState)  # what only memory held meanwhile
    assert persist.state == persisted(m) and persist.state.paused


def test_low_room_alerts_before_it_is_too_late():
    m, effects = steps(model(), JournalStatus(100.0, True, "", 5 * 2**20, low=True))
    (alert,) = of(effects, SendAlert)
    assert alert.alert.kind is AlertKind.JOURNAL_LOW_SPACE and "5120 KiB free" in alert.alert.reason
    assert m.state.journal.writable and m.state.journal.low
    _, effects = steps(m, JournalStatus(101.0, True, "", 4 * 2**20, low=True))
    assert not of(effects, SendAlert)


def test_a_dead_primary_is_failed_over_with_an_unwritable_journal():
    m = dead()
    m = replace(m, state=replace(m.state, journal=FULL))
    m, effects = steps(m, Tick(101.0))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.kind is PlanKind.FAILOVER
    assert "node1" in m.state.quarantined  # kept in memory; written when the journal is back
    assert of(effects, PersistState)  # attempted all the same (its failure is an event)


def test_a_switchover_is_refused_with_the_reason_while_the_journal_cannot_be_written():
    m = replace(model(), state=replace(model().state, journal=FULL))
    m, effects = steps(m, cmd("switchover", "node2"))
    assert not of(effects, StartPlan) and m.running is None
    (answer,) = replies(effects)
    assert not answer.ok and "refused: the journal cannot be written" in answer.message
    assert "No space left on device" in answer.message


def rejoin_model(journal: JournalHealth, writers: tuple[str, ...] = ("node2",)) -> Model:
    node1 = ProbeResult("node1", 0.0, 0.001, status(1, read_only=True, gtid="0-1-100"))
    rounds = [
        [
            primary("node2", at=t),
            replica("node3", t, source="node2"),
            replace(node1, at=t),
            router(writers=writers, readers=("node2", "node3"), broken=("node1",), at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    state = ControllerState(
        quarantined={"node1": Quarantined("node1", "node2", 50.0)}, journal=journal
    )
    return Model(fold_all(S, *rounds), state=state)


def test_an_automatic_rejoin_waits_for_the_journal_and_is_logged_once():
    m, effects = steps(rejoin_model(FULL), Tick(100.0), Tick(101.0), Tick(102.0))
    assert not of(effects, StartPlan)
    decisions = lines(effects, "decision")
    assert [d.fields["rule"] for d in decisions] == [UNWRITABLE]  # logged once, not per event
    assert "not doing RejoinOldPrimary" in decisions[0].fields["reason"]
    m, effects = steps(m, writable(103.0))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.rule == "RejoinOldPrimary"


def test_a_rejoin_that_waits_for_the_journal_does_not_hold_up_the_routing():
    """A failover on a full disk whose Route failed (the router was down): the router answers
    again with no writer while the old primary, back and fenced, waits for its rejoin. The
    rejoin waits for the journal; the routing rule, below it in the table, must still put the
    writer on node2, or writes go nowhere until someone frees the disk."""
    m, effects = steps(rejoin_model(FULL, writers=()), Tick(100.0))
    (start,) = of(effects, StartPlan)
    assert start.running.plan.rule == "RouteReconcile"
    (route,) = start.running.plan.actions
    assert isinstance(route, Route) and route.desired.writers == {"node2"}
    routed = router(writers=("node2",), readers=("node2", "node3"), broken=("node1",), at=101.0)
    m, effects = steps(replace(m, running=None), routed)  # routed: the rejoin still waits
    assert not of(effects, StartPlan)
    assert [d.fields["rule"] for d in lines(effects, "decision")] == [UNWRITABLE]
