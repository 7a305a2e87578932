"""Helpers for tests that run the real probes and controller against a sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hacontrol import gtid
from hacontrol.actions.rebuild import Rebuilder, RebuildTimeouts, SandboxControl, sandbox_commands
from hacontrol.events import ProbeResult
from hacontrol.flavors import NodeStatus
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.jsonlog import JsonLog
from hacontrol.mysqlconn import Endpoint
from hacontrol.probes.mysql import NodeProbe
from hacontrol.sandbox import Sandbox
from hacontrol.service import Runtime, Service, secrets_of
from hacontrol.settings import Settings, load_settings
from tests.support import cancel_and_wait, eventually, free_port


def sandbox_settings(
    sandbox: Sandbox,
    *,
    interval: float = 0.3,
    timeout: float = 0.25,
    threshold: int = 3,
    **failover: Any,
) -> Settings:
    """The sandbox's settings with fast probes, and a journal of this test's own."""
    settings = load_settings(sandbox.status().settings).settings
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    return settings.model_copy(
        update={
            "probes": settings.probes.model_copy(
                update={"interval": interval, "timeout": timeout, "failure_threshold": threshold}
            ),
            "failover": settings.failover.model_copy(update=failover),
            "controller": settings.controller.model_copy(update={"journal": journal}),
            "api": settings.api.model_copy(update={"port": 0}),  # tests run side by side
        }
    )


async def healthy_and_idle(rt: Runtime, timeout: float = 20) -> None:
    """Until the controller sees a healthy cluster, decided "Nothing" last and runs no plan;
    with a router, once it has read the router's membership too (a test reads it next)."""
    await eventually(
        lambda: (
            rt.controller.view.quorum.ok
            and not rt.controller.view.problems
            and (rt.router is None or rt.controller.view.router.membership is not None)
            and rt.controller.decisions
            and rt.controller.decisions[-1]["rule"] == "Nothing"
            and rt.controller.running_plan is None
        ),
        timeout,
        "a healthy, idle cluster",
    )


class LogCapture:
    """A JsonLog stream that keeps every line, parsed, with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)
                record["_mono"] = time.monotonic()
                self.records.append(record)
        return len(text)

    def flush(self) -> None:
        pass

    def of(self, event: str, node: str | None = None) -> list[dict[str, Any]]:
        return [
            r for r in self.records if r["event"] == event and (node is None or r["node"] == node)
        ]


def runtime(settings: Settings, **kw: Any) -> tuple[Runtime, LogCapture]:
    capture = LogCapture()
    log = JsonLog(settings.cluster.name, stream=capture, secrets=secrets_of(settings))
    return Runtime(settings, log, **kw), capture


def service(*clusters: Settings, **kw: Any) -> tuple[Service, LogCapture]:
    """A Service (the clusters' Runtimes, with the API when the settings enable it), as
    ``hacontrol run`` builds it, logging into a LogCapture."""
    capture = LogCapture()
    secrets = {secret for one in clusters for secret in secrets_of(one)}
    name = clusters[0].cluster.name if len(clusters) == 1 else None
    log = JsonLog(name, stream=capture, secrets=secrets)
    return Service(clusters, log, **kw), capture


class WriteLoop:
    """An application writing through the router's writer port every 10 ms, as the app user
    (``target``: a node's name for a client on that node's own host, through its socket).

    Records every id the server acknowledged (COMMIT returned OK) and every error by kind;
    reconnects after an error, like a pooled client would.
    """

    PINNED = "INSERT INTO app.writes (id, node) VALUES (%s, @@server_id)"
    """``@@server_id`` in a write disables ProxySQL's multiplexing: the session keeps its
    backend connection (it holds a drain until its deadline; docs/proxysql.md)."""
    PLAIN = "INSERT INTO app.writes (id, node) VALUES (%s, 0)"
    """A plain autocommit write: ProxySQL holds it while there is no writer."""

    def __init__(
        self,
        sandbox: Sandbox,
        period: float = 0.01,
        start_id: int = 1_000_000,
        statement: str = PINNED,
        timeout: float = 2.0,
        target: str = "writer",
        *,
        port: int | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._target = target
        self._port = port
        """Another router's writer port (a fleet's); default: the sandbox's router."""
        self._period = period
        self._statement = statement
        self._timeout = timeout
        self._next = start_id
        self.acknowledged: list[int] = []
        self.ack_times: list[float] = []
        self.errors: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import aiomysql

        conn = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(self._connect(), 2)
                    row = self._next
                    self._next += 1
                    async with asyncio.timeout(self._timeout), conn.cursor() as cur:
                        await cur.execute(self._statement, (row,))
                    self.acknowledged.append(row)
                    self.ack_times.append(time.monotonic())
                except (OSError, TimeoutError, aiomysql.Error) as exc:
                    kind = type(exc).__name__
                    if exc.args and isinstance(exc.args[0], int):
                        kind += f"({exc.args[0]})"
                    self.errors[kind] = self.errors.get(kind, 0) + 1
                    if conn is not None:
                        conn.close()
                    conn = None
                await asyncio.sleep(self._period)
        finally:
            if conn is not None:
                conn.close()

    async def _connect(self):
        if self._port is None:
            return await self._sandbox.connect(self._target, "app")
        import aiomysql

        info = self._sandbox.status()
        return await aiomysql.connect(
            host=info.router.host,
            port=self._port,
            user=info.users["app"].user,
            password=self._sandbox.password("app"),
            autocommit=True,
            connect_timeout=2,
        )

    def start(self) -> WriteLoop:
        self._task = asyncio.create_task(self._run(), name="write-loop")
        return self

    async def stop(self) -> None:
        """Cancel the loop, again until it ends (``cancel_and_wait``)."""
        if self._task is not None:
            await cancel_and_wait(self._task)

    def acked_since(self, t: float) -> int:
        return sum(1 for a in self.ack_times if a > t)


async def acked_after(
    loops: Iterable[WriteLoop], since: float, count: int = 1, timeout: float = 20.0
) -> None:
    """Until every loop has ``count`` writes acknowledged after ``since`` (a monotonic time):
    the fact a test needs before it measures an outage around ``since``, instead of a sleep
    that a loaded machine may outlast (a client reconnecting waits up to its timeouts)."""
    loops = list(loops)
    await eventually(
        lambda: all(loop.acked_since(since) >= count for loop in loops),
        timeout,
        f"{count} writes acknowledged after the mark through every loop",
    )


class MailBox:
    """A real SMTP server in this process (aiosmtpd) that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import email

                box.messages.append(email.message_from_bytes(envelope.content))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.port = self.controller.port

    def start(self) -> MailBox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def bodies(self) -> list[str]:
        return [
            m.get_payload(decode=True).decode()
            if not m.is_multipart()
            else m.get_payload(0).get_payload(decode=True).decode()
            for m in self.messages
        ]


def with_mail(settings: Settings, port: int) -> Settings:
    return settings.model_copy(
        update={
            "smtp": settings.smtp.model_copy(
                update={"host": "127.0.0.1", "port": port, "recipients": ("dba@example.com",)}
            )
        }
    )


def with_journal(settings: Settings, path) -> Settings:
    return settings.model_copy(
        update={"controller": settings.controller.model_copy(update={"journal": path})}
    )


async def sql(
    sandbox: Sandbox,
    node: str,
    statement: str,
    params=None,
    role: str = "root",
    *,
    then: tuple[str, ...] = (),
):
    """Statements on one connection to a node (root through its unix socket, or another role
    by TCP); the rows of the last one. ``then``: more statements in the same session."""
    import aiomysql

    if role == "root":
        conn = await aiomysql.connect(
            unix_socket=sandbox.status().node(node).socket,
            user="root",
            password=sandbox.password("root"),
            autocommit=True,
        )
    else:
        conn = await sandbox.connect(node, role)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement, params)
            for more in then:
                await cur.execute(more)
            return await cur.fetchall()
    finally:
        conn.close()


async def replica_status(sandbox: Sandbox, node: str) -> dict:
    """SHOW SLAVE STATUS of ``node`` as a dict (empty when it replicates from nobody)."""
    import aiomysql

    conn = await sandbox.connect(node, "controller")
    try:
        async with conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute("SHOW SLAVE STATUS")
            rows = await cur.fetchall()
    finally:
        conn.close()
    return rows[0] if rows else {}


def hacontrol(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m hacontrol *args`` to its end (``timeout`` at most), with the caller's
    environment less its ``HACONTROL_*`` variables, plus ``env``; its output captured as text."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
    return subprocess.run(
        [sys.executable, "-m", "hacontrol", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=timeout,
        **kw,
    )


FAST_ENV = {
    "HACONTROL_PROBES__INTERVAL": "0.3",
    "HACONTROL_PROBES__TIMEOUT": "0.25",
    "HACONTROL_FAILOVER__IO_STALL": "1.5",
    "HACONTROL_FAILOVER__APPLY_TIMEOUT": "10",
    "HACONTROL_FAILOVER__ACTION_TIMEOUT": "3",
}


class Process:
    """`hacontrol run` in a subprocess; its JSON lines collected by a reader thread."""

    def __init__(self, config: Path, env: dict[str, str], prefix: list[str] | None = None):
        base = {k: v for k, v in os.environ.items() if not k.startswith("HACONTROL_")}
        self.records: list[dict] = []
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "hacontrol", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base, **env},
            cwd=Path(__file__).resolve().parent.parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
                record["_mono"] = time.monotonic()  # when it arrived here
                self.records.append(record)
            except json.JSONDecodeError:
                self.records.append({"event": "non-json", "line": line})

    def of(self, event: str, **match) -> list[dict]:
        return [
            r
            for r in list(self.records)
            if r.get("event") == event and all(r.get(k) == v for k, v in match.items())
        ]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            if self.proc.poll() is not None and not predicate():
                break
            time.sleep(0.05)
        stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise AssertionError(f"timed out waiting for {what}; exit={self.proc.poll()} {stderr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)  # dead, its ports and locks free, before the next test starts
        self._reader.join(2)


def iptables_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root (iptables owner match, running the controller as nobody)"
    if shutil.which("iptables") is None or shutil.which("setpriv") is None:
        return "needs iptables and setpriv"
    probe = subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"iptables unusable here: {probe.stderr.strip()}"
    return None


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
"""Run a process as user nobody (for iptables rules that match its packets only)."""


def as_nobody(sandbox: Sandbox, shared: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the sandbox's settings that user nobody can read, and the environment that
    carries what it cannot read (the secret files are root's alone). No router: its admin
    socket is root's too."""
    shared.mkdir(parents=True, exist_ok=True)
    shared.chmod(0o777)
    config = shared / "settings.toml"
    shutil.copy(sandbox.status().settings, config)
    config.chmod(0o644)
    env = {
        "HACONTROL_ROUTER__KIND": "none",
        "HACONTROL_CONTROLLER__JOURNAL": str(shared / "journal.jsonl"),
        "HACONTROL_MYSQL__PASSWORD": sandbox.password("controller"),
        "HACONTROL_MYSQL__REPLICATION_PASSWORD": sandbox.password("replication"),
        "HACONTROL_API__TOKEN": "partition-test-token",
        "HACONTROL_API__PORT": "0",
    }
    if sandbox.status().router.kind == "proxysql":  # its admin password file is root's too
        env["HACONTROL_ROUTER__PROXYSQL__PASSWORD"] = sandbox.password("proxysql")
    return config, env


def nobody_dropped(port: int) -> list[str]:
    """The iptables rule (for ``-I`` / ``-D``) dropping user nobody's packets to ``port``."""
    return [
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "--dport",
        str(port),
        "-m",
        "owner",
        "--uid-owner",
        "65534",
        "-j",
        "DROP",
    ]


# ---- rebuilding a sandbox's node (the rebuild tests, with and without the controller) ----------

REBUILD_TIMEOUTS = RebuildTimeouts(
    command=30, copy=300, stall=60, prepare=120, stop=60, start=60, attach=30, catch_up=60
)


def rebuilder(sandbox: Sandbox, control: SandboxControl | None = None, **changes) -> Rebuilder:
    """A rebuilder of the sandbox's nodes by its local commands (``changes`` replace some),
    with generous timeouts and frequent progress."""
    commands, env = sandbox_commands(sandbox)
    return Rebuilder(
        sandbox_settings(sandbox),
        replace(commands, **changes),
        control=control or SandboxControl(sandbox),
        env=env,
        timeouts=REBUILD_TIMEOUTS,
        progress_every=0.05,
    )


def leftovers(sandbox: Sandbox, node: str = "node3") -> list[str]:
    """What a rebuild leaves next to the datadir while it runs (none once it is over)."""
    datadir = sandbox.status().node(node).datadir
    names = (".rebuild", ".before-rebuild", ".rebuild-swapped")
    return [datadir + name for name in names if Path(datadir + name).exists()]


def reset_datadir(sandbox: Sandbox, how: str, node: str = "node3") -> None:
    """The node's datadir removed (``how`` "missing") or left empty (``how`` "empty")."""
    path = Path(sandbox.status().node(node).datadir)
    shutil.rmtree(path)
    if how == "empty":
        path.mkdir()


def post(port: int, path: str, body: dict, token: str) -> None:
    """A POST to the controller's API; an answer is not needed (the controller may die)."""
    import contextlib
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=10).read()


class Frozen:
    """A sandbox node stopped (SIGSTOP) from ``freeze()`` until ``thaw()``; as a context
    manager, thawed at the block's end whatever happened in it (never left stopped)."""

    def __init__(self, sandbox: Sandbox, node: str) -> None:
        self.sandbox, self.node, self.frozen = sandbox, node, False

    def freeze(self) -> bool:
        """SIGSTOP; False if the node was not alive."""
        self.frozen = True
        return self.sandbox.kill_node(self.node, signal.SIGSTOP)

    def thaw(self) -> bool:
        """SIGCONT; False if the node was not alive (the block's end sends it again then)."""
        thawed = self.sandbox.kill_node(self.node, signal.SIGCONT)
        self.frozen = self.frozen and not thawed
        return thawed

    def __enter__(self) -> Frozen:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.frozen:
            self.sandbox.kill_node(self.node, signal.SIGCONT)


def crashed_after_promote(
    sandbox: Sandbox, extra: dict[str, str] | None = None
) -> tuple[Path, dict[str, str], Process]:
    """A controller (a fleet of one unless ``extra`` says otherwise, its own journal) run until
    its failover of a killed node1 crashes it right after Promote: the journal, the
    environment for the restarted one, and the crashed one (stopped)."""
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    env = {**FAST_ENV, "HACONTROL_CONTROLLER__JOURNAL": str(journal), **(extra or {})}
    first = Process(sandbox.status().settings, {**env, "HACONTROL_TEST_CRASH_AFTER": "Promote"})
    try:
        first.wait(lambda: first.of("decision", rule="Nothing"), 30, "a healthy cluster")
        sandbox.kill_node("node1", signal.SIGKILL)
        first.wait(lambda: first.proc.poll() is not None, 30, "the crash after the Promote")
    finally:
        first.stop()
    return journal, env, first


def switchover_crashed_after(
    config: Path, step: str, extra: dict[str, str] | None = None
) -> tuple[Path, dict[str, str], Process]:
    """A controller (its own journal, its API on a free port, ``extra`` in its environment)
    asked for a switchover to node2 once healthy, and crashed by the fault injection right
    after the switchover's ``step``: the journal, the environment for the restarted one (its
    API on any port), and the crashed one (stopped)."""
    journal = Path(tempfile.mkdtemp(prefix="hacontrol-journal-")) / "journal.jsonl"
    token, port = "switchover-token-0123456789", free_port()
    env = {
        **FAST_ENV,
        "HACONTROL_CONTROLLER__JOURNAL": str(journal),
        "HACONTROL_API__TOKEN": token,
        **(extra or {}),
    }
    first = Process(
        config, {**env, "HACONTROL_API__PORT": str(port), "HACONTROL_TEST_CRASH_AFTER": step}
    )
    try:
        first.wait(lambda: first.of("decision", rule="Nothing"), 30, "a healthy cluster")
        threading.Thread(target=post, args=(port, "/switchover", {"to": "node2"}, token)).start()
        first.wait(lambda: first.proc.poll() is not None, 30, f"the crash after the {step}")
    finally:
        first.stop()
    return journal, {**env, "HACONTROL_API__PORT": "0"}, first


async def probe(sandbox: Sandbox, node: str) -> NodeStatus:
    """One probe of the node, exactly as the controller runs it."""
    info = sandbox.status().node(node)
    endpoint = Endpoint(info.host, info.port, "hacontrol", sandbox.password("controller"))
    prober = NodeProbe(node, endpoint, interval=1.0, timeout=5.0, emit=lambda _: None, watch=False)
    try:
        result: ProbeResult = await prober.probe()
    finally:
        await prober.close()
    assert result.status is not None, result.error
    return result.status


def state_of(status: NodeStatus) -> gtid.BinlogState:
    state = binlog_state_of(status)
    assert state is not None
    return state


def as_cut_inside_the_promote(journal: Path) -> int:
    """The journal as a crash inside the Promote leaves it: its ``start`` written, its ``step``
    not. Returns the Promote's index."""
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    (index,) = [r["index"] for r in records if r["type"] == "start"]
    kept = [r for r in records if not (r["type"] == "step" and r["index"] == index)]
    assert len(kept) == len(records) - 1
    journal.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return index
