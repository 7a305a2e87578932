"""The sandbox's own network (``sandbox up --netns``): the plan and the rules, as values.

Every node, router and controller of a sandbox gets a host of its own: a network namespace
with one interface (``eth0``) and one address. The hosts are connected by a bridge that lives
in one more namespace, the sandbox's own (``<tag>-net``); the machine's own namespace holds
none of their interfaces, so no packet to those addresses can leave the machine, and two
sandboxes never see each other (each has its own bridge; they may use the same addresses).

Faults are nftables rules on that bridge (family ``bridge``, the ``forward`` hook: every packet
between two hosts crosses it): a partition drops the packets between groups of hosts (both
directions, or one), a degraded link drops a share of them at random (``numgen``); a delay is
``tc netem`` on the hosts' links, when the kernel has it (``sch_netem``).

Nothing here does I/O: ``hacontrol.sandbox.netns_host`` runs the commands these functions
return.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hacontrol.sandbox.model import SandboxError

SUBNET = "10.47.0"
"""The hosts' /24, private, on the sandbox's own bridge only."""
FIRST_HOST = 10
PREFIX = "hcx"
BRIDGE = "br0"
TABLE = "hacontrol"
CHAIN = "faults"
STATE_FILE = "network.json"
ROUTER_HOST = "router"
CONTROLLER_HOST = "controller"
TAG = re.compile(r"^[a-z0-9]{4,8}$")
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,10}$")


class NetworkError(SandboxError):
    """A network operation failed or was refused; the message is for the operator."""


@dataclass(frozen=True)
class NetHost:
    """One host of the sandbox: its namespace, its address, and its port on the bridge."""

    name: str
    netns: str
    address: str
    port: str
    """The host's veth end in the sandbox's own namespace (attached to the bridge)."""


@dataclass(frozen=True)
class Faults:
    """What is wrong with the network now (``partition`` replaces it, ``heal`` empties it)."""

    groups: tuple[tuple[str, ...], ...] = ()
    oneway: bool = False
    loss: float = 0.0
    """Percent of packets dropped between the groups; 0 with groups: a full cut."""
    delay_ms: float = 0.0
    """Added to every packet to and from the hosts of the first group (tc netem)."""

    @property
    def healthy(self) -> bool:
        return not self.groups

    def describe(self) -> str:
        if self.healthy:
            return "healthy: every host reaches every other"
        sides = " / ".join(",".join(g) for g in self.groups)
        if self.loss or self.delay_ms:
            parts = [f"{self.loss:g}% loss"] if self.loss else []
            parts += [f"{self.delay_ms:g} ms delay"] if self.delay_ms else []
            return f"degraded ({', '.join(parts)}): {sides}"
        arrow = "one way, from the first group" if self.oneway else "both ways"
        return f"partitioned ({arrow}): {sides}"


@dataclass(frozen=True)
class NetworkPlan:
    tag: str
    hosts: tuple[NetHost, ...]
    faults: Faults = field(default_factory=Faults)
    aliases: tuple[tuple[str, str], ...] = ()
    """Other names of a host: ``("c1", "router")``, a controller on its router's host."""

    @property
    def outer(self) -> str:
        """The sandbox's own namespace: the bridge and the rules live there."""
        return f"{PREFIX}{self.tag}-net"

    @property
    def prefix(self) -> str:
        """Every namespace of this sandbox is named with this prefix (cleanup by name)."""
        return f"{PREFIX}{self.tag}-"

    def host(self, name: str) -> NetHost:
        name = dict(self.aliases).get(name, name)
        for host in self.hosts:
            if host.name == name:
                return host
        raise NetworkError(f"no host {name!r} in this sandbox (hosts: {self.known()})")

    def known(self) -> str:
        """The hosts' names, each with its aliases: ``node1, router (c1)``."""
        aliases: dict[str, list[str]] = {}
        for alias, name in self.aliases:
            aliases.setdefault(name, []).append(alias)
        return ", ".join(
            h.name + (f" ({', '.join(aliases[h.name])})" if h.name in aliases else "")
            for h in self.hosts
        )

    def namespaces(self) -> list[str]:
        return [self.outer, *(h.netns for h in self.hosts)]

    def to_state(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "hosts": [asdict(h) for h in self.hosts],
            "faults": {**asdict(self.faults), "groups": [list(g) for g in self.faults.groups]},
            "aliases": dict(self.aliases),
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> NetworkPlan:
        faults = data.get("faults") or {}
        return cls(
            tag=data["tag"],
            hosts=tuple(NetHost(**h) for h in data["hosts"]),
            faults=Faults(
                groups=tuple(tuple(g) for g in faults.get("groups", ())),
                oneway=bool(faults.get("oneway", False)),
                loss=float(faults.get("loss", 0.0)),
                delay_ms=float(faults.get("delay_ms", 0.0)),
            ),
            aliases=tuple((data.get("aliases") or {}).items()),
        )


def router_host(index: int) -> str:
    """Router ``index``'s host (0-based): ``router``, ``router2`` ..."""
    return ROUTER_HOST if index == 0 else f"{ROUTER_HOST}{index + 1}"


def sandbox_hosts(nodes: Sequence[str], routers: int = 1, controllers: int = 0) -> list[str]:
    """The hosts of a sandbox: its nodes, a host per router, and the controller's own host
    when the operator runs the controller (no ``--controllers``).

    A controller the sandbox starts (``--controllers``) runs on its router's host, as the
    sidecar it is in production shares its pod's network with its ProxySQL: a partition
    never separates the two (``sandbox_aliases``: ``c1`` names that host too)."""
    hosts = [*nodes, *(router_host(i) for i in range(routers))]
    return hosts if controllers else [*hosts, CONTROLLER_HOST]


def sandbox_aliases(controllers: int) -> tuple[tuple[str, str], ...]:
    """Controller ``c<i>`` is another name of router i's host."""
    return tuple((f"c{i + 1}", router_host(i)) for i in range(controllers))


def plan_network(
    tag: str, names: Sequence[str], aliases: tuple[tuple[str, str], ...] = ()
) -> NetworkPlan:
    """One host per name (nodes, routers, controllers), addresses in the order given."""
    if not TAG.match(tag):
        raise NetworkError(f"network tag must be 4 to 8 lowercase letters or digits: {tag!r}")
    if len(set(names)) != len(names):
        raise NetworkError(f"host names must be unique: {', '.join(names)}")
    if len(names) > 200:
        raise NetworkError("at most 200 hosts")
    hosts = []
    for index, name in enumerate(names):
        if not HOST_NAME.match(name):
            raise NetworkError(f"host name must be up to 11 lowercase letters/digits: {name!r}")
        hosts.append(
            NetHost(
                name=name,
                netns=f"{PREFIX}{tag}-{name}",
                address=f"{SUBNET}.{FIRST_HOST + index}",
                port=f"p-{name}",
            )
        )
    clashing = [a for a, target in aliases if a in names or target not in names]
    if clashing:
        raise NetworkError(f"an alias names no host, or a host of its own: {', '.join(clashing)}")
    return NetworkPlan(tag=tag, hosts=tuple(hosts), aliases=aliases)


def setup_commands(plan: NetworkPlan) -> list[list[str]]:
    """``ip`` argument lists that build the network; every interface is created inside a
    sandbox namespace (``ip -n``), never in the machine's own."""
    outer = plan.outer
    commands = [
        ["netns", "add", outer],
        ["-n", outer, "link", "set", "lo", "up"],
        ["-n", outer, "link", "add", BRIDGE, "type", "bridge"],
        ["-n", outer, "link", "set", BRIDGE, "up"],
    ]
    for host in plan.hosts:
        commands += [
            ["netns", "add", host.netns],
            ["-n", host.netns, "link", "set", "lo", "up"],
            ["-n", outer, "link", "add", host.port, "type", "veth", *peer(host)],
            ["-n", outer, "link", "set", host.port, "master", BRIDGE, "up"],
            ["-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"],
            ["-n", host.netns, "link", "set", "eth0", "up"],
        ]
    return commands


def peer(host: NetHost) -> list[str]:
    """The veth's other end: ``eth0``, created straight inside the host's namespace."""
    return ["peer", "name", "eth0", "netns", host.netns]


def parse_groups(
    words: Sequence[str], known: Iterable[str], aliases: tuple[tuple[str, str], ...] = ()
) -> tuple[tuple[str, ...], ...]:
    """``["node1", "/", "node2,node3"]`` or ``["node1/node2,node3"]`` -> the groups.

    One group alone is that group against every other host. A host may be in one group only.
    An alias (``c1``) stands for its host (``router``).
    """
    text = " ".join(words)
    names, other = list(known), dict(aliases)
    groups: list[tuple[str, ...]] = []
    for part in text.split("/"):
        group = tuple(n for n in re.split(r"[,\s]+", part.strip()) if n)
        if not group:
            raise NetworkError(f"empty group in {text!r}: write A,B / C,D")
        unknown = [n for n in group if n not in names and n not in other]
        if unknown:
            hosts = ", ".join([*names, *other])
            raise NetworkError(f"unknown host {', '.join(unknown)} (hosts: {hosts})")
        groups.append(tuple(dict.fromkeys(other.get(n, n) for n in group)))
    seen = [n for g in groups for n in g]
    if len(set(seen)) != len(seen):
        raise NetworkError(f"a host is in two groups: {text!r}")
    return completed(tuple(groups), names)


def completed(
    groups: tuple[tuple[str, ...], ...], names: Sequence[str]
) -> tuple[tuple[str, ...], ...]:
    """One group alone stands against every other host."""
    if len(groups) != 1:
        return groups
    rest = tuple(n for n in names if n not in groups[0])
    if not rest:
        raise NetworkError("one group holding every host cuts nothing")
    return (groups[0], rest)


def check_degrade(loss: float, delay_ms: float) -> None:
    if not 0 <= loss < 100:
        raise NetworkError(f"--loss must be between 0 and 100 (exclusive), got {loss:g}")
    if not 0 <= delay_ms <= 60000:
        raise NetworkError(f"--delay must be between 0 and 60000 ms, got {delay_ms:g}")


def ruleset(plan: NetworkPlan, faults: Faults) -> str:
    """The whole nftables table for these faults (``nft -f``: replaces the previous one
    atomically). Healthy: the table with an empty chain."""
    rules: list[str] = []
    groups = faults.groups
    for i, source in enumerate(groups):
        for j, target in enumerate(groups):
            if i == j or (faults.oneway and i != 0):
                continue
            src = _set(plan.host(n).address for n in source)
            dst = _set(plan.host(n).address for n in target)
            if faults.loss:
                drop = f"numgen random mod 10000 < {round(faults.loss * 100)} drop"
            elif faults.delay_ms:
                continue  # a delay alone is netem's; nothing to drop
            else:
                drop = "drop"
            rules.append(f"        ip saddr {src} ip daddr {dst} {drop}")
    return "\n".join(
        [
            f"table bridge {TABLE} {{}}",
            f"delete table bridge {TABLE}",
            f"table bridge {TABLE} {{",
            f"    chain {CHAIN} {{",
            "        type filter hook forward priority 0; policy accept;",
            *rules,
            "    }",
            "}",
            "",
        ]
    )


def _set(addresses: Iterable[str]) -> str:
    items = sorted(set(addresses))
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def delay_targets(plan: NetworkPlan, faults: Faults) -> list[tuple[str, str]]:
    """(namespace, interface) pairs that get ``netem delay``: both ends of each link of the
    first group's hosts, so that the delay is added in each direction."""
    if not faults.delay_ms or not faults.groups:
        return []
    out = []
    for name in faults.groups[0]:
        host = plan.host(name)
        out += [(plan.outer, host.port), (host.netns, "eth0")]
    return out
