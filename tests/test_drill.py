"""The drill end to end on one real sandbox: one run of each fault (kill, freeze, switchover),
in-process with fast probes. Checks the report's structure, the zero-loss result and that each
run restored the cluster; never the timings. And the refusals of ``--config``."""

from __future__ import annotations

import argparse
import math
import socket
import tempfile
from pathlib import Path

import pytest

from hacontrol.drill import register_cli, sandbox_access
from hacontrol.drill.faults import SandboxFaults
from hacontrol.drill.report import FIGURE_NAMES, RunResult, document
from hacontrol.drill.runner import Drill, DrillPlan
from hacontrol.settings import load_settings
from tests.sandbox_fixtures import running_sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(Path(tempfile.mkdtemp(prefix="hacontrol-drill-test-")) / "sb") as sb:
        yield sb


def fast_settings(sandbox):
    settings = load_settings(sandbox.status().settings).settings
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    return settings.model_copy(
        update={
            "probes": settings.probes.model_copy(update={"interval": 0.3, "timeout": 0.25}),
            "failover": settings.failover.model_copy(
                update={"io_stall": 1.5, "apply_timeout": 10.0, "action_timeout": 3.0}
            ),
            "controller": settings.controller.model_copy(update={"journal": journal}),
            "api": settings.api.model_copy(update={"port": 0}),
        }
    )


async def one_run(sandbox, fault: str) -> tuple[RunResult, list[str]]:
    lines: list[str] = []
    drill = Drill(
        fast_settings(sandbox),
        sandbox_access(sandbox),
        SandboxFaults(sandbox),
        DrillPlan(fault=fault, runs=1),
        progress=lines.append,
        acknowledge_block=True,
    )
    results = await drill.run()
    assert len(results) == 1
    return results[0], lines


def check_result(result: RunResult, fault: str) -> None:
    assert result.error is None, result.error
    assert result.fault == fault
    assert result.new_primary not in (None, result.old_primary)
    assert set(result.figures) == set(FIGURE_NAMES)
    for name, value in result.figures.items():
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, (name, value)
    assert result.writes_acknowledged >= 50 + 20  # warm-up plus writes after the plan
    assert result.lost_writes == 0 and result.lost_ids == ()
    assert result.restored, result.restore
    assert result.ok
    doc = document([result], {}, {})
    assert doc["ok"] is True and doc["runs"][0]["figures"] == dict(result.figures)


async def roles_after(sandbox, result: RunResult) -> None:
    roles = await sandbox.live_roles()
    assert roles[result.new_primary] == "primary"
    assert sorted(roles.values()) == ["primary", "replica", "replica"], roles


async def test_kill_drill(sandbox):
    result, lines = await one_run(sandbox, "kill")
    check_result(result, "kill")
    assert "restarted" in result.restore and "acknowledged" in result.restore
    assert any("kill of the primary" in line for line in lines)
    await roles_after(sandbox, result)


async def test_freeze_drill(sandbox):
    result, _ = await one_run(sandbox, "freeze")
    check_result(result, "freeze")
    # A thawed primary may execute a write queued in its socket before it is fenced (an
    # errant transaction): then the drill rebuilt it, and says so.
    assert "rejoined as a replica" in result.restore
    await roles_after(sandbox, result)


async def test_switchover_drill(sandbox):
    result, _ = await one_run(sandbox, "switchover")
    check_result(result, "switchover")
    assert "acknowledged" not in result.restore  # nothing to acknowledge after a switchover
    await roles_after(sandbox, result)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hacontrol")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["drill", *argv])
    return args.func(args)


async def test_config_without_confirmation_exits_2_and_changes_nothing(sandbox, capsys):
    before = await sandbox.live_roles()
    code = cli("--config", sandbox.status().settings, "--writer", "127.0.0.1:1", "--app-user", "a")
    assert code == 2
    assert "--yes-kill-the-primary" in capsys.readouterr().err
    assert await sandbox.live_roles() == before


def test_router_is_chosen_for_the_sandbox_not_for_a_config(sandbox, capsys):
    code = cli(
        "--config", sandbox.status().settings, "--yes-kill-the-primary", "--router", "haproxy",
        "--writer", "127.0.0.1:1", "--app-user", "a",
    )  # fmt: skip
    assert code == 2
    assert "--router is for the sandbox" in capsys.readouterr().err
    other = "haproxy" if sandbox.status().router.kind == "proxysql" else "proxysql"
    code = cli("--dir", str(sandbox.dir), "--router", other)
    assert code == 2
    assert f"runs {sandbox.status().router.kind}, not {other}" in capsys.readouterr().err


async def test_config_refused_while_another_controller_holds_the_api_port(
    sandbox, capsys, tmp_path
):
    settings = load_settings(sandbox.status().settings).settings
    password = tmp_path / "pw"
    password.write_text(sandbox.password("app"))
    before = await sandbox.live_roles()
    with socket.socket() as held:  # what a running controller's API looks like
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind((settings.api.host, settings.api.port))
        held.listen()
        code = cli(
            "--config",
            sandbox.status().settings,
            "--yes-kill-the-primary",
            "--writer",
            f"127.0.0.1:{sandbox.status().router.writer_port}",
            "--app-user",
            "app",
            "--app-password-file",
            str(password),
        )
    assert code == 2
    assert "another controller is probably running" in capsys.readouterr().err
    assert await sandbox.live_roles() == before
