"""The sandbox's rendered configuration files, to the byte: my.cnf of a node and proxysql.cnf
in each of their forms, against files kept in tests/data/sandbox_render/.

A change that means to alter a rendered file regenerates them
(``.venv/bin/python -m tests.test_sandbox_render``) and the diff shows what it changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from hacontrol.sandbox import render
from hacontrol.sandbox.tls import SandboxTls
from tests.factories import fake_nodes, fake_router, two_clusters

KEPT = Path(__file__).parent / "data" / "sandbox_render"


def _proxysql(**kw) -> str:
    router = replace(fake_router(), kind="proxysql", admin="127.0.0.1:30005")
    return render.proxysql_cnf(
        fake_nodes(), router, datadir="/sb/router", admin_password="adm'pw",
        app_password="app-pw", monitor_password="mon-pw", **kw,
    )  # fmt: skip


def _proxysql_netns() -> str:
    router = replace(
        fake_router(), kind="proxysql", admin="127.0.0.1:30005",
        writer_socket="/sb/router/writer.sock", reader_socket="/sb/router/reader.sock",
        admin_socket="/sb/router/admin.sock",
    )  # fmt: skip
    return render.proxysql_cnf(
        fake_nodes(), router, datadir="/sb/router", admin_password="adm",
        app_password="app", monitor_password="mon",
    )  # fmt: skip


def _proxysql_clusters() -> str:
    nodes, router, clusters = two_clusters()
    return render.proxysql_cnf(
        nodes, router, datadir="/sb/router", admin_password="adm", app_password="unused",
        monitor_password="mon", clusters=clusters,
        app_passwords={"app_c1": "pw1", "app_c2": "pw2"},
    )  # fmt: skip


def _node(index: int, **kw) -> Callable[[], str]:
    return lambda: render.node_cnf(fake_nodes()[index], **kw)


CASES: dict[str, Callable[[], str]] = {
    "node-primary-root.cnf": _node(0, primary=True, run_as_root=True),
    "node-replica.cnf": _node(1, primary=False, run_as_root=False),
    "node-primary-alone.cnf": _node(0, primary=True, run_as_root=False, has_replicas=False),
    "node-replica-tls.cnf": _node(
        2, primary=False, run_as_root=True, tls=SandboxTls(Path("/sb/tls"))
    ),
    "proxysql.cnf": _proxysql,
    "proxysql-tls.cnf": lambda: _proxysql(tls=True),
    "proxysql-netns.cnf": _proxysql_netns,
    "proxysql-clusters.cnf": _proxysql_clusters,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_file_is_the_kept_one(name: str) -> None:
    assert CASES[name]() == (KEPT / name).read_text()


if __name__ == "__main__":
    KEPT.mkdir(parents=True, exist_ok=True)
    for name, make in CASES.items():
        (KEPT / name).write_text(make())
        print(KEPT / name)
