"""GTID histories of one replication domain (domain 0), as the fake fleet keeps them.

A history is a tuple of segments ``(server_id, last_seq)``: seqs ``(previous last, last]``
were written by ``server_id``. ``((1, 100), (2, 105))`` is a node that holds seqs 1..100 written
by server 1 and 101..105 written by server 2 after a failover; its position (what MariaDB
prints) is ``0-2-105``. Keeping the segments, not only the position, lets the fake refuse a
replica whose last GTID the source never had (error 1236) even below the source's last one,
as a real server does.
"""

from __future__ import annotations

History = tuple[tuple[int, int], ...]
Gtid = tuple[int, int]
"""(server_id, seq) in domain 0."""

DOMAIN = 0
EMPTY: History = ()


def tip(history: History) -> Gtid | None:
    return history[-1] if history else None


def seq(history: History) -> int:
    return history[-1][1] if history else 0


def position(history: History) -> str:
    """The MariaDB text of the history's last GTID (``''`` when empty)."""
    last = tip(history)
    return "" if last is None else f"{DOMAIN}-{last[0]}-{last[1]}"


def binlog_state(history: History) -> str:
    """MariaDB's @@gtid_binlog_state of a binlog holding ``history``: the last GTID of every
    server id in it, in the server's order (the most recent last)."""
    last: dict[int, int] = {}
    for server_id, seq_ in history:
        last.pop(server_id, None)
        last[server_id] = seq_
    return ",".join(f"{DOMAIN}-{server_id}-{seq_}" for server_id, seq_ in last.items())


def extend(history: History, server_id: int, last_seq: int) -> History:
    """``history`` plus seqs up to ``last_seq`` written by ``server_id``."""
    if last_seq <= seq(history):
        return history
    if history and history[-1][0] == server_id:
        return (*history[:-1], (server_id, last_seq))
    return (*history, (server_id, last_seq))


def holds(history: History, gtid: Gtid | None) -> bool:
    """Whether the transaction ``gtid`` is in ``history`` (None, nothing: always)."""
    if gtid is None or gtid[1] <= 0:
        return True
    server_id, wanted = gtid
    below = 0
    for writer, last in history:
        if below < wanted <= last:
            return writer == server_id
        below = last
    return False


def contains(history: History, other: History) -> bool:
    """``other`` is a prefix of ``history`` (judged, as a server does, by its last GTID)."""
    return holds(history, tip(other))


def parse_position(text: str) -> Gtid | None:
    """Domain 0's GTID in a MariaDB position text (``'0-1-100,1-3-7'``); other domains are
    ignored, as the fake writes only domain 0. ValueError on anything else than GTIDs."""
    found: Gtid | None = None
    for element in text.split(","):
        element = element.strip()
        if not element:
            continue
        parts = element.split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a GTID: {element!r}")
        domain, server_id, number = (int(p) for p in parts)
        if domain == DOMAIN:
            found = (server_id, number)
    return found


def from_position(text: str, like: History) -> History:
    """A history whose tip is the GTID in ``text``: the prefix of ``like`` when ``like``
    holds that GTID, else a history of one segment (its writer unknown below the tip)."""
    gtid = parse_position(text)
    if gtid is None or gtid[1] == 0:
        return EMPTY
    if holds(like, gtid):
        return truncate(like, gtid[1])
    return (gtid,)


def truncate(history: History, last_seq: int) -> History:
    out: list[tuple[int, int]] = []
    for writer, last in history:
        if last >= last_seq:
            out.append((writer, last_seq))
            break
        out.append((writer, last))
    return tuple(out)
