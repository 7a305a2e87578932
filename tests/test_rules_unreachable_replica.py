"""A replica that cannot be read when a failover is decided (rules/doubt.py): every branch on
built views. Semi-sync waits for ONE replica's acknowledgement, so a replica that went away
with the primary may hold a write it alone acknowledged; one that was gone before cannot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hacontrol.decide import decide
from hacontrol.effects import Reply
from hacontrol.events import OperatorCommand, ProbeResult
from hacontrol.flavors.base import IoState, SemiSync
from hacontrol.journal import Journal, state_from_json, state_to_json
from hacontrol.model import AlertKey, Condition, ControllerState, Lease, Model, persisted
from hacontrol.plan import Notify, PlanKind, Promote, SetIOThreads
from hacontrol.rules.commands import command
from hacontrol.rules.doubt import doubted, judge_unanswered
from hacontrol.settings import Settings
from hacontrol.status import controller_status
from hacontrol.step import boot
from hacontrol.view import ClusterView, Code, with_maintenance
from tests.factories import down, fleet, primary, replica, router, settings
from tests.support import fold_all

NAMES = ("node2", "node3", "node4", "node5")
S5 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
)
NEVER = 4294967.295
DEAD_IO = {"io_state": IoState.CONNECTING, "last_io_errno": 2003, "last_io_error": "refused"}
STOPPED = {"io_state": IoState.STOPPED}  # an operator's STOP SLAVE IO_THREAD (a backup)
WAIT = S5.failover.wait_unreachable_replica
KEY = AlertKey(Condition.NO_CANDIDATE, "node1 unanswered")


def semi(clients: int = 3, timeout: float | None = NEVER, wait: bool = True, on: bool = True):
    return SemiSync(on, clients, on, True, timeout, wait)


def cluster(
    *,
    node5_last_ok: float,
    clients: int = 3,
    semi_sync: SemiSync | None = None,
    primary_gtid: str = "0-1-100",
    hidden: tuple[str, ...] = (),
    stopped: tuple[str, ...] = (),
    s: Settings = S5,
) -> ClusterView:
    """Five nodes, healthy until t=3 (node5 answers until ``node5_last_ok`` only); from t=4
    node1 is down and the replicas that answer lost their link to it; node5 never answers
    again. ``clients``: node1's semi-sync clients at each of its good probes."""
    sync = semi_sync or semi(clients)
    every = {"readers": tuple(n for n in ("node1", *NAMES) if n not in hidden), "hidden": hidden}
    rounds: list[list] = []
    for t in (1.0, 2.0, 3.0):
        node5 = replica("node5", t) if t <= node5_last_ok else down("node5", t)
        rounds.append(
            [
                primary(at=t, semi_sync=sync, gtid=primary_gtid if t == 3.0 else "0-1-100"),
                *(replica(n, t, **(STOPPED if n in stopped else {})) for n in NAMES[:3]),
                node5,
                router(**every, at=t),
            ]
        )
    for t in (4.0, 5.0, 6.0):
        answering = [replica(n, t, **(STOPPED if n in stopped else DEAD_IO)) for n in NAMES[:3]]
        rounds.append([down("node1", t), down("node5", t), *answering, router(**every, at=t)])
    return fold_all(s, *rounds)


def primary_lost(
    gone: tuple[str, ...], cut: tuple[str, ...], every: dict, times=(4.0, 5.0, 6.0)
) -> list[list]:
    """The rounds at ``times`` (t=4, 5, 6): node1 and ``gone`` down, the replicas ``cut``
    answering with their link to node1 lost."""
    return [
        [
            down("node1", t),
            *(down(n, t) for n in gone),
            *(replica(n, t, **DEAD_IO) for n in cut),
            router(**every, at=t),
        ]
        for t in times
    ]


def notify_of(plan) -> Notify:
    return next(a for a in plan.actions if isinstance(a, Notify))


def maintenance_on(
    view: ClusterView, state: ControllerState, node: str, at: float, s: Settings = S5
) -> tuple[Model, str]:
    """``hacontrol maintenance NODE on`` through the command path: the model after it (the
    node in maintenance, the consent if any) and the answer's text (or the started plan's
    reason: a maintenance that routes is answered when its plan ends)."""
    model, effects = command(
        Model(view, state), OperatorCommand(at, "maintenance", node, True), s, at
    )
    replies = [e.result for e in effects if isinstance(e, Reply)]
    if replies:
        assert replies[0].ok, replies[0].message
        return model, replies[0].message
    assert model.running is not None, effects
    return model, model.running.plan.reason


def test_a_replica_gone_with_the_primary_makes_the_failover_wait_then_halt():
    view = cluster(node5_last_ok=3.0)  # node5 answered node1's last good probe round
    first = decide(view, ControllerState(), S5, 7.0)
    assert first.plan.rule == "WaitUnreachableReplica", first.plan.reason
    assert first.plan.actions == () and first.plan.kind is PlanKind.ALERT
    assert "node5" in first.plan.reason and "may have acknowledged" in first.plan.reason
    assert first.state.first_seen[KEY] == 7.0
    still = decide(view, first.state, S5, 7.0 + WAIT - 0.1)
    assert still.plan.rule == "WaitUnreachableReplica" and still.state.first_seen[KEY] == 7.0
    halted = decide(view, still.state, S5, 7.0 + WAIT)
    assert halted.plan.rule == "UnreachableReplicaInDoubt" and halted.plan.kind is PlanKind.HALT
    alert = notify_of(halted.plan)
    assert "writes stay down" in alert.reason and "hacontrol maintenance node5 on" in alert.reason
    assert not any(isinstance(a, Promote | SetIOThreads) for a in halted.plan.actions)
    assert halted.state.halt is None  # re-evaluated at every decision: no stored halt
    again = decide(view, halted.state, S5, 7.0 + WAIT + 1)
    assert again.plan.rule == "UnreachableReplicaInDoubt" and again.plan.actions == ()


def test_a_replica_gone_before_the_primarys_last_good_probe_does_not_stop_the_failover():
    view = cluster(node5_last_ok=1.0)  # gone at t=2, node1 answered at 2 and 3 with 3 clients
    d = decide(view, ControllerState(), S5, 7.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    stop = next(a for a in d.plan.actions if isinstance(a, SetIOThreads))
    assert "node5" not in stop.nodes  # it cannot be stopped now; it was never in doubt
    at_risk = dict(notify_of(d.plan).sections)["acknowledged writes at risk"]
    assert "node5 could not be read, but it stopped answering before" in at_risk
    assert "cannot be checked" not in at_risk


@pytest.mark.parametrize(
    ("name", "kw", "doubt"),
    [
        ("the primary had a fourth semi-sync replica", {"clients": 4}, "4 semi-sync replica(s)"),
        ("the clients unknown", {"semi_sync": SemiSync(True, None, True, True, NEVER, True)}, ""),
        ("the candidate lacks the last write", {"primary_gtid": "0-1-101"}, "lacks 0-1-101"),
        (
            "an answering replica was not linked to the primary then: node5 may have been",
            {"stopped": ("node4",)},
            "more than the 2 that answer and were linked",
        ),
    ],
)
def test_a_replica_gone_before_stays_in_doubt_when_the_primary_does_not_clear_it(name, kw, doubt):
    view = cluster(node5_last_ok=1.0, **kw)
    judged = judge_unanswered(view, S5, "node1", "node2")
    assert [u.node for u in judged] == ["node5"] and judged[0].doubt is not None
    assert doubt in judged[0].doubt
    assert decide(view, ControllerState(), S5, 7.0).plan.rule == "WaitUnreachableReplica"


@pytest.mark.parametrize(
    "sync",
    [semi(3, timeout=2.0), semi(3, wait=False), semi(3, on=False)],
    ids=["falls back after 2 s", "falls back without replicas", "asynchronous"],
)
def test_without_a_semi_sync_promise_the_failover_goes_on_and_says_what_is_at_risk(sync):
    d = decide(cluster(node5_last_ok=3.0, semi_sync=sync), ControllerState(), S5, 7.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert "s so far" in dict(notify_of(d.plan).sections)["acknowledged writes at risk"]


def answers(view: ClusterView, node5_received: str) -> ClusterView:
    return fold_all(S5, replica("node5", 7.5, received_gtid=node5_received, **DEAD_IO), view=view)


def test_a_replica_that_answers_within_the_wait_is_compared_and_stopped_like_the_others():
    view = cluster(node5_last_ok=3.0)
    waiting = decide(view, ControllerState(), S5, 7.0)
    d = decide(answers(view, "0-1-100"), waiting.state, S5, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    stop = next(a for a in d.plan.actions if isinstance(a, SetIOThreads))
    assert set(stop.nodes) == set(NAMES)
    # It received a write the others did not (acknowledged by it alone): it is the one promoted.
    d = decide(answers(view, "0-1-101"), waiting.state, S5, 8.0)
    assert next(a for a in d.plan.actions if isinstance(a, Promote)) == Promote("node5", "node1")


def test_hiding_is_no_consent_the_operators_command_is():
    waiting = decide(cluster(node5_last_ok=3.0), ControllerState(), S5, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica"
    # Hidden before the incident (a backup in maintenance) is no consent: still waited for.
    before = decide(cluster(node5_last_ok=3.0, hidden=("node5",)), ControllerState(), S5, 7.0)
    assert before.plan.rule == "WaitUnreachableReplica", before.plan.reason
    # Hidden in the router after the failover began to wait (another instance, by hand):
    # never taken for a consent.
    hidden = cluster(node5_last_ok=3.0, hidden=("node5",))
    assert decide(hidden, waiting.state, S5, 8.0).plan.rule == "WaitUnreachableReplica"
    # The operator's command is: recorded for this dead primary at its position.
    model, said = maintenance_on(cluster(node5_last_ok=3.0), waiting.state, "node5", 8.0)
    assert "consent recorded" in said and "node1 (dead at 0-1-100)" in said, said
    (consent,) = model.state.consents
    assert (consent.node, consent.dead, consent.position) == ("node5", "node1", "0-1-100")
    d = decide(model.view, model.state, S5, 8.5)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    alert = notify_of(d.plan)
    at_risk = dict(alert.sections)["acknowledged writes at risk"]
    # Never "none": node5 may hold what node1 acknowledged and node2 lacks (review MEDIUM 4).
    assert at_risk.startswith(
        "unknown: the failover went on without node5 by an operator's consent: it may hold "
        "writes node1 acknowledged that node2 lacks; read it before rebuilding it"
    ), at_risk
    assert at_risk in alert.reason  # in the mail's first lines too
    assert d.state.consents == ()  # used: it allowed this failover and no other


@pytest.mark.parametrize(
    ("enabled", "negotiated", "client"),
    [
        (False, None, False),  # asynchronous (a server that does not report the status)
        (False, False, False),  # asynchronous
        (True, False, False),  # variable ON, IO thread not reconnected since: no client yet
        (True, True, True),  # a semi-sync client: it can stand for one node1 counted
        (True, None, True),  # no status reported: the variable stands for it
    ],
)
def test_an_asynchronous_replica_is_no_semi_sync_client(enabled, negotiated, client):
    # node1 counted 3 clients: node2, node3 and one of node4 (answers) / node5 (gone at 1.0).
    view = cluster(node5_last_ok=1.0)
    node4 = replica("node4", 6.5, **DEAD_IO)
    assert node4.status is not None
    semi_sync = replace(node4.status.semi_sync, replica_enabled=enabled, replica_active=negotiated)
    view = fold_all(
        S5, replace(node4, status=replace(node4.status, semi_sync=semi_sync)), view=view
    )
    judged = judge_unanswered(view, S5, "node1", "node2")
    if client:
        assert judged[0].doubt is None, judged[0].why
    else:
        assert judged[0].doubt is not None and "more than the 2 that answer" in judged[0].doubt
        assert decide(view, ControllerState(), S5, 7.0).plan.rule == "WaitUnreachableReplica"


def test_a_node_never_read_is_judged_and_so_is_an_unnamed_semi_sync_client():
    # node5 never answered since the controller started: its source is unknown.
    sync = semi(4)
    rounds = [
        [
            primary(at=t, semi_sync=sync),
            *(replica(n, t) for n in NAMES[:3]),
            down("node5", t),
            router(readers=("node1", *NAMES[:3]), at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), *(replica(n, t, **DEAD_IO) for n in NAMES[:3]), down("node5", t)]
        for t in (4.0, 5.0, 6.0)
    ]
    view = fold_all(S5, *rounds)
    judged = judge_unanswered(view, S5, "node1", "node2")
    assert [u.node for u in judged] == ["node5"] and judged[0].doubt is not None
    # Four clients, three known replicas that answer: a client nobody can name.
    three = settings(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 5)]
    )
    view = fold_all(three, *([e for e in r if getattr(e, "node", "") != "node5"] for r in rounds))
    d = decide(view, ControllerState(), three, 7.0)
    assert d.plan.rule == "WaitUnreachableReplica" and "cannot name" in d.plan.reason
    halted = decide(view, d.state, three, 7.0 + WAIT)
    reason = notify_of(halted.plan).reason  # no node to hide: what names it, or by hand
    assert "adds it to the settings" in reason and "promotes by hand" in reason, reason
    assert "hacontrol maintenance" not in reason


def test_without_a_semi_sync_promise_a_replica_with_one_failed_probe_is_stopped_as_before():
    view = cluster(node5_last_ok=1.0, semi_sync=semi(3, timeout=10.0))
    view = fold_all(S5, replica("node5", 6.2, **DEAD_IO), down("node5", 6.5), view=view)
    assert view.nodes["node5"].reachable and view.nodes["node5"].failures == 1
    d = decide(view, ControllerState(), S5, 7.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    stop = next(a for a in d.plan.actions if isinstance(a, SetIOThreads))
    assert set(stop.nodes) == set(NAMES)


def test_three_nodes_a_replica_whose_last_probe_failed_is_neither_promoted_nor_trusted():
    # node3 froze with node1: one failed probe, still "reachable" (below failure_threshold),
    # its last answer stale. It is no candidate, and node2 alone cannot clear it.
    s3 = settings()
    sync = SemiSync(True, 2, True, True, NEVER, True)
    rounds = [
        [primary(at=t, semi_sync=sync), replica("node2", t), replica("node3", t), router(at=t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [[down("node1", t), replica("node2", t, **DEAD_IO)] for t in (4.0, 5.0, 6.0)]
    rounds.append([down("node3", 6.5)])
    view = fold_all(s3, *rounds)
    assert view.nodes["node3"].reachable and view.nodes["node3"].failures == 1
    d = decide(view, ControllerState(), s3, 7.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "node3" in d.plan.reason


def test_the_wait_is_a_setting_named_in_its_error():
    assert settings(failover={"wait_unreachable_replica": 0}).failover.wait_unreachable_replica == 0
    with pytest.raises(ValueError, match=r"failover\.wait_unreachable_replica"):
        settings(failover={"wait_unreachable_replica": -1})


def test_gone_before_means_a_whole_probe_interval_and_timeout_before_the_primarys_last_probe():
    # node5's last answer at t=2, node1's at t=3: node5's next probe (due by t=3) may have
    # been sent after node1's, so node5 may have been replicating then: in doubt.
    late = judge_unanswered(cluster(node5_last_ok=2.0), S5, "node1", "node2")
    assert late[0].doubt is not None and "may still have been replicating" in late[0].doubt
    early = judge_unanswered(cluster(node5_last_ok=1.0), S5, "node1", "node2")
    assert early[0].doubt is None and "acknowledged nothing node2 lacks" in early[0].why


def test_a_hidden_replica_that_stops_answering_is_waited_for():
    # In maintenance (a backup) it may still replicate semi-synchronously: one failed probe is
    # not the operator's decision to go on without it; unreachable and hidden is.
    every = {"readers": ("node1", *NAMES[:3]), "hidden": ("node5",)}
    rounds = [
        [
            primary(at=t, semi_sync=semi(4)),
            *(replica(n, t) for n in NAMES),
            router(**every, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), *(replica(n, t, **DEAD_IO) for n in NAMES), router(**every, at=t)]
        for t in (4.0, 5.0, 6.0)
    ]
    view = fold_all(S5, *rounds, down("node5", 6.5))
    assert view.nodes["node5"].reachable and view.nodes["node5"].failures == 1
    assert decide(view, ControllerState(), S5, 7.0).plan.rule == "WaitUnreachableReplica"
    gone = fold_all(S5, down("node5", 6.6), down("node5", 6.7), view=view)
    assert not gone.nodes["node5"].reachable  # hidden before the incident: still waited for
    assert decide(gone, ControllerState(), S5, 7.0).plan.rule == "WaitUnreachableReplica"


def test_hiding_a_never_read_node_after_the_wait_began_lets_the_failover_go_on():
    # node5 never answered; node1 counted four clients: node5's share goes with the consent.
    sync = semi(4)
    every = {"readers": ("node1", *NAMES[:3])}
    rounds = [
        [primary(at=t, semi_sync=sync), *(replica(n, t) for n in NAMES[:3]), down("node5", t)]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), *(replica(n, t, **DEAD_IO) for n in NAMES[:3]), down("node5", t)]
        for t in (4.0, 5.0, 6.0)
    ]
    view = fold_all(S5, *rounds, router(**every, at=6.0))
    waiting = decide(view, ControllerState(), S5, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    model, _ = maintenance_on(view, waiting.state, "node5", 7.5)
    d = decide(model.view, model.state, S5, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason


S7 = settings(
    nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 8)]
)
LIVE7 = ("node2", "node3", "node6", "node7")


def seven_nodes_two_in_doubt(clients: int = 6, node5_gone_at: float = 4.0) -> ClusterView:
    """Seven nodes; node1 counted ``clients`` semi-sync clients. node4 is cut off from the
    controller alone since t=2 (still acknowledging); node5 stops answering at
    ``node5_gone_at`` (with node1, by default): both in doubt."""
    every = {"readers": ("node1", *LIVE7)}
    rounds = [
        [
            primary(at=t, semi_sync=semi(clients)),
            *(replica(n, t) for n in LIVE7),
            replica("node4", t) if t < 2.0 else down("node4", t),
            replica("node5", t) if t < node5_gone_at else down("node5", t),
            router(**every, at=t),
        ]
        for t in (1.0, 2.0, 3.0, 3.5)
    ]
    rounds += primary_lost(("node4", "node5"), LIVE7, every)
    return fold_all(S7, *rounds)


def consent7(view: ClusterView, state: ControllerState, *nodes: str, at: float) -> Model:
    """``hacontrol maintenance NODE on`` for each of ``nodes``, in order."""
    model = Model(view, state)
    for node in nodes:
        model, _ = maintenance_on(model.view, model.state, node, at, S7)
    return model


def test_consent_to_one_of_two_replicas_in_doubt_leaves_the_other_in_doubt():
    # Hiding node5 counts it once among the clients: node4 stays in doubt.
    view = seven_nodes_two_in_doubt()
    waiting = decide(view, ControllerState(), S7, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    assert "node4" in waiting.plan.reason and "node5" in waiting.plan.reason
    model = consent7(view, waiting.state, "node5", at=7.5)
    d = decide(model.view, model.state, S7, 8.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "node4" in d.plan.reason and "node5:" not in d.plan.reason


def test_the_halt_names_a_command_for_every_node_in_doubt_and_following_it_goes_on():
    view = seven_nodes_two_in_doubt()
    waiting = decide(view, ControllerState(), S7, 7.0)
    halted = decide(view, waiting.state, S7, 7.0 + WAIT)
    assert halted.plan.rule == "UnreachableReplicaInDoubt", halted.plan.reason
    reason = notify_of(halted.plan).reason
    commands = "`hacontrol maintenance node4 on` and `hacontrol maintenance node5 on` record"
    assert commands in reason, reason
    assert "adds it to the settings" not in reason and "already hidden" not in reason
    # Followed verbatim: both consented (and hidden), the failover goes on without them.
    model = consent7(view, halted.state, "node4", "node5", at=7.5 + WAIT)
    d = decide(model.view, model.state, S7, 8.0 + WAIT)
    assert d.plan.rule == "DeadPrimary", d.plan.reason


def test_consent_to_a_node_that_was_no_client_does_not_clear_one_that_was():
    # node1 counted 5 clients: node2, node3, node6, node7 and node4 (cut off from the
    # controller alone, still acknowledging); node5 died at t=2, before node1's last good
    # probe: no client. Both in doubt (5 clients, 4 that answer). The operator hides node5
    # (dead for a while, nothing on it): that consent covers node5 alone; node4, which may
    # hold writes it alone acknowledged, stays in doubt.
    view = seven_nodes_two_in_doubt(clients=5, node5_gone_at=2.0)
    waiting = decide(view, ControllerState(), S7, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    model = consent7(view, waiting.state, "node5", at=7.5)
    d = decide(model.view, model.state, S7, 8.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "node4" in d.plan.reason


def halted_on_node5(view: ClusterView, state: ControllerState | None = None):
    waiting = decide(view, state or ControllerState(), S5, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    halted = decide(view, waiting.state, S5, 7.0 + WAIT)
    assert halted.plan.rule == "UnreachableReplicaInDoubt", halted.plan.reason
    return halted


ADVICE = "`hacontrol maintenance node5 on` records that consent for this failover"


@pytest.mark.parametrize("how", ["by an earlier maintenance command", "in the router only"])
def test_a_node_hidden_before_the_incident_the_advice_followed_verbatim_goes_on(how):
    # A backup in maintenance since hours: waited for (hiding is no consent); the advice says
    # the command works though it is hidden already, and it does.
    view = cluster(node5_last_ok=3.0, hidden=("node5",))
    if how.startswith("by an earlier"):
        view = with_maintenance(view, frozenset({"node5"}), S5)
    halted = halted_on_node5(view)
    reason = notify_of(halted.plan).reason
    assert ADVICE in reason and "(node5 already hidden: accepted all the same)" in reason, reason
    model, said = maintenance_on(view, halted.state, "node5", 13.0)
    assert "consent recorded" in said, said
    d = decide(model.view, model.state, S5, 13.5)
    assert d.plan.rule == "DeadPrimary", d.plan.reason


def restarted(model: Model, view: ClusterView, tmp_path) -> Model:
    """A controller restart: the state written to a real journal file, read back, and a
    fresh model booted from it over ``view`` (nothing else kept)."""
    journal = Journal(tmp_path / "journal.jsonl")
    journal.save_state(state_to_json(persisted(model), 100.0, 5000.0))
    kept = journal.load().state
    assert kept is not None
    booted, _ = boot(
        view,
        S5,
        kept=state_from_json(kept, 20.0, 5000.0 - 80.0),
        unfinished=None,
        acknowledge_block=False,
        paused=False,
        acting=True,
        wall_offset=0.0,
    )
    return booted


def test_the_consent_outlives_a_controller_restart(tmp_path):
    view = cluster(node5_last_ok=3.0)
    halted = halted_on_node5(view)
    assert ADVICE in notify_of(halted.plan).reason
    model, _ = maintenance_on(view, halted.state, "node5", 13.0)
    again = restarted(model, model.view, tmp_path)
    assert again.state.first_seen == {} and again.state.consents[0].node == "node5"
    # Written at wall 5000 (monotonic 100), read back at monotonic 20, wall 4920: the same
    # wall-clock moment, so 13.0 monotonic then is 13.0 monotonic now.
    assert again.state.consents[0].at == pytest.approx(13.0)
    d = decide(again.view, again.state, S5, 21.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason


def test_without_the_consent_a_restart_halts_again_and_the_advice_still_works(tmp_path):
    # The restarted controller (or a new fleet leader) never heard the consent: it asks again;
    # node5 is hidden now, and the same command is accepted.
    view = cluster(node5_last_ok=3.0)
    hidden, _ = maintenance_on(view, ControllerState(), "node5", 6.5)  # before any wait
    assert hidden.state.consents == () and "node5" in hidden.view.maintenance
    again = restarted(hidden, hidden.view, tmp_path)
    halted = halted_on_node5(again.view, again.state)
    assert "(node5 already hidden: accepted all the same)" in notify_of(halted.plan).reason
    model, said = maintenance_on(again.view, halted.state, "node5", 13.0)
    assert "consent recorded" in said
    assert decide(model.view, model.state, S5, 13.5).plan.rule == "DeadPrimary"


def test_a_consent_never_applies_to_another_incident():
    view = cluster(node5_last_ok=3.0)
    waiting = decide(view, ControllerState(), S5, 7.0)
    model, _ = maintenance_on(view, waiting.state, "node5", 8.0)
    # node1 came back, took a write, and died again: another position, another incident.
    later = cluster(node5_last_ok=3.0, primary_gtid="0-1-101")
    later = with_maintenance(later, frozenset({"node5"}), S5)
    d = decide(later, replace(model.state, first_seen={}), S5, 20.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    # A consent about another dead primary never applies either.
    other = replace(model.state.consents[0], dead="node2")
    d = decide(model.view, replace(model.state, consents=(other,)), S5, 8.5)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason


def test_maintenance_of_a_node_not_in_doubt_records_no_consent_and_off_withdraws_one():
    view = cluster(node5_last_ok=3.0)
    plain, said = maintenance_on(view, ControllerState(), "node5", 6.5)  # no wait began yet
    assert plain.state.consents == () and "consent" not in said
    waiting = decide(view, ControllerState(), S5, 7.0)
    other, said = maintenance_on(view, waiting.state, "node3", 8.0)  # node3 answers
    assert other.state.consents == () and "consent" not in said
    model, _ = maintenance_on(view, waiting.state, "node5", 8.0)
    assert model.state.consents
    off = OperatorCommand(9.0, "maintenance", "node5", False)
    back, _ = command(replace(model, running=None), off, S5, 9.0)
    assert back.state.consents == () and "node5" not in back.view.maintenance
    assert decide(back.view, back.state, S5, 9.5).plan.rule == "WaitUnreachableReplica"


def after_a_restart(node2_received: str = "0-1-100") -> ClusterView:
    """What a controller started while node1 was down sees: node1 and node5 never read, the
    three replicas that answer lost their link to node1 (semi-sync replicas by their
    variable)."""
    every = {"readers": NAMES[:3]}
    rounds = [
        [
            down("node1", t),
            down("node5", t),
            replica("node2", t, received_gtid=node2_received, **DEAD_IO),
            *(replica(n, t, **DEAD_IO) for n in NAMES[1:3]),
            router(**every, at=t),
        ]
        for t in (11.0, 12.0, 13.0)
    ]
    return fold_all(S5, *rounds)


def test_a_restart_while_the_primary_is_down_does_not_drop_the_wait():
    # The restarted controller never read node1: its semi-sync promise is unknown, its
    # replicas are semi-sync replicas, and node5 cannot be read: in doubt, never cleared.
    view = after_a_restart()
    assert view.nodes["node1"].status is None and view.nodes["node5"].status is None
    waiting = decide(view, ControllerState(), S5, 14.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    assert "node1 was not read since the controller started" in waiting.plan.reason
    halted = decide(view, waiting.state, S5, 14.0 + WAIT)
    assert ADVICE in notify_of(halted.plan).reason
    model, said = maintenance_on(view, halted.state, "node5", 20.0)
    assert "its replicas at 0-1-100" in said, said
    assert decide(model.view, model.state, S5, 20.5).plan.rule == "DeadPrimary"


def asynchronous(probe: ProbeResult) -> ProbeResult:
    assert probe.status is not None
    semi_sync = SemiSync(False, None, None, False)
    return replace(probe, status=replace(probe.status, semi_sync=semi_sync))


def test_after_a_restart_with_asynchronous_replicas_only_a_node_never_read_is_in_doubt():
    # The replicas that answer are asynchronous; node5, never read, may be node1's one
    # semi-sync replica (the one every write waited for): in doubt.
    view = fold_all(
        S5, *(asynchronous(replica(n, 13.5, **DEAD_IO)) for n in NAMES[:3]), view=after_a_restart()
    )
    d = decide(view, ControllerState(), S5, 14.0)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "node5 was never read: it may be its one semi-sync replica" in d.plan.reason
    # node5 read once since the start, an asynchronous replica then: nothing was promised,
    # the failover goes on as before.
    read = fold_all(
        S5,
        asynchronous(replica("node5", 13.6, **DEAD_IO)),
        *(down("node5", t) for t in (13.7, 13.8, 13.9)),
        view=view,
    )
    assert not read.nodes["node5"].reachable
    assert decide(read, ControllerState(), S5, 14.0).plan.rule == "DeadPrimary"
    # A semi-sync replica at its last answer: in doubt.
    semi_read = fold_all(
        S5,
        replica("node5", 13.6, **DEAD_IO),
        *(down("node5", t) for t in (13.7, 13.8, 13.9)),
        view=view,
    )
    d = decide(semi_read, ControllerState(), S5, 14.0)
    assert "node5 was a semi-sync replica at its last answer" in d.plan.reason, d.plan.reason


def test_a_consent_given_before_a_restart_applies_after_it_to_the_same_incident(tmp_path):
    halted = halted_on_node5(cluster(node5_last_ok=3.0))
    model, _ = maintenance_on(cluster(node5_last_ok=3.0), halted.state, "node5", 13.0)
    # The restarted controller reads the replicas, never node1: they hold what they held.
    again = restarted(
        model, with_maintenance(after_a_restart(), frozenset({"node5"}), S5), tmp_path
    )
    d = decide(again.view, again.state, S5, 14.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    # node1 came back while the controller was down, wrote to node2, died again: another one.
    later = with_maintenance(after_a_restart("0-1-105"), frozenset({"node5"}), S5)
    again = restarted(model, later, tmp_path)
    assert decide(again.view, again.state, S5, 14.0).plan.rule == "WaitUnreachableReplica"


def long_gone_node5(clients: int) -> ClusterView:
    """node5 answered at t=-30 only (a replica gone for half a minute when node1 dies at 4);
    node1 counted ``clients`` semi-sync clients at each good probe."""
    every = {"readers": ("node1", *NAMES[:3])}
    rounds = [[primary(at=-30.0), replica("node5", -30.0), router(**every, at=-30.0)]]
    rounds += [
        [
            primary(at=t, semi_sync=semi(clients)),
            *(replica(n, t) for n in NAMES[:3]),
            down("node5", t),
            router(**every, at=t),
        ]
        for t in (1.0, 2.0, 3.0)
    ]
    rounds += [
        [down("node1", t), *(replica(n, t, **DEAD_IO) for n in NAMES[:3]), down("node5", t)]
        for t in (4.0, 5.0, 6.0)
    ]
    return fold_all(S5, *rounds)


def test_consent_to_a_node_that_was_no_client_does_not_clear_an_unnamed_client():
    # node1 counted 4 clients: node2, node3, node4 and one outside the settings; node5 had
    # been gone for half a minute (no link then by its last answer). The consent covers node5
    # alone: the unnamed client may hold writes it alone acknowledged, and the failover still
    # halts on it, with its own advice.
    view = long_gone_node5(clients=4)
    waiting = decide(view, ControllerState(), S5, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica" and "node5" in waiting.plan.reason
    model, said = maintenance_on(view, waiting.state, "node5", 8.0)
    assert "consent recorded" in said and "cannot name" not in said  # it fills no slot
    d = decide(model.view, model.state, S5, 8.5)
    assert d.plan.rule == "WaitUnreachableReplica", d.plan.reason
    assert "cannot name" in d.plan.reason and "more than the 3 known replicas" in d.plan.reason
    halted = decide(model.view, d.state, S5, 8.5 + WAIT)
    reason = notify_of(halted.plan).reason
    assert "adds it to the settings" in reason and "`hacontrol maintenance" not in reason
    # Three clients: node5 was none, nothing is left open; the consent gives up node5's only.
    view = long_gone_node5(clients=3)
    assert decide(view, ControllerState(), S5, 7.0).plan.rule == "DeadPrimary"


def test_a_consent_that_fills_a_client_slot_says_what_else_it_gives_up():
    # node5 went away 2 s before node1's last good probe, within its heartbeat window: it may
    # have been the fourth client node1 counted, or a client outside the settings was. The
    # count cannot tell: the advice, the consent's answer and the failover alert say so.
    view = cluster(node5_last_ok=1.0, clients=4)
    waiting = decide(view, ControllerState(), S5, 7.0)
    halted = decide(view, waiting.state, S5, 7.0 + WAIT)
    share = "if it was not among them, a semi-sync client the controller cannot name"
    assert share in notify_of(halted.plan).reason
    model, said = maintenance_on(view, halted.state, "node5", 13.0)
    assert share in said, said
    d = decide(model.view, model.state, S5, 13.5)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    at_risk = dict(notify_of(d.plan).sections)["acknowledged writes at risk"]
    assert "went on without node5 by an operator's consent" in at_risk and share in at_risk


def test_a_consented_node_that_answers_again_counts_as_the_replica_it_is():
    # node1 counted 5 clients: node2, node3, node6, node7 and node5 (froze with node1); node4
    # died at t=2 (no client). Consent to node5, then node5 answers again (linked at node1's
    # last good probe): 5 answering linked replicas clear node4, as without the consent.
    view = seven_nodes_two_in_doubt(clients=5)
    view = fold_all(
        S7, replica("node4", 1.0), *(down("node4", t) for t in (2.0, 3.0, 3.5)), view=view
    )
    waiting = decide(view, ControllerState(), S7, 7.0)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    model = consent7(view, waiting.state, "node5", at=7.5)
    back = fold_all(S7, replica("node5", 7.8, **DEAD_IO), view=model.view)
    d = decide(back, model.state, S7, 8.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason


def test_in_a_fleet_the_advice_says_to_send_the_command_to_the_leader():
    f5 = fleet(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
    )
    view = cluster(node5_last_ok=3.0, s=f5)
    waiting = decide(view, ControllerState(), f5, 7.0)
    halted = decide(view, waiting.state, f5, 7.0 + WAIT)
    assert halted.plan.rule == "UnreachableReplicaInDoubt", halted.plan.reason
    reason = notify_of(halted.plan).reason
    assert "`hacontrol maintenance node5 on` to the fleet's leader records" in reason, reason


def test_a_consent_ends_when_its_primary_answers_again():
    # Review HIGH 1: node1 and node5 freeze, node4 is cut off from the controller alone: the
    # operator consents to node5, the failover still waits for node4. The freeze ends, node1
    # answers at the same position (an idle application), node5 stays hidden; node1 and node5
    # freeze again right after a good probe: writes node5 alone acknowledged since may exist.
    # The old consent is gone: the new incident waits for node5 again.
    view = seven_nodes_two_in_doubt()
    waiting = decide(view, ControllerState(), S7, 7.0)
    model = consent7(view, waiting.state, "node5", at=7.5)
    d = decide(model.view, model.state, S7, 8.0)
    assert d.plan.rule == "WaitUnreachableReplica" and d.state.consents
    every = {"readers": ("node1", *LIVE7, "node4"), "hidden": ("node5",)}
    back = [
        [
            primary(at=t, semi_sync=semi(6)),
            *(replica(n, t, heartbeats_received=int(t * 10)) for n in (*LIVE7, "node4", "node5")),
            router(**every, at=t),
        ]
        for t in (9.0, 10.0, 11.0)
    ]
    view = fold_all(S7, *back, view=model.view)
    d = decide(view, d.state, S7, 11.5)
    assert d.state.consents == ()  # node1 answered after it: dropped (journaled away)
    again = [
        [
            down("node1", t),
            down("node5", t),
            *(replica(n, t, **DEAD_IO) for n in (*LIVE7, "node4")),
            router(**every, at=t),
        ]
        for t in (12.0, 13.0, 14.0)
    ]
    view = fold_all(S7, *again, view=view)
    kept = replace(d.state, consents=model.state.consents)  # even if one were still kept
    for state in (d.state, kept):
        d2 = decide(view, state, S7, 15.0)
        assert d2.plan.rule == "WaitUnreachableReplica", d2.plan.reason
        assert "node5" in d2.plan.reason


def follower(view: ClusterView, state: ControllerState, s: Settings) -> Model:
    return Model(view, state, lease=Lease(fleet=True, reason="node3 holds the leader lock"))


@pytest.mark.parametrize("hidden", [False, True])
def test_a_follower_records_no_consent_and_says_where_to_send_it(hidden):
    # Review MEDIUM 2: only the leader fails over; a follower that recorded the consent would
    # tell the operator the failover may go on while the leader keeps halting.
    f5 = fleet(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 6)]
    )
    view = cluster(node5_last_ok=3.0, s=f5)
    if hidden:
        view = with_maintenance(view, frozenset({"node5"}), f5)
    waiting = decide(view, ControllerState(), f5, 7.0, leads=False)
    assert waiting.plan.rule == "WaitUnreachableReplica", waiting.plan.reason
    cmd = OperatorCommand(8.0, "maintenance", "node5", True)
    model, effects = command(follower(view, waiting.state, f5), cmd, f5, 8.0)
    (reply,) = [e.result for e in effects if isinstance(e, Reply)]
    assert model.state.consents == ()
    assert "consent NOT recorded: this instance does not lead the fleet" in reply.message
    assert "send `hacontrol maintenance node5 on` to the leader" in reply.message
    assert reply.ok is not hidden  # hidden: nothing done; otherwise hidden on its own router
    assert "node5" in model.view.maintenance


def test_a_consent_never_stands_for_the_quorum():
    # The failover waits for node5 (frozen with node1) and halts; the operator consents to go
    # on without it (node5 hidden). Before the next decision node4 is lost too: counted with
    # node5 (hidden nodes always count: view.py ``_quorum``), 2 of 5 answer: no failover from
    # this side, whatever the consent (it may be a partition's minority: node1 alive with
    # node4 and node5). Hiding the unreachable nodes never lifts the quorum either
    # (tests/test_quorum_hidden.py), so ``ConsentWithoutQuorum`` is not reached from here.
    view = cluster(node5_last_ok=3.0)
    halted = halted_on_node5(view)
    model, said = maintenance_on(view, halted.state, "node5", 13.0)
    assert "consent recorded" in said and model.state.consents
    lost = primary_lost(("node4", "node5"), NAMES[:2], {}, times=(14.0, 15.0, 16.0))
    view = fold_all(S5, *lost, view=model.view)
    d = decide(view, model.state, S5, 16.5)
    assert d.plan.rule == "NoQuorum", d.plan.reason
    assert "2 of 5 recognized nodes reachable" in d.plan.reason
    assert "node5 is hidden and not answering: counted all the same" in d.plan.reason
    assert not any(isinstance(a, Promote) for a in d.plan.actions)


def test_a_consent_for_a_node_no_longer_in_the_settings_is_dropped(tmp_path):
    # Review MEDIUM 8: consent to node5, then node5 removed from the settings and the
    # controller restarted while node1 is still dead: the consent names nobody; no crash.
    halted = halted_on_node5(cluster(node5_last_ok=3.0))
    model, _ = maintenance_on(cluster(node5_last_ok=3.0), halted.state, "node5", 13.0)
    s4 = settings(
        nodes=[{"name": f"node{i}", "host": "127.0.0.1", "port": 3300 + i} for i in range(1, 5)]
    )
    view = fold_all(
        s4,
        *(
            [down("node1", t), *(replica(n, t, **DEAD_IO) for n in NAMES[:3]), router(at=t)]
            for t in (11.0, 12.0, 13.0)
        ),
    )
    state = replace(ControllerState(), consents=model.state.consents)
    d = decide(view, state, s4, 14.0)
    assert d.plan.rule == "DeadPrimary", d.plan.reason
    assert d.state.consents == ()


def test_a_consent_that_cannot_name_its_incident_is_refused_with_the_reason():
    # Review LOW 7: node1 not read since the start, and a replica of it answers with a GTID
    # set that cannot be read (the failover itself then stops on CandidateIncomplete): the
    # command says the consent cannot be recorded (ok false), not "already in maintenance".
    garbled = replica("node2", 13.5, **DEAD_IO)
    assert garbled.status is not None
    garbled = replace(garbled, status=replace(garbled.status, gtid_executed="garbage"))
    view = with_maintenance(fold_all(S5, garbled, view=after_a_restart()), frozenset({"node5"}), S5)
    assert view.has(Code.DEAD_PRIMARY)
    waited = ControllerState(first_seen={doubted("node1", "node5"): 14.0})
    cmd = OperatorCommand(15.0, "maintenance", "node5", True)
    model, effects = command(Model(view, waited), cmd, S5, 15.0)
    (reply,) = [e.result for e in effects if isinstance(e, Reply)]
    assert not reply.ok, reply.message
    assert "consent NOT recorded: this loss of node1 cannot be told" in reply.message
    assert model.state.consents == ()


def test_the_status_lists_each_consent_and_whether_it_applies_now():
    # Review LOW 6.
    view = cluster(node5_last_ok=3.0)
    halted = halted_on_node5(view)
    model, _ = maintenance_on(view, halted.state, "node5", 13.0)
    listed = controller_status(replace(model, running=None), S5, 13.5)["controller"]
    assert listed["failover_consents"] == [
        {
            "node": "node5",
            "dead_primary": "node1",
            "position": "0-1-100",
            "held": "0-1-100",
            "applies_now": True,
        }
    ]
    other = replace(model.state.consents[0], position="0-1-99")  # another incident's
    stale = replace(model, state=replace(model.state, consents=(other,)), running=None)
    listed = controller_status(stale, S5, 13.5)["controller"]["failover_consents"]
    assert [c["applies_now"] for c in listed] == [False]
