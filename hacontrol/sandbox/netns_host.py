"""The sandbox's own network, for real: namespaces, a bridge, nftables rules, tc netem.

``Network(plan, directory)``: ``create()`` builds what ``hacontrol.sandbox.netns`` planned,
``destroy()`` removes every namespace whose name starts with the sandbox's prefix (so a
half-built network is removed too, and running it twice is harmless), ``apply(faults)``
installs a partition or a degraded link, ``heal()`` removes them, ``argv(host, cmd)`` runs a
command on a host (``ip netns exec``), and ``entered(host)`` moves the calling *thread* into a
host's namespace for the sockets it opens meanwhile (how an in-process controller runs "on" the
controller's host). Root only: ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from hacontrol.sandbox.model import SandboxSpec
from hacontrol.sandbox.netns import (
    STATE_FILE,
    Faults,
    NetworkError,
    NetworkPlan,
    check_degrade,
    completed,
    delay_targets,
    plan_network,
    ruleset,
    sandbox_aliases,
    sandbox_hosts,
    setup_commands,
)
from hacontrol.sandbox.procs import find_binary

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT = 10.0


tool = find_binary


def unavailable() -> str | None:
    """Why ``--netns`` cannot work here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or use the sandbox without --netns)"
    missing = [t for t in ("ip", "nft") if tool(t) is None]
    if missing:
        return (
            f"not installed: {', '.join(missing)} (Debian packages iproute2 and nftables; "
            "scripts/bootstrap.sh installs them)"
        )
    return None


def new_tag() -> str:
    return secrets.token_hex(3)


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Network:
    """One sandbox's network, its plan kept in ``<directory>/network.json``."""

    def __init__(self, plan: NetworkPlan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory

    @classmethod
    def planned(cls, directory: Path, names: Sequence[str], tag: str | None = None) -> Network:
        return cls(plan_network(tag or new_tag(), names), directory)

    @classmethod
    def for_sandbox(cls, directory: Path, spec: SandboxSpec) -> Network:
        """A sandbox's hosts (``sandbox_hosts``): controller ``c<i>`` on router i's host."""
        nodes = [spec.node_name(i) for i in range(spec.nodes)]
        hosts = sandbox_hosts(nodes, spec.routers, spec.controllers)
        return cls(plan_network(new_tag(), hosts, sandbox_aliases(spec.controllers)), directory)

    @classmethod
    def load(cls, directory: Path) -> Network | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        return cls(NetworkPlan.from_state(json.loads(path.read_text())), directory)

    def save(self) -> None:
        path = self.directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.plan.to_state(), indent=2) + "\n")
        tmp.replace(path)

    # -- building and removing -------------------------------------------------------------

    def create(self) -> None:
        """Build the namespaces, the bridge and an empty rule table. The plan is saved first,
        so that ``destroy`` finds what a failure left behind."""
        if reason := unavailable():
            raise NetworkError(reason)
        self.save()
        try:
            ip = self._tool("ip")
            for args in setup_commands(self.plan):
                _run([ip, *args])
            self._nft(ruleset(self.plan, Faults()))
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> list[str]:
        """Remove every namespace of this sandbox (found by name prefix); returns their names.
        Deleting a namespace deletes its interfaces, the veth pairs and the bridge with them,
        and the rules. Idempotent."""
        ip = tool("ip")
        removed = []
        for name in self.existing():
            if ip is not None:
                with contextlib.suppress(NetworkError):
                    _run([ip, "netns", "del", name])
            if not (NETNS_DIR / name).exists():
                removed.append(name)
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        return removed

    def existing(self) -> list[str]:
        """This sandbox's namespaces that exist now."""
        try:
            names = [p.name for p in NETNS_DIR.iterdir()]
        except OSError:
            return []
        return sorted(n for n in names if n.startswith(self.plan.prefix))

    # -- faults ----------------------------------------------------------------------------

    def partition(
        self,
        groups: tuple[tuple[str, ...], ...],
        *,
        oneway: bool = False,
        loss: float = 0.0,
        delay_ms: float = 0.0,
    ) -> Faults:
        """Cut (or, with ``loss``/``delay_ms``, degrade) the links between the groups (one
        group alone: against every other host). Replaces whatever fault was there before."""
        check_degrade(loss, delay_ms)
        groups = tuple(tuple(dict.fromkeys(self.plan.host(n).name for n in g)) for g in groups)
        groups = completed(groups, [h.name for h in self.plan.hosts])
        faults = Faults(groups=groups, oneway=oneway, loss=loss, delay_ms=delay_ms)
        self.apply(faults)
        return faults

    def heal(self) -> None:
        self.apply(Faults())

    def apply(self, faults: Faults) -> None:
        self._clear_delays()
        if faults.delay_ms:
            self._delay(faults)
        self._nft(ruleset(self.plan, faults))
        self.plan = replace(self.plan, faults=faults)
        self.save()

    def _delay(self, faults: Faults) -> None:
        tc = tool("tc")
        if tc is None:
            raise NetworkError("--delay needs tc (Debian package iproute2)")
        for netns, device in delay_targets(self.plan, faults):
            try:
                netem = ["netem", "delay", f"{faults.delay_ms:g}ms"]
                _run([tc, "-n", netns, "qdisc", "replace", "dev", device, "root", *netem])
            except NetworkError as exc:
                self._clear_delays()
                raise NetworkError(
                    f"--delay needs tc netem (kernel module sch_netem), not available here: {exc}"
                ) from None

    def _clear_delays(self) -> None:
        tc = tool("tc")
        if tc is None:
            return
        for netns, device in delay_targets(self.plan, replace(self.plan.faults, delay_ms=1.0)):
            with contextlib.suppress(NetworkError):
                _run([tc, "-n", netns, "qdisc", "del", "dev", device, "root"])

    def _nft(self, script: str) -> None:
        _run(
            [self._tool("ip"), "netns", "exec", self.plan.outer, self._tool("nft"), "-f", "-"],
            stdin=script,
        )

    @staticmethod
    def _tool(name: str) -> str:
        path = tool(name)
        if path is None:
            raise NetworkError(f"not installed: {name}")
        return path

    # -- running things on a host ----------------------------------------------------------

    def address(self, host: str) -> str:
        return self.plan.host(host).address

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``; the program keeps its pid
        (``ip netns exec`` execs it)."""
        return [self._tool("ip"), "netns", "exec", self.plan.host(host).netns]

    @contextlib.contextmanager
    def entered(self, host: str) -> Iterator[None]:
        """The calling thread in ``host``'s namespace until the block ends: every socket it
        opens meanwhile (an event loop's included) lives on that host, and keeps living there
        afterwards. Threads started inside inherit it."""
        target = os.open(NETNS_DIR / self.plan.host(host).netns, os.O_RDONLY)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)
