"""A single instance (``controller.fleet = false``) behind HAProxy or ProxySQL resumes a
failover cut inside its Promote while a replica is down on purpose (stopped for an upgrade): the
half-done promotion waits for that replica (HalfDonePromotion: it may be a writer made since).
HAProxy has no hidden group, and the maintenance command used to be refused while the plan
waited ("it goes first"): no way out but the replica's return or a promotion by hand. Now
`hacontrol maintenance NODE on` for the node the wait names is the operator's consent that it
is down or read-only: it is hidden, journaled with the state, and the promotion is finished,
its journaled Route re-based on the nodes hidden now (review s6-s6-promote #5, #18; s7-s7-lows
#1; pure: test_rules_resume_half_done.py)."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.live import Process, as_cut_inside_the_promote, crashed_after_promote, sql
from tests.sandbox_fixtures import running_sandbox
from tests.support import free_port

pytestmark = pytest.mark.integration

TOKEN = "half-done-consent-token-0123456789"


def command(port: int, path: str, body: dict) -> dict:
    """A POST to the controller's API and its JSON answer (a refusal's too)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())


def repointed(process: Process, node: str) -> list[dict]:
    return [
        a
        for a in process.of("action", ok=True)
        if a["action"] in ("Repoint", "Rejoin") and node in a["node"].split(",")
    ]


def last_state(journal: Path) -> dict:
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    return [r for r in records if r["type"] == "state"][-1]["state"]


@pytest.mark.parametrize("router", ["haproxy", "proxysql"])
async def test_maintenance_of_the_replica_a_half_done_promotion_waits_for_lets_it_finish(
    tmp_path, router
):
    # Five nodes: with node1 dead and one replica down, three still make the quorum.
    with running_sandbox(tmp_path / "sbx", nodes=5, router=router) as sb:
        info = sb.status()
        single = {
            "HACONTROL_CONTROLLER__FLEET": "false",
            "HACONTROL_API__TOKEN": TOKEN,
            "HACONTROL_API__PORT": "0",
        }
        journal, env, first = crashed_after_promote(sb, single)
        promoted = next(a for a in first.of("action") if a["action"] == "Promote")["node"]
        other = "node5" if promoted != "node5" else "node4"
        await sql(sb, promoted, "SET GLOBAL read_only = ON")  # the cut: reset, not writable
        as_cut_inside_the_promote(journal)
        sb.kill_node(other, signal.SIGKILL)  # down on purpose (an upgrade)

        port = free_port()
        second = Process(info.settings, {**env, "HACONTROL_API__PORT": str(port)})
        try:
            (waits,) = second.wait(
                lambda: second.of("decision", rule="HalfDonePromotion"), 60, "the wait"
            )
            switchover = command(port, "/switchover", {"to": promoted})
            consent = command(port, "/maintenance", {"node": other, "on": True})
            (done,) = second.wait(
                lambda: second.of("plan_finished", kind="failover"), 60, "the promotion finished"
            )
            kept = last_state(journal)["maintenance"]  # the consent outlives a restart
            await sb.start_node(other)  # its upgrade over: it still follows the dead node1
            second.wait(lambda: second.of("decision", rule="Nothing"), 60, "settled")
            assert not repointed(second, other)  # in maintenance: hands off
            off = command(port, "/maintenance", {"node": other, "on": False})
            second.wait(lambda: repointed(second, other), 60, f"{other} repointed")
        finally:
            second.stop()
        assert f"{other} cannot be read (it may be a writer made since)" in waits["reason"]
        assert f"`hacontrol maintenance {other} on`" in waits["reason"]
        # HAProxy has no hidden group; ProxySQL's is the operator's too.
        assert ("hidden hostgroup" in waits["reason"]) is (router == "proxysql")
        assert not switchover["ok"] and "it goes first" not in switchover["message"]
        assert f"it waits for {other} to answer: HalfDonePromotion" in switchover["message"]
        assert consent["ok"], consent
        # The hiding's Route during the wait: the router has no writer and keeps none.
        hidden, shown = second.of("plan_finished", kind="maintenance")
        assert hidden["ok"] and shown["ok"], (hidden, shown)
        assert f"consent: {other} is taken as down or read-only" in consent["message"]
        promotes = [a for a in second.of("action") if a["action"] == "Promote"]
        assert [(a["node"], a["ok"]) for a in promotes] == [(promoted, True)], promotes
        assert "finished a half-done promotion" in promotes[0]["reason"], done
        # Its journaled Route, re-based on the nodes hidden now (review s7-s7-lows #1: ProxySQL
        # refused a Route that would show node5 again; "router not updated" was mailed).
        routes = [a for a in second.of("action") if a["action"] == "Route"]
        assert all(a["ok"] for a in routes), routes
        assert done["reason"] == "all steps done" or "Route" not in done["reason"], done
        assert not second.of("alert", kind="router_not_updated")
        assert off["ok"], off
        assert kept == [other]
        for node in ("node2", "node3", "node4", "node5"):
            (read_only,) = (await sql(sb, node, "SELECT @@read_only"))[0]
            assert read_only == (node != promoted), node  # one writer
        roles = await sb.live_roles()
        assert roles.pop("node1") == "unreachable"
        assert roles.pop(promoted) == "primary" and set(roles.values()) == {"replica"}, roles
