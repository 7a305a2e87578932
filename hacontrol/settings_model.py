"""The settings' model: every section, its types and limits, and the secrets table.

Loading (sources, secrets, the two forms) is in ``hacontrol.settings``; the cross-field rules
are in ``hacontrol.settings_rules``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# Limits that keep valid-looking values from misbehaving at run time (docs/hardening.md).
MAX_NODES = 64
"""Every node costs two connections and a probe per interval, and a failover repoints every
replica; a fan-out past this belongs behind intermediate sources, which are not managed here."""
MIN_SECONDS = 0.01
MIN_INTERVAL = 0.05
"""A probe interval of 1e-299 s is a busy loop: 50 ms is the floor."""
MAX_SECONDS = 86400.0
MAX_BLOCK = 30 * 86400.0
MIN_PASSWORD = 8
MIN_TOKEN = 16
"""A bearer token travels in every POST and guards failover commands: at least 16 visible
ASCII characters (``python3 -c 'import secrets; print(secrets.token_urlsafe(24))'``)."""
MAX_SECRET_FILE = 64 * 1024
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _plain_number(value: Any) -> Any:
    # pydantic reads `true` as 1 for a number; a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("a boolean (true/false) is not a number")
    if isinstance(value, float | str):  # TOML's inf/nan, or "inf" from the environment
        try:
            finite = math.isfinite(float(value))
        except (ValueError, OverflowError):
            return value  # not a number at all: pydantic says so
        if not finite:
            raise ValueError("must be a finite number")
    return value


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_host(value: str) -> str:
    """An IP address or a DNS name (letters, digits, ``-``, ``_``, dots); nothing else."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        raise ValueError("not a host name or IP address")
    return value


def address_key(host: str, port: int) -> tuple[str, int]:
    """One spelling per address: IP literals in their canonical form (an IPv4-mapped IPv6
    address as the IPv4 one), names without case or trailing dot. Names are not resolved."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return (host.lower().rstrip("."), port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), port)


Number = BeforeValidator(_plain_number)
Port = Annotated[int, Number, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[
    float, Number, Field(ge=MIN_SECONDS, le=MAX_SECONDS, allow_inf_nan=False)
]
Hostgroup = Annotated[int, Number, Field(ge=0, le=2**31 - 1)]
NodeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Host = Annotated[str, Field(min_length=1)]
"""Checked by ``check`` (``check_host``) at load, so that a hostile value can still be built
directly to test the quoting of everything that embeds a host."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # A NUL byte cannot be in a path, a host, a command line or a password that a server
        # would accept: refuse it here, before it reaches open(), connect() or exec().
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL byte")
        return value


CLUSTER_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class ClusterSettings(_Section):
    name: Annotated[str, Field(pattern=CLUSTER_NAME)] = "main"


class NodeSettings(_Section):
    name: NodeName
    host: Host
    port: Port = 3306
    priority: Annotated[int, Number, Field(ge=-1_000_000, le=1_000_000)] = 0
    """Among equally advanced candidates, the higher priority is promoted first."""
    no_promote: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None and "host" in data:
            return {**data, "name": f"{data['host']}:{data.get('port', 3306)}"}
        return data

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


class TlsSettings(_Section):
    """TLS of the controller's own connections (to the nodes: ``mysql.tls``; to the ProxySQL
    admin: ``router.proxysql.tls``), like the MySQL client's ``--ssl-mode``:

    - ``off``: plain TCP;
    - ``required``: encrypted, the server's certificate not checked (a server that does not
      offer TLS is refused, never a silent fallback to plain text);
    - ``verify_ca``: encrypted, the certificate signed by ``ca``;
    - ``verify_identity``: and issued for the host the connection names (``nodes[].host``).

    ``cert`` and ``key``: a client certificate, for servers that require one (``REQUIRE X509``).
    """

    mode: Literal["off", "required", "verify_ca", "verify_identity"] = "off"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class ReplicationTlsSettings(_Section):
    """The replication channel that promote, repoint and rejoin set up (``CHANGE MASTER TO``
    / ``CHANGE REPLICATION SOURCE TO``). Paths are on the database servers, not here.
    Disabled: no TLS option is sent, and a replica keeps what it was configured with."""

    enabled: bool = False
    """``MASTER_SSL = 1`` (MySQL 8.0.23+: ``SOURCE_SSL = 1``)."""
    ca: str = ""
    cert: str = ""
    key: str = ""
    verify_server_cert: bool = False
    """``MASTER_SSL_VERIFY_SERVER_CERT = 1``: the source's certificate names its host."""
    get_public_key: bool = False
    """MySQL 8 only: ``GET_SOURCE_PUBLIC_KEY = 1``, so that a replication user with
    ``caching_sha2_password`` can authenticate without TLS (RSA key exchange)."""


class MySQLSettings(_Section):
    user: Annotated[str, Field(min_length=1)] = "hacontrol"
    password: SecretStr | None = None
    password_file: Path | None = None
    replication_user: Annotated[str, Field(min_length=1)] = "repl"
    replication_password: SecretStr | None = None
    replication_password_file: Path | None = None
    connect_timeout: PositiveSeconds = 1.0
    tls: TlsSettings = TlsSettings()
    replication_tls: ReplicationTlsSettings = ReplicationTlsSettings()


class ProxySQLSettings(_Section):
    host: Host = "127.0.0.1"
    port: Port = 6032
    user: str = "admin"
    password: SecretStr | None = None
    password_file: Path | None = None
    writer_hostgroup: Hostgroup = 10
    reader_hostgroup: Hostgroup = 20
    broken_hostgroup: Hostgroup = 30
    hidden_hostgroup: Hostgroup = 40
    timeout: PositiveSeconds = 2.0
    tls: TlsSettings = TlsSettings()


class HAProxySettings(_Section):
    socket: str = ""
    """Runtime API: a unix socket path, or ``host:port`` for a TCP admin socket."""
    writer_backend: str = "writer"
    reader_backend: str = "readers"
    timeout: PositiveSeconds = 2.0


class RouterSettings(_Section):
    kind: Literal["proxysql", "haproxy", "none"] = "none"
    primary_is_reader: bool = True
    proxysql: ProxySQLSettings = ProxySQLSettings()
    haproxy: HAProxySettings = HAProxySettings()


class ProbeSettings(_Section):
    interval: Annotated[float, Number, Field(ge=MIN_INTERVAL, le=3600.0, allow_inf_nan=False)] = 1.0
    timeout: PositiveSeconds = 0.8
    failure_threshold: Annotated[int, Number, Field(ge=1, le=100)] = 3


class FailoverSettings(_Section):
    max_lag: PositiveSeconds = 10.0
    """A replica further behind than this (seconds) leaves the readers."""
    recovery_block: Annotated[float, Number, Field(ge=0, le=MAX_BLOCK, allow_inf_nan=False)] = (
        3600.0
    )
    """After a failover, no automatic failover for this many seconds unless acknowledged."""
    apply_timeout: PositiveSeconds = 30.0
    """How long a candidate may take to apply what it received before promotion; past it the
    failover halts (promoting it would lose acknowledged transactions)."""
    action_timeout: PositiveSeconds = 5.0
    """Each action on a node (fence, promote, repoint, rejoin) and each router change."""
    switchover_deadline: PositiveSeconds = 10.0
    """A planned switchover that has not promoted within this many seconds is rolled back
    (the old primary writable and writer again)."""
    max_transaction_age: PositiveSeconds = 5.0
    """Switchover pre-flight: no transaction on the primary may be older than this."""
    drain_timeout: PositiveSeconds = 2.0
    """A switchover first drains the old writer in the router (no new transaction starts
    there) and waits at most this long for what runs there to finish; a transaction still
    running then is ended by the fence (its client gets an error). Part of the switchover
    deadline; through ProxySQL, also part of the time a client's write is held."""
    io_stall: PositiveSeconds = 3.0
    """A replica whose received heartbeats and GTIDs have not advanced for this long (and for
    at least 2.5 heartbeat periods) has lost its link to the source: a frozen or partitioned
    source closes no connection. Replicas whose heartbeat period is unknown are judged by
    their IO thread alone. Set MASTER_HEARTBEAT_PERIOD well below this."""
    wait_unreachable_replica: Annotated[
        float, Number, Field(ge=0, le=3600.0, allow_inf_nan=False)
    ] = 5.0
    """With semi-sync that never falls back: how long a failover waits for a replica of the
    dead primary that does not answer and may hold a write acknowledged by it alone (it went
    away with the primary); past it, no failover: halt and alert (docs/partitions.md)."""


class SMTPSettings(_Section):
    host: str = ""
    """Empty: alerts are logged only, not mailed."""
    port: Port = 25
    tls: Literal["none", "starttls", "tls"] = "none"
    user: str = ""
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str = "hacontrol@localhost"
    recipients: Annotated[tuple[str, ...], Field(max_length=100)] = ()
    timeout: PositiveSeconds = 10.0


class ApiSettings(_Section):
    enabled: bool = True
    host: Host = "127.0.0.1"
    port: Annotated[int, Number, Field(ge=0, le=65535)] = 8008
    """0: any free port (tests)."""
    token: SecretStr | None = None
    token_file: Path | None = None
    """Bearer token required by every mutating endpoint (POST); GETs need none."""
    max_connections: Annotated[int, Number, Field(ge=4, le=10000)] = 256
    """Open API connections at most; past it the longest-idle one is closed for a new one."""
    idle_timeout: Annotated[float, Number, Field(ge=0.5, le=3600.0, allow_inf_nan=False)] = 10.0
    """A connection must send a whole request within this many seconds of opening or of its
    previous answer (slow or idle clients are closed)."""
    rate_limit: Annotated[float, Number, Field(ge=0.1, le=100000.0, allow_inf_nan=False)] = 20.0
    """Requests per second each client address may make without a valid token (every GET, and
    POSTs with a missing or wrong token); past it: 429. ``/health`` has a budget of its own."""
    rate_burst: Annotated[int, Number, Field(ge=1, le=100000)] = 40
    tls_cert: Path | None = None
    """Serve HTTPS with this certificate (PEM, with its chain) and ``tls_key``."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """What the operator commands trust for the API's certificate (default: the system's)."""
    socket: Path | None = None
    """Serve on this unix socket (mode 0600) instead of ``host:port``."""


class HookSettings(_Section):
    """Commands run at each phase, with the context in HACONTROL_* environment variables.

    A command line is split like a shell would (shlex) but run without a shell. Empty: none.
    A non-zero exit of ``pre_failover`` aborts the failover (with an alert).
    """

    on_failure_detected: str = ""
    pre_failover: str = ""
    post_failover: str = ""
    post_switchover: str = ""
    on_halt: str = ""
    timeout: PositiveSeconds = 10.0


InstanceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


def _host_name() -> str:
    """The default instance id: this host's name (a pod's name in Kubernetes)."""
    name = os.uname().nodename.split(".")[0]
    return name if re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name) else "hacontrol"


class ControllerSettings(_Section):
    journal: Path = Path("state/journal.jsonl")
    """Intent journal (fsynced JSON lines); a relative path is taken from the settings file's
    folder. It must be on persistent storage: it carries unfinished failovers and the
    recovery block across restarts."""
    instance_id: InstanceId = Field(default_factory=_host_name)
    """This instance's name among the instances of a fleet (logs, status, metrics)."""
    fleet: bool = True
    """Several instances may watch this cluster: only the one holding the lease on a majority
    of the nodes (``lease``) changes a database node; every one routes its own router to the
    primary that leader publishes. False: this instance is alone and takes no lock."""


class LeaseSettings(_Section):
    """The fleet's lease on the database nodes themselves (docs/fleet.md)."""

    wait_timeout: Annotated[int, Number, Field(ge=1, le=3600)] = 2
    """W: ``SET SESSION wait_timeout`` of every lease session, whole seconds (MariaDB's unit):
    a frozen or cut-off leader's locks are freed by the server this long after its last
    keepalive."""
    keepalive: PositiveSeconds = 0.5
    """K: one round trip on every lease session this often; it also reads who holds the
    locks, which is what followers route from."""
    validity: PositiveSeconds = 1.5
    """V: a lock counts as held until V after the keepalive that last confirmed it was sent;
    smaller than W, so that the belief ends before the server can free the lock. A new
    leader waits V before its first change."""
    margin: PositiveSeconds = 0.3
    """A statement that changes a node is sent only while the majority stays valid this much
    longer (the time it needs to reach the node and run)."""
    backoff: PositiveSeconds = 1.0
    """At most this long (random) before an instance that held locks on too few nodes tries
    again, so that instances starting together do not deadlock."""


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """info: state changes, problems, decisions that change something, alerts and the periodic
    summary; debug: every event too, each probe result included (one line per node per
    interval). ``hacontrol run --log-level`` overrides it."""
    summary_every: Annotated[float, Field(ge=0)] = 600.0
    """Seconds between two ``cluster_summary`` lines (info): the cluster's state in one line,
    and the probes since the last one; the first one between half a period and a period after
    start, at a point drawn from the cluster's name (the clusters of one process spread theirs).
    0: never."""


Argv = Annotated[tuple[str, ...], Field(max_length=64)]


class RebuildSettings(_Section):
    """``hacontrol rebuild`` (docs/rebuild.md): how the controller reaches the database hosts
    to copy a replica's datadir with mariadb-backup, and stops and starts a node. Commands are
    argv lists with ``{target}``, ``{target_host}``, ``{source_datadir}`` ... placeholders."""

    source_exec: Argv = ()
    """Prefix that runs a command on the source host (``["ssh", "{source_host}", "sudo"]``);
    empty: locally."""
    target_exec: Argv = ()
    stop_target: Argv = ()
    """Stops the target's server; with ``start_target``, both or neither (none: no rebuild)."""
    start_target: Argv = ()
    backup_options: Argv = ()
    """Right after ``mariadb-backup`` on the source: how it logs in
    (``--defaults-extra-file=/etc/mysql/backup.cnf``)."""
    backup_password_file: Path | None = None
    """A file whose content is given to mariadb-backup as MYSQL_PWD (a local source only);
    read when a rebuild starts (one that cannot read it fails at once, naming this key: the
    controller itself must start without it), never logged."""
    prepare_options: Argv = ()
    mariadb_backup: str = "mariadb-backup"
    mbstream: str = "mbstream"
    datadir: str = "/var/lib/mysql"
    datadirs: dict[NodeName, str] = {}
    """Per node, overrides ``datadir``."""
    datadir_owner: str = ""
    """``chown -R`` of the copy (``mysql:mysql``); empty: the old datadir's owner."""
    command_timeout: PositiveSeconds = 60.0
    copy_timeout: PositiveSeconds = 86400.0
    stall_timeout: PositiveSeconds = 600.0
    """The copy fails when no byte arrived for this long."""
    prepare_timeout: PositiveSeconds = 3600.0
    stop_timeout: PositiveSeconds = 300.0
    start_timeout: PositiveSeconds = 600.0
    attach_timeout: PositiveSeconds = 60.0
    catch_up_timeout: PositiveSeconds = 600.0
    progress_every: PositiveSeconds = 1.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HACONTROL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    cluster: ClusterSettings = ClusterSettings()
    nodes: Annotated[tuple[NodeSettings, ...], Field(max_length=MAX_NODES)] = ()
    mysql: MySQLSettings = MySQLSettings()
    router: RouterSettings = RouterSettings()
    probes: ProbeSettings = ProbeSettings()
    failover: FailoverSettings = FailoverSettings()
    smtp: SMTPSettings = SMTPSettings()
    controller: ControllerSettings = ControllerSettings()
    lease: LeaseSettings = LeaseSettings()
    api: ApiSettings = ApiSettings()
    hooks: HookSettings = HookSettings()
    log: LogSettings = LogSettings()
    rebuild: RebuildSettings = RebuildSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: the environment overrides the file (passed as init kwargs).
        if _WITHOUT_ENVIRONMENT.get():
            return (init_settings,)
        return (env_settings, init_settings)

    def node(self, name: str) -> NodeSettings:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


_WITHOUT_ENVIRONMENT: ContextVar[bool] = ContextVar("without_environment", default=False)


def settings_without_environment(data: dict[str, Any]) -> Settings:
    """``Settings(**data)`` with no ``HACONTROL_*`` variable applied: for a document the
    environment was already merged into (each ``[[clusters]]`` entry over the top level)."""
    token = _WITHOUT_ENVIRONMENT.set(True)
    try:
        return Settings(**data)
    finally:
        _WITHOUT_ENVIRONMENT.reset(token)


# Every secret: (section path, secret field, file field). One table, used by load and by tests.
SECRETS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("mysql",), "password", "password_file"),
    (("mysql",), "replication_password", "replication_password_file"),
    (("router", "proxysql"), "password", "password_file"),
    (("smtp",), "password", "password_file"),
    (("api",), "token", "token_file"),
)


class SettingsError(Exception):
    """Invalid settings; ``problems`` are ``key: reason`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def section_at(settings: Settings, path: tuple[str, ...]) -> BaseModel:
    obj: BaseModel = settings
    for name in path:
        obj = getattr(obj, name)
    return obj


def replace_at(model: BaseModel, path: tuple[str, ...], update: dict[str, Any]) -> Any:
    if not path:
        return model.model_copy(update=update)
    child = getattr(model, path[0])
    return model.model_copy(update={path[0]: replace_at(child, path[1:], update)})
