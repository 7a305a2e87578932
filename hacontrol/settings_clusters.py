"""Several clusters in one file: the ``[[clusters]]`` form (docs/operator.md, "Several clusters").

The top level holds the defaults every cluster shares and the process-wide sections; each
``[[clusters]]`` entry holds a cluster's name, nodes and what it sets differently. An entry is
deep-merged over the top level and becomes one ordinary ``Settings``, validated exactly like
the single form (``hacontrol.settings`` does that); this module holds the pure parts: the
entries' shape, the merge, the per-cluster journal, the labels and the checks that need every
cluster at once (one node, hostgroup or HAProxy backend claimed by two clusters).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hacontrol.addresses import host_key
from hacontrol.settings_model import CLUSTER_NAME, SECRETS, Settings, address_key

MAX_CLUSTERS = 1000
"""Each cluster is a decision task, a journal, probes and lease sessions of its own; the
benchmark runs 300 clusters in one process."""
ENTRY_SECTIONS = ("mysql", "router", "probes", "failover", "lease", "hooks", "rebuild", "smtp")
"""What a ``[[clusters]]`` entry may set besides ``name`` and ``nodes``."""
PROCESS_WIDE = ("api", "log", "controller")
"""One per process: set at the top level only."""
SINGLE_FORM = ("cluster", "nodes")
HOSTGROUPS = ("writer_hostgroup", "reader_hostgroup", "broken_hostgroup", "hidden_hostgroup")
SHARED_ADMIN = ("user", "password", "tls")
"""Clusters behind one ProxySQL admin share its connection: these must agree."""

Labelled = Sequence[tuple[str, Settings]]


def label(index: int, entry: Any) -> str:
    """``clusters[1] (orders)``: how every message names a cluster (without a name that is
    valid, only its index)."""
    name = entry.get("name") if isinstance(entry, Mapping) else None
    if isinstance(name, str) and re.fullmatch(CLUSTER_NAME, name):
        return f"clusters[{index}] ({name})"
    return f"clusters[{index}]"


def prefixed(where: str, problems: Sequence[str]) -> list[str]:
    """Each ``key: reason`` as ``clusters[1] (orders).key: reason``."""
    return [f"{where}.{problem}" for problem in problems]


def is_process_wide(problem: str) -> bool:
    """A problem whose key is in a section that is the same in every cluster (the journal
    aside: each cluster has its own)."""
    key = problem.split(":", 1)[0]
    return key.split(".")[0].split("[")[0] in PROCESS_WIDE and key != "controller.journal"


def shape_problems(top: Mapping[str, Any], entries: Any, env_keys: Sequence[str]) -> list[str]:
    """What is wrong with the form itself: both forms at once, entries that are not tables,
    keys an entry may not hold, names missing, invalid or given twice."""
    both = [k for k in SINGLE_FORM if k in top]
    if both:
        found = ", ".join(k + (" from the environment" if k in env_keys else "") for k in both)
        return [
            "clusters: use one form: [[clusters]] entries, or a top-level [cluster] and "
            f"[[nodes]], not both (found {found})"
        ]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return ["clusters: must be an array of tables ([[clusters]] entries)"]
    if not entries:
        return ["clusters: no entry; give at least one [[clusters]] (or use the single form)"]
    if len(entries) > MAX_CLUSTERS:
        return [f"clusters: {len(entries)} entries; at most {MAX_CLUSTERS} in one process"]
    problems: list[str] = []
    for index, entry in enumerate(entries):
        problems += _entry_problems(label(index, entry), entry)
    return problems + _name_problems(entries)


def _entry_problems(where: str, entry: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in entry:
        if key in PROCESS_WIDE:
            problems.append(
                f"{where}.{key}: process-wide, not per cluster; set [{key}] at the top level"
            )
        elif key == "cluster":
            problems.append(f"{where}.cluster: not in a [[clusters]] entry; use its name key")
        elif key not in ("name", "nodes", *ENTRY_SECTIONS):
            problems.append(f"{where}.{key}: unknown key")
    for key in ("name", "nodes"):
        if key not in entry:
            problems.append(f"{where}.{key}: required key is missing")
    name = entry.get("name")
    if "name" in entry and not (isinstance(name, str) and re.fullmatch(CLUSTER_NAME, name)):
        shown = repr(name)[:80]
        problems.append(
            f"{where}.name: 1 to 64 letters, digits, '_', '.' or '-' (got {shown}); it names "
            "the cluster's journal, lock and metrics"
        )
    return problems


def _name_problems(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names compare without case: they name files (journals) and MySQL user locks, which
    case-insensitive file systems and servers would confuse."""
    problems = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str):
            continue
        if name.lower() in seen:
            first = seen[name.lower()]
            problems.append(
                f"{label(index, entry)}.name: duplicate cluster name {name!r} "
                f"(same as {label(first, entries[first])}; names must differ, by more than case)"
            )
        seen.setdefault(name.lower(), index)
    return problems


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: tables key by key, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged(top: Mapping[str, Any], entry: Mapping[str, Any], journal: Path) -> dict[str, Any]:
    """One cluster's document: the entry over the top level, its name as ``cluster.name``,
    its own journal. A secret the entry gives in either form (``password`` or
    ``password_file``) replaces the top level's in both forms: an inherited inline or
    environment password must not win over the file the entry names."""
    sections = {k: v for k, v in entry.items() if k not in ("name", "nodes")}
    data = deep_merge(top, sections)
    for path, field, file_field in SECRETS:
        own = _table(entry, path)
        if own is not None and (field in own or file_field in own):
            inherited = _table(data, path)
            for key in (field, file_field):
                if key not in own and inherited is not None:
                    inherited.pop(key, None)
    data["cluster"] = {"name": entry["name"]}
    data["nodes"] = entry["nodes"]
    controller = data.get("controller")
    data["controller"] = {**(controller or {}), "journal": str(journal_for(journal, entry["name"]))}
    return data


def _table(data: Mapping[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    for name in path:
        child = data.get(name) if isinstance(data, Mapping) else None
        if not isinstance(child, dict):
            return None
        data = child
    return data if isinstance(data, dict) else None


def journal_problem(journal: Path) -> str | None:
    """Why ``controller.journal`` cannot give each cluster a file of its own, or None."""
    if journal.name in ("", ".."):
        return (
            f"controller.journal: {str(journal)[:80]!r} names no file; with [[clusters]] each "
            "cluster's journal is named after it (state/journal.jsonl: state/journal.NAME.jsonl)"
        )
    return None


def single_form_journal_left(journal: Path) -> str | None:
    """Why the ``[[clusters]]`` form cannot start over ``journal``, the file the single form
    kept: it may hold a cut plan or a recovery block that a cluster's new, empty journal
    (``journal_for``) would silently forget. None when there is no such file, or it is empty."""
    try:
        size = journal.stat().st_size
    except OSError:
        return None
    if size == 0:
        return None
    return (
        f"controller.journal: {journal} holds a journal of the single-cluster form; with "
        "[[clusters]] each cluster keeps its own (state/journal.NAME.jsonl) and would start "
        "from nothing: run `hacontrol journal check` with the old settings, then move the "
        "file to the journal of the cluster it belonged to (or delete it if it holds nothing)"
    )


def journal_for(journal: Path, name: str) -> Path:
    """``state/journal.jsonl`` for cluster ``orders``: ``state/journal.orders.jsonl``."""
    return journal.with_name(f"{journal.stem}.{name}{journal.suffix}")


def cross_problems(clusters: Labelled) -> list[str]:
    """What two clusters may not share: a node, a hostgroup on one ProxySQL admin (or that
    admin's credentials), a backend on one HAProxy socket."""
    return _node_clashes(clusters) + _proxysql_clashes(clusters) + _haproxy_clashes(clusters)


def _shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _node_clashes(clusters: Labelled) -> list[str]:
    problems = []
    owner: dict[tuple[str, int], str] = {}
    for where, settings in clusters:
        for index, node in enumerate(settings.nodes):
            address = address_key(node.host, node.port)
            key = f"{where}.nodes[{index}]"
            if address in owner:
                problems.append(
                    f"{key}: node address {_shown(address)} is also {owner[address]}; a node "
                    "belongs to one cluster"
                )
            owner.setdefault(address, key)
    return problems


def admin_key(host: str, port: int) -> tuple[str, int]:
    """What is one ProxySQL admin interface, for check-config and for the process's
    ``AdminLinks`` alike: ``address_key`` (IP literals canonical, names without case), and
    every loopback name (localhost, ::1, ...) as 127.0.0.1. Names are not resolved."""
    return address_key(host_key(host), port)


def _proxysql_clashes(clusters: Labelled) -> list[str]:
    problems = []
    first: dict[tuple[str, int], tuple[str, Settings]] = {}
    groups: dict[tuple[tuple[str, int], int], str] = {}
    for where, settings in clusters:
        proxysql = settings.router.proxysql
        if settings.router.kind != "proxysql":
            continue
        admin = admin_key(proxysql.host, proxysql.port)
        on = f"on the ProxySQL admin {_shown(admin)}"
        if admin in first:
            problems += _admin_disagreements(where, settings, *first[admin], on)
        first.setdefault(admin, (where, settings))
        for key in HOSTGROUPS:
            number = getattr(proxysql, key)
            if (admin, number) in groups:
                problems.append(
                    f"{where}.router.proxysql.{key}: hostgroup {number} is also "
                    f"{groups[admin, number]} {on}; each cluster needs hostgroups of its own"
                )
            groups.setdefault((admin, number), f"{where}.router.proxysql.{key}")
    return problems


def _admin_disagreements(
    where: str, settings: Settings, other: str, first: Settings, on: str
) -> list[str]:
    mine, theirs = settings.router.proxysql, first.router.proxysql
    problems = []
    for key in SHARED_ADMIN:
        if getattr(mine, key) != getattr(theirs, key):
            problems.append(
                f"{where}.router.proxysql.{key}: differs from {other}'s {on}; the clusters "
                "behind one ProxySQL share its admin connection, so they must agree"
            )
    return problems


def haproxy_socket_key(socket: str) -> tuple[str, str]:
    """``("tcp", "host:port")`` or ``("unix", normalised path)``, HAProxy's own prefixes
    (``unix@``, ``ipv4@``, ``ipv6@``) understood."""
    family, sep, rest = socket.partition("@")
    if sep and family in ("unix", "ipv4", "ipv6"):
        socket = rest
    if family != "unix" and "/" not in socket:
        host, sep, port = socket.rpartition(":")
        if sep and host and port.isdigit():
            return ("tcp", _shown(address_key(host, int(port))))
    return ("unix", os.path.normpath(socket))


def _haproxy_clashes(clusters: Labelled) -> list[str]:
    problems = []
    backends: dict[tuple[tuple[str, str], str], str] = {}
    for where, settings in clusters:
        haproxy = settings.router.haproxy
        if settings.router.kind != "haproxy":
            continue
        socket = haproxy_socket_key(haproxy.socket)
        for key in ("writer_backend", "reader_backend"):
            name = getattr(haproxy, key)
            claimed = backends.get((socket, name))
            if claimed is not None:
                problems.append(
                    f"{where}.router.haproxy.{key}: backend {name!r} is also {claimed} on the "
                    f"HAProxy socket {haproxy.socket}; each cluster needs backends of its own"
                )
            backends.setdefault((socket, name), f"{where}.router.haproxy.{key}")
    return problems
