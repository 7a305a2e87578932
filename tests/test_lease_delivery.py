"""When the lease keeper's observations reach the decision task (``LeaseKeeper._deliver``):
anything new at once, a keepalive that only confirms what its node said last with the rest of
its round (at most ``COALESCE`` later), and always in the order observed. No server: the
observations are built here; ``tests/test_lease_live.py`` runs the keeper on real nodes."""

from __future__ import annotations

import asyncio

from hacontrol.events import Event, LeaseObserved
from hacontrol.probes.lease import COALESCE, LeaseKeeper
from tests.factories import fleet, lock

NODES = ("node1", "node2", "node3")
OURS = 7


NOW = [2.0]
"""The keeper's clock (the lease defaults: V 1.5 s, margin 0.3 s)."""


def keeper() -> tuple[LeaseKeeper, list[Event]]:
    sent: list[Event] = []
    NOW[0] = 2.0
    return LeaseKeeper(fleet(), sent.append, clock=lambda: NOW[0]), sent


def beat(k: LeaseKeeper) -> None:
    """What the beat does before it asks every node (the nodes of a round)."""
    k._flush()
    k._round = set(NODES)


def confirm(node: str, at: float) -> LeaseObserved:
    return lock(node, at=at, session=OURS, leader=OURS)


def at_rest(*waiting: str) -> tuple[LeaseKeeper, list[Event]]:
    """A keeper whose nodes each said their first word (sent at once), then a beat whose
    confirmations from ``waiting`` were delivered (and wait for the rest of the round)."""
    k, sent = keeper()
    beat(k)
    for node in NODES:
        k._deliver(confirm(node, 1.0))
    assert len(sent) == 3
    sent.clear()
    beat(k)
    for node in waiting:
        k._deliver(confirm(node, 2.0))
    assert sent == []
    return k, sent


async def test_a_round_of_confirmations_is_sent_together_when_its_last_node_answers():
    k, sent = at_rest("node2", "node1")  # waiting for node3
    k._deliver(confirm("node3", 2.0))
    assert [(e.node, e.at) for e in sent] == [("node2", 2.0), ("node1", 2.0), ("node3", 2.0)]


async def test_anything_new_is_sent_at_once_after_what_waits():
    k, sent = at_rest()
    new = [
        lock("node3", at=2.0, session=OURS, leader=99),  # another instance took it
        lock("node3", at=2.0, session=OURS, leader=None),  # freed
        lock("node3", at=2.0, session=8, leader=OURS),  # a new session of ours
        lock("node3", at=2.0, session=OURS, leader=OURS, primary=OURS),  # published
        lock("node3", at=2.0, error="timed out"),  # the session broke
    ]
    for index, observed in enumerate(new):
        beat(k)
        k._deliver(confirm("node1", 2.0 + index))
        assert sent == []
        k._deliver(observed)
        assert sent[-2:] == [confirm("node1", 2.0 + index), observed], observed
        k._deliver(confirm("node3", 3.0))  # then node3 says something again (or anew)
        k._deliver(confirm("node2", 3.0))
        k._flush()
        sent.clear()


async def test_a_confirmation_waits_at_most_coalesce_for_a_slow_node():
    _, sent = at_rest("node1", "node2")  # node3 is slow (frozen: a round trip may take W / 2)
    await asyncio.sleep(COALESCE * 10)
    assert [e.node for e in sent] == ["node1", "node2"]


async def test_an_error_is_never_held_back_and_the_next_good_word_is_new():
    k, sent = at_rest()
    k._deliver(lock("node1", at=2.0, error="Lost connection"))
    assert [e.error for e in sent] == ["Lost connection"]
    beat(k)
    k._deliver(confirm("node1", 3.0))  # the same holders as before the error: new all the same
    assert sent[-1] == confirm("node1", 3.0)


async def test_outside_a_round_a_confirmation_is_not_held():
    """A round run at once by a change of mode (no beat): nothing to wait for."""
    k, sent = at_rest()
    k._round.clear()
    k._deliver(confirm("node1", 2.0))
    assert sent == [confirm("node1", 2.0)]


async def test_a_publication_sends_what_waits_first_and_closing_sends_the_rest():
    k, sent = at_rest("node1")
    published = lock("node1", at=2.5, session=OURS, leader=OURS, primary=OURS)
    k._send(published)  # what ``publish`` emits after its statement
    assert sent == [confirm("node1", 2.0), published]
    k._deliver(confirm("node2", 3.0))
    k.close()
    assert sent[-1] == confirm("node2", 3.0)


async def test_a_confirmation_of_a_lock_about_to_end_is_not_held():
    """The last confirmation of node1 was sent at 2.0 (valid until 3.5); this one's round trip
    was slow and it arrives at 3.3, with less than the margin (0.3 s) left: at once, so that a
    wait never lets a lock lapse that it renews. node2's, confirmed at 2.0 as well but arriving
    at 3.1 (0.4 s left), waits."""
    k, sent = at_rest("node1", "node2")
    k._deliver(confirm("node3", 2.0))  # the round at 2.0, sent together
    assert len(sent) == 3
    sent.clear()
    beat(k)
    NOW[0] = 3.1
    k._deliver(confirm("node2", 3.0))
    assert sent == []
    NOW[0] = 3.3
    k._deliver(confirm("node1", 3.2))
    assert sent == [confirm("node2", 3.0), confirm("node1", 3.2)]


async def test_a_send_that_fails_from_the_timer_crashes_the_keeper():
    """The 2 ms timer's flush runs outside the keeper's tasks: what it raises reaches them, and
    the keeper's run ends with it (the lease worker crashes), not a line in the loop's log."""
    k, _ = at_rest("node1")

    def broken(event: Event) -> None:
        raise RuntimeError("the queue is gone")

    k._emit = broken
    k._wake = {"node1": asyncio.Event()}
    loop = asyncio.create_task(k._loop("node1"))
    await asyncio.sleep(COALESCE * 10)
    assert loop.done()
    assert isinstance(loop.exception(), RuntimeError)
