"""Two sandbox clusters behind ONE ProxySQL, ONE ``hacontrol run`` for both: both primaries
killed within 100 ms of each other; both clusters fail over, each with a plan of its own, both
write outages measured, and no statement of one cluster's plan touches the other's rows.

The controller reaches ProxySQL's admin through an ``AdminTap``: every statement it sends is
recorded, with ProxySQL's ``mysql_servers`` and ``runtime_mysql_servers`` read (on a connection
of the test's own) right after each one was answered. So each statement's effect is seen alone:
a write changes the rows of one cluster only and names only that cluster's hostgroups and
nodes; a LOAD ... TO RUNTIME moves one cluster's rows only (an apply, its writes and its LOAD,
is never interleaved with another cluster's). A row that belongs to no cluster (hostgroup 9)
stays. A ``WriterSampler`` per cluster samples its writer hostgroup every few milliseconds:
never two writers in either. Skipped without a real ProxySQL (it says how to get one).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from hacontrol.drill.report import log_figures, outage
from hacontrol.sandbox import Sandbox, procs
from hacontrol.sandbox.cluster import read_secret
from hacontrol.sandbox.model import PROXYSQL_ADMIN_SECRET, SECRETS_DIR
from tests.live import Process, WriteLoop, acked_after, sql
from tests.proxysql_real import AdminTap, WriterSampler, quote, require_proxysql
from tests.sandbox_fixtures import running_sandbox
from tests.support import eventually

pytestmark = pytest.mark.integration

Row = tuple[int, str, int, str]  # hostgroup_id, hostname, port, status
KILL_SPREAD = 0.1  # the brief: both primaries killed within 100 ms of each other
STRANGER = (9, "10.9.9.9", 3306)  # a row of no cluster: never touched
WRITE = re.compile(r"^\s*(INSERT|REPLACE|UPDATE|DELETE)\b", re.IGNORECASE)


@pytest.fixture
def two_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    require_proxysql()
    directory = tmp_path_factory.mktemp("sbx") / "sandbox"
    with running_sandbox(directory, router="proxysql", clusters=2) as sandbox:
        yield sandbox


class ClusterWrites(WriteLoop):
    """The application of one cluster: autocommit writes through ProxySQL as its own user."""

    def __init__(self, sandbox: Sandbox, cluster: str, start_id: int) -> None:
        super().__init__(sandbox, start_id=start_id, statement=WriteLoop.PLAIN)
        self.cluster = cluster

    async def _connect(self) -> aiomysql.Connection:
        return await self._sandbox.connect("writer", "app", cluster=self.cluster)


@dataclass
class Admin:
    """The sandbox's ProxySQL admin, read on connections of the test's own."""

    host: str
    port: int
    password: str

    @classmethod
    def of(cls, sandbox: Sandbox) -> Admin:
        router = sandbox.status().router
        secret = read_secret(Path(sandbox.dir) / SECRETS_DIR / PROXYSQL_ADMIN_SECRET)
        return cls(router.host, router.admin_port, secret)

    async def run(self, *statements: str) -> list[tuple[Any, ...]]:
        conn = await aiomysql.connect(
            host=self.host, port=self.port, user="admin", password=self.password, autocommit=True
        )
        try:
            rows: list[tuple[Any, ...]] = []
            async with conn.cursor() as cur:
                for sql in statements:
                    await cur.execute(sql)
                    rows = list(await cur.fetchall())
            return rows
        finally:
            conn.close()

    async def tables(self) -> tuple[frozenset[Row], frozenset[Row]]:
        """(mysql_servers, runtime_mysql_servers) at one moment."""
        columns = "hostgroup_id, hostname, port, status"
        memory = await self.run(f"SELECT {columns} FROM mysql_servers")
        runtime = await self.run(f"SELECT {columns} FROM runtime_mysql_servers")
        return rows_of(memory), rows_of(runtime)

    def sampler(self, hostgroup: int, managed: list[tuple[str, int]]) -> WriterSampler:
        return WriterSampler(
            self.host, self.port, "admin", self.password, managed, hostgroup=hostgroup
        )


def rows_of(rows: list[tuple[Any, ...]]) -> frozenset[Row]:
    return frozenset((int(g), str(h), int(p), str(s)) for g, h, p, s in rows)


@dataclass(frozen=True)
class Owner:
    """Which cluster a row, a hostgroup or a node address belongs to."""

    hostgroups: dict[int, str]
    ports: dict[int, str]

    @classmethod
    def of(cls, sandbox: Sandbox) -> Owner:
        info = sandbox.status()
        groups = {hg: c.name for c in info.clusters for hg in c.hostgroups.values()}
        ports = {n.port: c.name for c in info.clusters for n in info.nodes_of(c.name)}
        return cls(groups, ports)

    def of_rows(self, rows: frozenset[Row]) -> set[str]:
        return {self.hostgroups.get(g, f"hostgroup {g}") for g, _, _, _ in rows}

    def named_by(self, statement: str) -> set[str]:
        """The clusters whose hostgroups or node ports the statement names."""
        numbers = {int(n) for n in re.findall(r"\b\d+\b", statement)}
        return {self.hostgroups[n] for n in numbers if n in self.hostgroups} | {
            self.ports[n] for n in numbers if n in self.ports
        }


def controller_settings(sandbox: Sandbox, tap_port: int, folder: Path) -> Path:
    """The sandbox's [[clusters]] settings with the admin port through the tap, quick probes
    and a journal of this test's own (one per cluster: journal.<name>.jsonl)."""
    info = sandbox.status()
    text = Path(info.settings).read_text()
    admin = f"port = {info.router.admin_port}\n"
    assert text.count(admin) == 1, "the [router.proxysql] port, once, at the top level"
    replacements = {
        admin: f"port = {tap_port}\n",
        "interval = 1.0": "interval = 0.3",
        "timeout = 0.5 ": "timeout = 0.25 ",
        f'journal = "{info.dir}/state/journal.jsonl"': f'journal = "{folder}/journal.jsonl"',
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "settings.toml"
    path.write_text(text)
    return path


def api_status(sandbox: Sandbox) -> dict[str, Any]:
    """``GET /status``'s clusters from the controller's API ({} while it does not answer)."""
    info = sandbox.status()
    port = tomllib.loads(Path(info.settings).read_text())["api"]["port"]
    token = read_secret(Path(info.dir) / SECRETS_DIR / "api.token")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return dict(json.loads(answer.read())["clusters"])
    except OSError:
        return {}


async def settled(
    sandbox: Sandbox, primaries: dict[str, tuple[str, ...]], *, after: bool = False
) -> bool:
    """Every cluster: its primary one of ``primaries[name]``, no plan running, the router
    agreeing; before the fault no problem at all, after it a failover recorded (the dead old
    primary stays a problem). The API is read in a thread: the writers and samplers of this
    loop keep their pace."""
    status = await asyncio.to_thread(api_status, sandbox)
    SEEN.update(status)
    return bool(status) and all(
        status[name].get("primary") in allowed
        and status[name]["controller"]["plan_running"] is None
        and status[name]["fleet"]["router_agrees"]
        and (status[name]["controller"]["last_failover"] if after else not status[name]["problems"])
        for name, allowed in primaries.items()
    )


SEEN: dict[str, Any] = {}
"""The last status read, for the message of a test that timed out."""


async def test_both_primaries_killed_at_once_both_clusters_fail_over_apart(
    two_clusters: Sandbox, tmp_path: Path
) -> None:
    sandbox = two_clusters
    info = sandbox.status()
    admin, owner = Admin.of(sandbox), Owner.of(sandbox)
    await admin.run(
        "INSERT INTO mysql_servers (hostgroup_id, hostname, port, comment) VALUES "
        f"({STRANGER[0]}, {quote(STRANGER[1])}, {STRANGER[2]}, 'of no cluster')",
        "LOAD MYSQL SERVERS TO RUNTIME",
        "SAVE MYSQL SERVERS TO DISK",
    )
    tap = await AdminTap((admin.host, admin.port), snapshot=admin.tables).start()
    samplers = {
        c.name: admin.sampler(
            c.hostgroups["writer"], [("127.0.0.1", n.port) for n in info.nodes_of(c.name)]
        ).start()
        for c in info.clusters
    }
    writes = {
        c.name: ClusterWrites(sandbox, c.name, start_id=(k + 1) * 10_000_000)
        for k, c in enumerate(info.clusters)
    }
    controller = Process(controller_settings(sandbox, tap.port, tmp_path), env={})
    try:
        first = {c.name: (info.primary_of(c.name).name,) for c in info.clusters}
        await eventually(lambda: settled(sandbox, first), 30, "both clusters healthy and led")
        for loop in writes.values():
            loop.start()
        await eventually(lambda: all(w.acknowledged for w in writes.values()), 10, "writes")
        await asyncio.sleep(1.0)
        kills = kill_together(sandbox, [info.primary_of(c.name).name for c in info.clusters])
        assert max(kills.values()) - min(kills.values()) <= KILL_SPREAD, kills
        then = {c.name: tuple(n.name for n in info.nodes_of(c.name)[1:]) for c in info.clusters}
        await eventually(
            lambda: settled(sandbox, then, after=True), 60, "both clusters failed over"
        )
        # Writes on the new primaries: each cluster's outage ends with an acknowledgement.
        await acked_after(writes.values(), max(kills.values()), count=20)
        final = await asyncio.to_thread(api_status, sandbox)
    except AssertionError:
        print(json.dumps(SEEN, indent=1, default=str)[:20000])
        raise
    finally:
        for loop in writes.values():
            await loop.stop()
        for sampler in samplers.values():
            await sampler.stop()
        controller.stop()
        await tap.settle()
        await tap.stop()
    report = await failover_report(sandbox, controller.records, kills, writes, samplers, final)
    report["proxysql_statements"] = check_statements(tap, owner)
    print(json.dumps(report, indent=1))
    check_plans(sandbox, controller.records, kills)
    memory, runtime = await admin.tables()
    assert any(r[:3] == STRANGER for r in memory) and any(r[:3] == STRANGER for r in runtime)
    for name, figures in report["clusters"].items():
        assert figures["new_primary"] in then[name], name
        assert figures["write_outage_s"] is not None, name
        assert figures["acknowledged_lost"] == [], name
        assert figures["two_writers_samples"] == 0, name
        assert figures["writer_samples"] > 100, name


def kill_together(sandbox: Sandbox, nodes: list[str]) -> dict[str, float]:
    """kill -9 every node one right after the other (no wait in between); then wait until
    each is gone. Returns each kill's monotonic time."""
    info = sandbox.status()
    sent = {}
    for name in nodes:
        node = info.node(name)
        assert procs.send_signal(node.pid, node.config, signal.SIGKILL), name
        sent[name] = time.monotonic()
    for name in nodes:
        node = info.node(name)
        assert procs.wait_state(node.pid, node.config, "dead", timeout=5.0), name
    return sent


def cluster_records(records: list[dict[str, Any]], cluster: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("cluster") == cluster]


async def failover_report(
    sandbox: Sandbox,
    records: list[dict[str, Any]],
    kills: dict[str, float],
    writes: dict[str, ClusterWrites],
    samplers: dict[str, WriterSampler],
    final: dict[str, Any],
) -> dict[str, Any]:
    """Per cluster: the failover's phases from its own log lines (seconds after its kill), its
    write outage around its kill, acknowledged writes missing on its new primary, samples of
    its writer hostgroup that held two writers."""
    info = sandbox.status()
    spread = max(kills.values()) - min(kills.values())
    out: dict[str, Any] = {"kill_spread_ms": round(1000 * spread, 2), "clusters": {}}
    for cluster in info.clusters:
        at = kills[info.primary_of(cluster.name).name]
        figures = log_figures(cluster_records(records, cluster.name), at)
        loop = writes[cluster.name]
        new = final[cluster.name]["primary"]
        out["clusters"][cluster.name] = {
            "new_primary": new,
            **{k: round(v, 3) if v is not None else None for k, v in figures.items()},
            "write_outage_s": rounded(outage(sorted(loop.ack_times), at)),
            "acknowledged": len(loop.acknowledged),
            "acknowledged_lost": sorted(set(loop.acknowledged) - await ids_on(sandbox, new))[:10],
            "client_errors": loop.errors,
            "two_writers_samples": len(samplers[cluster.name].with_two_writers()),
            "writer_samples": len(samplers[cluster.name].samples),
        }
    return out


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def ids_on(sandbox: Sandbox, node: str) -> set[int]:
    """Every id in app.writes on a node (root, over its socket)."""
    return {int(i) for (i,) in await sql(sandbox, node, "SELECT id FROM app.writes")}


def check_plans(sandbox: Sandbox, records: list[dict[str, Any]], kills: dict[str, float]) -> None:
    """Each cluster ran a failover plan of its own after the kills, every action of it on that
    cluster's nodes only, and the two plans ran at the same time (neither waited for the
    other to finish)."""
    info = sandbox.status()
    spans = {}
    for cluster in info.clusters:
        mine = [
            r for r in cluster_records(records, cluster.name) if r["_mono"] >= min(kills.values())
        ]
        started = [r for r in mine if r["event"] == "plan_started" and r.get("kind") == "failover"]
        assert len(started) == 1, (cluster.name, started)
        plan = started[0]["plan"]
        actions = [r for r in mine if r["event"] == "action" and r.get("plan") == plan]
        assert actions and all(r["ok"] for r in actions), actions
        strangers = [r for r in actions if r.get("node") and r["node"] not in cluster.nodes]
        assert not strangers, f"{cluster.name}'s plan acted on another cluster's node: {strangers}"
        finished = next(r for r in mine if r["event"] == "plan_finished" and r.get("plan") == plan)
        spans[cluster.name] = (started[0]["_mono"], finished["_mono"])
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, f"the two failovers did not overlap: {spans}"


def membership(rows: frozenset[Row]) -> frozenset[Row]:
    """The rows without their status: ProxySQL's own monitor changes a runtime status (a dead
    node SHUNNED) between statements; membership only changes by a LOAD."""
    return frozenset((g, h, p, "") for g, h, p, _ in rows)


def check_statements(tap: AdminTap, owner: Owner) -> dict[str, Any]:
    """Every statement the controller sent to ProxySQL's admin, each with the tables right
    after it: a write names one cluster and changes that cluster's rows only; no statement
    moves two clusters' rows in mysql_servers or in the runtime's membership."""
    statements, history = tap.statements, tap.history
    assert len(history) == len(statements) and statements, (len(history), len(statements))
    writes: dict[str, int] = {}
    loads = 0
    for i in range(1, len(statements)):
        sql = statements[i]
        (memory0, runtime0), (memory1, runtime1) = history[i - 1], history[i]  # type: ignore[misc]
        changed = owner.of_rows(memory0 ^ memory1)
        moved = owner.of_rows(membership(runtime0) ^ membership(runtime1))
        assert len(changed) <= 1 and len(moved) <= 1, (sql, changed, moved)
        if "mysql_servers" in sql and WRITE.match(sql):
            named = owner.named_by(sql)
            assert len(named) == 1, f"names {named or 'no cluster'}: {sql}"
            assert changed <= named, (sql, changed)
            assert re.search(r"\b(WHERE|VALUES|SELECT)\b", sql, re.I), f"a broad statement: {sql}"
            writes[next(iter(named))] = writes.get(next(iter(named)), 0) + 1
        loads += sql.strip().upper().startswith("LOAD MYSQL SERVERS")
    return {"sent": len(statements), "writes_per_cluster": writes, "loads_to_runtime": loads}
