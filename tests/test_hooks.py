"""Operator hooks: real subprocesses, real process groups, a real JsonLog in memory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hacontrol.actions.hooks import (
    LOG_OUTPUT_LIMIT,
    HookResult,
    HookRunner,
    command_problem,
    describe,
    hook_env,
)
from hacontrol.settings import HookSettings
from tests.factories import MemoryLog as Log

SECRET = "s3cr3t-do-not-leak"


def runner(log: Log, timeout: float = 0.5, **commands: str) -> HookRunner:
    settings = HookSettings(timeout=timeout, **commands)
    return HookRunner(settings, log.log, cluster="prod", kill_grace=0.3, drain=0.2)


def script(tmp_path: Path, name: str, body: str, *, executable: bool = True) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    if executable:
        path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going between open and read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_dead(pids: list[int], timeout: float = 3.0) -> list[int]:
    """The pids still alive after ``timeout`` (empty once all are gone)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return left


def read_pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- pure helpers -----------------------------------------------------------------------------


def test_hook_env_strips_every_hacontrol_variable_and_adds_the_context() -> None:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "HACONTROL_MYSQL__PASSWORD": SECRET,
        "HACONTROL_SMTP__PASSWORD": SECRET,
        "hacontrol_api__token": SECRET,
        "HACONTROL_PHASE": "stale",
    }
    env = hook_env(
        base,
        "prod",
        "post_failover",
        {"old_primary": "db1", "new_primary": "db2", "reason": "db1 is dead", "ha-lo.x": "1"},
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "HACONTROL_OLD_PRIMARY": "db1",
        "HACONTROL_NEW_PRIMARY": "db2",
        "HACONTROL_REASON": "db1 is dead",
        "HACONTROL_HA_LO_X": "1",
        "HACONTROL_CLUSTER": "prod",
        "HACONTROL_PHASE": "post_failover",
    }
    assert SECRET not in env.values()


def test_hook_env_cluster_and_phase_win_over_the_context() -> None:
    env = hook_env({}, "prod", "on_halt", {"cluster": "other", "phase": "x", "node": "db3"})
    assert env == {
        "HACONTROL_CLUSTER": "prod",
        "HACONTROL_PHASE": "on_halt",
        "HACONTROL_NODE": "db3",
    }


def result(**kw: Any) -> HookResult:
    values: dict[str, Any] = {
        "phase": "pre_failover",
        "command": "/usr/local/bin/guard",
        "ran": True,
        "ok": False,
        "exit_code": 3,
        "timed_out": False,
        "seconds": 0.25,
        "output": "\n  maintenance window: no failover\nsecond line\n",
    }
    values.update(kw)
    return HookResult(**values)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, "pre_failover hook `/usr/local/bin/guard` exited 3: maintenance window: no failover"),
        ({"output": ""}, "pre_failover hook `/usr/local/bin/guard` exited 3"),
        (
            {"ok": True, "exit_code": 0, "output": "paged"},
            "pre_failover hook `/usr/local/bin/guard` exited 0: paged",
        ),
        (
            {"exit_code": None, "timed_out": True, "seconds": 10.02, "output": ""},
            "pre_failover hook `/usr/local/bin/guard` timed out after 10.0 s and was killed",
        ),
        (
            {"exit_code": None, "output": "cannot start 'guard': No such file or directory"},
            "pre_failover hook `/usr/local/bin/guard` could not start: "
            "cannot start 'guard': No such file or directory",
        ),
        (
            {"exit_code": -9, "output": ""},
            "pre_failover hook `/usr/local/bin/guard` was killed by SIGKILL",
        ),
        ({"ran": False, "ok": True, "command": ""}, "pre_failover: no hook configured"),
    ],
)
def test_describe_is_one_line(kw: dict[str, Any], expected: str) -> None:
    assert describe(result(**kw)) == expected


def test_describe_cuts_a_long_first_line() -> None:
    text = describe(result(output="x" * 1000))
    assert "\n" not in text
    assert text.endswith("x...")
    assert len(text) < 300


def test_command_problem() -> None:
    assert command_problem("") is None
    assert command_problem("/usr/bin/page --team 'db oncall'") is None
    problem = command_problem("/usr/bin/page 'db oncall")
    assert problem is not None
    assert "closing quotation" in problem


# --- real subprocesses ------------------------------------------------------------------------


async def test_exit_zero_is_ok_and_output_is_logged(tmp_path: Path) -> None:
    hook = script(tmp_path, "page.sh", 'echo "paged oncall"\necho "to stderr" >&2\nexit 0\n')
    log = Log()
    res = await runner(log, post_failover=str(hook)).run(
        "post_failover", {"old_primary": "db1", "new_primary": "db2", "node": "db2"}
    )
    assert res.ran and res.ok
    assert res.exit_code == 0
    assert not res.timed_out
    assert res.phase == "post_failover"
    assert res.command == str(hook)
    assert res.output == "paged oncall\nto stderr\n"
    assert 0 <= res.seconds < 2.0

    started, finished = log.lines()
    assert started["event"] == "hook_started"
    assert started["phase"] == "post_failover"
    assert started["command"] == str(hook)
    assert started["node"] == "db2"
    assert finished["event"] == "hook_finished"
    assert finished["level"] == "info"
    assert finished["ok"] is True
    assert finished["exit_code"] == 0
    assert finished["timed_out"] is False
    assert finished["output"] == "paged oncall\nto stderr\n"
    assert finished["seconds"] == res.seconds


async def test_non_zero_exit_is_not_ok(tmp_path: Path) -> None:
    hook = script(tmp_path, "guard.sh", 'echo "maintenance window: no failover"\nexit 3\n')
    log = Log()
    res = await runner(log, pre_failover=str(hook)).run("pre_failover", {"node": "db1"})
    assert res.ran
    assert not res.ok
    assert res.exit_code == 3
    assert not res.timed_out
    assert describe(res) == f"pre_failover hook `{hook}` exited 3: maintenance window: no failover"
    [finished] = log.lines("hook_finished")
    assert finished["level"] == "warning"
    assert finished["ok"] is False
    assert finished["exit_code"] == 3
    assert finished["output"] == "maintenance window: no failover\n"


async def test_context_arrives_and_secrets_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HACONTROL_MYSQL__PASSWORD", SECRET)
    monkeypatch.setenv("HACONTROL_API__TOKEN", SECRET)
    monkeypatch.setenv("HOOK_TEST_KEPT", "kept")
    log = Log()
    hooks = runner(log, post_switchover="env")
    res = await hooks.run(
        "post_switchover",
        {"old_primary": "db1", "new_primary": "db2", "reason": "operator asked", "kind": "x"},
    )
    assert res.ok
    env = dict(line.split("=", 1) for line in res.output.splitlines() if "=" in line)
    assert {k: v for k, v in env.items() if k.startswith("HACONTROL_")} == {
        "HACONTROL_CLUSTER": "prod",
        "HACONTROL_PHASE": "post_switchover",
        "HACONTROL_OLD_PRIMARY": "db1",
        "HACONTROL_NEW_PRIMARY": "db2",
        "HACONTROL_REASON": "operator asked",
        "HACONTROL_KIND": "x",
    }
    assert env["HOOK_TEST_KEPT"] == "kept"
    assert "PATH" in env
    assert SECRET not in res.output
    assert SECRET not in log.text


async def test_timeout_kills_the_hook_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, "slow.sh", f"sleep 60 &\necho $! $$ > {pids}\nsleep 60\n")
    log = Log()
    started = time.monotonic()
    res = await runner(log, timeout=0.5, on_halt=str(hook)).run("on_halt", {})
    elapsed = time.monotonic() - started
    both = read_pids(pids)
    try:
        assert res.ran
        assert res.timed_out
        assert not res.ok
        assert res.exit_code is None
        assert 0.5 <= res.seconds < 2.0
        assert elapsed < 2.0
        assert await wait_dead(both) == []
        [finished] = log.lines("hook_finished")
        assert finished["level"] == "error"
        assert finished["timed_out"] is True
        assert finished["exit_code"] is None
        assert re.search(r"`\S+slow.sh` timed out after 0\.[5-9] s and was killed$", describe(res))
    finally:
        kill_all(both)


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The ignored SIGTERM is inherited by the child sleep too.
    hook = script(
        tmp_path, "stubborn.sh", f"trap '' TERM\nsleep 60 &\necho $! $$ > {pids}\nsleep 60\n"
    )
    log = Log()
    res = await runner(log, timeout=0.3, on_halt=str(hook)).run("on_halt", {})
    both = read_pids(pids)
    try:
        assert res.timed_out
        assert not res.ok
        # timeout 0.3 + the SIGTERM grace 0.3 before SIGKILL.
        assert 0.6 <= res.seconds < 2.0
        assert await wait_dead(both) == []
    finally:
        kill_all(both)


async def test_cancelled_run_kills_the_hook_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, "slow.sh", f"sleep 60 &\necho $! $$ > {pids}\nsleep 60\n")
    log = Log()
    task = asyncio.create_task(runner(log, timeout=30, on_halt=str(hook)).run("on_halt", {}))
    deadline = time.monotonic() + 3
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline, "hook did not start"
        await asyncio.sleep(0.02)
    both = read_pids(pids)
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_dead(both) == []
    finally:
        kill_all(both)


def processes_with_arg(arg: str) -> list[int]:
    """Live (not zombie) processes that have ``arg`` in their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv and alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.mark.parametrize("yields", [0, 1, 3, 8])
async def test_cancelled_at_any_point_of_the_start_leaves_no_process(
    tmp_path: Path, yields: int
) -> None:
    marker = f"61.{os.getpid()}{yields}"  # a sleep duration no other process uses
    hook = script(tmp_path, "slow.sh", f"sleep {marker} &\nsleep {marker}\n")
    fds = len(os.listdir("/proc/self/fd"))
    task = asyncio.create_task(runner(Log(), timeout=30, on_halt=str(hook)).run("on_halt", {}))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)  # a spawn still under way completes, then its group is killed
    left = processes_with_arg(marker)
    kill_all(left)
    assert left == []
    assert len(os.listdir("/proc/self/fd")) == fds


async def test_background_child_left_running_does_not_delay_the_hook(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The leftover sleep keeps the output pipe open; the hook itself exits at once.
    hook = script(tmp_path, "bg.sh", f"sleep 30 &\necho $! > {pidfile}\necho started\n")
    log = Log()
    res = await runner(log, timeout=5, post_failover=str(hook)).run("post_failover", {})
    leftover = read_pids(pidfile)
    try:
        assert res.ok
        assert res.output == "started\n"
        assert res.seconds < 3.0  # the 0.2 s drain, not the 5 s timeout nor the 30 s sleep
    finally:
        kill_all(leftover)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda tmp: "/nonexistent/hacontrol-hook --flag", "No such file or directory"),
        (lambda tmp: "hacontrol-no-such-command-anywhere", "No such file or directory"),
        (
            lambda tmp: str(script(tmp, "noexec.sh", "exit 0\n", executable=False)),
            "Permission denied",
        ),
        (lambda tmp: "/usr/bin/page 'db oncall", "closing quotation"),
    ],
)
async def test_a_command_that_cannot_start_is_a_failed_result(
    tmp_path: Path, make: Any, text: str
) -> None:
    command = make(tmp_path)
    log = Log()
    res = await runner(log, pre_failover=command).run("pre_failover", {})
    assert res.ran
    assert not res.ok
    assert res.exit_code is None
    assert not res.timed_out
    assert text in res.output
    assert describe(res).startswith(f"pre_failover hook `{command}` could not start: ")
    [finished] = log.lines("hook_finished")
    assert finished["level"] == "error"
    assert text in finished["output"]


async def test_no_command_configured_runs_nothing() -> None:
    log = Log()
    hooks = runner(log, pre_failover="   ")
    for phase in ("on_failure_detected", "pre_failover", "post_failover", "post_switchover"):
        res = await hooks.run(phase, {"node": "db1"})
        assert res == HookResult(phase, "", False, True, None, False, 0.0, "")
    assert log.text == ""


async def test_unknown_phase_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown hook phase 'post_fialover'"):
        await runner(Log()).run("post_fialover", {})


async def test_arguments_with_spaces_survive_shlex_quoting(tmp_path: Path) -> None:
    hook = script(tmp_path, "args.sh", "printf '[%s]\\n' \"$@\"\n")
    command = f"{hook} 'db oncall' \"two  spaces\" plain '$HOME;ls'"
    res = await runner(Log(), post_failover=command).run("post_failover", {})
    assert res.ok
    # No shell: the quoting is shlex's, and $HOME / ; reach the hook literally.
    assert res.output == "[db oncall]\n[two  spaces]\n[plain]\n[$HOME;ls]\n"


async def test_sh_c_runs_shell_code_and_non_utf8_output_is_replaced() -> None:
    command = 'sh -c \'printf "caf\\351 %s\\n" "$HACONTROL_NODE"; exit 4\''
    res = await runner(Log(), on_failure_detected=command).run(
        "on_failure_detected", {"node": "db1"}
    )
    assert res.exit_code == 4
    assert res.output == "caf\ufffd db1\n"


async def test_big_output_is_truncated_and_does_not_block_the_hook() -> None:
    # 1 MiB: far more than a pipe buffer; the hook must still finish well within its timeout.
    command = "sh -c 'head -c 1048576 /dev/zero | tr \"\\0\" x; echo; echo done >&2; exit 0'"
    log = Log()
    res = await runner(log, timeout=5, post_failover=command).run("post_failover", {})
    assert res.ok
    assert res.output.startswith("x" * 65536)
    assert res.output.endswith("\n[output truncated at 65536 bytes]")
    assert len(res.output) < 65536 + 100
    [finished] = log.lines("hook_finished")
    assert len(finished["output"]) < LOG_OUTPUT_LIMIT + 100
    assert finished["output"].endswith("[output truncated in this log line]")
    assert all(len(line) < 16 * 1024 for line in log.text.splitlines())


async def fds_before_and_after_hooks() -> tuple[int, int]:
    """Open file descriptors before and after a few hook runs of every kind."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    hooks = runner(Log(), timeout=0.3, post_failover="true", on_halt="sleep 5")
    hooks_bg = runner(Log(), post_switchover="sh -c 'sleep 2 & echo $!'")
    await hooks.run("post_failover", {})  # warm up: uvloop keeps one /dev/null fd open
    await asyncio.sleep(0.01)  # a closed pipe transport releases its fd on the next loop turn
    before = open_fds()
    for _ in range(5):
        assert (await hooks.run("post_failover", {})).ok
        assert (await hooks.run("pre_failover", {})).ran is False
    assert (await hooks.run("on_halt", {})).timed_out
    leftover = await hooks_bg.run("post_switchover", {})  # a child still holds the pipe
    kill_all([int(leftover.output)])
    await asyncio.sleep(0.01)
    return before, open_fds()


async def test_no_file_descriptors_leak() -> None:
    before, after = await fds_before_and_after_hooks()
    assert after == before


def test_runs_on_uvloop(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, "slow.sh", f"sleep 60 &\necho $! $$ > {pids}\nsleep 60\n")

    async def main() -> tuple[HookResult, HookResult, list[int], tuple[int, int]]:
        log = Log()
        ok = await runner(log, post_failover="sh -c 'echo \"$HACONTROL_PHASE\"'").run(
            "post_failover", {}
        )
        slow = await runner(log, timeout=0.3, on_halt=str(hook)).run("on_halt", {})
        both = read_pids(pids)
        return ok, slow, await wait_dead(both), await fds_before_and_after_hooks()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as run:
        ok, slow, left, (fds_before, fds_after) = run.run(main())
    try:
        assert ok.ok
        assert ok.output == "post_failover\n"
        assert slow.timed_out
        assert left == []
        assert fds_after == fds_before
    finally:
        kill_all(read_pids(pids))
