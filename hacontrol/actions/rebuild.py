"""Rebuild a replica from another replica with mariadb-backup (``docs/rebuild.md``).

Side effects only: whether a rebuild may run is decided by ``hacontrol.rebuild_checks``, the
commands come from ``hacontrol.rebuild_commands``, mariadb-backup's output is read by
``hacontrol.mariabackup``. The order keeps every failure safe:

1. check (nothing changed): the target has no leftovers of an earlier rebuild and room for
   the copy; the source's datadir size (for the ETA) and its ``gtid_binlog_state`` are read;
2. copy: ``mariadb-backup --backup --stream=mbstream`` on the source, through hacontrol
   (bytes counted: progress, rate, ETA), into ``mbstream -x`` in a staging directory on the
   target. The target still runs, fenced, untouched;
3. prepare the copy on the target (``mariadb-backup --prepare``). A failure in 2 or 3 removes
   the staging directory: target and source are as they were;
4. stop the target and check that nothing answers on its port any more;
5. swap: the old datadir aside (kept until the end), the prepared copy in its place;
6. start the target read-only and wait until it answers SQL;
7. replicate: ``gtid_binlog_state`` seeded with the source's history, ``gtid_slave_pos`` set
   to the copy's position, ``CHANGE MASTER`` to the primary with ``MASTER_USE_GTID=slave_pos``,
   replication started and caught up; then no GTID of the target may be missing on the
   primary (``hacontrol.gtid.errant_by_state``). A failure in 4 to 7 stops the target and
   puts the old datadir back: the node stays down, quarantined, as before the rebuild;
8. remove the old datadir.

In a fleet only the leader rebuilds: ``guard`` (the executor's lease gate) is asked before
every change to the target (its stop, the swap, its start, each statement that makes it a
replica) and all along the copy; the statements are checked again as they are sent
(``lease_until``). A rebuild cut by a lost lease before the target was stopped is undone like
any failure (only the staging directory goes); once the target was stopped nothing more is
done to it, not even the undo: it stays as it was left, quarantined, and the reason says where
(``docs/rebuild.md``). The next leader decides from the live topology.

The source is only read: the backup takes ``BACKUP STAGE`` locks for a moment and never stops
its replication. Never a half-copied datadir started: the swap runs only after the stream
ended with ``completed OK!`` from the tool, both sides exited 0 and the prepare succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hacontrol import gtid
from hacontrol.actions.mysql import ActionError, LeaseUntil, MySQLActions
from hacontrol.actions.processes import ProcessError, Stream, run
from hacontrol.flavors import NodeStatus
from hacontrol.flavors.mariadb import binlog_state_of
from hacontrol.mariabackup import BackupLog, Progress, copy_progress, parse_size, seed_state
from hacontrol.mysqlconn import Endpoint as SqlEndpoint
from hacontrol.mysqlconn import connect, describe_error, endpoint_for, execute
from hacontrol.plan import LEASE_LOST
from hacontrol.rebuild_commands import (
    EXIT_REFUSED,
    Command,
    Endpoint,
    RebuildCommands,
    RebuildSteps,
    rebuild_steps,
)
from hacontrol.settings import Settings, read_secret

OnProgress = Callable[[Progress], None]
Guard = Callable[[], str | None]
"""Why this instance may not change the target now (a fleet's lease lost), or None."""


def _forever() -> float:
    return float("inf")


@dataclass(frozen=True)
class RebuildTimeouts:
    """Seconds. ``stall``: the copy fails when no byte arrived for that long."""

    command: float = 60.0
    copy: float = 24 * 3600.0
    stall: float = 600.0
    prepare: float = 3600.0
    stop: float = 300.0
    start: float = 600.0
    attach: float = 60.0
    catch_up: float = 600.0


@dataclass(frozen=True)
class RebuildResult:
    ok: bool
    target: str
    source: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class RebuildFailed(Exception):
    def __init__(self, phase: str, reason: str, *, lease_lost: bool = False) -> None:
        super().__init__(f"{phase}: {reason}")
        self.phase, self.reason, self.lease_lost = phase, reason, lease_lost


class NodeControl(Protocol):
    """Stops and starts a node's server when the configured commands are not used."""

    async def stop(self, node: str) -> None: ...

    async def start(self, node: str) -> None: ...


class SandboxNodes(Protocol):
    """What a rebuild uses of ``hacontrol.sandbox.Sandbox`` (not imported: the sandbox is a
    layer above the actions)."""

    def node_pid(self, name: str) -> int | None: ...

    def kill_node(self, name: str, sig: int = ...) -> bool: ...

    async def start_node(self, name: str, *options: str) -> int: ...

    def status(self) -> Any: ...

    def password(self, role: str) -> str: ...


class SandboxControl:
    """The sandbox's nodes: SIGTERM and wait until the process has left /proc (SIGKILL after
    ``grace``), start with ``--read-only=ON`` whatever the node's config says."""

    def __init__(self, sandbox: SandboxNodes, grace: float = 60.0) -> None:
        self.sandbox, self.grace = sandbox, grace

    async def stop(self, node: str) -> None:
        pid = self.sandbox.node_pid(node)
        if pid is None:
            return
        self.sandbox.kill_node(node, signal.SIGTERM)
        self.sandbox.kill_node(node, signal.SIGCONT)  # a frozen node must act on it
        deadline, killed = time.monotonic() + self.grace, False
        # Until it has left /proc: an exiting server may still hold its datadir and socket.
        while _process_exists(pid):
            if time.monotonic() > deadline:
                if killed:
                    raise RuntimeError(f"{node} (pid {pid}) did not exit after SIGKILL")
                self.sandbox.kill_node(node, signal.SIGKILL)
                deadline, killed = time.monotonic() + 10.0, True
            await asyncio.sleep(0.02)

    async def start(self, node: str) -> None:
        await self.sandbox.start_node(node, "--read-only=ON")


def sandbox_commands(sandbox: SandboxNodes) -> tuple[RebuildCommands, dict[str, str]]:
    """Local commands for the sandbox's nodes (the default the tests use), and the
    environment the backup needs (root's password: never in argv, never logged)."""
    info = sandbox.status()
    base = str(Path(info.nodes[0].node_dir).parent)
    commands = RebuildCommands(
        datadirs={n.name: n.datadir for n in info.nodes},
        backup_options=(
            f"--defaults-file={base}/{{source}}/my.cnf",
            "--user=root",
            f"--socket={base}/{{source}}/mysqld.sock",
        ),
    )
    return commands, {"MYSQL_PWD": sandbox.password("root")}


class Rebuilder:
    """Runs one rebuild at a time; see the module doc for the steps."""

    def __init__(
        self,
        settings: Settings,
        commands: RebuildCommands,
        *,
        control: NodeControl | None = None,
        env: Mapping[str, str] | None = None,
        timeouts: RebuildTimeouts = RebuildTimeouts(),
        progress_every: float = 1.0,
        keep_old: bool = False,
        password_file: Path | None = None,
        lease_until: LeaseUntil = _forever,
    ) -> None:
        self.settings, self.commands, self.control = settings, commands, control
        self.env, self.timeouts = dict(env or {}), timeouts
        self.progress_every, self.keep_old = progress_every, keep_old
        self.password_file = password_file
        """Read into MYSQL_PWD for the backup when a rebuild starts."""
        self.lease_until = lease_until
        """Fleet: the statement guard of the target's replication statements (``MySQLActions``)."""
        mysql = settings.mysql
        self._user = mysql.user
        self._password = mysql.password.get_secret_value() if mysql.password else ""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        control: NodeControl | None = None,
        lease_until: LeaseUntil = _forever,
    ) -> Rebuilder:
        """The ``[rebuild]`` section as a Rebuilder (the backup's password file read now)."""
        r = settings.rebuild
        commands = RebuildCommands(
            source_exec=r.source_exec,
            target_exec=r.target_exec,
            stop_target=r.stop_target,
            start_target=r.start_target,
            backup_options=r.backup_options,
            prepare_options=r.prepare_options,
            mariadb_backup=r.mariadb_backup,
            mbstream=r.mbstream,
            datadir=r.datadir,
            datadirs=dict(r.datadirs),
            datadir_owner=r.datadir_owner,
        )
        timeouts = RebuildTimeouts(
            command=r.command_timeout,
            copy=r.copy_timeout,
            stall=r.stall_timeout,
            prepare=r.prepare_timeout,
            stop=r.stop_timeout,
            start=r.start_timeout,
            attach=r.attach_timeout,
            catch_up=r.catch_up_timeout,
        )
        return cls(
            settings, commands, control=control, timeouts=timeouts,
            progress_every=r.progress_every, password_file=r.backup_password_file,
            lease_until=lease_until,
        )  # fmt: skip

    def actions(self, heartbeat: float | None = None) -> MySQLActions:
        """Node actions whose changing statements check the lease as they are sent."""
        extra = {} if heartbeat is None else {"default_heartbeat": heartbeat}
        return MySQLActions(self.settings, lease_until=self.lease_until, **extra)

    def endpoint(self, node: str) -> Endpoint:
        conf = self.settings.node(node)
        return Endpoint(node, conf.host, conf.port)

    def login(self, node: str) -> SqlEndpoint:
        """The controller user's login on a node."""
        end = self.endpoint(node)
        return endpoint_for(end.host, end.port, self._user, self._password, self.settings.mysql.tls)

    async def rebuild(
        self,
        target: str,
        source: str,
        primary: str,
        on_progress: OnProgress | None = None,
        guard: Guard | None = None,
    ) -> RebuildResult:
        """Never raises (except cancellation): the result says what happened and where the
        target was left. ``guard``: asked before every change to the target (module doc)."""
        job = _Job(self, target, source, primary, on_progress or (lambda _: None))
        job.guard = guard or (lambda: None)
        try:
            job.steps = rebuild_steps(self.commands, self.endpoint(target), self.endpoint(source))
        except (ValueError, KeyError) as exc:
            return await job.failed(RebuildFailed("check", f"invalid setting: {exc}"))
        if self.control is None and not (job.steps.stop_target and job.steps.start_target):
            return await job.failed(
                RebuildFailed("check", "no stop_target / start_target command configured")
            )
        if self.password_file is not None:
            secret, problem = read_secret(Path(self.password_file))
            if problem is not None:
                reason = f"invalid setting: rebuild.backup_password_file: {problem}"
                return await job.failed(RebuildFailed("check", reason))
            self.env["MYSQL_PWD"] = secret
        try:
            await job.run()
        except RebuildFailed as exc:
            return await job.failed(exc)
        except Exception as exc:  # a malformed answer, a bug: undone like any failure
            return await job.failed(RebuildFailed(job.phase, describe_error(exc)))
        except asyncio.CancelledError:
            # Stopped from outside (a preemption, a shutdown): undo what was done, then let
            # the cancel go on.
            await to_its_end(job.failed(RebuildFailed(job.phase, "cancelled")))
            raise
        return job.result()


async def to_its_end(undo: Coroutine[Any, Any, object]) -> None:
    """Run ``undo`` to its end whatever cancels the caller meanwhile: a preemption's cancel,
    then a stop's (a crash of the cluster while the undo runs). A second cancel must not let
    the caller end while the undo still changes the node: the plan task is what a stop waits
    for before a fresh controller of the cluster may start. Only the undo's own cancel (the
    event loop closing) ends it early."""
    task = asyncio.ensure_future(undo)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


class _Job:
    """One rebuild's state: where it is, what it did, what to undo."""

    def __init__(
        self, owner: Rebuilder, target: str, source: str, primary: str, emit: OnProgress
    ) -> None:
        self.owner, self.target, self.source, self.primary = owner, target, source, primary
        self.emit = emit
        self.steps: RebuildSteps | None = None
        self.started = time.monotonic()
        self.detail: dict[str, Any] = {"phases": {}, "commands": [], "notes": []}
        self.phase = "check"
        self._phase_at = self.started
        self.guard: Guard = lambda: None
        self.stopped = False
        """The target was stopped: from then on a lost lease leaves it as it is."""

    # -- the steps ---------------------------------------------------------------------------

    async def run(self) -> None:
        source_status = await self.check()
        await self.copy()
        await self.prepare()
        self.fence()  # the first change to the target
        self.enter("stop")
        self.stopped = True
        await self.stop_target()
        self.enter("swap")
        self.fence()
        await self.command(self.steps.swap, "swap")
        self.enter("start")
        self.fence()
        await self.start_target()
        await self.replicate(source_status)
        self.enter("cleanup")
        if self.owner.keep_old:
            self.detail["old_datadir"] = self.steps.paths.old
        else:
            await self.best_effort(self.steps.discard_old, "remove the old datadir")
        self.enter("done")

    async def check(self) -> NodeStatus:
        steps, t = self.steps, self.owner.timeouts
        self.enter("check")
        free = await self.command(steps.preflight, "check the target")
        self.detail["target_free"] = parse_size(free.stdout, "free space on the target") * 1024
        size = await self.command(steps.size, "size the source")
        self.detail["estimate"] = parse_size(size.stdout, "size of the source's datadir")
        if self.detail["target_free"] < self.detail["estimate"]:
            raise RebuildFailed(
                "check",
                f"{self.target} has {self.detail['target_free']} bytes free next to its datadir, "
                f"the copy needs about {self.detail['estimate']}",
            )
        actions = self.owner.actions()
        try:
            status = await actions.status(self.source, timeout=t.command)
        except ActionError as exc:
            raise RebuildFailed("check", f"cannot read {self.source}: {exc.reason}") from None
        if status.gtid_binlog_state is None:
            raise RebuildFailed("check", f"{self.source} did not report its gtid_binlog_state")
        return status

    async def copy(self) -> None:
        t = self.owner.timeouts
        self.enter("copy")
        self.record(self.steps.backup, f"backup on {self.source}")
        self.record(self.steps.receive, f"receive on {self.target}")
        stream = Stream(self.steps.backup, self.steps.receive, self.owner.env)
        try:
            stream.start()
        except ProcessError as exc:
            raise RebuildFailed("copy", str(exc)) from None
        try:
            await self._follow(stream)
            done = await stream.finish(t.command)
        except BaseException:
            await stream.abort()
            raise
        self.detail.update(copied=done.copied, files=stream.log.files)
        # The first side that broke is the cause: a receiver that stopped reading kills the
        # backup; a backup that died truncates the stream the receiver reads.
        receiver = f"mbstream on {self.target} failed (exit {done.receive_code}): " + (
            done.receive_tail or stream.pipe_error or "no output"
        )
        if stream.pipe_error:
            raise RebuildFailed("copy", receiver)
        if done.backup_code != 0 or not stream.log.completed:
            raise RebuildFailed(
                "copy",
                f"mariadb-backup on {self.source} failed (exit {done.backup_code}): "
                + stream.log.failure(),
            )
        if done.receive_code != 0:
            raise RebuildFailed("copy", receiver)
        try:
            self.detail["position"] = stream.log.position()
        except ValueError as exc:
            raise RebuildFailed("copy", str(exc)) from None

    async def _follow(self, stream: Stream) -> None:
        t, began = self.owner.timeouts, time.monotonic()
        next_report = began
        while not stream.pumped:
            self.fence()  # a follower never goes on copying: a new leader may rebuild
            now = time.monotonic()
            if now - stream.last_data > t.stall:
                raise RebuildFailed("copy", f"no data for {t.stall:g} s: stalled")
            if now - began > t.copy:
                raise RebuildFailed("copy", f"not done after {t.copy:g} s")
            if now >= next_report:
                self.emit(self._copy_progress(stream, now - began))
                next_report = now + self.owner.progress_every
            await asyncio.sleep(0.1)
        self.emit(self._copy_progress(stream, time.monotonic() - began))

    def _copy_progress(self, stream: Stream, elapsed: float) -> Progress:
        return copy_progress(
            stream.copied,
            self.detail.get("estimate"),
            elapsed,
            stream.log.files,
            stream.log.current_file,
        )

    async def prepare(self) -> None:
        self.enter("prepare")
        finished = await self.command(
            self.steps.prepare, "prepare", self.owner.timeouts.prepare, check=False
        )
        log = BackupLog()
        for line in finished.stderr.splitlines():
            log.feed(line)
        if finished.returncode != 0 or not log.completed:
            raise RebuildFailed("prepare", f"exit {finished.returncode}: {log.failure()}")

    async def stop_target(self) -> None:
        """Stop it, then wait until nothing answers on its port (bounded)."""
        t = self.owner.timeouts
        await self.control_node("stop", t.stop)
        end = self.owner.endpoint(self.target)
        deadline = time.monotonic() + t.stop
        while await asyncio.to_thread(_answers, end.host, end.port):
            if time.monotonic() > deadline:
                raise RebuildFailed("stop", f"{end.host}:{end.port} still answers after the stop")
            await asyncio.sleep(0.2)

    async def start_target(self) -> None:
        await self.control_node("start", self.owner.timeouts.start)

    async def control_node(self, verb: str, timeout: float) -> None:
        """Stop or start the target: the configured command, or the injected control."""
        control = self.owner.control
        if control is None:
            command = self.steps.stop_target if verb == "stop" else self.steps.start_target
            assert command is not None
            await self.command(command, f"{verb} the target", timeout)
            return
        try:
            async with asyncio.timeout(timeout):
                await getattr(control, verb)(self.target)
        except TimeoutError:
            raise RebuildFailed(
                verb, f"cannot {verb} {self.target}: timed out after {timeout:g} s"
            ) from None
        except Exception as exc:
            raise RebuildFailed(verb, f"cannot {verb} {self.target}: {exc}") from None

    async def target_status(self, timeout: float) -> NodeStatus:
        """The target's status, retried until it answers SQL (it may still be starting)."""
        actions = self.owner.actions()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await actions.status(self.target, timeout=5.0)
            except ActionError as exc:
                if time.monotonic() > deadline:
                    reason = f"{self.target} does not answer: {exc.reason}"
                    raise RebuildFailed(self.phase, reason) from None
            await asyncio.sleep(0.2)

    async def replicate(self, source: NodeStatus) -> None:
        t, position = self.owner.timeouts, self.detail["position"]
        self.enter("replicate")
        channel = source.replication[0] if source.replication else None
        heartbeat = channel.heartbeat_period if channel and channel.heartbeat_period else 1.0
        actions = self.owner.actions(heartbeat)
        status = await self.target_status(t.start)
        if not status.read_only:
            self.note(
                f"{self.target} started writable: made read-only at once "
                "(set read_only=ON in its configuration)"
            )
            self.fence()
            await self.action(actions.set_writable(self.target, False, timeout=t.attach))
        if status.replication:
            raise RebuildFailed("replicate", "the copy came up with replication configured")
        if status.gtid_binlog_state:  # a copy has no binlog: these are the old datadir's
            raise RebuildFailed(
                "replicate",
                f"the copy came up with the binlog state {status.gtid_binlog_state}: its binary "
                "log is not the copy's (log_bin outside the datadir?)",
            )
        statements = []
        if source.gtid_binlog_state:
            seed = seed_state(source.gtid_binlog_state, position)
            statements.append(("SET GLOBAL gtid_binlog_state = %s", seed))
            self.detail["gtid_binlog_state"] = seed
        statements.append(("SET GLOBAL gtid_slave_pos = %s", position))
        await self.sql(statements, t.attach)
        primary = self.owner.endpoint(self.primary)
        self.fence()
        await self.action(actions.repoint(self.target, primary.host, primary.port, t.attach))
        self.enter("catch-up")
        self.fence()
        await self.action(
            actions.catch_up(self.target, primary.host, primary.port, timeout=t.catch_up)
        )
        await self.verify(actions)

    async def verify(self, actions: MySQLActions) -> None:
        """No GTID of the rebuilt node may be missing on the primary; it must be read-only."""
        t = self.owner.timeouts
        try:
            mine = await actions.status(self.target, timeout=t.command)
            theirs = await actions.status(self.primary, timeout=t.command)
        except ActionError as exc:
            raise RebuildFailed("verify", exc.reason) from None
        mine_state, theirs_state = binlog_state_of(mine), binlog_state_of(theirs)
        if mine_state is None or theirs_state is None:
            raise RebuildFailed("verify", "binlog states not read: cannot check for errant GTIDs")
        errant = gtid.errant_by_state(mine_state, theirs_state)
        if errant or not mine.read_only:
            raise RebuildFailed(
                "verify",
                f"after the rebuild: errant {errant or 'none'}, read_only {mine.read_only}",
            )
        self.detail["gtid_executed"] = mine.gtid_executed

    # -- plumbing ----------------------------------------------------------------------------

    def fence(self) -> None:
        """Stop here unless this instance may still change the target (a fleet's lease)."""
        if problem := self.guard():
            raise RebuildFailed(self.phase, problem, lease_lost=True)

    async def action(self, pending) -> None:
        result = await pending
        self.detail["commands"].extend(result.detail.get("steps", []))
        if not result.ok:
            raise RebuildFailed(
                self.phase,
                f"{result.action} {self.target}: {result.reason}",
                lease_lost=bool(result.detail.get(LEASE_LOST)),
            )

    async def sql(self, statements: list[tuple[str, str]], timeout: float) -> None:
        try:
            conn = await connect(self.owner.login(self.target), timeout)
            try:
                for text, value in statements:
                    self.fence()
                    self.detail["commands"].append(text.replace("%s", repr(value)))
                    await execute(conn, text, (value,), timeout=timeout)
            finally:
                conn.close()
        except RebuildFailed:
            raise
        except Exception as exc:
            raise RebuildFailed(self.phase, describe_error(exc)) from None

    async def command(
        self, cmd: Command, what: str, timeout: float | None = None, *, check: bool = True
    ):
        self.record(cmd, what)
        try:
            finished = await run(cmd, timeout or self.owner.timeouts.command, self.owner.env)
        except ProcessError as exc:
            raise RebuildFailed(self.phase, f"{what}: {exc}") from None
        if check and finished.returncode != 0:
            kind = "refused" if finished.returncode == EXIT_REFUSED else "failed"
            raise RebuildFailed(
                self.phase, f"{what} {kind} (exit {finished.returncode}): {finished.tail()}"
            )
        return finished

    async def best_effort(self, cmd: Command, what: str) -> bool:
        try:
            await self.command(cmd, what)
        except RebuildFailed as exc:
            self.note(f"could not {what}: {exc.reason}")
            return False
        return True

    def record(self, cmd: Command, what: str = "") -> None:
        """The command for the result (argv and a label: never the environment)."""
        label = f"{what}: " if what else ""
        self.detail["commands"].append(label + str(cmd) + (" <<script" if cmd.stdin else ""))

    def note(self, text: str) -> None:
        self.detail["notes"].append(text)

    def enter(self, phase: str) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.detail["phases"][self.phase] = round(now - self._phase_at, 3)
        self.phase, self._phase_at = phase, now
        self.emit(Progress(phase, message=f"{self.target} from {self.source}"))

    # -- outcomes ----------------------------------------------------------------------------

    def result(self) -> RebuildResult:
        self.detail["seconds"] = round(time.monotonic() - self.started, 3)
        return RebuildResult(
            True,
            self.target,
            self.source,
            f"{self.target} rebuilt from {self.source} at {self.detail['position']}: "
            f"replicates from {self.primary} and caught up",
            self.detail,
        )

    async def failed(self, exc: RebuildFailed) -> RebuildResult:
        self.detail.update(
            failed_phase=exc.phase, seconds=round(time.monotonic() - self.started, 3)
        )
        if exc.lease_lost:
            self.detail[LEASE_LOST] = True
        where = await (self.left(exc.phase) if exc.lease_lost else self.undo(exc.phase))
        self.emit(Progress("failed", message=f"{exc.phase}: {exc.reason}; {where}"))
        reason = f"rebuild of {self.target} failed at {exc.phase}: {exc.reason}; {where}"
        return RebuildResult(False, self.target, self.source, reason, self.detail)

    async def left(self, phase: str) -> str:
        """Cut by a lost lease: undone only while the target was never stopped (the staging
        directory is this rebuild's own); past that nothing more is done to the target."""
        if not self.stopped:
            return await self.undo(phase)
        paths = self.steps.paths if self.steps else None
        old = f"; its old datadir is at {paths.old}" if paths else ""
        return (
            f"NOT undone (this instance no longer leads): {self.target} left as it was during "
            f"{phase}, out of service and quarantined{old}; the next leader decides from the live "
            "topology (docs/rebuild.md)"
        )

    async def undo(self, phase: str) -> str:
        """Put things back as far as they can be; say where the target was left."""
        steps = self.steps
        if steps is None or (phase == "check" and "target_free" not in self.detail):
            return "nothing was changed"
        if phase in ("cleanup", "done"):
            return f"{self.target} was rebuilt; only the removal of the old datadir was cut short"
        if phase in ("check", "copy", "prepare"):
            await self.best_effort(steps.discard_staging, "remove the staging directory")
            return f"{self.target} and {self.source} untouched"
        if phase == "stop":
            await self.best_effort(steps.discard_staging, "remove the staging directory")
            return f"{self.target} may be stopped; its datadir untouched"
        try:
            await self.stop_target()
        except RebuildFailed as stop_failed:
            self.note(f"could not stop {self.target}: {stop_failed.reason}")
            return (
                f"{self.target} could not be stopped: its datadir is the new copy, the old one "
                f"is at {steps.paths.old}; stop it, then restore by hand (docs/rebuild.md)"
            )
        if await self.best_effort(steps.restore, "restore the old datadir"):
            return f"{self.target} stopped, its old datadir back in place"
        return (
            f"{self.target} stopped; RESTORE FAILED: {steps.paths.datadir} may be the new copy "
            f"and {steps.paths.old} the old datadir (docs/rebuild.md, restore by hand)"
        )


def _process_exists(pid: int) -> bool:
    """Reaps it first when it is our child. A zombie that is not ours (its parent has not
    reaped it yet) has exited: it holds no file, socket or lock any more."""
    with contextlib.suppress(OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _answers(host: str, port: int) -> bool:
    """Something accepts TCP connections on host:port (a refused or timed-out connect: no)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
