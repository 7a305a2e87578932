"""The journal cannot stop a failover, on a real sandbox: ``hacontrol run`` as a process, its
journal on a 16 KiB tmpfs that is then filled (or the journal made immutable), then kill -9
of the primary. The controller survives, says why in its log, fails over without the journal
(``rules.journal``), and writes the state it kept in memory once the journal is writable
again. Needs root (mount, chattr); skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from hacontrol.journal import read_records
from tests.live import FAST_ENV, Process
from tests.support import disk_faults_unavailable, fill, small_tmpfs

pytestmark = pytest.mark.integration


def fill_journal(journal: Path) -> None:
    """What is left of the journal's own last page: blank lines (a reader skips them)."""
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\n"):
                pass
    finally:
        os.close(fd)


def make_full(disk: Path, journal: Path) -> Path:
    filler = fill(disk)
    fill_journal(journal)
    return filler


def make_immutable(disk: Path, journal: Path) -> Path:
    import subprocess

    done = subprocess.run(["chattr", "+i", str(journal)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported on tmpfs here: {done.stderr.strip()}")
    return journal


def undo(fault: str, made: Path) -> None:
    import subprocess

    if fault == "full":
        made.unlink()
    else:
        subprocess.run(["chattr", "-i", str(made)], check=True)


@pytest.mark.parametrize(
    ("fault", "errno_text"),
    [("full", "No space left on device"), ("immutable", "Operation not permitted")],
)
async def test_a_journal_that_cannot_be_written_does_not_stop_a_failover(
    fresh_sandbox, fault, errno_text
):
    if reason := disk_faults_unavailable():
        pytest.skip(reason)
    info = fresh_sandbox.status()
    with small_tmpfs("16k") as disk:
        journal = disk / "journal.jsonl"
        ctl = Process(info.settings, {**FAST_ENV, "HACONTROL_CONTROLLER__JOURNAL": str(journal)})
        try:
            ctl.wait(lambda: ctl.of("decision", rule="Nothing"), 20, "a healthy cluster")
            made = (make_full if fault == "full" else make_immutable)(disk, journal)
            down = ctl.wait(lambda: ctl.of("journal_unwritable"), 15, "the journal check")
            assert str(journal) in down[0]["reason"]
            fresh_sandbox.kill_node("node1", signal.SIGKILL)
            done = ctl.wait(lambda: ctl.of("plan_finished", kind="failover"), 30, "the failover")
            assert done[0]["ok"], done[0]["reason"]
            assert ctl.proc.poll() is None  # alive
            failed = ctl.wait(lambda: ctl.of("journal_write_failed"), 15, "the write failure")
            assert any(errno_text in f["reason"] for f in failed)
            begin = [f for f in failed if f.get("plan") == done[0]["plan"]]
            assert begin and begin[0]["plan_goes_on"] is True  # the rule, shown in the log
            assert ctl.of("alert", kind="journal_unwritable")
            promoted = next(a for a in ctl.of("action") if a["action"] == "Promote")["node"]
            undo(fault, made)
            ctl.wait(lambda: ctl.of("journal_writable"), 15, "the journal back")
            kept = ctl.wait(lambda: _kept_state(journal), 10, "the state written")
            assert kept["quarantined"]["node1"]["new_primary"] == promoted
            assert kept["blocked_until"] is not None
        finally:
            ctl.stop()
    assert ctl.proc.returncode == 0  # stopped by us, never died
    roles = await fresh_sandbox.live_roles()
    assert roles[promoted] == "primary" and roles["node1"] == "unreachable"


def _kept_state(journal: Path) -> dict | None:
    states = [r["state"] for _, r in read_records(journal)[0] if r["type"] == "state"]
    return states[-1] if states and states[-1].get("quarantined") else None
