"""One way for tests to get a ProxySQL admin port: a real `proxysql` when one is on PATH,
otherwise the double. Both sit behind the small `ProxySQLAdmin` interface.

The real path cannot run on the machine this was written on (ProxySQL is not installable
there); it is written from ProxySQL's documented command line: `-f` (foreground), `-c FILE`
(config file), `-D DIR` (datadir) and `--initial` (rebuild the config from the file, ignoring
proxysql.db). Without `--initial` a restarted proxysql keeps what was saved to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiomysql

from tests.proxysql_double.schema import ReplicationHostgroupRow, ServerRow
from tests.proxysql_double.server import ProxySQLAdminDouble
from tests.support import free_port


class ProxySQLAdmin(Protocol):
    """What tests need from a ProxySQL admin endpoint, real or double."""

    host: str
    port: int
    user: str
    password: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def proxysql_config(
    *,
    datadir: Path,
    host: str,
    admin_port: int,
    mysql_port: int,
    user: str,
    password: str,
    servers: Sequence[ServerRow],
    replication_hostgroups: Sequence[ReplicationHostgroupRow],
) -> str:
    """A minimal proxysql.cnf (libconfig syntax, key names as in ProxySQL's sample config)."""
    server_entries = ",\n".join(
        f'  {{ address="{s.hostname}", port={s.port}, hostgroup={s.hostgroup_id}, '
        f'status="{s.status}", weight={s.weight}, max_connections={s.max_connections}, '
        f'max_replication_lag={s.max_replication_lag}, comment="{s.comment}" }}'
        for s in servers
    )
    rhg_entries = ",\n".join(
        f"  {{ writer_hostgroup={r.writer_hostgroup}, reader_hostgroup={r.reader_hostgroup}, "
        f'check_type="{r.check_type}", comment="{r.comment}" }}'
        for r in replication_hostgroups
    )
    return (
        f'datadir="{datadir}"\n'
        "admin_variables=\n{\n"
        f'  admin_credentials="{user}:{password}"\n'
        f'  mysql_ifaces="{host}:{admin_port}"\n'
        "}\n"
        "mysql_variables=\n{\n"
        f'  interfaces="{host}:{mysql_port}"\n'
        '  monitor_username="monitor"\n'
        '  monitor_password="monitor"\n'
        "}\n"
        f"mysql_servers=\n(\n{server_entries}\n)\n"
        f"mysql_replication_hostgroups=\n(\n{rhg_entries}\n)\n"
    )


class RealProxySQL:
    """A real proxysql process. start(): first time with --initial, later without (disk wins).
    stop(): SIGKILL, like the double's stop(): nothing that was not SAVEd TO DISK survives."""

    def __init__(
        self,
        *,
        datadir: Path,
        binary: str,
        host: str = "127.0.0.1",
        user: str = "admin",
        password: str = "admin",
        seed_servers: Sequence[ServerRow] = (),
        seed_replication_hostgroups: Sequence[ReplicationHostgroupRow] = (),
    ) -> None:
        self.datadir = Path(datadir)
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.user = user
        self.password = password
        self._config = self.datadir / "proxysql.cnf"
        self._seed_servers = tuple(seed_servers)
        self._seed_rhg = tuple(seed_replication_hostgroups)
        self._process: asyncio.subprocess.Process | None = None
        self._started_once = False

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("proxysql is already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._config.write_text(
            proxysql_config(
                datadir=self.datadir,
                host=self.host,
                admin_port=self.port,
                mysql_port=free_port(self.host),
                user=self.user,
                password=self.password,
                servers=self._seed_servers,
                replication_hostgroups=self._seed_rhg,
            )
        )
        argv = [self.binary, "-f", "-c", str(self._config), "-D", str(self.datadir)]
        if not self._started_once:
            argv.append("--initial")
        with (self.datadir / "proxysql.stdout").open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        self._started_once = True
        await self._wait_ready(timeout=30.0)

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.returncode is not None:
                raise RuntimeError(f"proxysql exited with {self._process.returncode}")
            try:
                conn = await aiomysql.connect(
                    host=self.host, port=self.port, user=self.user, password=self.password
                )
                conn.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)


async def start_proxysql_admin(
    datadir: Path,
    *,
    seed_servers: Sequence[ServerRow] = (),
    seed_replication_hostgroups: Sequence[ReplicationHostgroupRow] = (),
    use_real: bool | None = None,
) -> ProxySQLAdmin:
    """A started ProxySQL admin endpoint: real proxysql if on PATH (or use_real=True), else the
    double. The caller stops it (`await admin.stop()`)."""
    binary = shutil.which("proxysql")
    if use_real is None:
        use_real = binary is not None
    admin: ProxySQLAdmin
    if use_real:
        if binary is None:
            raise RuntimeError("use_real=True but no proxysql binary on PATH")
        admin = RealProxySQL(
            datadir=datadir,
            binary=binary,
            seed_servers=seed_servers,
            seed_replication_hostgroups=seed_replication_hostgroups,
        )
    else:
        admin = ProxySQLAdminDouble(
            datadir=datadir,
            seed_servers=seed_servers,
            seed_replication_hostgroups=seed_replication_hostgroups,
        )
    await admin.start()
    return admin
