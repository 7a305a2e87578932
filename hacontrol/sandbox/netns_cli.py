"""`hacontrol sandbox up --netns`, `partition A,B / C,D [--oneway] [--loss PCT] [--delay MS]`,
`heal`: the command-line side of the sandbox's own network (``hacontrol.sandbox.netns``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hacontrol.sandbox.model import SandboxInfo
from hacontrol.sandbox.netns import CONTROLLER_HOST, NetworkError, parse_groups
from hacontrol.sandbox.netns_host import Network

ACTIONS = ("partition", "heal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "groups",
        nargs="*",
        metavar="HOSTS",
        help="partition: the groups of hosts, 'A,B / C,D' (one group alone: against all others)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="up: every node and router on a host of its own (network namespaces on a bridge "
        "inside a namespace of the sandbox's own; root only), for partitions; each controller "
        "the sandbox starts (--controllers) on its router's host, named c1... in a partition",
    )
    parser.add_argument(
        "--oneway",
        action="store_true",
        help="partition: drop only the packets from the first group to the others",
    )
    parser.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="PCT",
        help="partition: instead of cutting, drop PCT%% of the packets between the groups",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="partition: instead of cutting, delay every packet to and from the first group "
        "by MS (tc netem; needs the kernel's sch_netem)",
    )


def run(directory: Path, args: argparse.Namespace) -> int:
    network = Network.load(directory.resolve())
    if network is None:
        print(
            f"sandbox: no sandbox network in {directory} (start one with `sandbox up --netns`)",
            file=sys.stderr,
        )
        return 1
    try:
        if args.action == "heal":
            network.heal()
        else:
            plan = network.plan
            groups = parse_groups(args.groups, [h.name for h in plan.hosts], plan.aliases)
            network.partition(groups, oneway=args.oneway, loss=args.loss, delay_ms=args.delay)
    except NetworkError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    print(f"network: {network.plan.faults.describe()}")
    return 0


def document(directory: str) -> dict[str, object] | None:
    """The network's part of ``status --json``: hosts, namespaces, addresses, faults."""
    network = Network.load(Path(directory))
    return None if network is None else network.plan.to_state()


def describe(directory: str) -> list[str]:
    """The status lines of a sandbox with its own network: hosts, faults, how to run things."""
    network = Network.load(Path(directory))
    if network is None:
        return []
    plan = network.plan
    hosts = ", ".join(f"{h.name} {h.address}" for h in plan.hosts)
    lines = [
        f"network (namespaces {plan.prefix}*): {hosts}",
        f"network: {plan.faults.describe()}",
    ]
    if CONTROLLER_HOST in {h.name for h in plan.hosts}:
        ctl = " ".join(network.prefix(CONTROLLER_HOST))
        lines.append(
            f"start the controller on its host: {ctl} hacontrol run --config "
            f"{directory}/settings.toml"
        )
    info = SandboxInfo.load(Path(directory))
    for controller in info.controllers if info else ():  # each on its router's host
        host = plan.host(controller.name).name
        ask = f"{' '.join(network.prefix(host))} curl 127.0.0.1:{controller.api_port}/status"
        lines.append(f"{controller.name} runs on host {host}; its API from there: {ask}")
    return [
        *lines,
        "clients outside the sandbox's network: the routers' and nodes' unix sockets "
        "(sandbox status --json)",
    ]
