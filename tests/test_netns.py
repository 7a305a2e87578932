"""The sandbox's own network (``sandbox up --netns``): the plan and the rules as values, then
real namespaces, a real bridge and real nftables rules (root only; skipped with the reason
otherwise), and ``down`` removing all of it, also after a failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacontrol.sandbox import Sandbox, SandboxSpec, procs
from hacontrol.sandbox.netns import (
    Faults,
    NetworkError,
    NetworkPlan,
    check_degrade,
    parse_groups,
    plan_network,
    ruleset,
    sandbox_aliases,
    sandbox_hosts,
    setup_commands,
)
from hacontrol.sandbox.netns_host import NETNS_DIR, Network, tool
from tests.sandbox_fixtures import run_sync, skip_without_netns, skip_without_servers

HOSTS = sandbox_hosts(["node1", "node2", "node3"])


def test_every_host_gets_a_namespace_an_address_and_a_short_port_name() -> None:
    plan = plan_network("ab12cd", HOSTS)
    assert [h.name for h in plan.hosts] == ["node1", "node2", "node3", "router", "controller"]
    assert len({h.address for h in plan.hosts}) == 5
    assert all(h.address.startswith("10.47.0.") for h in plan.hosts)
    assert all(h.netns.startswith(plan.prefix) for h in plan.hosts)
    assert plan.outer.startswith(plan.prefix)
    assert all(len(h.port) <= 15 for h in plan.hosts)  # IFNAMSIZ
    with pytest.raises(NetworkError, match="unique"):
        plan_network("ab12cd", ["node1", "node1"])
    with pytest.raises(NetworkError, match="tag"):
        plan_network("AB!", HOSTS)


def test_no_interface_is_ever_created_in_the_machines_own_namespace() -> None:
    plan = plan_network("ab12cd", HOSTS)
    ours = set(plan.namespaces())
    for args in setup_commands(plan):
        if args[:2] == ["netns", "add"]:
            assert args[2] in ours
            continue
        assert args[0] == "-n" and args[1] in ours, args  # every other command runs inside
        if "veth" in args:
            assert args[args.index("netns") + 1] in ours  # the peer goes straight to its host


def test_groups_are_parsed_in_both_spellings_and_one_group_means_against_all_others() -> None:
    assert parse_groups(["node1", "/", "node2,node3"], HOSTS) == (("node1",), ("node2", "node3"))
    assert parse_groups(["node1/node2, node3"], HOSTS) == (("node1",), ("node2", "node3"))
    assert parse_groups(["node1,controller"], HOSTS) == (
        ("node1", "controller"),
        ("node2", "node3", "router"),
    )
    for words, reason in (
        (["node9"], "unknown host node9"),
        (["node1 / node1"], "two groups"),
        (["node1 /"], "empty group"),
        ([",".join(HOSTS)], "cuts nothing"),
    ):
        with pytest.raises(NetworkError, match=reason):
            parse_groups(words, HOSTS)


def test_a_fleet_puts_each_controller_on_its_routers_host_and_names_it_there_too() -> None:
    # --routers 3 --controllers 2: a host per router; c1 and c2 on their routers' hosts (a
    # sidecar shares its pod's network), no host for an operator's controller.
    hosts = sandbox_hosts(["node1", "node2", "node3"], routers=3, controllers=2)
    assert hosts == ["node1", "node2", "node3", "router", "router2", "router3"]
    aliases = sandbox_aliases(2)
    assert aliases == (("c1", "router"), ("c2", "router2"))
    plan = plan_network("ab12cd", hosts, aliases)
    assert plan.host("c2") == plan.host("router2")
    assert "router (c1)" in plan.known() and "router3," not in plan.known()
    assert parse_groups(["node1,c2"], hosts, aliases) == (
        ("node1", "router2"),
        ("node2", "node3", "router", "router3"),
    )
    assert parse_groups(["c1,router / node1"], hosts, aliases) == (("router",), ("node1",))
    for words, reason in ((["c1 / router"], "two groups"), (["c3"], "unknown host c3")):
        with pytest.raises(NetworkError, match=reason):
            parse_groups(words, hosts, aliases)
    with pytest.raises(NetworkError, match="alias"):
        plan_network("ab12cd", hosts, (("node1", "router"),))
    again = NetworkPlan.from_state(json.loads(json.dumps(plan.to_state())))
    assert again == plan and again.host("c1").name == "router"
    assert SandboxSpec(dir=Path("x"), routers=3, controllers=3, netns=True).netns


def test_rules_cut_both_ways_one_way_or_drop_a_share() -> None:
    plan = plan_network("ab12cd", HOSTS)
    a, b = plan.host("node1").address, plan.host("node2").address
    groups = (("node1",), ("node2",))
    both = ruleset(plan, Faults(groups=groups))
    assert f"ip saddr {a} ip daddr {b} drop" in both
    assert f"ip saddr {b} ip daddr {a} drop" in both
    one = ruleset(plan, Faults(groups=groups, oneway=True))
    assert f"ip saddr {a} ip daddr {b} drop" in one
    assert f"ip saddr {b} ip daddr {a}" not in one
    lossy = ruleset(plan, Faults(groups=groups, loss=12.5))
    assert f"ip saddr {a} ip daddr {b} numgen random mod 10000 < 1250 drop" in lossy
    healed = ruleset(plan, Faults())
    assert "saddr" not in healed and "hook forward" in healed
    assert healed.startswith("table bridge hacontrol {}\ndelete table bridge hacontrol")


def test_degrade_bounds_and_what_faults_say() -> None:
    for loss, delay in ((100, 0), (-1, 0), (0, -5), (0, 60001)):
        with pytest.raises(NetworkError):
            check_degrade(loss, delay)
    assert Faults().describe().startswith("healthy")
    cut = Faults(groups=(("node1",), ("node2", "node3")))
    assert cut.describe() == "partitioned (both ways): node1 / node2,node3"
    assert "20% loss" in Faults(groups=cut.groups, loss=20).describe()
    plan = NetworkPlan.from_state(json.loads(json.dumps(plan_network("ab12cd", HOSTS).to_state())))
    assert plan == plan_network("ab12cd", HOSTS)


# ---- real namespaces -----------------------------------------------------------------------


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    skip_without_netns()
    net = Network.planned(tmp_path, ["alpha", "beta", "gamma"])
    net.create()
    try:
        yield net
    finally:
        net.destroy()


def listen_on(net: Network, host: str) -> socket.socket:
    """A listening socket on ``host`` (made while this thread is in its namespace)."""
    with net.entered(host):
        server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((net.address(host), 7000))
    server.listen(16)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"hi")
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server


def reaches(net: Network, source: str, target: str, timeout: float = 0.5) -> bool:
    with net.entered(source):
        client = socket.socket()
    client.settimeout(timeout)
    try:
        client.connect((net.address(target), 7000))
        return client.recv(2) == b"hi"
    except OSError:
        return False
    finally:
        client.close()


def test_hosts_reach_each_other_until_cut_and_again_after_heal(network: Network) -> None:
    server = listen_on(network, "beta")
    try:
        assert reaches(network, "alpha", "beta") and reaches(network, "gamma", "beta")
        network.partition((("alpha",), ("beta", "gamma")))
        assert not reaches(network, "alpha", "beta")
        assert reaches(network, "gamma", "beta")  # same side
        network.partition((("beta",), ("alpha",)), oneway=True)
        assert not reaches(network, "alpha", "beta")  # the answers from beta are dropped
        assert reaches(network, "gamma", "beta")  # gamma is in no group: untouched
        network.partition((("alpha",), ("beta",)), loss=30)  # 4 packets: 24% get through
        tries = [reaches(network, "alpha", "beta", timeout=0.2) for _ in range(25)]
        assert 0 < sum(tries) < 20, tries
        network.heal()
        assert all(reaches(network, "alpha", "beta") for _ in range(5))
        assert Network.load(network.directory).plan.faults == Faults()  # kept on disk
    finally:
        server.close()


def test_nothing_routes_out_of_the_sandbox(network: Network) -> None:
    ip = tool("ip")
    assert ip is not None
    for host in network.plan.hosts:
        routes = subprocess.run(
            [ip, "-n", host.netns, "-4", "route", "show"], capture_output=True, text=True
        ).stdout
        assert "default" not in routes and routes.strip().endswith("src " + host.address)
    outer = subprocess.run(
        [ip, "-n", network.plan.outer, "-4", "addr", "show"], capture_output=True, text=True
    ).stdout
    assert "inet " not in outer.replace("inet 127.0.0.1", "")  # the bridge has no address
    own = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not any(h.port in own for h in network.plan.hosts)


def test_a_delay_needs_netem_and_says_so_when_the_kernel_lacks_it(network: Network) -> None:
    server = listen_on(network, "beta")
    try:
        try:
            network.partition((("alpha",), ("beta",)), delay_ms=150)
        except NetworkError as exc:
            assert "sch_netem" in str(exc)
            assert Network.load(network.directory).plan.faults == Faults()  # nothing half-done
            return
        started = time.monotonic()
        assert reaches(network, "alpha", "beta", timeout=3)
        assert time.monotonic() - started >= 0.3  # a connect and an answer: 150 ms each way
    finally:
        network.heal()
        server.close()


def test_destroy_removes_a_half_built_network_and_is_idempotent(tmp_path: Path) -> None:
    skip_without_netns()
    net = Network.planned(tmp_path, ["alpha", "beta"])
    net.save()
    ip = tool("ip")
    assert ip is not None
    subprocess.run([ip, "netns", "add", net.plan.host("alpha").netns], check=True)  # then "crash"
    again = Network.load(tmp_path)
    assert again is not None and again.existing() == [net.plan.host("alpha").netns]
    assert again.destroy() == [net.plan.host("alpha").netns]
    assert not (NETNS_DIR / net.plan.host("alpha").netns).exists()
    assert not (tmp_path / "network.json").exists()
    assert net.destroy() == []


# ---- the sandbox on its network ------------------------------------------------------------


def cli(*args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), sys.executable, "-m", "hacontrol.sandbox", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=Path(__file__).resolve().parent.parent,
    )


def leftovers(prefix: str) -> list[str]:
    try:
        return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []


def test_up_netns_status_partition_heal_and_down_leave_nothing(tmp_path: Path) -> None:
    skip_without_servers()
    skip_without_netns()
    directory = tmp_path / "sbx"
    up = cli("up", "--netns", "--dir", str(directory))
    try:
        assert up.returncode == 0, up.stderr
        assert "network (namespaces hcx" in up.stdout and "ip netns exec" in up.stdout
        status = json.loads(cli("status", "--json", "--dir", str(directory)).stdout)
        network = status["network"]
        hosts = {h["name"]: h for h in network["hosts"]}
        assert {n["name"]: n["host"] for n in status["nodes"]} == {
            n: hosts[n]["address"] for n in ("node1", "node2", "node3")
        }
        assert {n["live_role"] for n in status["nodes"]} == {"primary", "replica"}
        assert status["router"]["writer_socket"]  # how the host's shell reaches the router
        cut = cli("partition", "node1", "/", "node2,node3,router", "--dir", str(directory))
        assert cut.returncode == 0, cut.stderr
        assert "partitioned (both ways): node1 / node2,node3,router" in cut.stdout
        bad = cli("partition", "node7", "--dir", str(directory))
        assert bad.returncode == 1 and "unknown host node7" in bad.stderr
        healed = cli("heal", "--dir", str(directory))
        assert healed.returncode == 0 and "healthy" in healed.stdout
        processes = [(n["pid"], n["config"]) for n in [*status["nodes"], status["router"]]]
    finally:
        down = cli("down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert leftovers("hcx" + network["tag"]) == []
    assert not any(procs.is_alive(pid, config) for pid, config in processes)
    assert not directory.exists()


def test_down_after_a_failed_up_removes_the_network_and_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_without_servers()
    skip_without_netns()
    spawned: list[tuple[int, str]] = []
    prefixes: list[str] = []
    real_create, real_configure = Network.create, Sandbox._configure

    def create(self: Network) -> None:
        prefixes.append(self.plan.prefix)
        real_create(self)

    async def configure_then_fail(self: Sandbox, info) -> None:  # type: ignore[no-untyped-def]
        await real_configure(self, info)
        spawned.extend((n.pid, n.config) for n in self.status().nodes)
        raise RuntimeError("injected failure after the nodes started")

    monkeypatch.setattr(Network, "create", create)
    monkeypatch.setattr(Sandbox, "_configure", configure_then_fail)
    sandbox = Sandbox(SandboxSpec(dir=tmp_path / "sbx", netns=True))
    with pytest.raises(RuntimeError, match="injected"):
        run_sync(sandbox.up)
    assert len(spawned) == 3 and len(prefixes) == 1
    assert not any(procs.is_alive(pid, config) for pid, config in spawned)
    assert leftovers(prefixes[0]) == []
    assert not (tmp_path / "sbx").exists()


def test_down_removes_a_network_whose_sandbox_never_started(tmp_path: Path) -> None:
    skip_without_netns()
    directory = tmp_path / "sbx"
    directory.mkdir()
    net = Network.planned(directory, sandbox_hosts(["node1", "node2", "node3"]))
    net.create()
    assert len(net.existing()) == 6
    assert run_sync(Sandbox.at(directory).down) is True
    assert net.existing() == [] and not directory.exists()


def test_up_netns_is_refused_clearly_when_not_root(tmp_path: Path) -> None:
    skip_without_servers()
    if os.geteuid() != 0:
        result = cli("up", "--netns", "--dir", str(tmp_path / "sbx"))
    else:
        shared = Path(tempfile.mkdtemp(prefix="hacontrol-nobody-"))
        shared.chmod(0o777)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        try:
            result = cli("up", "--netns", "--dir", str(shared / "sbx"), user=nobody)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    assert result.returncode == 1, result.stderr
    assert "--netns: network namespaces need root" in result.stderr
