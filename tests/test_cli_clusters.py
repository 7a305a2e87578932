"""``--cluster NAME`` on the operator commands: sent to the API, required only when the
controller runs several clusters (exit 2 naming them), an unknown one exit 2; ``rebuild``
follows its own cluster's part of ``/status``. ``hacontrol status --cluster`` and ``hacontrol
run`` over a ``[[clusters]]`` settings file, against the fake fleet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from hacontrol import operator_cli
from hacontrol.cli import build_parser
from tests.fakefleet import FakeFleet, fleet
from tests.fakes import TOKEN, FakeHandle, threaded_api


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_the_cluster_goes_into_every_request_body():
    assert operator_cli.request_of(parse("pause", "--cluster", "users")) == (
        "/pause",
        {"cluster": "users"},
    )
    assert operator_cli.request_of(parse("switchover", "--to", "u2", "--cluster", "users")) == (
        "/switchover",
        {"to": "u2", "cluster": "users"},
    )
    path, body = operator_cli.request_of(parse("maintenance", "u3", "on", "--cluster", "users"))
    assert (path, body) == ("/maintenance", {"node": "u3", "on": True, "cluster": "users"})
    assert operator_cli.request_of(parse("rebuild", "u3", "--cluster", "users"))[1] == {
        "node": "u3",
        "cluster": "users",
    }
    assert operator_cli.request_of(parse("ack")) == ("/ack", {})  # one cluster: no name needed


def test_several_clusters_need_the_name(monkeypatch, capsys):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    handle = FakeHandle(clusters=("orders", "users"))
    with threaded_api(handle) as (_, _, url):
        assert operator_cli.run(parse("pause", "--url", url)) == operator_cli.EXIT_USAGE
        assert "one of: orders, users" in capsys.readouterr().err
        assert operator_cli.run(parse("pause", "--url", url, "--cluster", "billing")) == 2
        assert "known: orders, users" in capsys.readouterr().err
        assert operator_cli.run(parse("pause", "--url", url, "--cluster", "users")) == 0
    assert handle.cluster_of == ["users"] and [c.command for c in handle.commands] == ["pause"]


def test_one_cluster_needs_no_name(monkeypatch):
    monkeypatch.setenv(operator_cli.TOKEN_ENV, TOKEN)
    handle = FakeHandle(clusters=("main",))
    with threaded_api(handle) as (_, _, url):
        assert operator_cli.run(parse("resume", "--url", url)) == 0
        assert operator_cli.run(parse("resume", "--url", url, "--cluster", "other")) == 2
    assert handle.cluster_of == ["main"]


@pytest.mark.parametrize(
    ("status", "cluster", "expected"),
    [
        ({"rebuild": {"plan": "p1"}}, None, {"rebuild": {"plan": "p1"}}),
        ({"rebuild": 1, "clusters": {"main": {}}}, None, {"rebuild": 1, "clusters": {"main": {}}}),
        ({"clusters": {"a": {"rebuild": 1}, "b": {"rebuild": 2}}}, "b", {"rebuild": 2}),
        ({"clusters": {"a": {"rebuild": 1}}}, "gone", {}),
    ],
)
def test_a_rebuild_follows_its_own_clusters_status(status, cluster, expected):
    assert operator_cli.cluster_status(status, cluster) == expected


# -- hacontrol run / status over a [[clusters]] settings file (two fake-fleet clusters) --------


def clusters_toml(fake: FakeFleet, tmp_path: Path) -> Path:
    """The settings file of the fake fleet's clusters, as a user writes it ([[clusters]])."""
    spec = fake.spec
    lines = [
        "[mysql]",
        f'user = "{spec.user}"',
        f'password = "{spec.password}"',
        f'replication_user = "{spec.replication_user}"',
        f'replication_password = "{spec.password}"',
        "[probes]",
        "interval = 0.3",
        "timeout = 0.25",
        "[api]",
        "enabled = false",
        "[controller]",
        "fleet = false",
        f'journal = "{tmp_path / "journal.jsonl"}"',
    ]
    for cluster in spec.clusters:
        lines += ["[[clusters]]", f'name = "{cluster.name}"']
        for node in cluster.nodes:
            host, port = fake.address(node.name)
            lines += ["[[clusters.nodes]]", f'name = "{node.name}"', f'host = "{host}"']
            lines.append(f"port = {port}")
    path = tmp_path / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def hacontrol(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hacontrol", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_status_of_one_cluster_among_several(tmp_path):
    async with FakeFleet(fleet([3, 3])) as fake:
        config = str(clusters_toml(fake, tmp_path))
        proc = await hacontrol("status", "--config", config)
        _, err = await proc.communicate()
        assert proc.returncode == 2 and "one of: c001, c002" in err.decode()
        proc = await hacontrol("status", "--config", config, "--cluster", "c009")
        _, err = await proc.communicate()
        assert proc.returncode == 2 and "c009" in err.decode() and "c001, c002" in err.decode()
        proc = await hacontrol("status", "--config", config, "--cluster", "c002", "--json")
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    view = json.loads(out)
    assert view["primary"] == "c002n1"
    assert sorted(n["name"] for n in view["nodes"]) == ["c002n1", "c002n2", "c002n3"]


async def test_run_starts_every_cluster_and_stops_them_on_sigterm(tmp_path):
    async with FakeFleet(fleet([3, 3])) as fake:
        proc = await hacontrol("run", "--config", str(clusters_toml(fake, tmp_path)))
        assert proc.stdout is not None
        lines: list[dict] = []

        async def until(done) -> None:
            async with asyncio.timeout(30):
                while not done():
                    line = await proc.stdout.readline()
                    assert line, "hacontrol run ended early"
                    lines.append(json.loads(line))

        def both(event: str, **match: object) -> bool:
            return {
                r["cluster"]
                for r in lines
                if r["event"] == event and all(r.get(k) == v for k, v in match.items())
            } == {"c001", "c002"}

        try:
            await until(lambda: both("decision", rule="Nothing"))
            proc.send_signal(signal.SIGTERM)
            await until(lambda: both("stopped"))
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    started = {r["cluster"]: r["nodes"] for r in lines if r["event"] == "started"}
    assert started == {
        "c001": ["c001n1", "c001n2", "c001n3"],
        "c002": ["c002n1", "c002n2", "c002n3"],
    }
    assert all(r["cluster"] in ("c001", "c002") for r in lines if r["node"])
    assert all(r["node"].startswith(r["cluster"]) for r in lines if r["node"])


def two_clusters_toml(tmp_path: Path) -> Path:
    """Two clusters of three nodes on addresses nothing listens on (run refuses first)."""
    lines = ["[mysql]", 'password = "secret-one"', 'replication_password = "secret-two"']
    lines += ["[api]", "enabled = false", "[controller]", "fleet = false"]
    lines.append(f'journal = "{tmp_path / "journal.jsonl"}"')
    for k, name in enumerate(("orders", "users"), start=1):
        lines += ["[[clusters]]", f'name = "{name}"']
        for n in (1, 2, 3):
            lines += ["[[clusters.nodes]]", f'name = "{name[0]}{n}"', f'host = "127.0.{k}.{n}"']
    path = tmp_path / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_with(monkeypatch, capsys, *argv: str) -> tuple[int, object, str]:
    """``hacontrol run ...`` in this process, the service replaced by a recorder of what it
    would acknowledge: (exit code, the acknowledged clusters or None, stderr)."""
    from hacontrol import service

    seen: list[object] = []
    monkeypatch.setattr(
        service, "run_forever", lambda *a, acknowledge, **kw: seen.append(acknowledge) or 0
    )
    args = parse("run", *argv)
    code = args.func(args)
    return code, (seen[0] if seen else None), capsys.readouterr().err


def test_run_ack_names_the_clusters_when_there_are_several(monkeypatch, capsys, tmp_path):
    config = str(two_clusters_toml(tmp_path))
    code, acked, err = run_with(monkeypatch, capsys, "--config", config, "--ack")
    assert code == 2 and acked is None
    assert "several clusters" in err and "one of: orders, users" in err
    code, acked, err = run_with(monkeypatch, capsys, "--config", config, "--ack", "payments")
    assert code == 2 and acked is None and "'payments'" in err and "orders, users" in err
    code, acked, _ = run_with(monkeypatch, capsys, "--config", config, "--ack", "users")
    assert code == 0 and acked == {"users"}
    code, acked, _ = run_with(monkeypatch, capsys, "--config", config, "--ack", "users,orders")
    assert code == 0 and acked == {"orders", "users"}
    code, acked, _ = run_with(
        monkeypatch, capsys, "--ack", "orders", "--config", config, "--ack", "users"
    )
    assert code == 0 and acked == {"orders", "users"}
    code, acked, _ = run_with(monkeypatch, capsys, "--config", config, "--paused")
    assert code == 0 and acked == frozenset()


def test_run_ack_with_one_cluster_is_unchanged(monkeypatch, capsys, tmp_path):
    config = tmp_path / "one.toml"
    text = two_clusters_toml(tmp_path).read_text().split('[[clusters]]\nname = "users"')[0]
    config.write_text(text)
    code, acked, err = run_with(monkeypatch, capsys, "--config", str(config), "--ack")
    assert code == 0 and acked == {"orders"}, err
    code, acked, _ = run_with(monkeypatch, capsys, "--config", str(config))
    assert code == 0 and acked == frozenset()
