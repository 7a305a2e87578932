"""Whether a rebuild may run: pure refusal checks over plain values, no I/O.

A rebuild (``hacontrol.actions.rebuild``) stops a replica, replaces its datadir with a copy
of another replica's and makes it replicate from the primary again. These checks say, before
anything is touched, whether that is safe and which node to copy from. They take one small
record per node (:class:`NodeFacts`), so that the controller's core can build them from its
view and run the same checks inside a plan.

The rules, in the order they are checked (the first that fails is the reason):

1. the target is a configured node and a primary is known (something to replicate from);
2. the target is not the primary;
3. the target is fenced: read-only (or down) and in the router's broken or hidden group,
   never in the writer or reader group;
4. the target is not the last healthy replica (taking it down would leave no failover
   candidate and no reader but the primary);
5. the cluster runs MariaDB (mariadb-backup, ``gtid_slave_pos``);
6. the source, given or picked, is a healthy replica other than the target: reachable,
   replicating from the primary with both threads running, lag known and within the limit,
   no errant transactions, not hidden by an operator. Never the primary: its backup locks
   (``BACKUP STAGE BLOCK_COMMIT``) would hold the writer's commits.

When no source is given, the healthy replica with the lowest lag is picked (then by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Hostgroup = Literal["writer", "reader", "broken", "hidden"]


@dataclass(frozen=True)
class NodeFacts:
    """What the checks need to know of one node."""

    name: str
    reachable: bool
    read_only: bool | None = None  # None: unknown (unreachable)
    hostgroup: Hostgroup | None = None  # in the router; None: not in any group
    replicating: bool = False  # from the current primary, IO and SQL threads running
    lag: float | None = None  # seconds behind the primary; None: unknown
    errant: str = ""  # GTIDs it has that the primary lacks ("" none)
    flavor: str = "mariadb"


@dataclass(frozen=True)
class RebuildCheck:
    """The verdict: ``ok`` with the ``source`` to copy from, or the reason it is refused."""

    ok: bool
    reason: str
    source: str | None = None


def healthy_replica(facts: NodeFacts, max_lag: float) -> str | None:
    """Why ``facts`` is not a healthy replica to copy from, or None when it is one."""
    if not facts.reachable:
        return "not reachable"
    if facts.hostgroup == "hidden":
        return "hidden by an operator (maintenance)"
    if not facts.replicating:
        return "not replicating from the primary (IO or SQL thread not running)"
    if facts.errant:
        return f"has errant transactions {facts.errant}"
    if facts.lag is None:
        return "replication lag unknown"
    if facts.lag > max_lag:
        return f"lagging {facts.lag:g} s behind the primary (limit {max_lag:g} s)"
    return None


def fenced(facts: NodeFacts) -> str | None:
    """Why ``facts`` is not fenced (the controller keeps it out of service), or None."""
    if facts.hostgroup in ("writer", "reader"):
        return (
            f"is in the router's {facts.hostgroup} group: the controller has not fenced it "
            "(it must be in the broken or hidden group)"
        )
    if facts.reachable and facts.read_only is not True:
        state = "writable" if facts.read_only is False else "of unknown read_only state"
        return f"is {state}: fence it first (read_only ON)"
    return None


def check_rebuild(
    nodes: Mapping[str, NodeFacts],
    primary: str | None,
    target: str,
    source: str | None,
    max_lag: float,
) -> RebuildCheck:
    """May ``target`` be rebuilt from ``source`` (or from a picked replica when None)?"""
    if target not in nodes:
        return _no(f"{target} is not a configured node")
    if primary is None or primary not in nodes:
        return _no("no primary is known: nothing to replicate from")
    if target == primary:
        return _no(f"{target} is the primary: switch over first")
    if why := fenced(nodes[target]):
        return _no(f"{target} {why}")
    healthy = [
        name
        for name, facts in nodes.items()
        if name != primary and healthy_replica(facts, max_lag) is None
    ]
    if healthy == [target]:
        return _no(f"{target} is the last healthy replica")
    if other := sorted({f.flavor for f in nodes.values()} - {"mariadb"}):
        return _no(f"rebuild needs MariaDB (mariadb-backup); the cluster runs {', '.join(other)}")
    if source is None:
        return _pick(nodes, [name for name in healthy if name != target], target)
    return _check_source(nodes, primary, target, source, max_lag)


def _check_source(
    nodes: Mapping[str, NodeFacts], primary: str, target: str, source: str, max_lag: float
) -> RebuildCheck:
    if source not in nodes:
        return _no(f"source {source} is not a configured node")
    if source == target:
        return _no(f"{target} cannot be rebuilt from itself")
    if source == primary:
        return _no(
            f"source {source} is the primary: copy from a replica (the backup's locks would "
            "hold the writer's commits)"
        )
    if why := healthy_replica(nodes[source], max_lag):
        return _no(f"source {source} is not a healthy replica: {why}")
    return RebuildCheck(True, f"{target} may be rebuilt from {source}", source)


def _pick(nodes: Mapping[str, NodeFacts], candidates: list[str], target: str) -> RebuildCheck:
    if not candidates:
        return _no(f"no healthy replica other than {target} to copy from")

    def rank(name: str) -> tuple[float, str]:
        lag = nodes[name].lag
        return (lag if lag is not None else float("inf"), name)

    best = min(candidates, key=rank)
    return RebuildCheck(True, f"{target} may be rebuilt from {best} (lowest lag)", best)


def _no(reason: str) -> RebuildCheck:
    return RebuildCheck(False, reason)
