"""The journal file: strict reading (every problem named with its file and line, never a
traceback), torn records, whole-record appends on a full disk, an immutable file, the writer
thread's order and deadline, the space check, and the way out (``hacontrol journal check``,
``reset --yes``; ``run`` refusing a corrupt journal with a clear message)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hacontrol.journal import (
    Journal,
    JournalError,
    JournalUnwritable,
    read_records,
    reset,
)
from hacontrol.plan import Plan, Promote, WaitApplied
from tests.support import disk_faults_unavailable, fill, immutable, small_tmpfs

PLAN = Plan("DeadPrimary", "r", (WaitApplied("node2", 5.0), Promote("node2", "node1")), "failover")
BEGIN = {"type": "begin", "id": "p1", "kind": "failover", "rule": "r", "reason": "r"}


def begin_with(*actions: dict) -> str:
    return json.dumps({**BEGIN, "actions": list(actions)})


CORRUPT = [
    # (what, file content, line, problem in the message)
    (
        "random bytes",
        b'{"ts":1,"type":"end","id":"a","ok":true,"reason":""}\n\xff\xfe\x00garbage\n',
        2,
        "not UTF-8 text",
    ),
    ("a JSON list", b"[1,2,3]\n", 1, "a record must be a JSON object, got a list"),
    ("not JSON", b"hello\n", 1, "not JSON"),
    ("no type", b'{"id":"x"}\n', 1, 'no "type"'),
    ("unknown type", b'{"type":"explode"}\n', 1, "unknown record type 'explode'"),
    ("begin without id", b'{"type":"begin"}\n', 1, "begin: missing 'id'"),
    (
        "unknown plan kind",
        json.dumps({**BEGIN, "kind": "coup", "actions": []}).encode() + b"\n",
        1,
        "unknown plan kind 'coup'",
    ),
    (
        "unknown action type",
        begin_with({"type": "Explode"}).encode() + b"\n",
        1,
        "actions[0]: unknown action type 'Explode'",
    ),
    (
        "an action argument of the wrong type",
        begin_with({"type": "Promote", "node": 5, "old_primary": "node1"}).encode() + b"\n",
        1,
        "Promote.node: expected str, got a number",
    ),
    (
        "an action argument missing",
        begin_with({"type": "Promote", "node": "n2"}).encode() + b"\n",
        1,
        "Promote: missing argument 'old_primary'",
    ),
    (
        "an unknown action argument",
        begin_with({"type": "Fence", "node": "n1", "rm": "-rf"}).encode() + b"\n",
        1,
        "Fence: unknown argument 'rm'",
    ),
    (
        "a bad router membership",
        begin_with({"type": "Route", "desired": {"writers": "node1"}}).encode() + b"\n",
        1,
        "Route.desired: each group must be a list of node names",
    ),
    (
        "a step index that is text",
        b'{"type":"step","id":"p","index":"1","ok":true,"detail":""}\n',
        1,
        "step: 'index' must be an integer, got a string",
    ),
    (
        "a state that is a list",
        b'{"type":"state","state":[]}\n',
        1,
        "state: must be an object, got a list",
    ),
    (
        "a quarantine without its new primary",
        b'{"type":"state","state":{"quarantined":{"node1":{}}}}\n',
        1,
        "state: quarantined['node1']: must be an object with a 'new_primary'",
    ),
    (
        "a non-finite time",
        b'{"type":"state","state":{"blocked_until":1e999}}\n',
        1,
        "'blocked_until' must be a time or null",
    ),
    (
        "a consent that is not a list",
        b'{"type":"state","state":{"consents":{"node5":"node1"}}}\n',
        1,
        "state: 'consents' must be a list",
    ),
    (
        "a consent without its incident",
        b'{"type":"state","state":{"consents":[{"node":"node5","dead":"node1",'
        b'"position":null,"held":null,"at":5.0}]}}\n',
        1,
        "state: consents[0]: 'position' and 'held' cannot both be null",
    ),
    (
        "a consent with a field missing",
        b'{"type":"state","state":{"consents":[{"node":"node5","dead":"node1"}]}}\n',
        1,
        "state: consents[0]: must be an object with node, dead, position, held, at",
    ),
    (
        "a consent whose node is a number",
        b'{"type":"state","state":{"consents":[{"node":5,"dead":"node1",'
        b'"position":"0-1-9","held":null,"at":5.0}]}}\n',
        1,
        "state: consents[0]: 'node' and 'dead' must be node names",
    ),
    ("JSON nested too deeply", b"[" * 100000 + b"]" * 100000 + b"\n", 1, "nested too deeply"),
]


@pytest.mark.parametrize(
    ("content", "line", "problem"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
)
def test_a_corrupt_journal_is_named_by_file_line_and_problem(tmp_path, content, line, problem):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(content)
    with pytest.raises(JournalError) as raised:
        Journal(path).load()
    assert raised.value.line == line and problem in raised.value.problem
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert path.read_bytes() == content  # nothing rewritten


def test_a_journal_that_is_a_directory_or_unreadable_is_named(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(JournalError, match="is a directory, not a journal file"):
        Journal(tmp_path / "dir.jsonl").load()
    assert read_records(tmp_path / "absent.jsonl") == ([], ())


def test_torn_records_are_skipped_and_a_new_record_never_glues_to_one(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.save_state({"paused": True})
    with path.open("a") as handle:
        handle.write('{"ts":1,"type":"begin","id":"p9","kind":"fail')  # cut by a crash
    journal.begin("p1", PLAN)  # the next record (compaction could not run) starts on a new line
    records, torn = read_records(path)
    assert torn == (2,) and [r["type"] for _, r in records] == ["state", "begin"]
    replay = Journal(path).load()
    assert replay.torn == (2,) and replay.unfinished is not None
    assert replay.unfinished.plan_id == "p1" and replay.state == {"paused": True}
    assert read_records(path)[1] == ()  # compacted: the torn line is gone


QUARANTINE = {
    "blocked_until": 4e9,
    "last_failover_at": 1e3,
    "quarantined": {"node1": {"new_primary": "node2", "since": 1e3, "errant": None}},
}


@pytest.mark.parametrize(
    ("kind", "end", "released"),
    [
        ("failover", {"promoted": None}, True),  # the executor's end, or a resume's EndIntent
        ("failover", {"promoted": "node2"}, False),
        ("failover", {}, False),  # an end from before the outcome was written: not known
        ("switchover", {"promoted": None}, False),  # a switchover quarantines nobody
    ],
)
def test_an_end_that_promoted_nothing_releases_the_failovers_quarantine(
    tmp_path, kind, end, released
):
    """The state record before a failover quarantines its dead primary; the one after a
    failover that promoted nothing drops it. A crash between the end and that state record
    must leave the same state: a quarantined dead primary is never failed over."""
    path = tmp_path / "journal.jsonl"
    begin = {
        **BEGIN,
        "kind": kind,
        "actions": [{"type": "Promote", "node": "node2", "old_primary": "node1"}],
    }
    records = [
        {"type": "state", "state": QUARANTINE},
        begin,
        {"type": "end", "id": "p1", "ok": False, "reason": "WaitApplied failed", **end},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    state = Journal(path).load().state
    assert state is not None
    assert ("node1" not in state["quarantined"]) is released
    assert (state["blocked_until"] is None) is released and state["last_failover_at"] == 1e3


def test_an_end_that_promoted_nothing_is_a_name_or_null(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"type":"end","id":"p1","ok":false,"reason":"x","promoted":5}\n')
    with pytest.raises(JournalError, match="end: 'promoted' must be a node name or null"):
        Journal(path).load()


def test_a_journal_on_a_full_disk_keeps_whole_records_and_writes_its_end_later():
    if reason := disk_faults_unavailable():
        pytest.skip(reason)
    with small_tmpfs("16k") as disk:
        journal = Journal(disk / "journal.jsonl")
        journal.begin("p1", PLAN)
        filler = fill(disk)
        assert not journal.check_space().writable  # full, though the last page has room
        written = 0
        with pytest.raises(JournalUnwritable, match="No space left on device"):
            while True:  # small records fill what is left of the journal's own page
                journal.save_state({"paused": False, "maintenance": ["node3"]})
                written += 1
        assert written < 100
        before = journal.path.read_bytes()
        with pytest.raises(JournalUnwritable):
            journal.end("p1", True, "all steps done", "node2")
        assert journal.path.read_bytes() == before  # no half record
        space = journal.check_space()
        assert not space.writable and space.free_bytes is not None and space.free_bytes < 4096
        assert Journal(journal.path).load().unfinished is not None  # the end is not there yet
        filler.unlink()
        assert journal.check_space().writable  # ... and the kept end is written now
        assert Journal(journal.path).load().unfinished is None


def test_an_immutable_journal_cannot_be_written_but_is_read_and_left_as_is(tmp_path):
    if reason := disk_faults_unavailable():
        pytest.skip(reason)
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.begin("p1", PLAN)
    content = path.read_bytes()
    heard: list[str] = []
    journal.on_failure = heard.append
    with immutable(path):
        with pytest.raises(JournalUnwritable, match="Operation not permitted"):
            journal.step("p1", 0, True, "applied")
        assert heard and "Operation not permitted" in heard[0]
        space = journal.check_space()
        assert not space.writable and "Operation not permitted" in space.reason
        replay = Journal(path).load()  # read fine; the compaction could not replace it
        assert replay.unfinished is not None and "Operation not permitted" in replay.unwritable
        assert path.read_bytes() == content


async def test_the_writer_thread_keeps_the_order_and_a_hung_write_does_not_block(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl", write_timeout=0.3)
    journal.post(journal.save_state, {"paused": True})
    await journal.write(journal.begin, "p1", PLAN)  # durable, after the state posted before
    assert [r["type"] for _, r in read_records(journal.path)[0]] == ["state", "begin"]
    release = threading.Event()
    journal.post(release.wait)  # a write that hangs (a dead disk)
    try:
        with pytest.raises(JournalUnwritable, match=r"not written within 0\.3 s"):
            await journal.write(journal.step, "p1", 0, True, "applied")
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(JournalUnwritable, match="a journal write has hung"):
            await journal.write(journal.step, "p1", 1, True, "applied")
        assert loop.time() - t0 < 0.1  # no second wait on a stuck writer
        assert not await journal.flushed()
    finally:
        release.set()
    await asyncio.sleep(0.05)  # the hung write returns
    assert await journal.flushed()
    journal.close()


def test_check_space_says_how_much_room_is_left(tmp_path):
    space = Journal(tmp_path / "state" / "journal.jsonl").check_space()
    assert space.writable and space.free_bytes and space.free_bytes > 4096
    assert (tmp_path / "state" / "journal.jsonl").exists()
    (tmp_path / "afile").write_text("x")
    blocked = Journal(tmp_path / "afile" / "journal.jsonl").check_space()
    assert not blocked.writable and blocked.reason


def test_reset_keeps_a_copy(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"[1,2,3]\n")
    kept = reset(path)
    assert kept is not None and kept.read_bytes() == b"[1,2,3]\n" and not path.exists()
    assert kept.name.startswith("journal.jsonl.") and kept.name.endswith(".bak")
    assert reset(path) is None
    assert Journal(path).load().unfinished is None


# -- the commands ----------------------------------------------------------------------------


def hacontrol(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hacontrol", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def settings_file(folder: Path, journal: Path) -> Path:
    config = folder / "settings.toml"
    config.write_text(
        f"""
[cluster]
name = "t"
[[nodes]]
name = "node1"
host = "127.0.0.1"
port = 1
[[nodes]]
name = "node2"
host = "127.0.0.1"
port = 2
[[nodes]]
name = "node3"
host = "127.0.0.1"
port = 3
[mysql]
password = "password-1"
replication_password = "password-2"
[api]
enabled = false
[controller]
journal = "{journal}"
"""
    )
    return config


ISSUE_CASES = [
    c
    for c in CORRUPT
    if c[0]
    in (
        "random bytes",
        "a JSON list",
        "begin without id",
        "unknown action type",
        "an action argument of the wrong type",
    )
]


@pytest.mark.parametrize(
    ("content", "line", "problem"), [c[1:] for c in ISSUE_CASES], ids=[c[0] for c in ISSUE_CASES]
)
def test_run_refuses_a_corrupt_journal_with_a_clear_message(tmp_path, content, line, problem):
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(content)
    done = hacontrol("run", "--config", str(settings_file(tmp_path, journal)), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"the journal cannot be read: {journal}:{line}: " in done.stderr
    assert problem in done.stderr and "hacontrol journal reset --yes" in done.stderr
    refused = [json.loads(x) for x in done.stdout.splitlines() if "startup_refused" in x]
    assert refused and refused[0]["line"] == line and refused[0]["path"] == str(journal)


def test_the_way_out_check_then_reset_keeps_a_copy(tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b'{"type":"begin"}\n')
    config = settings_file(tmp_path, journal)
    check = hacontrol("journal", "check", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 2 and f"{journal}:1: begin: missing 'id'" in check.stderr
    assert "Traceback" not in check.stderr
    kept = hacontrol("journal", "reset", "--yes", "--config", str(config), cwd=tmp_path)
    assert kept.returncode == 0 and "moved to" in kept.stdout and not journal.exists()
    assert [p.read_bytes() for p in tmp_path.glob("journal.jsonl.*.bak")] == [b'{"type":"begin"}\n']
    again = hacontrol("journal", "check", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0 and "0 record(s)" in again.stdout


def test_run_refuses_a_journal_path_that_is_a_directory(tmp_path):
    journal = tmp_path / "journal.jsonl"
    config = settings_file(tmp_path, journal)
    journal.mkdir()  # after the settings were written: check-config refuses it too
    done = hacontrol("run", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "controller.journal" in done.stderr and "is a directory" in done.stderr


def test_journal_check_describes_what_the_controller_will_do(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    consent = {"node": "node5", "dead": "node1", "position": "0-1-9", "held": None, "at": 9.0}
    journal.save_state(
        {
            "paused": True,
            "quarantined": {"node1": {"new_primary": "node2"}},
            "consents": [consent],
        }
    )
    journal.begin("failover-1", PLAN)
    journal.step("failover-1", 0, True, "applied")
    done = hacontrol("journal", "check", "--path", str(journal.path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 record(s)" not in done.stdout and "3 record(s)" in done.stdout
    assert "unfinished plan failover-1 (DeadPrimary, 2 steps, done: 0)" in done.stdout
    assert "paused=True" in done.stdout and "quarantined=node1" in done.stdout
    assert "failover consents=without node5 (away from node1)" in done.stdout
    assert "writable" in done.stdout
    refused = hacontrol("journal", "reset", "--path", str(journal.path), cwd=tmp_path)
    assert refused.returncode == 2 and "add --yes" in refused.stderr and journal.path.exists()


def test_journal_check_takes_the_cluster_when_the_settings_hold_several(tmp_path):
    from tests.settings_documents import TWO, write

    config = write(tmp_path, TWO)
    journal = Journal(tmp_path / "state" / "journal.billing.jsonl")
    journal.save_state({"paused": True})
    which = hacontrol("journal", "check", "--config", str(config), cwd=tmp_path)
    assert which.returncode == 2 and "Traceback" not in which.stderr
    assert "several clusters: give --cluster NAME (one of: orders, billing)" in which.stderr
    billing = hacontrol(
        "journal", "check", "--config", str(config), "--cluster", "billing", cwd=tmp_path
    )
    assert billing.returncode == 0, billing.stderr
    assert (
        f"{journal.path.resolve()}: 1 record(s)" in billing.stdout
        and "paused=True" in billing.stdout
    )
    orders = hacontrol(
        "journal", "check", "--config", str(config), "--cluster", "orders", cwd=tmp_path
    )
    assert (
        orders.returncode == 0
        and "journal.orders.jsonl: 0 record(s) (no file yet)" in orders.stdout
    )
    unknown = hacontrol("journal", "check", "--config", str(config), "--cluster", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown cluster 'x'" in unknown.stderr
