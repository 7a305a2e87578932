"""``hacontrol drill --clusters N``, the parts without servers: what it refuses (exit 2, nothing
started), how it judges and shows its figures, which actions count as acting on another
cluster. The drill itself runs in the README's figures; the same fault is tested live in
tests/test_two_clusters_live.py."""

from __future__ import annotations

import argparse

import pytest

from hacontrol.drill import register_cli
from hacontrol.drill.clusters import foreign_actions, passed, render
from hacontrol.sandbox.model import ClusterInfo, Credentials


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["drill", *argv])
    return int(args.func(args))


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--clusters", "5"], "--clusters must be between 2 and 4, got 5"),
        (["--clusters", "2", "--fault", "freeze"], "--clusters offers --fault kill"),
        (["--clusters", "2", "--runs", "3"], "--clusters with --runs is not offered yet"),
        (["--clusters", "2", "--controllers", "3"], "--clusters with --controllers"),
        (["--clusters", "2", "--cluster", "c1"], "--clusters with --cluster"),
    ],
)
def test_what_the_drill_of_several_clusters_refuses(argv, reason, capsys, tmp_path) -> None:
    assert cli(*argv, "--dir", str(tmp_path / "never")) == 2
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # nothing was started


def cluster(name: str, nodes: tuple[str, ...]) -> ClusterInfo:
    return ClusterInfo(name, nodes, {"writer": 10}, "w", "r", 1, 2, Credentials("app", "/p"))


def figures(**c2: object) -> dict[str, object]:
    one = {
        "old_primary": "node1", "new_primary": "node2", "detection": 0.1, "promotion": 0.5,
        "router_updated": 0.7, "plan_finished": 0.9, "write_outage": 1.1, "acknowledged": 300,
        "lost": [], "client_errors": {}, "acted_on_other_clusters": [],
    }  # fmt: skip
    two = {**one, "old_primary": "node4", "new_primary": "node5", **c2}
    return {"clusters": 2, "kill_spread_ms": 0.2, "c1": one, "c2": two}


def test_the_drill_passes_only_when_every_cluster_failed_over_on_its_own_nodes() -> None:
    assert passed(figures())
    assert not passed(figures(new_primary=None))  # no failover in c2
    assert not passed(figures(lost=[7]))  # an acknowledged write missing
    assert not passed(figures(lost=None))  # not checked: never a pass
    assert not passed(figures(acted_on_other_clusters=["node2"]))
    lines = render(figures()).splitlines()
    assert lines[0] == "2 clusters, primaries killed within 0.2 ms of each other"
    assert lines[2].startswith("c2: node4 -> node5; detection 0.1 s")
    assert "write outage 1.1 s; 300 writes acknowledged, lost 0" in lines[2]


def test_an_action_on_a_node_of_another_cluster_is_named() -> None:
    c1 = cluster("c1", ("node1", "node2", "node3"))
    records = [
        {"_mono": 5.0, "event": "action", "node": "node2", "cluster": "c1"},
        {"_mono": 5.1, "event": "action", "node": None, "cluster": "c1"},  # a router action
        {"_mono": 5.2, "event": "action", "node": "node5", "cluster": "c1"},
        {"_mono": 1.0, "event": "action", "node": "node6", "cluster": "c1"},  # before the kill
    ]
    assert foreign_actions(records, c1, at=4.0) == ["node5"]


def test_the_drill_of_settings_with_several_clusters_needs_the_cluster(capsys, tmp_path) -> None:
    from tests.fakefleet.spec import clusters_settings_text, fleet

    path = tmp_path / "settings.toml"
    path.write_text(clusters_settings_text(fleet([3, 3], base_port=20000)))
    common = ["--config", str(path), "--yes-kill-the-primary", "--writer", "127.0.0.1:1",
              "--app-user", "app", "--app-password-file", str(path)]  # fmt: skip
    assert cli(*common) == 2
    assert "several clusters: give --cluster NAME (one of: c001, c002)" in capsys.readouterr().err
    assert cli(*common, "--cluster", "c009") == 2
    assert "unknown cluster 'c009'" in capsys.readouterr().err


async def test_waiting_on_an_async_check_awaits_it_and_names_what_never_came() -> None:
    from hacontrol.drill.runner import DrillTimeout, wait_for

    calls: list[int] = []

    async def third_time() -> str | None:
        calls.append(1)
        return "healthy" if len(calls) == 3 else None

    assert await wait_for(third_time, 5, "a healthy cluster", every=0.01) == "healthy"

    async def never() -> bool:
        return False

    with pytest.raises(DrillTimeout, match="waiting for every failover"):
        await wait_for(never, 0.05, "every failover", every=0.01)
