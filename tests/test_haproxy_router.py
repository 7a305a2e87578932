"""HAProxy router: pure parsing/planning, a fake runtime API, then a real haproxy + mariadbd.

The integration tests start a real ``haproxy`` (admin socket: unix and TCP) in front of three
throwaway ``mariadbd`` (``--skip-grant-tables``, loopback, free ports) and check with real
queries through the writer and reader ports where HAProxy sends clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacontrol.actions.haproxy import (
    ADMF_CMAINT,
    ADMF_DRAIN,
    ADMF_FDRAIN,
    ADMF_FMAINT,
    ADMF_HMAINT,
    ADMF_IMAINT,
    ADMF_RMAINT,
    Admin,
    Backends,
    HAProxyRouter,
    ServerState,
    SocketTransport,
    expected_readback,
    managed_backends,
    parse_servers_state,
    parse_stat_sessions,
    plan_commands,
)
from hacontrol.jsonlog import JsonLog
from hacontrol.routing import Membership, RouterError
from hacontrol.settings import HAProxySettings
from tests.live import LogCapture
from tests.support import free_port

DATA = Path(__file__).parent / "data" / "haproxy-2.6-show-servers-state.txt"
NODES = ("node1", "node2", "node3")
W, R = "writer", "readers"
W2, R2 = "users_writer", "users_readers"
"""A second cluster's backends on the same HAProxy (``start(second=True)``)."""


# --- pure: parsing ------------------------------------------------------------------------------


def test_parse_real_show_servers_state() -> None:
    # Captured from haproxy 2.6.12 (Debian 12): all servers "disabled" in the config, then
    # writer/node1 set ready, readers/node2 set drain, readers/node3 set maint.
    servers = {(s.backend, s.name): s for s in parse_servers_state(DATA.read_text())}
    assert len(servers) == 8
    node1 = servers[(W, "node1")]
    assert (node1.address, node1.port, node1.op_state, node1.admin_state) == (
        "127.0.0.1",
        19101,
        2,
        ADMF_CMAINT,
    )
    # "disabled" in the config is CMAINT|FMAINT; "state ready" clears FMAINT only, and a
    # server with CMAINT alone takes traffic.
    assert node1.admin is Admin.READY and node1.running
    assert servers[(W, "node2")].admin_state == ADMF_CMAINT | ADMF_FMAINT
    assert servers[(W, "node2")].admin is Admin.MAINT and not servers[(W, "node2")].running
    assert servers[(R, "node2")].admin is Admin.DRAIN
    assert servers[(R, "node3")].admin is Admin.MAINT
    assert servers[(R, "other")].admin is Admin.READY


def test_membership_from_real_answer_ignores_unmanaged_servers() -> None:
    backends = managed_backends(parse_servers_state(DATA.read_text()), NODES, W, R)
    assert set(backends.writer) == set(backends.reader) == set(NODES)
    # node2 drains in readers: not ready, so in neither backend -> broken. "other" is ready
    # in readers but not managed: ignored.
    assert backends.membership() == Membership.of(writers=["node1"], broken=["node2", "node3"])


@pytest.mark.parametrize(
    ("admin_state", "expected"),
    [
        (0, Admin.READY),
        (ADMF_CMAINT, Admin.READY),
        (ADMF_HMAINT, Admin.READY),
        (ADMF_CMAINT | ADMF_HMAINT, Admin.READY),
        (ADMF_FMAINT, Admin.MAINT),
        (ADMF_IMAINT, Admin.MAINT),
        (ADMF_RMAINT, Admin.MAINT),
        (ADMF_CMAINT | ADMF_FMAINT, Admin.MAINT),
        (ADMF_FMAINT | ADMF_FDRAIN, Admin.MAINT),
        (ADMF_FDRAIN, Admin.DRAIN),
        (ADMF_DRAIN, Admin.DRAIN),
        (ADMF_CMAINT | ADMF_FDRAIN, Admin.DRAIN),
    ],
)
def test_admin_state_bits(admin_state: int, expected: Admin) -> None:
    assert server(W, "node1", admin_state).admin is expected


@pytest.mark.parametrize(
    "answer",
    [
        "Can't find backend.\n\n",
        "",
        "1\n",
        "1\n# be_id be_name srv_id\n4 writer 1\n",
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
        "4 writer 1 node1 127.0.0.1 2\n",
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
        "4 writer 1 node1 127.0.0.1 two 0\n",
    ],
)
def test_parse_rejects_unexpected_answers(answer: str) -> None:
    with pytest.raises(RouterError):
        parse_servers_state(answer)


def test_missing_servers_are_named() -> None:
    servers = [server(W, "node1", 0), server(W, "node2", 0), server(R, "node1", 0)]
    with pytest.raises(RouterError) as err:
        managed_backends(servers, ("node1", "node2"), W, R)
    assert "readers/node2" in str(err.value)
    assert "writer/node" not in str(err.value)


def test_hidden_and_unrouted_read_back_as_broken() -> None:
    desired = Membership.of(writers=["node1"], readers=["node1"], hidden=["node2"])
    assert expected_readback(desired, NODES) == Membership.of(
        writers=["node1"], readers=["node1"], broken=["node2", "node3"]
    )


@pytest.mark.parametrize(
    ("address", "tcp", "path"),
    [
        ("/run/haproxy/admin.sock", None, "/run/haproxy/admin.sock"),
        ("unix@/run/haproxy/admin.sock", None, "/run/haproxy/admin.sock"),
        ("admin.sock", None, "admin.sock"),
        ("127.0.0.1:9999", ("127.0.0.1", 9999), None),
        ("ipv4@127.0.0.1:9999", ("127.0.0.1", 9999), None),
        ("[::1]:9999", ("::1", 9999), None),
    ],
)
def test_admin_socket_address_forms(
    address: str, tcp: tuple[str, int] | None, path: str | None
) -> None:
    transport = SocketTransport(address)
    assert transport.tcp == tcp
    assert transport.unix_path == path


# --- pure: planning -----------------------------------------------------------------------------


def test_writer_change_puts_old_writer_in_maint_and_cuts_it_before_the_new_one_is_ready() -> None:
    current = backends(writer={"node1": 0}, reader={"node2": 0, "node3": 0})
    desired = Membership.of(writers=["node2"], readers=["node3", "node1"])
    assert plan_commands(current, desired, W, R) == (
        "set server writer/node1 state maint",
        "shutdown sessions server writer/node1",
        "set server writer/node2 state ready",
        "set server readers/node1 state ready",
        "set server readers/node2 state maint",
        "shutdown sessions server readers/node2",
    )


def test_equal_state_plans_no_command() -> None:
    current = backends(writer={"node1": ADMF_CMAINT}, reader={"node1": 0, "node2": 0})
    desired = Membership.of(writers=["node1"], readers=["node1", "node2"], broken=["node3"])
    assert plan_commands(current, desired, W, R) == ()


def test_several_current_writers_are_all_demoted_before_anything_else() -> None:
    current = backends(writer={"node1": 0, "node2": 0, "node3": 0}, reader={})
    desired = Membership.of(writers=["node2"], readers=["node1"])
    commands = plan_commands(current, desired, W, R)
    assert commands == (
        "set server writer/node1 state maint",
        "shutdown sessions server writer/node1",
        "set server writer/node3 state maint",
        "shutdown sessions server writer/node3",
        "set server readers/node1 state ready",
    )


def test_drain_is_not_enough_to_leave_a_backend() -> None:
    current = backends(writer={"node1": 0, "node2": ADMF_FDRAIN}, reader={"node3": ADMF_FDRAIN})
    desired = Membership.of(writers=["node1"], readers=["node3"])
    assert plan_commands(current, desired, W, R) == (
        "set server writer/node2 state maint",
        "shutdown sessions server writer/node2",
        "set server readers/node3 state ready",
    )


memberships = st.builds(
    lambda writer, readers, hidden: Membership.of(
        writers=[writer], readers=readers - hidden - {writer}, hidden=hidden - {writer}
    ),
    st.sampled_from(NODES),
    st.frozensets(st.sampled_from(NODES)),
    st.frozensets(st.sampled_from(NODES)),
)
admin_states = st.sampled_from([0, ADMF_CMAINT, ADMF_FMAINT | ADMF_CMAINT, ADMF_FDRAIN])


@given(
    writer_states=st.tuples(admin_states, admin_states, admin_states),
    reader_states=st.tuples(admin_states, admin_states, admin_states),
    desired=memberships,
)
def test_plan_reaches_desired_and_never_adds_a_second_writer(
    writer_states: tuple[int, ...], reader_states: tuple[int, ...], desired: Membership
) -> None:
    fake = FakeHAProxy(dict(zip(NODES, writer_states, strict=True)))
    for node, state in zip(NODES, reader_states, strict=True):
        fake.admin[(R, node)] = state
    writers_before = fake.routed_writers()
    for command in plan_commands(fake.backends(), desired, W, R):
        assert fake.handle(command) == "\n"
        writers = fake.routed_writers()
        # Writers only leave until the old ones are gone; the new one joins alone.
        assert writers <= writers_before or writers == desired.writers
    assert fake.backends().membership() == expected_readback(desired, NODES)
    assert plan_commands(fake.backends(), desired, W, R) == ()


# --- the router over a fake runtime API ---------------------------------------------------------


async def test_apply_sends_once_and_a_second_identical_apply_sends_nothing() -> None:
    fake = FakeHAProxy({"node1": 0})
    router = HAProxyRouter(settings(), NODES, transport=fake.call)
    desired = Membership.of(writers=["node2"], readers=["node1", "node3"])
    assert await router.apply(desired) is True
    assert await router.read() == expected_readback(desired, NODES)
    sent = list(router.commands_sent)
    assert sent[:3] == [
        "set server writer/node1 state maint",
        "shutdown sessions server writer/node1",
        "set server writer/node2 state ready",
    ]
    assert await router.apply(desired) is False
    assert router.commands_sent == sent
    assert fake.received[-1] == "show servers state"


async def test_refused_demotion_stops_before_the_promotion() -> None:
    fake = FakeHAProxy({"node1": 0}, refuse={"set server writer/node1 state maint"})
    router = HAProxyRouter(settings(), NODES, transport=fake.call)
    with pytest.raises(RouterError, match="refused 'set server writer/node1 state maint'"):
        await router.apply(Membership.of(writers=["node2"]))
    assert router.commands_sent == ["set server writer/node1 state maint"]
    assert fake.routed_writers() == {"node1"}


async def test_unconfirmed_change_is_retried_then_reported() -> None:
    fake = FakeHAProxy({"node1": 0}, stuck={(W, "node2")})
    router = HAProxyRouter(settings(), NODES, transport=fake.call, attempts=3, retry_delay=0)
    with pytest.raises(RouterError, match=r"after 3 attempts: writers \[\] instead of \['node2'\]"):
        await router.apply(Membership.of(writers=["node2"]))
    assert router.commands_sent.count("set server writer/node2 state ready") == 3


async def test_the_router_lines_are_json_lines_of_its_cluster() -> None:
    capture = LogCapture()
    fake = FakeHAProxy({"node1": 0}, stuck={(W, "node2")})
    lines = JsonLog(None, stream=capture).for_cluster("orders")
    router = HAProxyRouter(settings(), NODES, transport=fake.call, attempts=2, retry_delay=0,
                           lines=lines)  # fmt: skip
    with pytest.raises(RouterError):
        await router.apply(Membership.of(writers=["node2"]))
    sent = capture.of("router_statement")
    assert [r["command"] for r in sent] == router.commands_sent
    mismatch = capture.of("router_mismatch")
    assert [r["attempt"] for r in mismatch] == [1, 2]
    assert {r["cluster"] for r in sent + mismatch} == {"orders"}


@pytest.mark.parametrize("writers", [[], ["node1", "node2"]])
async def test_zero_or_two_writers_are_refused_and_nothing_is_sent(writers: list[str]) -> None:
    fake = FakeHAProxy({"node1": 0})
    router = HAProxyRouter(settings(), NODES, transport=fake.call)
    with pytest.raises(RouterError, match="writers"):
        await router.apply(Membership.of(writers=writers, readers=["node3"]))
    assert fake.received == [] and router.commands_sent == []


async def test_unmanaged_node_in_desired_state_is_refused() -> None:
    fake = FakeHAProxy({"node1": 0})
    router = HAProxyRouter(settings(), NODES, transport=fake.call)
    with pytest.raises(RouterError, match="node9"):
        await router.apply(Membership.of(writers=["node1"], readers=["node9"]))
    assert fake.received == []


async def test_a_silent_router_times_out() -> None:
    async def never(command: str) -> str:
        await asyncio.sleep(3600)
        return ""

    router = HAProxyRouter(settings(timeout=0.2), NODES, transport=never)
    started = time.monotonic()
    with pytest.raises(RouterError, match=r"no answer to 'show servers state' within 0\.2 s"):
        await router.read()
    assert time.monotonic() - started < 0.4


# --- real haproxy in front of real mariadbd -----------------------------------------------------

integration = pytest.mark.integration


@dataclass(frozen=True)
class DB:
    name: str
    server_id: int
    port: int


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    unix_socket: str
    tcp_socket: str
    writer_port: int
    reader_port: int

    def router(self, socket_address: str | None = None, timeout: float = 1.0) -> HAProxyRouter:
        address = socket_address or self.unix_socket
        return HAProxyRouter(settings(socket=address, timeout=timeout), NODES)


@pytest.fixture(scope="module")
def databases() -> Iterator[list[DB]]:
    if not all(shutil.which(b) for b in ("haproxy", "mariadbd", "mariadb-install-db")):
        pytest.skip("needs the haproxy, mariadbd and mariadb-install-db binaries")
    with own_tmp_dir() as base:
        yield from _databases(base)


def _databases(base: Path) -> Iterator[list[DB]]:
    processes: list[subprocess.Popen[bytes]] = []
    dbs = []
    try:
        for server_id, name in enumerate(NODES, start=1):
            datadir, port = base / name, free_port()
            # a tmpdir of its own: a server starting deletes every '#sql*' file in its tmpdir
            tmpdir = base / f"{name}-tmp"
            tmpdir.mkdir()
            install = subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={datadir}",
                    f"--tmpdir={tmpdir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root",
                ],
                capture_output=True,
                timeout=120,
            )
            if install.returncode:
                output = (install.stdout + install.stderr).decode(errors="replace")
                raise RuntimeError(f"mariadb-install-db failed: {output[-2000:]}")
            processes.append(
                subprocess.Popen(
                    [
                        "mariadbd",
                        "--no-defaults",
                        f"--datadir={datadir}",
                        f"--tmpdir={tmpdir}",
                        f"--port={port}",
                        "--bind-address=127.0.0.1",
                        f"--socket={base / name}.sock",
                        "--user=root",
                        f"--server-id={server_id}",
                        "--skip-grant-tables",
                        "--skip-log-bin",
                        "--innodb-buffer-pool-size=16M",
                        f"--log-error={base / name}.err",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            dbs.append(DB(name, server_id, port))
        for db, process in zip(dbs, processes, strict=True):
            wait_for_port(db.port, process, timeout=60)
        yield dbs
    finally:
        for process in processes:
            stop(process)


@pytest.fixture
def start_haproxy(databases: list[DB]) -> Iterator[Callable[..., HAProxy]]:
    with own_tmp_dir() as tmp_path:
        yield from _start_haproxy(tmp_path, databases)


def _start_haproxy(tmp_path: Path, databases: list[DB]) -> Iterator[Callable[..., HAProxy]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*, writers_enabled: bool = False, second: bool = False) -> HAProxy:
        unix_socket = str(tmp_path / "h.sock")
        admin_port, writer_port, reader_port = free_port(), free_port(), free_port()
        writer_flag = "" if writers_enabled else " disabled"
        lines = [
            "global",
            f"    stats socket {unix_socket} mode 600 level admin",
            f"    stats socket ipv4@127.0.0.1:{admin_port} level admin",
            "defaults",
            "    mode tcp",
            "    timeout connect 1s",
            "    timeout client 30s",
            "    timeout server 30s",
            "frontend writer_in",
            f"    bind 127.0.0.1:{writer_port}",
            f"    default_backend {W}",
            "frontend readers_in",
            f"    bind 127.0.0.1:{reader_port}",
            f"    default_backend {R}",
            f"backend {W}",
            *(f"    server {db.name} 127.0.0.1:{db.port}{writer_flag}" for db in databases),
            # Not a managed node: must keep whatever state it has.
            f"    server other 127.0.0.1:{databases[0].port} disabled",
            f"backend {R}",
            "    balance roundrobin",
            *(f"    server {db.name} 127.0.0.1:{db.port} disabled" for db in databases),
            f"    server other 127.0.0.1:{databases[0].port} disabled",
        ]
        for backend in (W2, R2) if second else ():  # another cluster: its own backends
            lines.append(f"backend {backend}")
            lines += (f"    server {db.name} 127.0.0.1:{db.port} disabled" for db in databases)
        config = tmp_path / "haproxy.cfg"
        config.write_text("\n".join(lines) + "\n")
        process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        wait_for_port(admin_port, process, timeout=10)
        return HAProxy(process, unix_socket, f"127.0.0.1:{admin_port}", writer_port, reader_port)

    yield start
    for process in started:
        stop(process)


@integration
async def test_apply_routes_real_queries_and_is_idempotent(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    haproxy = start_haproxy()
    router = haproxy.router()
    other_before = await other_states(haproxy)
    steps = [
        (Membership.of(writers=["node1"], readers=["node1", "node2", "node3"]), 1, {1, 2, 3}),
        (Membership.of(writers=["node2"], readers=["node3"], broken=["node1"]), 2, {3}),
        (Membership.of(writers=["node3"], readers=["node1", "node3"], hidden=["node2"]), 3, {1, 3}),
    ]
    for desired, writer_id, reader_ids in steps:
        before = len(router.commands_sent)
        assert await router.apply(desired) is True
        assert await router.read() == expected_readback(desired, NODES)
        sent = router.commands_sent[before:]
        promote = sent.index(f"set server writer/node{writer_id} state ready")
        assert all(not c.startswith("set server writer/") for c in sent[promote + 1 :])
        assert all("state ready" not in c for c in sent[:promote])

        assert await server_ids(haproxy.writer_port, 4) == {writer_id}
        assert await server_ids(haproxy.reader_port, 2 * len(reader_ids)) == reader_ids

        assert await router.apply(desired) is False
        assert len(router.commands_sent) == before + len(sent)
    assert await other_states(haproxy) == other_before


@integration
async def test_writer_move_cuts_sessions_on_the_old_writer(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    haproxy = start_haproxy()
    router = haproxy.router()
    await router.apply(Membership.of(writers=["node1"], readers=["node2"]))
    old = await aiomysql.connect(host="127.0.0.1", port=haproxy.writer_port, user="root")
    try:
        assert await query_server_id(old) == 1
        await router.apply(Membership.of(writers=["node2"], readers=["node1"]))
        with pytest.raises(aiomysql.OperationalError):
            await asyncio.wait_for(query_server_id(old), 2)
    finally:
        old.close()
    assert await server_ids(haproxy.writer_port, 3) == {2}


@integration
async def test_several_configured_writers_are_reduced_to_one(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    haproxy = start_haproxy(writers_enabled=True)
    router = haproxy.router()
    assert (await router.read()).writers == set(NODES)
    desired = Membership.of(writers=["node2"], readers=["node1", "node3"])
    assert await router.apply(desired) is True
    assert await router.read() == expected_readback(desired, NODES)
    assert router.commands_sent[:4] == [
        "set server writer/node1 state maint",
        "shutdown sessions server writer/node1",
        "set server writer/node3 state maint",
        "shutdown sessions server writer/node3",
    ]
    assert "set server writer/node2 state ready" not in router.commands_sent  # already ready
    assert await server_ids(haproxy.writer_port, 6) == {2}


@integration
async def test_invalid_desired_state_is_refused_and_nothing_changes(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    haproxy = start_haproxy()
    router = haproxy.router()
    await router.apply(Membership.of(writers=["node1"], readers=["node2"]))
    before, sent = await router.read_backends(), len(router.commands_sent)
    for writers in ([], ["node2", "node3"]):
        with pytest.raises(RouterError, match=f"has {len(writers)} writers"):
            await router.apply(Membership.of(writers=writers, readers=["node1"]))
    assert len(router.commands_sent) == sent
    assert await router.read_backends() == before


@integration
async def test_a_node_missing_from_haproxy_is_named(start_haproxy: Callable[..., HAProxy]) -> None:
    haproxy = start_haproxy()
    router = HAProxyRouter(settings(socket=haproxy.unix_socket), (*NODES, "node4"))
    with pytest.raises(RouterError, match=r"\['writer/node4', 'readers/node4'\]"):
        await router.read()
    with pytest.raises(RouterError, match="node4"):
        await router.apply(Membership.of(writers=["node1"]))
    assert router.commands_sent == []


@integration
async def test_tcp_admin_socket(start_haproxy: Callable[..., HAProxy]) -> None:
    haproxy = start_haproxy()
    router = haproxy.router(haproxy.tcp_socket)
    desired = Membership.of(writers=["node3"], readers=["node1", "node2"])
    assert await router.apply(desired) is True
    assert await router.read() == expected_readback(desired, NODES)
    assert await router.apply(desired) is False
    assert await server_ids(haproxy.writer_port, 3) == {3}
    assert await server_ids(haproxy.reader_port, 4) == {1, 2}


@integration
@pytest.mark.parametrize("form", ["unix", "tcp"])
async def test_haproxy_killed_fails_fast(start_haproxy: Callable[..., HAProxy], form: str) -> None:
    haproxy = start_haproxy()
    router = haproxy.router(haproxy.unix_socket if form == "unix" else haproxy.tcp_socket)
    desired = Membership.of(writers=["node1"])
    await router.apply(desired)
    haproxy.process.kill()
    haproxy.process.wait()
    for call in (router.read, lambda: router.apply(desired)):
        started = time.monotonic()
        with pytest.raises(RouterError, match="HAProxy admin socket"):
            await call()
        assert time.monotonic() - started < 0.5  # refused at once, no waiting for the timeout


@integration
@pytest.mark.parametrize("form", ["unix", "tcp"])
async def test_haproxy_frozen_times_out(start_haproxy: Callable[..., HAProxy], form: str) -> None:
    haproxy = start_haproxy()
    timeout = 0.5
    router = haproxy.router(haproxy.unix_socket if form == "unix" else haproxy.tcp_socket, timeout)
    desired = Membership.of(writers=["node1"])
    await router.apply(desired)
    os.kill(haproxy.process.pid, signal.SIGSTOP)
    try:
        for call in (router.read, lambda: router.apply(desired)):
            started = time.monotonic()
            with pytest.raises(RouterError, match=f"within {timeout} s"):
                await call()
            assert 0.9 * timeout <= time.monotonic() - started < 1.5 * timeout
    finally:
        os.kill(haproxy.process.pid, signal.SIGCONT)


STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot\n"
    "writer_front,FRONTEND,,,3,3,2000,9\n"
    "writer,node1,0,0,2,2,,5\n"
    "writer,node2,0,0,0,0,,0\n"
    "writer,BACKEND,0,0,2,2,200,5\n"
)


def test_parse_stat_sessions() -> None:
    assert parse_stat_sessions(STAT, "writer", "node1") == 2
    assert parse_stat_sessions(STAT, "writer", "node2") == 0
    with pytest.raises(RouterError, match="no server writer/node3"):
        parse_stat_sessions(STAT, "writer", "node3")
    with pytest.raises(RouterError, match="unexpected answer"):
        parse_stat_sessions("Unknown command.\n", "writer", "node1")
    with pytest.raises(RouterError, match="lacks pxname/svname/scur"):
        parse_stat_sessions("# pxname,svname\nwriter,node1\n", "writer", "node1")


@integration
async def test_drain_waits_for_the_sessions_and_refuses_new_ones(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    """DRAIN is the closest HAProxy has to ProxySQL's OFFLINE_SOFT; its limits are real."""
    haproxy = start_haproxy()
    router = haproxy.router()
    desired = Membership.of(writers=["node1"], readers=["node1", "node2"])
    await router.apply(desired)
    old = await aiomysql.connect(host="127.0.0.1", port=haproxy.writer_port, user="root")
    try:
        drain = asyncio.create_task(router.drain("node1", timeout=5.0))
        await asyncio.sleep(0.3)
        assert not drain.done()
        assert await router.read() == Membership.of(readers=["node1", "node2"], broken=["node3"])
        # A running session goes on; a new connection finds no ready writer and is closed.
        assert await query_server_id(old) == 1
        with pytest.raises(aiomysql.OperationalError) as info:
            await aiomysql.connect(host="127.0.0.1", port=haproxy.writer_port, user="root")
        assert info.value.args[0] == 2013
        old.close()  # HAProxy counts sessions, not transactions: only the client's goodbye
        drained = await asyncio.wait_for(drain, 5)
        assert drained.idle and drained.in_use == 0 and 0.3 <= drained.seconds < 5
    finally:
        old.close()
    # Against the deadline: an idle pooled connection holds the drain until it passes.
    await router.apply(desired)
    idle = await aiomysql.connect(host="127.0.0.1", port=haproxy.writer_port, user="root")
    try:
        drained = await router.drain("node1", timeout=0.5)
        assert not drained.idle and drained.in_use == 1 and drained.seconds >= 0.5
    finally:
        idle.close()
    with pytest.raises(RouterError, match="cannot drain node3"):
        await router.drain("node3", timeout=0.5)
    assert await router.apply(desired) is True
    assert await router.read() == expected_readback(desired, NODES)


@integration
async def test_two_clusters_on_one_socket_touch_only_their_own_backends(
    start_haproxy: Callable[..., HAProxy],
) -> None:
    haproxy = start_haproxy(second=True)
    orders = haproxy.router()
    users = HAProxyRouter(
        HAProxySettings(socket=haproxy.unix_socket, writer_backend=W2, reader_backend=R2), NODES
    )
    first = Membership.of(writers=["node1"], readers=["node1", "node2", "node3"])
    await asyncio.gather(orders.apply(first), users.apply(first))
    users_before = await states_of(haproxy, (W2, R2))
    for desired in (
        Membership.of(writers=["node2"], readers=["node3"], broken=["node1"]),
        Membership.of(writers=["node3"], readers=["node2", "node3"], broken=["node1"]),
    ):
        assert await orders.apply(desired) is True  # a failover of orders alone
        assert await users.read() == first
        assert await states_of(haproxy, (W2, R2)) == users_before
    moved = Membership.of(writers=["node2"], readers=["node2"], broken=["node1", "node3"])
    await asyncio.gather(orders.apply(first), users.apply(moved))  # both at once
    assert await orders.read() == first and await users.read() == moved
    assert all(f" {W}/" in c or f" {R}/" in c for c in orders.commands_sent)
    assert all(f" {W2}/" in c or f" {R2}/" in c for c in users.commands_sent)


# --- helpers ------------------------------------------------------------------------------------


async def states_of(haproxy: HAProxy, backend_names: Sequence[str]) -> dict[tuple[str, str], int]:
    answer = await SocketTransport(haproxy.unix_socket)("show servers state")
    return {
        (s.backend, s.name): s.admin_state
        for s in parse_servers_state(answer)
        if s.backend in backend_names
    }


def settings(socket: str = "/nonexistent/h.sock", timeout: float = 1.0) -> HAProxySettings:
    return HAProxySettings(socket=socket, writer_backend=W, reader_backend=R, timeout=timeout)


def server(backend: str, name: str, admin_state: int) -> ServerState:
    op_state = 0 if admin_state & (ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT) else 2
    return ServerState(backend, name, "127.0.0.1", 3306, op_state, admin_state)


def backends(writer: dict[str, int], reader: dict[str, int]) -> Backends:
    """Managed nodes' servers; a node not listed is in MAINT (configured ``disabled``)."""
    disabled = ADMF_CMAINT | ADMF_FMAINT
    return Backends(
        writer={n: server(W, n, writer.get(n, disabled)) for n in NODES},
        reader={n: server(R, n, reader.get(n, disabled)) for n in NODES},
    )


class FakeHAProxy:
    """The slice of HAProxy's runtime API the router uses, answering like HAProxy 2.6 does."""

    HEADER = (
        "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
        "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
        "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
        "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr "
        "srv_agent_addr srv_agent_port"
    )

    def __init__(
        self,
        writer: dict[str, int],
        *,
        refuse: Iterable[str] = (),
        stuck: Iterable[tuple[str, str]] = (),
    ) -> None:
        disabled = ADMF_CMAINT | ADMF_FMAINT
        self.admin: dict[tuple[str, str], int] = {}
        for backend in (W, R):
            for node in (*NODES, "other"):
                self.admin[(backend, node)] = disabled
        self.admin.update({(W, node): state for node, state in writer.items()})
        self.refuse, self.stuck = set(refuse), set(stuck)
        self.received: list[str] = []

    async def call(self, command: str) -> str:
        self.received.append(command)
        return self.handle(command)

    def handle(self, command: str) -> str:
        if command in self.refuse:
            return "No such server.\n\n"
        if command == "show servers state":
            return self.show()
        words = command.split()
        backend, _, name = words[-3 if words[0] == "set" else -1].partition("/")
        if (backend, name) not in self.admin:
            return "No such server.\n\n"
        if words[0] == "set" and (backend, name) not in self.stuck:
            state = self.admin[(backend, name)] & ADMF_CMAINT
            self.admin[(backend, name)] = state | {"maint": ADMF_FMAINT, "drain": ADMF_FDRAIN}.get(
                words[-1], 0
            )
        return "\n"

    def show(self) -> str:
        lines = ["1", self.HEADER]
        for (backend, name), admin in self.admin.items():
            be_id, srv_id = (4 if backend == W else 5), (*NODES, "other").index(name) + 1
            op = 0 if admin & ADMF_FMAINT else 2
            lines.append(
                f"{be_id} {backend} {srv_id} {name} 127.0.0.1 {op} {admin} 1 1 0 1 0 0 8 0 0 0 "
                f"- {3306 + srv_id} - 0 0 - - 0"
            )
        return "\n".join(lines) + "\n\n"

    def backends(self) -> Backends:
        return managed_backends(parse_servers_state(self.show()), NODES, W, R)

    def routed_writers(self) -> set[str]:
        return set(self.backends().membership().writers)


async def other_states(haproxy: HAProxy) -> dict[str, int]:
    answer = await SocketTransport(haproxy.unix_socket)("show servers state")
    return {s.backend: s.admin_state for s in parse_servers_state(answer) if s.name == "other"}


async def query_server_id(connection: aiomysql.Connection) -> int:
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT @@server_id")
        (server_id,) = await cursor.fetchone()
    return int(server_id)


async def server_ids(port: int, connections: int) -> set[int]:
    """The server ids reached by that many fresh connections through HAProxy."""
    seen = set()
    for _ in range(connections):
        connection = await aiomysql.connect(
            host="127.0.0.1", port=port, user="root", connect_timeout=5
        )
        try:
            seen.add(await query_server_id(connection))
        finally:
            connection.close()
    return seen


@contextlib.contextmanager
def own_tmp_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: other pytest runs on this machine prune old numbered tmp dirs
    # under the shared basetemp, and a unix socket path must stay short (108 bytes).
    with tempfile.TemporaryDirectory(prefix="hac-haproxy-") as name:
        yield Path(name)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} did not listen on port {port} within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr:
        process.stderr.close()
