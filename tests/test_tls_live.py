"""TLS on real servers. Without TLS set up, ``hacontrol status --tls`` says every connection
is plain (checked from both ends). With the sandbox's ``--tls`` (its own CA; the controller's
user REQUIRE X509, the replication user REQUIRE SSL): every connection is encrypted, a
failover runs, and the replica the controller repointed replicates over TLS from the new
primary with its certificate verified."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal

import pymysql
import pytest

from hacontrol.mysqlconn import Endpoint, connect
from tests.live import hacontrol, healthy_and_idle, sandbox_settings, service
from tests.sandbox_fixtures import running_sandbox
from tests.support import eventually

pytestmark = pytest.mark.integration


def test_status_says_plain_connections_are_plain(sandbox):
    proc = hacontrol("status", "--tls", "--json", "--config", str(sandbox.status().settings))
    assert proc.returncode == 0, proc.stderr
    connections = json.loads(proc.stdout)["connections"]
    assert connections["all_encrypted"] is False
    kinds = [(link["kind"], link["target"], link["encrypted"]) for link in connections["links"]]
    assert ("controller", "node1", False) in kinds
    replication = [k for k in kinds if k[0] == "replication"]
    assert {k[1] for k in replication} == {"node2", "node3"} and not any(k[2] for k in replication)
    text = hacontrol("status", "--tls", "--config", str(sandbox.status().settings)).stdout
    assert "every connection encrypted: NO" in text and "plain TCP" in text


@pytest.fixture
def tls_sandbox(tmp_path_factory):
    """A 3-node sandbox with TLS everywhere (`hacontrol sandbox up --tls`)."""
    if shutil.which("openssl") is None:
        pytest.skip("the sandbox's CA is made with the openssl command (Debian: openssl)")
    with running_sandbox(tmp_path_factory.mktemp("sbx") / "sandbox", tls=True) as sb:
        yield sb


def encryption(sandbox) -> dict[tuple[str, str, str], tuple[bool | None, str]]:
    """`hacontrol status --json` (TLS set up: its connections come by themselves), by link."""
    proc = hacontrol("status", "--json", "--config", str(sandbox.status().settings))
    assert "connections" in proc.stdout, proc.stderr
    links = json.loads(proc.stdout)["connections"]["links"]
    return {(x["kind"], x["source"], x["target"]): (x["encrypted"], x["detail"]) for x in links}


async def test_a_failover_on_a_sandbox_with_tls_everywhere(tls_sandbox):
    info = tls_sandbox.status()
    port = {n.name: n.port for n in info.nodes}
    before = await asyncio.to_thread(encryption, tls_sandbox)
    assert all(encrypted for encrypted, _ in before.values()), before
    assert before[("replication", f"127.0.0.1:{port['node1']}", "node2")][1] == (
        "TLS, the source's certificate verified"
    )
    # The servers themselves refuse the controller's user without its certificate.
    with pytest.raises(pymysql.err.OperationalError):
        await connect(Endpoint("127.0.0.1", port["node1"], "hacontrol",
                               tls_sandbox.password("controller")), 2.0)  # fmt: skip

    settings = sandbox_settings(tls_sandbox)
    assert settings.mysql.tls.mode == "verify_identity" and settings.api.tls_cert is not None
    svc, capture = service(settings)
    rt = svc.runtime(None)
    async with svc:
        await healthy_and_idle(rt)
        # The API process's own line, relayed beside its "listening" message: may come after.
        (listening,) = await eventually(lambda: capture.of("api_listening"), 10, "api_listening")
        assert listening["tls"] is True
        assert tls_sandbox.kill_node("node1", signal.SIGKILL)
        done = await eventually(
            lambda: [p for p in capture.of("plan_finished") if p["kind"] == "failover"],
            30,
            "the failover",
        )
        assert done[0]["ok"], done[0]["reason"]
        promoted = next(a for a in capture.of("action") if a["action"] == "Promote")["node"]
        await healthy_and_idle_but(rt, "node1")
    after = await asyncio.to_thread(encryption, tls_sandbox)
    other = "node3" if promoted == "node2" else "node2"
    # Repointed by the controller (mysql.replication_tls): over TLS, the new primary verified.
    assert after[("replication", f"127.0.0.1:{port[promoted]}", other)] == (
        True,
        "TLS, the source's certificate verified",
    )
    alive = {k: v for k, v in after.items() if k[2] != "node1"}
    assert all(encrypted for encrypted, _ in alive.values()), alive
    assert after[("controller", "hacontrol", "node1")][0] is None  # dead: not checked


async def healthy_and_idle_but(rt, dead: str) -> None:
    await eventually(
        lambda: (
            rt.controller.running_plan is None
            and all(
                n.health.value == "healthy"
                for name, n in rt.controller.view.nodes.items()
                if name != dead
            )
        ),
        30,
        "the other nodes healthy again",
    )
