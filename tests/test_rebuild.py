"""Rebuild, the pure parts: refusals (table), mariadb-backup's output (recorded), progress,
the commands, and the file scripts run by a real ``sh`` on a temporary directory."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from hacontrol.actions.rebuild import Rebuilder, RebuildFailed, _Job
from hacontrol.mariabackup import (
    BackupLog,
    Progress,
    clone_position,
    copy_progress,
    parse_binlog_info,
    parse_size,
    parse_slave_info,
    seed_state,
)
from hacontrol.plan import LEASE_LOST
from hacontrol.rebuild_checks import NodeFacts, check_rebuild, fenced, healthy_replica
from hacontrol.rebuild_commands import (
    EXIT_REFUSED,
    Command,
    Endpoint,
    RebuildCommands,
    RebuildPaths,
    check_datadir,
    preflight_script,
    rebuild_steps,
    restore_script,
    swap_script,
)
from tests import factories

DATA = Path(__file__).parent / "data"

# -- refusals --------------------------------------------------------------------------------

PRIMARY = NodeFacts("node1", True, read_only=False, hostgroup="writer")
HEALTHY = NodeFacts("node2", True, read_only=True, hostgroup="reader", replicating=True, lag=0)
ERRANT = NodeFacts("node3", True, read_only=True, hostgroup="broken", errant="0-3-5")


def cluster(*changed: NodeFacts, extra: tuple[NodeFacts, ...] = ()) -> dict[str, NodeFacts]:
    nodes = {n.name: n for n in (PRIMARY, HEALTHY, ERRANT, *extra)}
    return {**nodes, **{n.name: n for n in changed}}


# (nodes, primary, target, source, ok, reason fragment, source picked)
CHECKS = [
    (cluster(), "node1", "node3", "node2", True, "node3 may be rebuilt from node2", "node2"),
    (cluster(), "node1", "node3", None, True, "from node2 (lowest lag)", "node2"),
    # An unreachable target (dead, or its datadir lost) in the broken group: fine.
    (
        cluster(NodeFacts("node3", False, hostgroup="broken")),
        "node1",
        "node3",
        None,
        True,
        "",
        "node2",
    ),
    # Hidden by an operator counts as fenced.
    (cluster(replace(ERRANT, hostgroup="hidden")), "node1", "node3", None, True, "", "node2"),
    # The lowest lag is picked, then the name.
    (
        cluster(
            extra=(replace(HEALTHY, name="node4", lag=0), replace(HEALTHY, name="node5", lag=3))
        ),
        "node1",
        "node3",
        None,
        True,
        "node2",
        "node2",
    ),
    (cluster(replace(HEALTHY, lag=4)), "node1", "node3", None, True, "", "node2"),
    # Refusals.
    (cluster(), "node1", "node9", None, False, "node9 is not a configured node", None),
    (cluster(), None, "node3", None, False, "no primary is known", None),
    (cluster(), "node1", "node1", "node2", False, "node1 is the primary", None),
    (cluster(), "node1", "node2", "node3", False, "in the router's reader group", None),
    (
        cluster(replace(ERRANT, hostgroup="writer")),
        "node1",
        "node3",
        None,
        False,
        "writer group",
        None,
    ),
    (cluster(replace(ERRANT, read_only=False)), "node1", "node3", None, False, "is writable", None),
    (
        cluster(replace(ERRANT, read_only=None)),
        "node1",
        "node3",
        None,
        False,
        "unknown read_only",
        None,
    ),
    (
        cluster(replace(ERRANT, hostgroup=None, read_only=False)),
        "node1",
        "node3",
        None,
        False,
        "writable",
        None,
    ),
    # The last healthy replica, fenced by an operator's hand: taking it down leaves none.
    (
        cluster(replace(HEALTHY, hostgroup="broken"), replace(ERRANT, reachable=False)),
        "node1",
        "node2",
        None,
        False,
        "node2 is the last healthy replica",
        None,
    ),
    (
        cluster(replace(HEALTHY, flavor="mysql")),
        "node1",
        "node3",
        None,
        False,
        "needs MariaDB",
        None,
    ),
    (cluster(), "node1", "node3", "node1", False, "source node1 is the primary", None),
    (cluster(), "node1", "node3", "node3", False, "cannot be rebuilt from itself", None),
    (cluster(), "node1", "node3", "node7", False, "source node7 is not a configured node", None),
    (cluster(replace(HEALTHY, lag=30)), "node1", "node3", "node2", False, "lagging 30 s", None),
    (cluster(replace(HEALTHY, lag=None)), "node1", "node3", "node2", False, "lag unknown", None),
    (
        cluster(replace(HEALTHY, reachable=False)),
        "node1",
        "node3",
        "node2",
        False,
        "not reachable",
        None,
    ),
    (
        cluster(replace(HEALTHY, replicating=False)),
        "node1",
        "node3",
        "node2",
        False,
        "not replicating",
        None,
    ),
    (
        cluster(replace(HEALTHY, errant="0-2-9")),
        "node1",
        "node3",
        "node2",
        False,
        "errant transactions 0-2-9",
        None,
    ),
    (
        cluster(replace(HEALTHY, hostgroup="hidden")),
        "node1",
        "node3",
        "node2",
        False,
        "maintenance",
        None,
    ),
    (
        cluster(replace(HEALTHY, lag=30)),
        "node1",
        "node3",
        None,
        False,
        "no healthy replica other than node3",
        None,
    ),
]


@pytest.mark.parametrize(("nodes", "primary", "target", "source", "ok", "reason", "picked"), CHECKS)
def test_check_rebuild(nodes, primary, target, source, ok, reason, picked) -> None:
    verdict = check_rebuild(nodes, primary, target, source, max_lag=10.0)
    assert verdict.ok is ok, verdict.reason
    assert reason in verdict.reason
    assert verdict.source == picked


def test_fenced_and_healthy_are_reasons_or_none() -> None:
    assert fenced(ERRANT) is None
    assert fenced(NodeFacts("x", False)) is None  # down and in no group: nothing can reach it
    assert healthy_replica(HEALTHY, 10.0) is None
    assert healthy_replica(replace(HEALTHY, lag=10.0), 10.0) is None  # at the limit: fine
    assert healthy_replica(replace(HEALTHY, lag=10.5), 10.0) == (
        "lagging 10.5 s behind the primary (limit 10 s)"
    )


# -- mariadb-backup's output (recorded on 10.11) ----------------------------------------------


def fold(name: str) -> BackupLog:
    log = BackupLog()
    for line in (DATA / name).read_text().splitlines(keepends=True):
        log.feed(line)
    return log


def test_recorded_backup_log() -> None:
    log = fold("mariadb-backup-10.11-backup.log")
    assert log.completed and not log.last_error
    assert log.binlog_gtid == "0-2-18"  # "GTID of the last change": gtid_current_pos
    assert log.slave_gtid == "0-2-18"
    assert log.position() == "0-2-18"
    assert log.files == 148  # its "Streaming ..." lines (grep -c Streaming)
    assert log.current_file == "xtrabackup_info"


def test_recorded_failed_backup_says_why() -> None:
    log = fold("mariadb-backup-10.11-backup-no-server.log")
    assert not log.completed
    assert "Failed to connect to MariaDB server" in log.failure()
    with pytest.raises(ValueError, match="no binlog or slave position"):
        log.position()


def test_recorded_backup_refused_at_the_end_is_a_failure() -> None:
    """Without SLAVE MONITOR, 10.11 streams every file, then dies on SHOW ALL SLAVES STATUS:
    the stream looked complete, the log says otherwise."""
    log = fold("mariadb-backup-10.11-backup-no-slave-monitor.log")
    assert log.files > 100 and not log.completed
    assert log.failure().startswith("[00] FATAL ERROR")
    assert "SLAVE MONITOR" in log.failure()


def test_recorded_prepare_logs() -> None:
    assert fold("mariadb-backup-10.11-prepare.log").completed
    bad = fold("mariadb-backup-10.11-prepare-not-a-backup.log")
    assert not bad.completed and "Can't open backup-my.cnf" in bad.failure()


def test_recorded_info_files() -> None:
    info = (DATA / "mariadb-backup-10.11-xtrabackup_binlog_info").read_text()
    assert parse_binlog_info(info) == ("mysql-bin.000001", 328, "0-2-18")
    slave = (DATA / "mariadb-backup-10.11-xtrabackup_slave_info").read_text()
    assert parse_slave_info(slave) == "0-2-18"
    assert parse_binlog_info("mysql-bin.000003\t4\n") == ("mysql-bin.000003", 4, "")
    assert parse_slave_info("CHANGE MASTER TO MASTER_LOG_FILE='x', MASTER_LOG_POS=4;") == ""
    with pytest.raises(ValueError, match="binlog info"):
        parse_binlog_info("garbage")


@pytest.mark.parametrize(
    ("binlog", "slave", "position"),
    [
        ("0-2-18", "0-2-18", "0-2-18"),
        ("", "0-1-12", "0-1-12"),  # a source without log_slave_updates: its binlog is empty
        ("0-2-20", "0-2-18", "0-2-20"),
        ("0-1-5,1-3-7", "0-1-9", "0-1-9,1-3-7"),
    ],
)
def test_clone_position(binlog: str, slave: str, position: str) -> None:
    assert clone_position(binlog, slave) == position


def test_clone_position_refuses_diverged_or_garbage() -> None:
    with pytest.raises(ValueError, match="diverge"):
        clone_position("0-1-9", "0-2-9")
    with pytest.raises(ValueError):
        clone_position("nonsense", "")


def test_seed_state_lists_each_domains_highest_seq_last() -> None:
    # The server takes the last listed GTID of a domain as its binlog position.
    assert seed_state("0-7-30,0-1-12,0-5-3", "0-7-31") == "0-5-3,0-1-12,0-7-31"
    assert seed_state("", "0-2-18,1-4-2") == "0-2-18,1-4-2"
    assert seed_state("0-1-13,0-2-18", "0-2-18") == "0-1-13,0-2-18"


def test_parse_size() -> None:
    assert parse_size("17624025\t.\n", "du") == 17624025
    with pytest.raises(ValueError, match="du: expected a number of bytes"):
        parse_size("du: cannot access", "du")


# -- progress --------------------------------------------------------------------------------


def test_copy_progress_rate_and_eta() -> None:
    p = copy_progress(50 * 2**20, 200 * 2**20, 10.0, files=12, current_file="./app/t.ibd")
    assert p.rate == pytest.approx(5 * 2**20)
    assert p.eta == pytest.approx(30.0)
    assert p.line() == (
        "copy: 50.0 MiB of ~200.0 MiB (25%), 5.0 MiB/s, ETA 30 s, 12 files, at ./app/t.ibd"
    )
    # Past its estimate: 100 % at most, ETA unknown (never negative).
    over = copy_progress(300, 200, 2.0)
    assert over.eta is None and "(100%)" in over.line()
    # No time yet, no estimate: no rate, no ETA.
    start = copy_progress(0, None, 0.0)
    assert start.rate is None and start.eta is None and start.line() == "copy: 0 B"
    assert Progress("swap", message="node3 from node2").line() == "swap: node3 from node2"


# -- commands --------------------------------------------------------------------------------

TARGET = Endpoint("db3", "10.0.0.13", 3306)
SOURCE = Endpoint("db2", "10.0.0.12", 3306)
SSH = RebuildCommands(
    source_exec=("ssh", "{source_host}", "sudo"),
    target_exec=("ssh", "{target_host}", "sudo"),
    stop_target=("ssh", "{target_host}", "sudo", "systemctl", "stop", "mariadb"),
    start_target=("ssh", "{target_host}", "sudo", "systemctl", "start", "mariadb"),
    backup_options=("--defaults-extra-file=/etc/mysql/backup.cnf",),
    datadir="/var/lib/mysql/data",
    datadir_owner="mysql:mysql",
)


def test_ssh_layout_commands() -> None:
    steps = rebuild_steps(SSH, TARGET, SOURCE)
    assert steps.backup.argv == (
        "ssh", "10.0.0.12", "sudo", "mariadb-backup",
        "--defaults-extra-file=/etc/mysql/backup.cnf",
        "--backup", "--stream=mbstream", "--slave-info",
    )  # fmt: skip
    assert steps.receive.argv == (
        "ssh", "10.0.0.13", "sudo", "mbstream", "-x", "-C", "/var/lib/mysql/data.rebuild",
    )  # fmt: skip
    assert steps.prepare.argv[-2:] == ("--prepare", "--target-dir=/var/lib/mysql/data.rebuild")
    assert steps.swap.argv == ("ssh", "10.0.0.13", "sudo", "sh", "-s")
    assert "chown -R mysql:mysql" in (steps.swap.stdin or "")
    assert steps.size.argv == ("ssh", "10.0.0.12", "sudo", "sh", "-s")
    assert "cd /var/lib/mysql/data\n" in (steps.size.stdin or "")
    assert steps.stop_target == Command(
        ("ssh", "10.0.0.13", "sudo", "systemctl", "stop", "mariadb")
    )
    assert str(steps.backup).startswith("ssh 10.0.0.12 sudo mariadb-backup")


def test_datadir_per_node_and_paths() -> None:
    commands = replace(SSH, datadirs={"db3": "/data/mysql/"})
    steps = rebuild_steps(commands, TARGET, SOURCE)
    assert steps.paths == RebuildPaths("/data/mysql")
    assert (steps.paths.staging, steps.paths.old, steps.paths.mark) == (
        "/data/mysql.rebuild",
        "/data/mysql.before-rebuild",
        "/data/mysql.rebuild-swapped",
    )


@pytest.mark.parametrize(
    ("commands", "target", "fragment"),
    [
        (replace(SSH, stop_target=("ssh", "{host}")), TARGET, "unknown placeholder {host}"),
        (replace(SSH, stop_target=("ssh", "{target_host!r}")), TARGET, "unknown placeholder"),
        (SSH, Endpoint("db3", "h; rm -rf /", 3306), "target_host"),
        (replace(SSH, datadir="/var/lib/my sql"), TARGET, "datadir of db3"),
        (replace(SSH, datadir="relative/path"), TARGET, "absolute path"),
        (replace(SSH, datadir="/var/../etc"), TARGET, "absolute path"),
        (replace(SSH, datadir="/"), TARGET, "absolute path"),
        (replace(SSH, datadirs={"db2": "/x/$(reboot)"}), TARGET, "datadir of db2"),
    ],
)
def test_refused_values_and_placeholders(commands, target, fragment) -> None:
    with pytest.raises(ValueError, match=fragment.replace("{", "\\{").replace("}", "\\}")):
        rebuild_steps(commands, target, SOURCE)


def test_check_datadir_normalizes() -> None:
    assert check_datadir("/var/lib/mysql/", "datadir") == "/var/lib/mysql"


# -- the scripts, run by a real sh -------------------------------------------------------------


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, check=False)


@pytest.fixture
def paths(tmp_path: Path) -> RebuildPaths:
    datadir = tmp_path / "node" / "data"
    datadir.mkdir(parents=True)
    (datadir / "old-file").write_text("old")
    return RebuildPaths(str(datadir))


def test_preflight_makes_an_empty_staging_dir(paths: RebuildPaths) -> None:
    Path(paths.staging).mkdir()
    (Path(paths.staging) / "half-copied").write_text("x")  # a failed copy's leftovers
    done = sh(preflight_script(paths))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0  # free KiB
    assert list(Path(paths.staging).iterdir()) == []
    assert (Path(paths.datadir) / "old-file").read_text() == "old"


@pytest.mark.parametrize("leftover", ["old", "mark"])
def test_preflight_refuses_what_a_previous_rebuild_left(paths: RebuildPaths, leftover: str) -> None:
    Path(getattr(paths, leftover)).write_text("")
    done = sh(preflight_script(paths))
    assert done.returncode == EXIT_REFUSED
    assert "previous rebuild" in done.stderr
    assert not Path(paths.staging).exists()


def test_swap_then_restore_puts_the_old_datadir_back(paths: RebuildPaths) -> None:
    assert sh(preflight_script(paths)).returncode == 0
    (Path(paths.staging) / "new-file").write_text("new")
    assert sh(swap_script(paths, "")).returncode == 0
    assert (Path(paths.datadir) / "new-file").exists()
    assert (Path(paths.old) / "old-file").exists() and Path(paths.mark).exists()
    assert sh(restore_script(paths)).returncode == 0
    assert sorted(p.name for p in Path(paths.datadir).iterdir()) == ["old-file"]
    assert not Path(paths.old).exists() and not Path(paths.mark).exists()


def test_restore_without_a_swap_never_touches_the_datadir(paths: RebuildPaths) -> None:
    assert sh(preflight_script(paths)).returncode == 0
    assert sh(restore_script(paths)).returncode == 0
    assert (Path(paths.datadir) / "old-file").read_text() == "old"
    assert not Path(paths.staging).exists()


def test_swap_and_restore_with_no_datadir(tmp_path: Path) -> None:
    paths = RebuildPaths(str(tmp_path / "gone" / "data"))  # lost with its parent
    assert sh(preflight_script(paths)).returncode == 0
    (Path(paths.staging) / "new-file").write_text("new")
    assert sh(swap_script(paths, "")).returncode == 0
    assert (Path(paths.datadir) / "new-file").exists() and not Path(paths.old).exists()
    assert sh(restore_script(paths)).returncode == 0
    assert not Path(paths.datadir).exists()  # as before: no datadir


def test_swap_that_fails_midway_is_restored(paths: RebuildPaths) -> None:
    # No staging directory: the old datadir is moved aside, then the second mv fails.
    done = sh(swap_script(paths, ""))
    assert done.returncode != 0
    assert not Path(paths.datadir).exists() and Path(paths.mark).exists()
    assert sh(restore_script(paths)).returncode == 0
    assert (Path(paths.datadir) / "old-file").read_text() == "old"


# -- the runner refuses bad settings before touching anything ---------------------------------


@pytest.mark.parametrize(
    ("commands", "target", "fragment"),
    [
        (RebuildCommands(), "node3", "no stop_target / start_target command configured"),
        (SSH, "node9", "invalid setting: 'node9'"),
        (replace(SSH, datadir="/var/lib/my sql"), "node3", "invalid setting: datadir of node3"),
    ],
)
async def test_rebuilder_refuses_bad_settings(commands, target, fragment) -> None:
    reports: list[Progress] = []
    result = await Rebuilder(factories.settings(), commands).rebuild(
        target, "node2", "node1", reports.append
    )
    assert not result.ok and fragment in result.reason
    assert result.reason.endswith("nothing was changed") and result.detail["commands"] == []
    assert [r.phase for r in reports] == ["failed"]


def test_cleanup_removes_the_marker_before_the_old_datadir(paths: RebuildPaths) -> None:
    """A cleanup cut short must never let a restore take the new datadir away."""
    steps = rebuild_steps(RebuildCommands(datadirs={"db3": paths.datadir}), TARGET, SOURCE)
    assert sh(preflight_script(paths)).returncode == 0
    (Path(paths.staging) / "new-file").write_text("new")
    assert sh(swap_script(paths, "")).returncode == 0
    script = steps.discard_old.stdin or ""
    assert script.index(paths.mark) < script.index(paths.old)
    assert sh(script).returncode == 0
    assert sh(restore_script(paths)).returncode == 0
    assert sorted(p.name for p in Path(paths.datadir).iterdir()) == ["new-file"]


async def test_an_unreadable_backup_password_file_fails_the_rebuild_not_the_controller() -> None:
    """The settings load (the controller must run without it); the rebuild names the key."""
    settings = factories.settings(
        rebuild={"stop_target": ["true"], "start_target": ["true"],
                 "backup_password_file": "/nonexistent/backup.password"}
    )  # fmt: skip
    result = await Rebuilder.from_settings(settings).rebuild("node3", "node2", "node1")
    assert not result.ok and "rebuild.backup_password_file" in result.reason
    assert result.reason.endswith("nothing was changed") and result.detail["commands"] == []


# -- a fleet's lease lost during a rebuild ----------------------------------------------------


def lease_job(paths: RebuildPaths, problem: str | None = None) -> _Job:
    """A rebuild of node3 whose datadir is ``paths``, its guard answering ``problem``."""
    commands = RebuildCommands(
        datadirs={"node3": paths.datadir}, stop_target=["true"], start_target=["true"]
    )
    rebuilder = Rebuilder(factories.settings(), commands)
    job = _Job(rebuilder, "node3", "node2", "node1", lambda _: None)
    job.steps = rebuild_steps(commands, rebuilder.endpoint("node3"), rebuilder.endpoint("node2"))
    job.guard = lambda: problem
    job.detail["target_free"] = 1
    return job


def listing(path: str) -> list[str] | None:
    folder = Path(path)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def test_the_guard_stops_a_rebuild_as_a_lost_lease() -> None:
    job = lease_job(RebuildPaths("/nonexistent/data"), "lease: no valid majority")
    with pytest.raises(RebuildFailed) as cut:
        job.fence()
    assert cut.value.lease_lost and cut.value.reason == "lease: no valid majority"
    lease_job(RebuildPaths("/nonexistent/data")).fence()  # a valid lease: goes on


async def test_a_lease_lost_before_the_stop_removes_only_the_staging_copy(paths) -> None:
    assert sh(preflight_script(paths)).returncode == 0
    job = lease_job(paths)
    job.phase = "copy"
    result = await job.failed(RebuildFailed("copy", "lease: lost", lease_lost=True))
    assert not result.ok and result.detail[LEASE_LOST]
    assert result.reason.endswith("node3 and node2 untouched")
    assert listing(paths.staging) is None and listing(paths.datadir) == ["old-file"]


async def test_a_lease_lost_after_the_stop_leaves_the_node_as_it_is_and_says_so(paths) -> None:
    assert sh(preflight_script(paths)).returncode == 0
    (Path(paths.staging) / "new-file").write_text("new")
    assert sh(swap_script(paths, "")).returncode == 0
    job = lease_job(paths)
    job.phase, job.stopped = "start", True
    result = await job.failed(RebuildFailed("start", "lease: lost", lease_lost=True))
    assert not result.ok and result.detail[LEASE_LOST]
    assert "NOT undone (this instance no longer leads)" in result.reason
    assert "quarantined" in result.reason and paths.old in result.reason
    assert result.detail["commands"] == []  # no stop, no restore: nothing more done to it
    assert listing(paths.datadir) == ["new-file"] and listing(paths.old) == ["old-file"]
