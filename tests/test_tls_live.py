"""TLS on real servers. Without TLS set up, ``hacontrol status --tls`` says every connection
is plain (checked from both ends); with the sandbox's ``--tls``: the failover test below."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_live import hacontrol

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
