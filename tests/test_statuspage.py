"""The status page, pure: what it shows from a status document, every value escaped (a hostile
node name, reason, decision and error never become markup), and the failover timeline."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser

from hacontrol.events import PlanFinished, ProbeResult
from hacontrol.plan import ActionResult, PlanKind
from hacontrol.status import controller_status, plan_timeline
from hacontrol.statuspage import render_page
from hacontrol.step import boot, step
from hacontrol.view import initial
from tests.factories import primary, replica, router
from tests.factories import settings as make_settings

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


class Tags(HTMLParser):
    """Every start tag and attribute the browser would build, and the text it would show."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def status_of(nodes: dict[str, str | None], **controller: object) -> dict[str, object]:
    """A status document: ``nodes`` maps each node to its source (None: the primary)."""
    first = next(n for n, s in nodes.items() if s is None)
    return {
        "cluster": "main",
        "primary": first,
        "primary_reason": "the only writable node",
        "quorum": {"ok": True},
        "router": {"kind": "proxysql", "error": None, "membership": {"writers": [first]}},
        "nodes": [
            {
                "name": name,
                "health": "healthy",
                "reason": "replicating",
                "role": "primary" if source is None else "replica",
                "read_only": source is not None,
                "source": source,
                "io": None if source is None else "Yes",
                "sql": source is not None,
                "lag": 0,
                "gtid_executed": "0-1-5",
                "router": ["writer"] if source is None else ["reader"],
            }
            for name, source in nodes.items()
        ],
        "problems": [],
        "controller": {"last_decisions": [], "last_failover": None, **controller},
    }


def test_the_tree_shows_replicas_under_their_source() -> None:
    page = render_page(status_of({"db1": None, "db2": "db1", "db3": "db2"}), 0.0)
    tree = page[page.index('id="topology"') : page.index('id="problems"')]
    assert [m for m in re.findall(r'data-node="(\w+)"', tree)] == ["db1", "db2", "db3"]
    # db3 replicates from db2: nested one level deeper than db2
    assert (
        tree.index("db2") < tree.index('<ul class="tree">', tree.index("db2")) < tree.index("db3")
    )
    tags = parsed(page)
    assert ("meta", [("http-equiv", "refresh"), ("content", "2")]) in tags.tags
    text = "".join(tags.text)
    assert "db1" in text and "none" in text  # no problems
    assert "proxysql, writer db1" in text
    assert "no fleet: the only one acting" in text
    assert "none since this process started" in text


def test_every_value_is_escaped() -> None:
    status = status_of({HOSTILE: None, "db2": HOSTILE})
    status["fleet"] = {"fleet": True, "leader": True, "instance": HOSTILE, "reason": HOSTILE}
    status["primary_reason"] = HOSTILE
    status["router"] = {"kind": "proxysql", "error": HOSTILE, "membership": None}
    status["problems"] = [{"code": HOSTILE, "node": HOSTILE, "reason": HOSTILE}]
    status["controller"] = {
        "halt": {"code": HOSTILE, "reason": HOSTILE},
        "plan_running": HOSTILE,
        "last_decisions": [
            {"at": 1.5, "rule": HOSTILE, "kind": HOSTILE, "reason": HOSTILE, "actions": [HOSTILE]}
        ],
        "last_failover": {
            "plan": HOSTILE,
            "kind": HOSTILE,
            "rule": HOSTILE,
            "ok": False,
            "reason": HOSTILE,
            "seconds": 1.0,
            "marks": [
                {"what": HOSTILE, "action": HOSTILE, "node": HOSTILE, "ok": True, "after": 0.5}
            ],
        },
    }
    status["cluster"] = HOSTILE
    page = render_page(status, 0.0)
    tags = parsed(page)
    assert {tag for tag, _ in tags.tags} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "span", "div", "ul",
        "li", "b", "br", "p", "table", "tr", "th", "td",
    }  # fmt: skip
    assert not any(name.startswith("on") for _, attrs in tags.tags for name, _ in attrs)
    assert "<script" not in page and "<img" not in page
    shown = "".join(tags.text)
    assert shown.count("<script>alert(1)</script>") >= 10  # shown as text, everywhere


def test_a_failover_timeline_from_its_steps() -> None:
    steps = (
        ActionResult("RouteFence", None, True, True, "fenced", index=0, seconds=0.02),
        ActionResult("WaitApplied", "node2", True, False, "applied", index=1, seconds=0.01),
        ActionResult("Promote", "node2", True, True, "promoted", index=2, seconds=0.03),
        ActionResult("Route", None, True, True, "routed", index=3, seconds=0.02),
        ActionResult("Repoint", "node3", True, True, "repointed", index=4, seconds=0.05),
    )
    finished = PlanFinished(
        100.0, "failover-1", "DeadPrimary", PlanKind.FAILOVER, True, "done", None, steps, 0.13
    )
    timeline = plan_timeline(finished, 0.2, wall_offset=1_000_000.0)
    assert timeline is not None
    marks = [(m["what"], m["after"]) for m in timeline["marks"]]
    assert marks == [
        ("detected", 0.0),
        ("plan started", 0.2),
        ("fenced", 0.22),
        ("caught up", 0.23),
        ("promoted", 0.26),
        ("routed", 0.28),
        ("repointed", 0.33),
    ]
    assert timeline["marks"][-1]["at"] == 1_000_100.0 and timeline["seconds"] == 0.33
    route = PlanFinished(1.0, "route-1", "Reconcile", PlanKind.ROUTE, True, "", None, (), 0.1)
    assert plan_timeline(route, None, 0.0) is None
    page = render_page(status_of({"db1": None}, last_failover=timeline), 0.0)
    text = "".join(parsed(page).text)
    for what in ("detected", "fenced", "promoted", "routed", "repointed", "+0.330 s"):
        assert what in text


def test_the_page_from_a_real_model() -> None:
    """The status document the API builds, rendered: the primary and the last decision."""
    settings = make_settings()
    model, _ = boot(
        initial(settings), settings, kept=None, unfinished=None, acknowledge_block=False,
        paused=False, acting=True, wall_offset=1_000_000.0,
    )  # fmt: skip
    for beat in range(5):
        at = 10.0 + beat
        for event in (primary(at=at), replica("node2", at), replica("node3", at), router(at=at)):
            model, _ = step(model, event, settings, at)
    page = render_page(controller_status(model, settings, 15.0), 1_000_015.0)
    text = "".join(parsed(page).text)
    assert re.search(r'<span id="primary">node1</span>', page)
    assert "Nothing" in text and "1970-01-12" in text


def test_several_clusters_each_with_its_section() -> None:
    orders = {**status_of({"o1": None, "o2": "o1"}), "cluster": "orders"}
    users = {**status_of({"u1": None, "u2": "u1", "u3": "u1"}), "cluster": "users"}
    users["problems"] = [{"code": "ReplicaLagging", "node": "u3", "reason": "lag 30 s"}]
    users["controller"] = {**users["controller"], "paused": True}
    page = render_page({"clusters": {"orders": orders, "users": users}}, 0.0)
    assert "<title>hacontrol: 2 clusters</title>" in page
    ids = [value for _, attrs in parsed(page).tags for name, value in attrs if name == "id"]
    assert len(ids) == len(set(ids))  # every element id once
    for name, writer, nodes in (("orders", "o1", 2), ("users", "u1", 3)):
        section = page.split(f'<section id="cluster-{name}">')[1].split("</section>")[0]
        assert f'<span id="primary-{name}">{writer}</span>' in section
        assert section.count('class="node"') == nodes
        assert f'id="topology-{name}"' in section and f'id="failover-{name}"' in section
    overview = page.split('<table id="overview">')[1].split("</table>")[0]
    assert '<a href="#cluster-users">users</a></td><td>u1</td><td>ok</td><td>1</td>' in overview
    assert "<td>paused</td>" in overview


def test_a_cluster_without_its_controller_says_why() -> None:
    orders = {**status_of({"o1": None, "o2": "o1"}), "cluster": "orders"}
    users = {**status_of({"u1": None, "u2": "u1"}), "cluster": "users"}
    users["halted"] = "crashed (decision: KeyError: 'x'); restarts from its journal in 5 s"
    page = render_page({"clusters": {"orders": orders, "users": users}}, 0.0)
    overview = page.split('<table id="overview">')[1].split("</table>")[0]
    assert "<td>no controller: crashed (decision: KeyError: &#x27;x&#x27;); restarts" in overview
    section = page.split('<section id="cluster-users">')[1].split("</section>")[0]
    assert '<span id="changes-users">no controller: crashed' in section
    other = page.split('<section id="cluster-orders">')[1].split("</section>")[0]
    assert "no controller" not in other


def test_one_cluster_among_clusters_is_its_page_as_before() -> None:
    status = status_of({"db1": None, "db2": "db1"})
    alone = render_page(status, 0.0)
    assert render_page({**status, "clusters": {"main": status}}, 0.0) == alone
    assert '<span id="primary">db1</span>' in alone and "<section" not in alone


def test_a_hostile_cluster_name_is_escaped() -> None:
    hostile = {**status_of({"db1": None}), "cluster": HOSTILE}
    page = render_page({"clusters": {HOSTILE: hostile, "b": status_of({"x1": None})}}, 0.0)
    assert "<script" not in page and "<img" not in page
    assert not any(name.startswith("on") for _, attrs in parsed(page).tags for name, _ in attrs)


def semi_sync_replica(node: str, at: float, negotiated: bool | None) -> ProbeResult:
    """A replica with rpl_semi_sync_slave_enabled ON and Rpl_semi_sync_slave_status
    ``negotiated`` (None: not reported)."""
    probe = replica(node, at)
    assert probe.status is not None
    semi = replace(probe.status.semi_sync, replica_enabled=True, replica_active=negotiated)
    return replace(probe, status=replace(probe.status, semi_sync=semi))


def test_a_semi_sync_replica_says_whether_it_is_a_client_now() -> None:
    """The variable ON is not a client until the IO thread reconnects: /status and the page
    show the status (Rpl_semi_sync_slave_status) beside it."""
    settings = make_settings()
    model, _ = boot(
        initial(settings), settings, kept=None, unfinished=None, acknowledge_block=False,
        paused=False, acting=True, wall_offset=1_000_000.0,
    )  # fmt: skip
    for event in (
        primary(at=10.0),
        semi_sync_replica("node2", 10.0, True),
        semi_sync_replica("node3", 10.0, False),
        router(at=10.0),
    ):
        model, _ = step(model, event, settings, 10.0)
    status = controller_status(model, settings, 11.0)
    semi = {n["name"]: n["semi_sync"] for n in status["nodes"]}
    assert semi["node2"]["replica"] and semi["node2"]["replica_client"] is True
    assert semi["node3"]["replica"] and semi["node3"]["replica_client"] is False
    assert status["controller"]["failover_consents"] == []
    page = render_page(status, 1_000_011.0)
    node2 = page[
        page.index('data-node="node2"') : page.index("</span></span>", page.index("node2"))
    ]
    node3 = page[
        page.index('data-node="node3"') : page.index("</span></span>", page.index("node3"))
    ]
    assert "semi-sync client yes" in node2 and "semi-sync client no" in node3
    assert "semi-sync client" not in page[: page.index('data-node="node2"')]  # not the primary
