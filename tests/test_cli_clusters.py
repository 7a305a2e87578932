"""``--cluster NAME`` on the operator commands: sent to the API, required only when the
controller runs several clusters (exit 2 naming them), an unknown one exit 2; ``rebuild``
follows its own cluster's part of ``/status``."""

from __future__ import annotations

import pytest

from hacontrol import operator_cli
from hacontrol.cli import build_parser
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
