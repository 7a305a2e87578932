"""What mariadb-backup prints, and how far a copy is. Pure: text in, values out.

mariadb-backup (MariaDB's hot physical backup, Debian package ``mariadb-backup``) writes its
stream to stdout and its log to stderr, one line per step. Lines seen on 10.11
(``tests/data/mariadb-backup-10.11-backup.log``, dates cut here)::

    [00] ... Streaming ./app/writes.ibd
    [00] ... MySQL binlog position: filename 'mysql-bin.000001', position '2425',
             GTID of the last change '0-1-12'                              (one line)
    [00] ... MySQL slave binlog position: gtid_slave_pos '0-1-12'; master ''
             master_use_gtid = slave_pos                                   (one line)
    [00] ... completed OK!

The binlog line carries ``gtid_binlog_pos`` and the slave line ``gtid_slave_pos`` (with
``--slave-info``), both read under ``BACKUP STAGE BLOCK_COMMIT``, so they match the data
copied. The same values are written into the backup as ``xtrabackup_binlog_info`` /
``xtrabackup_slave_info`` (renamed ``mariadb_backup_binlog_info`` / ``..._slave_info`` in
later releases): :func:`parse_binlog_info` and :func:`parse_slave_info` read both names'
format. A run succeeded only when the tool exited 0 *and* its last line says
``completed OK!``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from hacontrol import gtid

_PREFIX = r"^(?:\[\d+\]\s+)?(?:\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\s+)?"
_STREAMING = re.compile(_PREFIX + r"(?:Streaming|Copying)\s+(?P<file>\S+)")
_BINLOG = re.compile(
    r"binlog position: filename '(?P<file>[^']*)', position '(?P<pos>\d+)'"
    r"(?:, GTID of the last change '(?P<gtid>[^']*)')?"
)
_SLAVE = re.compile(r"slave binlog position: .*?gtid_slave_pos '(?P<gtid>[^']*)'")
_COMPLETED = re.compile(r"completed OK!\s*$")
_ERROR = re.compile(r"\b(?:error|fatal|failed|cannot|can't)\b", re.IGNORECASE)
_SLAVE_INFO = re.compile(r"gtid_slave_pos\s*=\s*'(?P<gtid>[^']*)'")
KEEP_LINES = 20


@dataclass
class BackupLog:
    """Folds mariadb-backup's stderr, line by line, into what a rebuild needs.

    Mutable on purpose: it is fed from the thread that drains the tool's stderr, and read
    once the tool has exited.
    """

    files: int = 0
    current_file: str = ""
    binlog_gtid: str | None = None
    slave_gtid: str | None = None
    completed: bool = False
    last_error: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP_LINES))

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        self.tail.append(line)
        if m := _STREAMING.search(line):
            self.files += 1
            self.current_file = m["file"].rstrip(".")
        elif m := _BINLOG.search(line):
            self.binlog_gtid = gtid_text(m["gtid"] or "")
        elif m := _SLAVE.search(line):
            self.slave_gtid = gtid_text(m["gtid"])
        elif _COMPLETED.search(line):
            self.completed = True
        elif _ERROR.search(line) and "InnoDB: " not in line:
            self.last_error = line

    def failure(self) -> str:
        """The most telling line for an error message."""
        return self.last_error or (self.tail[-1] if self.tail else "no output")

    def position(self) -> str:
        """The GTID position of the copied data (see :func:`clone_position`)."""
        if self.binlog_gtid is None and self.slave_gtid is None:
            raise ValueError("mariadb-backup printed no binlog or slave position")
        return clone_position(self.binlog_gtid or "", self.slave_gtid or "")


def gtid_text(value: str) -> str:
    return "".join(value.split())


def clone_position(binlog_gtid: str, slave_gtid: str) -> str:
    """Where a copy of a replica resumes: per domain the furthest of the source's binlog
    position (what it wrote or, with ``log_slave_updates``, applied) and its slave position
    (what it applied: a replica without ``log_slave_updates`` binlogs nothing it applies).
    Raises ValueError when they are malformed or diverge."""
    try:
        merged = gtid.parse_mariadb(binlog_gtid) | gtid.parse_mariadb(slave_gtid)
    except gtid.DivergedError as exc:
        raise ValueError(
            f"backup positions diverge ({binlog_gtid} and {slave_gtid}): {exc}"
        ) from None
    return gtid.format_gtids(merged)


def seed_state(source_state: str, position: str) -> str:
    """The ``gtid_binlog_state`` to give a copy: the source's state read before the backup,
    plus the last GTID of each domain of the copy's position, each domain's highest seq
    listed last (the server takes the last listed GTID of a domain as its position)."""
    merged = gtid.server_state(source_state, position)
    order = sorted(merged.last, key=lambda item: (item[0][0], item[1], item[0][1]))
    return ",".join(f"{d}-{s}-{n}" for (d, s), n in order)


def parse_binlog_info(text: str) -> tuple[str, int, str]:
    """``xtrabackup_binlog_info``: ``file<TAB>position[<TAB>gtid]`` -> (file, position, gtid)."""
    fields = text.strip().split("\t")
    if len(fields) not in (2, 3) or not fields[1].strip().isdigit():
        raise ValueError(f"binlog info {text.strip()!r}: expected file, position and GTID")
    return fields[0].strip(), int(fields[1]), gtid_text(fields[2]) if len(fields) == 3 else ""


def parse_slave_info(text: str) -> str:
    """``xtrabackup_slave_info`` (``SET GLOBAL gtid_slave_pos = '0-1-12'; CHANGE MASTER ...``):
    the GTID position; '' when the source was not a GTID replica."""
    m = _SLAVE_INFO.search(text)
    return gtid_text(m["gtid"]) if m else ""


def parse_size(text: str, what: str) -> int:
    """The first number of a command's output (``du -sb``: ``12345<TAB>.``)."""
    m = re.match(r"\s*(\d+)", text)
    if m is None:
        raise ValueError(f"{what}: expected a number of bytes, got {text.strip()[:80]!r}")
    return int(m[1])


# -- progress ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One report of a rebuild: the phase and, while copying, how far the copy is."""

    phase: str
    copied: int = 0  # bytes streamed so far
    total: int | None = None  # estimate: the source datadir without binlogs and redo logs
    rate: float | None = None  # bytes per second since the copy began
    eta: float | None = None  # seconds left at that rate; None when unknown
    files: int = 0
    current_file: str = ""
    message: str = ""

    def line(self) -> str:
        """One line for an operator's terminal."""
        if self.message or self.phase != "copy":
            return f"{self.phase}: {self.message}" if self.message else self.phase
        parts = [f"copy: {_bytes(self.copied)}"]
        if self.total:
            parts[0] += (
                f" of ~{_bytes(self.total)} ({min(100.0, 100 * self.copied / self.total):.0f}%)"
            )
        if self.rate is not None:
            parts.append(f"{_bytes(self.rate)}/s")
        if self.eta is not None:
            parts.append(f"ETA {self.eta:.0f} s")
        if self.current_file:
            parts.append(f"{self.files} files, at {self.current_file}")
        return ", ".join(parts)


def copy_progress(
    copied: int, total: int | None, elapsed: float, files: int = 0, current_file: str = ""
) -> Progress:
    """Rate from the whole copy so far; ETA from the estimate, never negative (a copy that
    passed its estimate has an unknown ETA, not a negative one)."""
    rate = copied / elapsed if elapsed > 0 else None
    eta = None
    if rate and total is not None and copied <= total:
        eta = (total - copied) / rate
    return Progress("copy", copied, total, rate, eta, files, current_file)


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    unit = "B"
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit the loop stopped at
        n /= 1024
        if n < 1024:
            break
    return f"{n:.1f} {unit}"
