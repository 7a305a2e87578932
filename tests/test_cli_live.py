"""The commands as a user runs them, against the shared sandbox (read-only use)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.live import hacontrol

pytestmark = pytest.mark.integration


def test_status_prints_the_tree(sandbox):
    proc = hacontrol("status", "--config", str(sandbox.status().settings))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("node1 [primary, rw, mariadb 10.")
    assert "router writer+reader" in lines[0] and lines[0].endswith("healthy")
    replicas = [line for line in lines if line.startswith("+ node")]
    assert len(replicas) == 2
    assert all("replica, ro" in line and "io Yes sql Yes" in line for line in replicas)
    assert "quorum: ok (3 of 3 recognized nodes reachable)" in lines
    assert "problems: none" in lines


def test_status_json_matches_live_topology(sandbox):
    proc = hacontrol("status", "--json", "--config", str(sandbox.status().settings))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["primary"] == "node1"
    assert data["quorum"]["ok"] is True
    by_name = {n["name"]: n for n in data["nodes"]}
    assert by_name["node1"]["read_only"] is False and by_name["node1"]["role"] == "primary"
    for name in ("node2", "node3"):
        assert by_name[name]["source"] == "node1" and by_name[name]["read_only"] is True
        assert by_name[name]["lag"] == 0
    assert data["router"]["membership"]["writers"] == ["node1"]
    assert data["problems"] == []
    password = sandbox.password("controller")
    assert password not in proc.stdout


def test_run_logs_json_and_stops_on_sigterm_within_two_seconds(sandbox):
    """With ``--log-level debug`` over the settings' info: the probes' lines too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    config = str(sandbox.status().settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hacontrol", "run", "--config", config, "--log-level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen: list[dict] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line))
            if sum(1 for r in seen if r["event"] == "node_state") == 3:
                break
        assert {r["node"] for r in seen if r["event"] == "node_state"} == {
            "node1",
            "node2",
            "node3",
        }
        assert any(r["event"] == "probe" and r["level"] == "debug" for r in seen)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert took < 2.0, f"stopped after {took:.2f} s"
    tail = [json.loads(line) for line in out.splitlines()]
    assert tail[-1]["event"] == "stopped" and tail[-1]["tasks_not_finished"] == []
    assert any(r["event"] == "stop_requested" and r["reason"] == "SIGTERM" for r in tail)
    assert all({"ts", "event", "cluster", "node"} <= r.keys() for r in seen + tail)
    assert sandbox.password("controller") not in out + "".join(json.dumps(r) for r in seen)
