"""Commands for one cluster among several: ``cluster`` in the body or the query, required only
when the process runs several (400 naming them), an unknown one 404; nothing reaches any
controller unless the cluster is known. In-process and across the API process's channel."""

from __future__ import annotations

import io

import aiohttp
import pytest

from hacontrol.api import BadRequest, NoSuchCluster, parse_request, which_cluster
from hacontrol.api_process import ApiProcess
from hacontrol.jsonlog import JsonLog
from tests.fakes import TOKEN, FakeHandle, api_settings, start_api

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(url: str, body: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=AUTH) as r:
        return r.status, await r.json()


def test_the_cluster_from_the_body_or_the_query():
    body = b'{"node": "n3", "on": true, "cluster": "orders"}'
    request = parse_request("maintenance", body, 1.0)
    assert request.cluster == "orders" and request.command.node == "n3"
    assert parse_request("pause", b"", 1.0, "orders").cluster == "orders"
    assert parse_request("pause", b'{"cluster": "orders"}', 1.0, "orders").cluster == "orders"
    assert parse_request("pause", b"", 1.0).cluster is None
    for raw, query, why in (
        (b'{"cluster": "a"}', "b", "differ"),
        (b'{"cluster": 7}', None, "must be a string"),
        (b'{"cluster": "a b"}', None, "not a cluster name"),
        (b"", "x" * 65, "not a cluster name"),
        (b'{"cluster": "a", "bogus": 1}', None, "unknown field"),
    ):
        with pytest.raises(BadRequest, match=why):
            parse_request("pause", raw, 1.0, query)


def test_which_cluster():
    assert which_cluster(None, ("only",)) == "only"
    assert which_cluster("only", ("only",)) == "only"
    assert which_cluster("b", ("a", "b")) == "b"
    with pytest.raises(BadRequest, match=r"several clusters: .*one of: a, b"):
        which_cluster(None, ("a", "b"))
    with pytest.raises(NoSuchCluster, match=r"no cluster 'c' here \(known: a, b\)"):
        which_cluster("c", ("a", "b"))
    with pytest.raises(NoSuchCluster):
        which_cluster("other", ("only",))


async def test_commands_name_their_cluster_when_there_are_several():
    handle = FakeHandle(clusters=("orders", "users"))
    server, _, url = await start_api(handle)
    try:
        status, answer = await post(url + "/pause")
        assert status == 400 and "one of: orders, users" in answer["message"]
        status, answer = await post(url + "/pause", {"cluster": "billing"})
        assert status == 404 and "known: orders, users" in answer["message"]
        assert handle.commands == []  # nothing reached any cluster
        assert (await post(url + "/maintenance", {"node": "n3", "on": True, "cluster": "users"}))[
            0
        ] == 200
        assert (await post(url + "/pause?cluster=orders"))[0] == 200
        status, answer = await post(url + "/pause?cluster=orders&cluster=users")
        assert status == 400 and "more than once" in answer["message"]
    finally:
        await server.stop()
    assert [
        (c.command, cluster) for c, cluster in zip(handle.commands, handle.cluster_of, strict=True)
    ] == [
        ("maintenance", "users"),
        ("pause", "orders"),
    ]


async def test_one_cluster_needs_no_name_and_refuses_another():
    handle = FakeHandle(clusters=("main",))
    server, _, url = await start_api(handle)
    try:
        assert (await post(url + "/pause"))[0] == 200
        assert (await post(url + "/resume", {"cluster": "main"}))[0] == 200
        assert (await post(url + "/ack", {"cluster": "other"}))[0] == 404
    finally:
        await server.stop()
    assert handle.cluster_of == ["main", "main"]


async def test_the_cluster_crosses_the_api_process_channel():
    handle = FakeHandle(clusters=("orders", "users"))
    api = ApiProcess(api_settings(), handle, JsonLog(None, stream=io.StringIO()))
    host, port = await api.start()
    try:
        url = f"http://{host}:{port}"
        assert (await post(url + "/switchover", {"to": "n2", "cluster": "users"}))[0] == 200
        status, answer = await post(url + "/switchover", {"to": "n2"})
        assert status == 400 and "orders, users" in answer["message"]
        assert (await post(url + "/pause", {"cluster": "nope"}))[0] == 404
    finally:
        await api.stop()
    assert [(c.command, c.node) for c in handle.commands] == [("switchover", "n2")]
    assert handle.cluster_of == ["users"]
