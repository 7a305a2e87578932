"""GTID set algebra for MariaDB and MySQL. Pure values, no I/O.

A :class:`GtidSet` is an immutable, hashable set of transactions of one server flavor. It
supports union ``|``, difference ``-``, intersection ``&`` and containment ``<=``.
Mixing flavors in one operation raises ``ValueError``. Build sets with :func:`parse`,
:func:`empty` or :meth:`GtidSet.build`; :func:`format_gtids` (also ``str()``) gives text that
:func:`parse` reads back to an equal set.

MySQL
=====
Text as in ``@@gtid_executed``: ``uuid:1-5:7-9,uuid2:1-100``. Whitespace (newlines included)
around elements and around ``:`` is ignored, UUIDs and tags are case-insensitive and kept lower
case, intervals are inclusive, a single number ``uuid:7`` is the interval ``7-7``, intervals are
merged and sorted (``uuid:1-3:4-5`` equals ``uuid:1-5``) and a UUID may appear in several
elements (they are merged, as the server does). MySQL 8.4 tagged GTIDs: ``uuid:tag:1-5``; a tag
applies to the intervals after it until the next tag, so ``uuid:1-5:tag:1-3`` holds ``uuid:1-5``
and ``uuid:tag:1-3``. A tag is a letter or ``_`` followed by up to 31 letters, digits or ``_``.
Transaction numbers run from 1 to 2**63-1. The canonical text is the server's (UUIDs sorted, per
UUID the untagged intervals first, then the tags sorted) but joined with ``,`` and no newline so
that it fits one log line.

MariaDB
=======
Text as in ``@@gtid_current_pos``: ``0-1-100,1-3-7``, one ``domain-server-seq`` per
replication domain, comma separated, whitespace around elements ignored, the empty string is the
empty set. A domain may appear only once (the server refuses duplicates too, error 1943).
Domain and server ids are 32-bit, seqs 64-bit. Seq 0 is accepted in the plain form only:
MariaDB 10.11 accepts ``SET GLOBAL gtid_slave_pos='0-1-0'`` and reports ``0-1-0`` back, meaning
"domain 0, no transaction yet"; it parses to a set without domain 0.

With ``gtid_strict_mode`` a position ``0-1-100`` means "domain 0 has every transaction up to
seq 100, and seq 100 was written by server 1". The model is therefore, per domain:

* the set of seqs, as inclusive intervals (the position ``0-1-100`` holds seqs ``1..100``);
* ``server_id``: the server id of the GTID at the domain's highest seq, or ``None`` when an
  operation left a highest seq whose server id no input knew.

Sets that are not prefixes come out of differences, e.g. the errant transactions of an old
primary, position ``0-1-105`` minus the new primary's ``0-2-100``, are seqs ``101..105`` of
domain 0. Their text form lists the intervals with ``..`` separated by ``:``, after the server id
of the highest seq, ``*`` when unknown::

    0-1-105              prefix: seqs 1..105, seq 105 written by server 1 (server text)
    0-1-101..105         seqs 101..105, seq 105 written by server 1
    0-1-3..5:9..9        seqs 3, 4, 5 and 9, seq 9 written by server 1
    0-*-1..99            seqs 1..99, server id of seq 99 unknown
    0-*-99               same set (a prefix is always formatted in the plain form)

A prefix is always formatted ``d-s-n``, so real server output round-trips exactly apart from
the order of domains (sorted here) and leading zeros.

What the MariaDB model can detect, and what it cannot
-----------------------------------------------------
Positions name only the last GTID of each domain; the server ids of the seqs below it are not
in the text. Two servers whose domain 0 ends at the same seq with *different* server ids
(an old primary's errant ``0-1-101`` against the new primary's ``0-2-101``) hold different
transactions at that seq. This module sees that case and only that case:

* ``diverged_domains(a, b)`` returns the domains whose last seqs are equal while the known
  server ids differ;
* neither set contains the other (``<=`` and :meth:`GtidSet.contains` are False);
* ``a - b`` keeps the diverged last GTID of ``a`` (``0-1-101`` minus ``0-2-101`` is
  ``0-1-101..101``), so ``a <= b`` holds exactly when ``a - b`` is empty, for every pair;
* ``a & b`` leaves the diverged seq out (the two servers do not share that transaction);
* ``a | b`` raises :class:`DivergedError`: one set cannot name two transactions at one seq.

A divergence *below* the last GTID cannot be seen from positions: ``0-1-101`` on the old primary
against ``0-2-105`` on the new one looks contained even if seq 101 differs, because nothing
says which server wrote the new primary's seq 101. The server finds it when the old primary
rejoins as a replica: the new primary's binlog does not contain the GTID ``0-1-101`` and
replication stops with error 1236 (``ER_MASTER_FATAL_ERROR_READING_BINLOG``, "the slave has a
GTID that is not in the master's binlog"). The binlog state (next section) finds it before.

Binlog states: the last GTID per (domain, server id)
----------------------------------------------------
``@@gtid_binlog_state`` lists, for every (domain, server id) pair that ever wrote to the
node's binary log, the last GTID of that pair: ``0-1-64,0-2-106`` on a new primary that
replicated ``0-1-1..64`` from server 1 and then wrote ``0-2-65..106`` itself. Purging binlogs
keeps it (each binlog starts with the whole state); ``RESET MASTER`` empties it. A
:class:`BinlogState` holds such a mapping; :func:`server_state` merges a node's binlog state
with its positions (``gtid_slave_pos`` counts too: a replica without ``log_slave_updates``
binlogs nothing it applies).

:func:`errant_by_state` is the containment test the server itself applies to a connecting
replica's position (``check_slave_start_position`` in MariaDB's ``sql_repl.cc``: the GTID
``d-s-n`` is in the master's binlog when its state has the pair (d, s) at seq >= n), applied to
*every* pair of the node instead of only its last GTID per domain. An old primary whose state
says ``0-1-65`` against the new primary's ``0-1-64,0-2-106`` has the errant ``0-1-65``, which
the positions (``0-1-65`` within ``0-2-106``) miss.

The test assumes what GTID strict mode gives: in one domain each server's seqs grow along one
history, so a node that has ``d-s-n`` has every earlier GTID of server s that its history
holds. It cannot see an errant GTID of server s when the reference later received a GTID of
the same server s at a higher seq along another branch (s was rebuilt or reset and wrote
again); nothing but reading the binlogs would. A reference whose binlog state lost history
(``RESET MASTER``, or a datadir restored from a backup without ``SET GLOBAL gtid_binlog_state``)
lacks pairs it has the data of: the test then reports them as errant, which is the safe error
(the node is kept out of replication and an operator looks).

Unknown server ids (``*``) only come out of operations on non-prefix sets. A known server id
does not fit inside an unknown one: ``0-1-5 <= 0-*-5`` is False while ``0-*-5 <= 0-1-5`` is
True, which keeps ``<=`` a partial order (antisymmetric) for every input, and ``a <= b`` holds
exactly when ``a - b`` is empty. Union and intersection merge what the inputs know: a known
server id wins over an unknown one (``0-*-5 & 0-1-5`` is ``0-1-5``).

The usual set laws (``(a - b) | (a & b) == a``, ``(a - b) & b`` empty, ``a & b <= a``,
associativity, inclusion-exclusion of :meth:`GtidSet.count` ...) hold for sets drawn from one
history (a seq always has the same server id) whose server ids are known: the positions of one
cluster, errant transactions above the other's last GTID included. With ``*`` server ids at the
same last seq, the laws that involve ``&`` can fail; with a divergence, those that involve ``|``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

Flavor = Literal["mariadb", "mysql"]
FLAVORS: tuple[Flavor, ...] = ("mariadb", "mysql")

Interval: TypeAlias = tuple[int, int]
Intervals: TypeAlias = tuple[Interval, ...]
# MariaDB: the replication domain id. MySQL: (lower-case uuid, lower-case tag or "").
Source: TypeAlias = int | tuple[str, str]

MAX_MARIADB_ID = 2**32 - 1
MAX_MARIADB_SEQ = 2**64 - 1
MAX_MYSQL_GNO = 2**63 - 1


class DivergedError(ValueError):
    """A union of MariaDB sets whose last GTIDs in a domain differ (see the module doc)."""

    def __init__(self, domains: Iterable[int], message: str) -> None:
        super().__init__(message)
        self.domains = frozenset(domains)


@dataclass(frozen=True)
class GtidEntry:
    """The transactions of one source: a MariaDB domain or a MySQL uuid (and tag).

    ``intervals`` are inclusive, sorted, disjoint, not adjacent and never empty.
    ``server_id`` (MariaDB only) is the server id of the GTID at ``last``; None when unknown
    and always None for MySQL.
    """

    source: Source
    intervals: Intervals
    server_id: int | None = None

    @property
    def last(self) -> int:
        return self.intervals[-1][1]

    @property
    def is_prefix(self) -> bool:
        return len(self.intervals) == 1 and self.intervals[0][0] == 1


@dataclass(frozen=True)
class GtidSet:
    """An immutable set of GTIDs of one flavor; ``entries`` sorted by source, none empty.

    Use :func:`parse`, :func:`empty` or :meth:`build`; the constructor trusts its arguments.
    """

    flavor: Flavor
    entries: tuple[GtidEntry, ...] = ()

    @classmethod
    def build(
        cls,
        flavor: Flavor,
        intervals: Mapping[Source, Iterable[Interval]],
        server_ids: Mapping[int, int | None] | None = None,
    ) -> GtidSet:
        """Normalize and validate: ``{source: [(lo, hi), ...]}`` plus MariaDB server ids."""
        _check_flavor(flavor)
        servers = dict(server_ids or {})
        if flavor == "mysql" and servers:
            raise ValueError(f"server ids are for MariaDB sets, got {servers!r}")
        entries = []
        for source, raw in intervals.items():
            checked = _check_source(flavor, source, raw)
            norm = _normalize(checked)
            if norm:
                sid = servers.get(source) if isinstance(source, int) else None
                if sid is not None and not 0 <= sid <= MAX_MARIADB_ID:
                    raise ValueError(f"server id {sid!r} out of range")
                entries.append(GtidEntry(source, norm, sid))
        return cls(flavor, _sorted(entries))

    # -- set algebra ---------------------------------------------------------------------

    def __or__(self, other: GtidSet) -> GtidSet:
        self._same_flavor(other)
        return self._combine(other, _union_entry)

    def __sub__(self, other: GtidSet) -> GtidSet:
        self._same_flavor(other)
        return self._combine(other, _subtract_entry)

    def __and__(self, other: GtidSet) -> GtidSet:
        self._same_flavor(other)
        return self._combine(other, _intersect_entry)

    def __le__(self, other: GtidSet) -> bool:
        """Every transaction of self is in other (see the module doc for MariaDB)."""
        return (self - other).is_empty()

    def __lt__(self, other: GtidSet) -> bool:
        return self <= other and self != other

    def __ge__(self, other: GtidSet) -> bool:
        return other <= self

    def __gt__(self, other: GtidSet) -> bool:
        return other < self

    def contains(self, other: GtidSet) -> bool:
        """``other <= self``."""
        return other <= self

    def is_empty(self) -> bool:
        return not self.entries

    def __bool__(self) -> bool:
        return bool(self.entries)

    def count(self) -> int:
        """Number of transactions."""
        return sum(hi - lo + 1 for e in self.entries for lo, hi in e.intervals)

    def entry(self, source: Source) -> GtidEntry | None:
        """The entry of one MariaDB domain or MySQL ``(uuid, tag)``, None when absent."""
        for e in self.entries:
            if e.source == source:
                return e
        return None

    def __str__(self) -> str:
        return format_gtids(self)

    # -- helpers -------------------------------------------------------------------------

    def _same_flavor(self, other: object) -> None:
        if not isinstance(other, GtidSet):
            raise TypeError(f"expected a GtidSet, got {type(other).__name__}")
        if other.flavor != self.flavor:
            raise ValueError(f"cannot combine a {self.flavor} GTID set with a {other.flavor} one")

    def _combine(
        self, other: GtidSet, op: Callable[[GtidEntry | None, GtidEntry | None], GtidEntry | None]
    ) -> GtidSet:
        mine = {e.source: e for e in self.entries}
        theirs = {e.source: e for e in other.entries}
        out = []
        for source in mine.keys() | theirs.keys():
            result = op(mine.get(source), theirs.get(source))
            if result is not None:
                out.append(result)
        return GtidSet(self.flavor, _sorted(out))


def empty(flavor: Flavor) -> GtidSet:
    _check_flavor(flavor)
    return GtidSet(flavor)


def is_at_least(a: GtidSet, b: GtidSet) -> bool:
    """``a`` is at least as advanced as ``b``: it has every transaction of ``b``."""
    return b <= a


def behind(a: GtidSet, b: GtidSet) -> int:
    """How many transactions ``b`` has that ``a`` lacks."""
    return (b - a).count()


def diverged_domains(a: GtidSet, b: GtidSet) -> set[int]:
    """MariaDB domains whose last GTIDs have the same seq but different known server ids."""
    a._same_flavor(b)
    theirs = {e.source: e for e in b.entries}
    out = set()
    for mine in a.entries:
        other = theirs.get(mine.source)
        if other is not None and _diverged(mine, other):
            assert isinstance(mine.source, int)
            out.add(mine.source)
    return out


# -- per-source operations -----------------------------------------------------------------


def _diverged(a: GtidEntry, b: GtidEntry) -> bool:
    return (
        a.last == b.last
        and a.server_id is not None
        and b.server_id is not None
        and a.server_id != b.server_id
    )


def _tip_not_in(a: GtidEntry, b: GtidEntry) -> bool:
    """a's last GTID is a transaction b does not hold, though b has a GTID at that seq.

    True when both end at the same seq and a knows the server id there but b does not know
    the same one. b's server id for seqs below its last is unknown and taken as matching.
    """
    return a.last == b.last and a.server_id is not None and a.server_id != b.server_id


def _server_at(seq: int, *entries: GtidEntry) -> int | None:
    """The known server id of ``seq`` among entries that end there, if any.

    Union and intersection both merge knowledge: a known server id wins over an unknown one.
    Callers have ruled out two different known ids (a divergence) before.
    """
    for e in entries:
        if e.last == seq and e.server_id is not None:
            return e.server_id
    return None


def _union_entry(a: GtidEntry | None, b: GtidEntry | None) -> GtidEntry | None:
    if a is None or b is None:
        return a or b
    if _diverged(a, b):
        raise DivergedError(
            [a.source],
            f"domain {a.source} diverged: seq {a.last} is from server {a.server_id} in one set "
            f"and from server {b.server_id} in the other",
        )
    intervals = _normalize(a.intervals + b.intervals)
    return GtidEntry(a.source, intervals, _server_at(intervals[-1][1], a, b))


def _subtract_entry(a: GtidEntry | None, b: GtidEntry | None) -> GtidEntry | None:
    if a is None or b is None:
        return a
    intervals = _subtract(a.intervals, b.intervals)
    if _tip_not_in(a, b):
        intervals = _normalize((*intervals, (a.last, a.last)))
    if not intervals:
        return None
    return GtidEntry(a.source, intervals, a.server_id if intervals[-1][1] == a.last else None)


def _intersect_entry(a: GtidEntry | None, b: GtidEntry | None) -> GtidEntry | None:
    if a is None or b is None:
        return None
    intervals = _intersect(a.intervals, b.intervals)
    if _diverged(a, b):
        intervals = _subtract(intervals, ((a.last, a.last),))
    if not intervals:
        return None
    return GtidEntry(a.source, intervals, _server_at(intervals[-1][1], a, b))


# -- interval arithmetic (inclusive, sorted, disjoint, non-adjacent) -----------------------


def _normalize(intervals: Iterable[Interval]) -> Intervals:
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _subtract(a: Intervals, b: Intervals) -> Intervals:
    out = []
    j = 0
    for lo, hi in a:
        while j < len(b) and b[j][1] < lo:
            j += 1
        k = j
        while lo <= hi and k < len(b) and b[k][0] <= hi:
            if b[k][0] > lo:
                out.append((lo, b[k][0] - 1))
            lo = max(lo, b[k][1] + 1)
            k += 1
        if lo <= hi:
            out.append((lo, hi))
    return tuple(out)


def _sorted(entries: Iterable[GtidEntry]) -> tuple[GtidEntry, ...]:
    return tuple(sorted(entries, key=lambda e: e.source))


# -- validation ----------------------------------------------------------------------------


def _check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}, expected one of {FLAVORS}")


def _check_source(flavor: Flavor, source: Source, raw: Iterable[Interval]) -> list[Interval]:
    intervals = list(raw)
    top = MAX_MARIADB_SEQ if flavor == "mariadb" else MAX_MYSQL_GNO
    for lo, hi in intervals:
        if lo < 1 or hi > top or lo > hi:
            raise ValueError(f"interval {lo}-{hi} of {source!r} outside 1..{top}")
    if flavor == "mariadb":
        if not isinstance(source, int) or not 0 <= source <= MAX_MARIADB_ID:
            raise ValueError(f"MariaDB domain id {source!r} is not a 32-bit number")
    elif not (
        isinstance(source, tuple)
        and len(source) == 2
        and _UUID.fullmatch(source[0])
        and source[0] == source[0].lower()
        and (source[1] == "" or (_TAG.fullmatch(source[1]) and source[1] == source[1].lower()))
    ):
        raise ValueError(f"MySQL source {source!r} is not a (lower-case uuid, tag) pair")
    return intervals


# -- text ----------------------------------------------------------------------------------

_NUM = r"[0-9]+"
_MARIADB_ENTRY = re.compile(
    rf"(?P<domain>{_NUM})-(?P<server>{_NUM}|\*)-"
    rf"(?:(?P<seq>{_NUM})|(?P<ranges>{_NUM}\.\.{_NUM}(?::{_NUM}\.\.{_NUM})*))"
)
_HEX = "[0-9a-fA-F]"
_UUID = re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_MYSQL_INTERVAL = re.compile(rf"(?P<lo>{_NUM})(?:\s*-\s*(?P<hi>{_NUM}))?")


def parse(text: str, flavor: Flavor) -> GtidSet:
    """Parse server text of the given flavor; ValueError quoting the bad text if malformed."""
    _check_flavor(flavor)
    return parse_mariadb(text) if flavor == "mariadb" else parse_mysql(text)


def _elements(text: str, what: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"{what} GTID text must be a string, got {text!r}")
    if not text.strip():
        return []
    elements = [part.strip() for part in text.split(",")]
    if "" in elements:
        raise ValueError(f"empty element in {what} GTID set {text!r}")
    return elements


def parse_mariadb(text: str) -> GtidSet:
    """Parse ``domain-server-seq,...`` (and the interval form of the module doc)."""
    intervals: dict[Source, Intervals] = {}
    servers: dict[int, int | None] = {}
    for element in _elements(text, "MariaDB"):
        m = _MARIADB_ENTRY.fullmatch(element)
        if m is None:
            raise ValueError(
                f"malformed MariaDB GTID {element!r} in {text!r}: expected domain-server-seq"
            )
        domain = int(m["domain"])
        server = None if m["server"] == "*" else int(m["server"])
        if domain > MAX_MARIADB_ID or (server is not None and server > MAX_MARIADB_ID):
            raise ValueError(f"MariaDB GTID {element!r} in {text!r}: id above 2**32-1")
        if domain in intervals:
            raise ValueError(f"MariaDB domain {domain} appears twice in {text!r}")
        if m["seq"] is not None:
            # "0-1-0" is real server output (SET GLOBAL gtid_slave_pos='0-1-0' is accepted
            # and reported back): the domain is known but holds no transaction.
            raw = [(1, int(m["seq"]))] if int(m["seq"]) else []
        else:
            raw = [tuple(int(n) for n in r.split("..")) for r in m["ranges"].split(":")]
        for lo, hi in raw:
            if lo < 1 or hi < lo or hi > MAX_MARIADB_SEQ:
                raise ValueError(
                    f"MariaDB GTID {element!r} in {text!r}: seq must be 1..2**64-1 "
                    "and ranges low..high"
                )
        intervals[domain] = _normalize(raw)  # type: ignore[arg-type]
        servers[domain] = server
    return GtidSet.build("mariadb", intervals, servers)


def parse_mysql(text: str) -> GtidSet:
    """Parse ``uuid:1-5:7,uuid2[:tag]:1-100`` as printed by ``@@gtid_executed``."""
    intervals: dict[Source, list[Interval]] = {}
    for element in _elements(text, "MySQL"):
        parts = [p.strip() for p in element.split(":")]
        if not _UUID.fullmatch(parts[0]):
            raise ValueError(f"malformed UUID {parts[0]!r} in MySQL GTID set {text!r}")
        uuid = parts[0].lower()
        tag = ""
        pending = True  # a uuid or tag still waits for its first interval
        for part in parts[1:]:
            if _TAG.fullmatch(part):
                if pending and tag:
                    raise ValueError(
                        f"tag {tag!r} without interval in MySQL GTID {element!r} of {text!r}"
                    )
                tag, pending = part.lower(), True
                continue
            m = _MYSQL_INTERVAL.fullmatch(part)
            lo = int(m["lo"]) if m else 0
            hi = int(m["hi"]) if m and m["hi"] is not None else lo
            if m is None or not 1 <= lo <= hi <= MAX_MYSQL_GNO:
                raise ValueError(
                    f"malformed interval {part!r} in MySQL GTID {element!r} of {text!r}: "
                    "expected n or low-high with 1 <= low <= high <= 2**63-1"
                )
            intervals.setdefault((uuid, tag), []).append((lo, hi))
            pending = False
        if pending:
            raise ValueError(f"MySQL GTID {element!r} in {text!r} has no interval")
    return GtidSet.build("mysql", intervals)


def format_gtids(gtids: GtidSet) -> str:
    """Canonical text of a set; :func:`parse` reads it back to an equal set."""
    if gtids.flavor == "mariadb":
        return ",".join(_format_mariadb(e) for e in gtids.entries)
    groups: dict[str, list[str]] = {}
    for e in gtids.entries:
        assert isinstance(e.source, tuple)
        uuid, tag = e.source
        parts = groups.setdefault(uuid, [uuid])
        if tag:
            parts.append(tag)
        parts.extend(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in e.intervals)
    return ",".join(":".join(parts) for parts in groups.values())


def _format_mariadb(e: GtidEntry) -> str:
    server = "*" if e.server_id is None else str(e.server_id)
    if e.is_prefix:
        return f"{e.source}-{server}-{e.last}"
    return f"{e.source}-{server}-" + ":".join(f"{lo}..{hi}" for lo, hi in e.intervals)


# -- MariaDB binlog states: the last seq per (domain, server id) ---------------------------------

Pair: TypeAlias = tuple[int, int]  # (domain id, server id)
_STATE_ENTRY = re.compile(rf"(?P<domain>{_NUM})-(?P<server>{_NUM})-(?P<seq>{_NUM})")


@dataclass(frozen=True)
class BinlogState:
    """The last seq of every (domain, server id) pair a MariaDB node holds (module doc).

    ``last`` is sorted by pair, seqs >= 1. Build it with :func:`parse_binlog_state`,
    :func:`server_state` or :meth:`of`; ``str()`` gives the server's text form, sorted.
    """

    last: tuple[tuple[Pair, int], ...] = ()

    @classmethod
    def of(cls, pairs: Mapping[Pair, int]) -> BinlogState:
        """Validated and sorted; seq 0 means "nothing from that pair" and is dropped."""
        for (domain, server), seq in pairs.items():
            if not (0 <= domain <= MAX_MARIADB_ID and 0 <= server <= MAX_MARIADB_ID):
                raise ValueError(f"MariaDB GTID {domain}-{server}-{seq}: id above 2**32-1")
            if not 0 <= seq <= MAX_MARIADB_SEQ:
                raise ValueError(f"MariaDB GTID {domain}-{server}-{seq}: seq out of range")
        return cls(tuple(sorted((pair, seq) for pair, seq in pairs.items() if seq)))

    def seq(self, domain: int, server: int) -> int:
        """The last seq of the pair; 0 when the state has nothing from it."""
        return dict(self.last).get((domain, server), 0)

    def is_empty(self) -> bool:
        return not self.last

    def __bool__(self) -> bool:
        return bool(self.last)

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for (d, s), n in self.last)


def parse_binlog_state(text: str) -> BinlogState:
    """``@@gtid_binlog_state`` text: ``domain-server-seq`` elements in any order, one per pair.

    The server prints each domain's pairs with its most recent GTID last; the order carries
    nothing this model needs. A pair listed twice is refused (the server never does that).
    """
    pairs: dict[Pair, int] = {}
    for element in _elements(text, "MariaDB binlog state"):
        m = _STATE_ENTRY.fullmatch(element)
        if m is None:
            raise ValueError(
                f"malformed GTID {element!r} in binlog state {text!r}: expected domain-server-seq"
            )
        pair = (int(m["domain"]), int(m["server"]))
        if pair in pairs:
            raise ValueError(f"domain {pair[0]} server {pair[1]} twice in binlog state {text!r}")
        pairs[pair] = int(m["seq"])
    return BinlogState.of(pairs)


def server_state(binlog_state: str, *positions: str) -> BinlogState:
    """What a MariaDB node is known to hold: its binlog state merged with positions
    (``gtid_binlog_pos``, ``gtid_slave_pos``, ``gtid_current_pos``), per pair the highest seq.

    A position names only the last GTID of each domain, so it adds (domain, server of that
    GTID). Raises ValueError on malformed text."""
    pairs = dict(parse_binlog_state(binlog_state).last)
    for text in positions:
        for entry in parse_mariadb(text).entries:
            if entry.server_id is None or not entry.is_prefix:
                raise ValueError(f"{text!r} is not a server position (domain-server-seq)")
            assert isinstance(entry.source, int)
            pair = (entry.source, entry.server_id)
            pairs[pair] = max(pairs.get(pair, 0), entry.last)
    return BinlogState.of(pairs)


def errant_by_state(node: BinlogState, reference: BinlogState) -> BinlogState:
    """The GTIDs of ``node`` that ``reference`` does not hold: per (domain, server) pair whose
    last seq on the node is above the reference's (or absent there), the node's last GTID of
    that pair. Empty: every transaction of the node is in the reference (module doc).

    Each reported GTID is exact: ``0-1-65`` means the transaction 0-1-65 is on the node and
    not on the reference (the node may hold more errant ones of that server below it)."""
    theirs = dict(reference.last)
    return BinlogState(tuple((pair, seq) for pair, seq in node.last if theirs.get(pair, 0) < seq))


def state_contains(reference: BinlogState, node: BinlogState) -> bool:
    """Every transaction of ``node`` is in ``reference`` (as far as binlog states tell)."""
    return errant_by_state(node, reference).is_empty()


# The name of the brief. It shadows the builtin only inside this module, which never uses it.
format = format_gtids
