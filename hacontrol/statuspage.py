"""The status page (``GET /`` on the API): one HTML page rendered on the server from what
``GET /status`` answers. Pure; no script, no build step, no external resource; it reloads
itself every few seconds (``<meta http-equiv="refresh">``).

It shows the primary, the quorum, the router, what holds changes back, the leader, the
topology as a tree, the problems, the last decisions and the timeline of the last failover or
switchover. Every value is escaped (``_e``): node names, reasons and errors come from settings,
servers and operators, and are never markup.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from typing import Any

REFRESH_SECONDS = 2
HEALTH_CLASS = {
    "healthy": "ok",
    "lagging": "warn",
    "replication_broken": "bad",
    "unreachable": "bad",
    "unknown": "warn",
}

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
.facts{display:flex;flex-wrap:wrap;gap:.6em} .fact{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.4em .8em} .fact b{display:block;font-size:.75em;color:#666}
ul.tree{list-style:none;padding-left:1.2em;border-left:2px solid #ddd} ul.tree.root{border:0;
padding-left:0} .node{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.3em .6em;
margin:.3em 0;display:inline-block} .ok{color:#17692d} .warn{color:#9a6700} .bad{color:#b3261e}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:left;font-size:.9em;vertical-align:top} .muted{color:#777;font-size:.85em}
"""


def _e(value: object) -> str:
    """A value as text in HTML: every markup character escaped, quotes included."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(unix: object) -> str:
    if not isinstance(unix, int | float):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix)) + f".{int(unix % 1 * 1000):03d}Z"


def render_page(status: Mapping[str, Any], generated_at: float) -> str:
    """The whole page, from a ``GET /status`` document; ``generated_at`` in Unix seconds.

    One cluster: its page. Several (``clusters`` holds more than one): a table of them all,
    then each cluster's section, its element ids suffixed with ``-<cluster name>``."""
    clusters = status.get("clusters")
    several = isinstance(clusters, Mapping) and len(clusters) > 1
    title = f"{len(clusters)} clusters" if several else status.get("cluster")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>hacontrol: {_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
    ]
    when = (
        f'<div class="muted">as of {_e(_when(generated_at))}; reloads every '
        f"{REFRESH_SECONDS} s</div>"
    )
    if several:
        parts += [f'<h1 id="clusters">{len(clusters)} clusters</h1>', when, _overview(clusters)]
        for name, one in clusters.items():
            parts += [
                f'<section id="cluster-{_e(name)}">',
                *_cluster(one, f"-{name}", "h2", "h3"),
                "</section>",
            ]
    else:
        head = f'<h1>Cluster <span id="cluster">{_e(status.get("cluster"))}</span></h1>'
        parts += [head, when, *_cluster(status, "", None, "h2")]
    parts.append("</body></html>")
    return "\n".join(parts)


def _cluster(status: Mapping[str, Any], suffix: str, head: str | None, sub: str) -> list[str]:
    """One cluster's facts, topology, problems, decisions and last failover; ``head``: the
    tag of a heading with its name (None: the page's own heading names it)."""
    controller = status.get("controller") or {}
    i = f"{_e(suffix)}"
    named = [f"<{head}>Cluster {_e(status.get('cluster'))}</{head}>"] if head else []
    return [
        *named,
        _facts(status, controller, suffix),
        f'<{sub}>Topology</{sub}><div id="topology{i}">',
        _tree(status.get("nodes") or [], status.get("primary")),
        "</div>",
        f'<{sub}>Problems</{sub}><div id="problems{i}">',
        _problems(status.get("problems") or []),
        "</div>",
        f'<{sub}>Last decisions</{sub}><div id="decisions{i}">',
        _decisions(controller.get("last_decisions") or []),
        "</div>",
        f'<{sub}>Last failover or switchover</{sub}><div id="failover{i}">',
        _timeline(controller.get("last_failover")),
        "</div>",
    ]


def _overview(clusters: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per cluster: its primary, quorum, problems and what holds changes back."""
    rows = []
    for name, status in clusters.items():
        controller = status.get("controller") or {}
        problems = status.get("problems") or []
        rows.append(
            "<tr>"
            f'<td><a href="#cluster-{_e(name)}">{_e(name)}</a></td>'
            f"<td>{_e(status.get('primary') or 'none')}</td>"
            f"<td>{'ok' if (status.get('quorum') or {}).get('ok') else 'LOST'}</td>"
            f"<td>{len(problems)}</td>"
            f"<td>{_e(_held(controller, status.get('halted')))}</td>"
            "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("cluster", "primary", "quorum", "problems", "changes"))
    return f'<table id="overview"><tr>{head}</tr>' + "".join(rows) + "</table>"


def _held(controller: Mapping[str, Any], stopped: object = None) -> str:
    """What holds automatic changes back, or "allowed". ``stopped``: why the cluster runs no
    controller (refused at start-up, or crashed and waiting for its restart)."""
    halt = controller.get("halt")
    held = [
        f"no controller: {stopped}" if stopped else "",
        f"halted: {halt.get('code')}: {halt.get('reason')}" if halt else "",
        "paused" if controller.get("paused") else "",
        f"plan running: {controller.get('plan_running')}" if controller.get("plan_running") else "",
        f"recovery block {controller.get('recovery_block_seconds_left')} s"
        if controller.get("recovery_block_seconds_left")
        else "",
    ]
    return "; ".join(h for h in held if h) or "allowed"


def _facts(status: Mapping[str, Any], controller: Mapping[str, Any], suffix: str = "") -> str:
    quorum = status.get("quorum") or {}
    router = status.get("router") or {}
    router_text = router.get("kind", "none")
    if router.get("error"):
        router_text += f" (error: {router['error']})"
    elif writers := (router.get("membership") or {}).get("writers"):
        router_text += f", writer {' '.join(str(w) for w in writers)}"
    facts = [
        ("primary", status.get("primary") or "none", "primary"),
        ("why", status.get("primary_reason"), "primary-reason"),
        ("quorum", "ok" if quorum.get("ok") else "LOST", "quorum"),
        ("router", router_text, "router"),
        ("changes", _held(controller, status.get("halted")), "changes"),
        ("leader", _leader(status, controller), "leader"),
    ]
    cells = [
        f'<div class="fact"><b>{k}</b><span id="{i}{_e(suffix)}">{_e(v)}</span></div>'
        for k, v, i in facts
    ]
    return '<div class="facts">' + "".join(cells) + "</div>"


def _leader(status: Mapping[str, Any], controller: Mapping[str, Any]) -> str:
    """Who leads: this instance alone (no fleet), or what the fleet's lease says."""
    fleet = status.get("fleet")
    if not isinstance(fleet, Mapping) or not fleet.get("fleet"):
        return "this instance (no fleet: the only one acting)"
    instance = fleet.get("instance")
    if fleet.get("leader"):
        who = f"this instance ({instance}), {'acting' if fleet.get('acting') else 'taking over'}"
    elif fleet.get("leader_elsewhere"):
        who = f"another instance (this one: {instance})"
    else:
        who = f"no instance leads (this one: {instance})"
    reason = fleet.get("reason")
    return f"{who}: {reason}" if reason else who


def _tree(nodes: list[Mapping[str, Any]], primary: str | None) -> str:
    by_name = {n.get("name"): n for n in nodes}
    children: dict[object, list[str]] = {}
    for node in nodes:
        source = node.get("source")
        if source in by_name and source != node.get("name"):
            children.setdefault(source, []).append(node["name"])
    roots = [primary] if primary in by_name else []
    roots += sorted(
        n for n, node in by_name.items() if node.get("source") not in by_name and n != primary
    )
    placed: set[object] = set()
    out = ['<ul class="tree root">', *_branch(roots, by_name, children, placed), "</ul>"]
    rest = sorted(str(n) for n in by_name if n not in placed)  # cycles
    if rest:
        out += ['<ul class="tree root">', *_branch(rest, by_name, children, placed), "</ul>"]
    return "".join(out)


def _branch(
    names: Iterable[object],
    by_name: Mapping[object, Mapping[str, Any]],
    children: Mapping[object, list[str]],
    placed: set[object],
) -> list[str]:
    out: list[str] = []
    for name in names:
        if name in placed:
            continue
        placed.add(name)
        out.append(f"<li>{_node(by_name[name])}")
        below = sorted(children.get(name, []))
        if below:
            out += ['<ul class="tree">', *_branch(below, by_name, children, placed), "</ul>"]
        out.append("</li>")
    return out


def _node(node: Mapping[str, Any]) -> str:
    health = str(node.get("health"))
    fields = [str(node.get("role"))]
    if node.get("read_only") is not None:
        fields.append("ro" if node.get("read_only") else "rw")
    if node.get("io") is not None:
        lag = "?" if node.get("lag") is None else f"{node.get('lag')} s"
        fields += [
            f"lag {lag}",
            f"io {node.get('io')}",
            f"sql {'yes' if node.get('sql') else 'no'}",
        ]
        fields += _semi_sync_replica(node.get("semi_sync") or {})
    if node.get("gtid_executed"):
        fields.append(f"gtid {node.get('gtid_executed')}")
    if node.get("router") is not None:
        fields.append("router " + ("+".join(node["router"]) or "none"))
    return (
        f'<span class="node" data-node="{_e(node.get("name"))}">'
        f"<b>{_e(node.get('name'))}</b> "
        f'<span class="{HEALTH_CLASS.get(health, "warn")}">{_e(health)}</span> '
        f"{_e(', '.join(fields))}"
        f'<br><span class="muted">{_e(node.get("reason"))}</span></span>'
    )


def _semi_sync_replica(semi: Mapping[str, Any]) -> list[str]:
    """A semi-sync replica: whether its IO thread is a semi-sync client now (the variable
    alone takes effect at its next connect)."""
    if not semi.get("replica"):
        return []
    client = {True: "yes", False: "no"}
    return [f"semi-sync client {client.get(semi.get('replica_client'), '?')}"]


def _problems(problems: list[Mapping[str, Any]]) -> str:
    if not problems:
        return '<p class="ok">none</p>'
    items = [
        f'<li><b class="bad">{_e(p.get("code"))}</b> {_e(p.get("node") or "")}: '
        f"{_e(p.get('reason'))}</li>"
        for p in problems
    ]
    return "<ul>" + "".join(items) + "</ul>"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _decisions(decisions: list[Mapping[str, Any]]) -> str:
    if not decisions:
        return '<p class="muted">none yet</p>'
    rows = [
        (
            _when(d.get("at")),
            d.get("rule"),
            d.get("kind"),
            d.get("reason"),
            ", ".join(d.get("actions") or []),
        )
        for d in reversed(decisions)
    ]
    return _table(("at (UTC)", "rule", "kind", "reason", "actions"), rows)


def _timeline(timeline: Mapping[str, Any] | None) -> str:
    if not timeline:
        return '<p class="muted">none since this process started</p>'
    outcome = "done" if timeline.get("ok") else "failed"
    kind, plan, rule = (_e(timeline.get(k)) for k in ("kind", "plan", "rule"))
    head = (
        f"<p>{kind} <b>{plan}</b> ({rule}): {_e(outcome)} in {_e(timeline.get('seconds'))} s: "
        f"{_e(timeline.get('reason'))}</p>"
    )
    rows = [
        (
            m.get("what"),
            f"+{m.get('after'):.3f} s" if isinstance(m.get("after"), int | float) else "",
            _when(m.get("at")),
            m.get("action") or "",
            m.get("node") or "",
            "ok" if m.get("ok") else "FAILED",
        )
        for m in timeline.get("marks") or []
    ]
    return head + _table(("mark", "after", "at (UTC)", "step", "node", "result"), rows)
