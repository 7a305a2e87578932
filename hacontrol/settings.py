"""Settings: typed, grouped by concern, validated across fields at load.

Sources, lowest priority first: the TOML file (``--config``, else ``HACONTROL_CONFIG``, else
``./settings.toml``), then ``HACONTROL_*`` environment variables, nested with ``__``
(``HACONTROL_PROBES__INTERVAL=0.5``, ``HACONTROL_MYSQL__PASSWORD=...``). Every secret can come
inline, from the environment, or from a file named by its ``*_file`` key (the usual way with
container secrets); the file's content, stripped of the trailing newline, is the secret.

``load_settings`` returns the settings with every secret resolved, or raises ``SettingsError``
whose ``problems`` each name the key and the reason. Nothing is half-loaded.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from hacontrol.rebuild_commands import PLACEHOLDERS, check_datadir, render
from hacontrol.tlsconf import TlsConfigError, client_context, server_context

DEFAULT_CONFIG = Path("settings.toml")
CONFIG_ENV = "HACONTROL_CONFIG"

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


class ClusterSettings(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "main"


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
    and the probes since the last one. 0: never."""


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
        return (env_settings, init_settings)

    def node(self, name: str) -> NodeSettings:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


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


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    path: Path
    warnings: tuple[str, ...]


def config_path(explicit: str | Path | None, env: Mapping[str, str] = os.environ) -> Path:
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG


def load_settings(explicit: str | Path | None = None) -> Loaded:
    """Read, validate and resolve secrets. Raises SettingsError naming every bad key."""
    path = config_path(explicit)
    return settings_from(_read_toml(path), path)


def settings_from(data: Mapping[str, Any], path: Path) -> Loaded:
    """Validate ``data`` (the TOML document; the environment overrides it) as the settings of
    the file ``path``. Raises SettingsError naming every bad key, never anything else."""
    unknown = [k for k in data if k not in Settings.model_fields]
    if unknown:  # before Settings(**data): a key like `_secrets_dir` would configure pydantic
        raise SettingsError([f"{_dotted((k,))}: unknown key" for k in unknown])
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise SettingsError([_describe(err) for err in exc.errors()]) from None
    except SourceError as exc:  # an HACONTROL_* variable that is not valid JSON
        raise SettingsError([_describe_source(exc)]) from None
    settings, problems = _resolve_secrets(settings, path.parent)
    if not settings.controller.journal.is_absolute():
        journal = path.parent.resolve() / settings.controller.journal
        settings = _replace(settings, ("controller",), {"journal": journal})
    settings = _absolute_tls_paths(settings, path.parent.resolve())
    errors, warnings = check(settings)
    errors += check_paths(settings)
    errors += tls_problems(settings)
    # A secret whose file failed is already reported once, under its *_file key.
    failed = {p.split(":", 1)[0].removesuffix("_file") for p in problems}
    problems += [e for e in errors if e.split(":", 1)[0] not in failed]
    if problems:
        raise SettingsError(problems)
    return Loaded(settings=settings, path=path, warnings=tuple(warnings))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SettingsError([f"config: file not found: {path}"]) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise SettingsError([f"config: cannot read {path!r}: {reason}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SettingsError([f"config: invalid TOML in {path}: {exc}"]) from None


SECRET_FIELDS = frozenset({"password", "replication_password", "token"})


def _describe(err: Mapping[str, Any]) -> str:
    key = _dotted(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    if err["loc"] and err["loc"][-1] in SECRET_FIELDS:
        return f"{key}: {err['msg']}"  # never echo what was given for a secret
    shown = repr(err.get("input"))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{key}: {err['msg']} (got {shown})"


def _describe_source(exc: SourceError) -> str:
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else "settings"
    env = f"HACONTROL_{field.upper()}"
    return f"{field}: {env} is not valid JSON (nested values in the environment are JSON)"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "settings"


def _resolve_secrets(settings: Settings, base: Path) -> tuple[Settings, list[str]]:
    """Read every ``*_file`` secret into its field. Inline/env values win over files.

    A relative ``*_file`` path is taken from the folder of the settings file.
    """
    problems: list[str] = []
    for path, field, file_field in SECRETS:
        section = _section(settings, path)
        file = getattr(section, file_field)
        if getattr(section, field) is not None or file is None:
            continue
        key = ".".join((*path, file_field))
        secret, problem = read_secret(base / file)
        if problem is not None:
            problems.append(f"{key}: {problem}")
            continue
        settings = _replace(settings, path, {field: SecretStr(secret)})
    return settings, problems


def read_secret(file: Path) -> tuple[str, str | None]:
    """(the secret, None), or ("", why not): a regular file of UTF-8 text, at most 64 KiB,
    stripped of its trailing newline."""
    try:
        if not stat.S_ISREG(file.stat().st_mode):
            return "", f"secret file {file} is not a regular file"
        with file.open("rb") as handle:
            raw = handle.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        return "", f"cannot read secret file {file}: {exc.strerror}"
    if len(raw) > MAX_SECRET_FILE:
        return "", f"secret file {file} is larger than {MAX_SECRET_FILE} bytes"
    try:
        secret = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return "", f"secret file {file} is not UTF-8 text (byte {exc.start})"
    if not secret:
        return "", f"secret file {file} is empty"
    return secret, None


def _section(settings: Settings, path: tuple[str, ...]) -> BaseModel:
    obj: BaseModel = settings
    for name in path:
        obj = getattr(obj, name)
    return obj


def _replace(model: BaseModel, path: tuple[str, ...], update: dict[str, Any]) -> Any:
    if not path:
        return model.model_copy(update=update)
    child = getattr(model, path[0])
    return model.model_copy(update={path[0]: _replace(child, path[1:], update)})


def check(settings: Settings) -> tuple[list[str], list[str]]:
    """Cross-field rules. Pure: returns (errors, warnings), each naming its key."""
    errors: list[str] = []
    warnings: list[str] = []
    parts = (
        _node_rules,
        _timing_rules,
        _lease_rules,
        _router_rules,
        _hook_rules,
        _notice_rules,
        _rebuild_rules,
    )
    for part in parts:
        more_errors, more_warnings = part(settings)
        errors += more_errors
        warnings += more_warnings
    return errors, warnings


Problems = tuple[list[str], list[str]]


def _node_rules(settings: Settings) -> Problems:
    errors: list[str] = []
    warnings: list[str] = []
    nodes = settings.nodes
    if len(nodes) < 3:
        errors.append(
            f"nodes: {len(nodes)} node(s) configured; at least 3 are needed "
            "(one primary and two replicas, so that a majority survives one loss)"
        )
    elif len(nodes) % 2 == 0:
        warnings.append(
            f"nodes: {len(nodes)} nodes is an even count; a strict majority needs "
            f"{len(nodes) // 2 + 1}, so an odd count tolerates the same failures with fewer nodes"
        )
    seen_addr: dict[tuple[str, int], int] = {}
    seen_name: dict[str, int] = {}
    for i, node in enumerate(nodes):
        addr = (node.host.lower(), node.port)
        if addr in seen_addr:
            errors.append(
                f"nodes[{i}]: duplicate node address {node.host}:{node.port} "
                f"(same as nodes[{seen_addr[addr]}])"
            )
        seen_addr.setdefault(addr, i)
        if node.name in seen_name:
            errors.append(
                f"nodes[{i}].name: duplicate node name {node.name!r} "
                f"(same as nodes[{seen_name[node.name]}])"
            )
        seen_name.setdefault(node.name, i)
    if nodes and all(node.no_promote for node in nodes):
        warnings.append("nodes: every node has no_promote = true; no failover is possible")
    return errors, warnings


def _timing_rules(settings: Settings) -> Problems:
    errors: list[str] = []
    probes = settings.probes
    if probes.timeout >= probes.interval:
        errors.append(
            f"probes.timeout: {probes.timeout} s must be smaller than probes.interval "
            f"({probes.interval} s), or a slow node would delay its own next probe"
        )
    if settings.failover.io_stall <= probes.interval:
        errors.append(
            f"failover.io_stall: {settings.failover.io_stall} s must exceed probes.interval "
            f"({probes.interval} s), or one probe could not see a heartbeat advance"
        )
    errors += drain_problems(settings.failover)
    _require_secret(errors, settings.mysql.password, "mysql.password")
    _require_secret(errors, settings.mysql.replication_password, "mysql.replication_password")
    errors += secret_strength(settings)
    errors += host_problems(settings)
    return errors, []


USER_LOCK_NAME_MAX = 64
"""MySQL 5.7+ refuses longer names in GET_LOCK (ER_USER_LOCK_WRONG_NAME); MariaDB does not."""


def _lease_rules(settings: Settings) -> Problems:
    """The lease's timings (docs/fleet.md): the leader's belief in a lock must end before the
    server can free it (V < W), keepalives must renew it well before then (K <= W/3), and a
    statement must fit between two keepalives (K + margin < V)."""
    errors: list[str] = []
    warnings: list[str] = []
    lease = settings.lease
    wait, keepalive, validity = lease.wait_timeout, lease.keepalive, lease.validity
    if keepalive > wait / 3:
        errors.append(
            f"lease.keepalive: {keepalive:g} s must be at most a third of lease.wait_timeout "
            f"({wait} s), so that a lost keepalive or two does not lose the locks"
        )
    if validity >= wait:
        errors.append(
            f"lease.validity: {validity:g} s must be smaller than lease.wait_timeout ({wait} s): "
            "the leader's belief in a lock must end before the server can free it"
        )
    elif keepalive + lease.margin >= validity:
        errors.append(
            f"lease.validity: {validity:g} s must exceed lease.keepalive + lease.margin "
            f"({keepalive + lease.margin:g} s), or the leader could not send a statement "
            "between two keepalives"
        )
    if settings.controller.fleet and settings.failover.io_stall <= wait:
        warnings.append(
            f"failover.io_stall: {settings.failover.io_stall:g} s is not longer than "
            f"lease.wait_timeout ({wait} s): a primary cut off from the leader and its replicas "
            "keeps the old leader's publication up to W, and an instance that still reaches it "
            "with a majority of the nodes would route writes there after the failover"
        )
    longest = f"hacontrol.{settings.cluster.name}.primary"
    if settings.controller.fleet and len(longest) > USER_LOCK_NAME_MAX:
        errors.append(
            f"cluster.name: {len(settings.cluster.name)} characters make the fleet's lock name "
            f"{longest!r} longer than the {USER_LOCK_NAME_MAX} characters MySQL allows a user "
            f"lock (at most {USER_LOCK_NAME_MAX - len('hacontrol..primary')} characters)"
        )
    if settings.controller.fleet and wait < settings.probes.interval:
        warnings.append(
            f"lease.wait_timeout: {wait} s is shorter than probes.interval "
            f"({settings.probes.interval:g} s): a new leader acts on probes older than the lease"
        )
    return errors, warnings


def _router_rules(settings: Settings) -> Problems:
    errors: list[str] = []
    router = settings.router
    if router.kind == "proxysql":
        groups = {
            "writer_hostgroup": router.proxysql.writer_hostgroup,
            "reader_hostgroup": router.proxysql.reader_hostgroup,
            "broken_hostgroup": router.proxysql.broken_hostgroup,
            "hidden_hostgroup": router.proxysql.hidden_hostgroup,
        }
        by_number: dict[int, str] = {}
        for key, number in groups.items():
            if number in by_number:
                errors.append(
                    f"router.proxysql.{key}: hostgroup {number} collides with "
                    f"router.proxysql.{by_number[number]}; the four hostgroups must differ"
                )
            by_number.setdefault(number, key)
        _require_secret(errors, router.proxysql.password, "router.proxysql.password")
    elif router.kind == "haproxy":
        if not router.haproxy.socket:
            errors.append("router.haproxy.socket: required when router.kind = 'haproxy'")
        if router.haproxy.writer_backend == router.haproxy.reader_backend:
            errors.append("router.haproxy.reader_backend: must differ from writer_backend")
    return errors, []


def _hook_rules(settings: Settings) -> Problems:
    errors: list[str] = []
    warnings: list[str] = []
    for phase in (
        "on_failure_detected",
        "pre_failover",
        "post_failover",
        "post_switchover",
        "on_halt",
    ):
        command = getattr(settings.hooks, phase)
        try:
            shlex.split(command)
        except ValueError as exc:
            errors.append(f"hooks.{phase}: cannot split the command line: {exc}")
    if settings.hooks.pre_failover and settings.hooks.timeout > settings.failover.apply_timeout:
        warnings.append(
            f"hooks.timeout: {settings.hooks.timeout:g} s; a slow pre_failover hook delays "
            "every failover by up to this much"
        )
    return errors, warnings


def _notice_rules(settings: Settings) -> Problems:
    """The API and the mail: what would leave operators without commands or alerts."""
    errors: list[str] = []
    warnings: list[str] = []
    if settings.api.enabled and settings.api.token is None:
        warnings.append(
            "api.token: no token configured: every POST (switchover, maintenance, ack, pause, "
            "resume) will be refused with 401; set api.token_file or HACONTROL_API__TOKEN"
        )
    smtp = settings.smtp
    if smtp.host:
        if not smtp.recipients:
            errors.append("smtp.recipients: empty while smtp.host is set; nobody would get mail")
        if smtp.user:
            _require_secret(errors, smtp.password, "smtp.password")
    return errors, warnings


def _rebuild_rules(settings: Settings) -> Problems:
    """Every command rendered with sample values: an unknown placeholder, a datadir that is not
    an absolute shell-safe path, a node that is not configured, half a stop/start pair."""
    errors: list[str] = []
    rebuild = settings.rebuild
    sample = {name: "x" for name in PLACEHOLDERS} | {"target_port": "1", "source_port": "1"}
    for key in ("source_exec", "target_exec", "stop_target", "start_target", "backup_options",
                "prepare_options"):  # fmt: skip
        try:
            render(getattr(rebuild, key), sample)
        except ValueError as exc:
            errors.append(f"rebuild.{key}: {exc}")
    for key in ("mariadb_backup", "mbstream"):
        if not getattr(rebuild, key):
            errors.append(f"rebuild.{key}: must name the tool")
    if bool(rebuild.stop_target) != bool(rebuild.start_target):
        errors.append("rebuild.start_target: set both stop_target and start_target, or neither")
    names = {node.name for node in settings.nodes}
    dirs = [("rebuild.datadir", rebuild.datadir)]
    dirs += [(f"rebuild.datadirs.{node}", path) for node, path in rebuild.datadirs.items()]
    for key, path in dirs:
        node = key.removeprefix("rebuild.datadirs.")
        if key != "rebuild.datadir" and node not in names:
            errors.append(f"{key}: {node} is not a configured node")
            continue
        try:
            check_datadir(path, "datadir")
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
    if rebuild.datadir_owner and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?",
                                                  rebuild.datadir_owner):  # fmt: skip
        errors.append("rebuild.datadir_owner: expected user or user:group")
    return errors, []


def drain_problems(failover: FailoverSettings) -> list[str]:
    """A switchover's drain and the fence after it must fit in its deadline, or every
    switchover whose drain runs to its end would be rolled back."""
    room = failover.drain_timeout + failover.action_timeout
    if room <= failover.switchover_deadline:
        return []
    return [
        f"failover.drain_timeout: {failover.drain_timeout:g} s plus failover.action_timeout "
        f"({failover.action_timeout:g} s, the fence after the drain) exceeds "
        f"failover.switchover_deadline ({failover.switchover_deadline:g} s); a drain that runs "
        "to its end would leave the switchover no time to fence, catch up and promote"
    ]


def secret_strength(settings: Settings) -> list[str]:
    """Secrets too short to be secrets, or that could never work: refused, naming the key.

    Passwords: at least MIN_PASSWORD characters. The API token: at least MIN_TOKEN visible
    ASCII characters (it travels in an HTTP header; a space or a non-ASCII character could
    never authenticate). A secret is also scrubbed from every log line, which a one-letter
    secret would make unreadable.
    """
    errors: list[str] = []
    for path, field, _ in SECRETS:
        value = getattr(_section(settings, path), field)
        if value is None or not value.get_secret_value():
            continue
        secret, key = value.get_secret_value(), ".".join((*path, field))
        if "\x00" in secret:
            errors.append(f"{key}: contains a NUL byte")
        elif field == "token":
            if not all("!" <= c <= "~" for c in secret):
                errors.append(f"{key}: only visible ASCII characters (no space, no control)")
            elif len(secret) < MIN_TOKEN:
                errors.append(f"{key}: too short to be a secret ({MIN_TOKEN} characters or more)")
        elif len(secret) < MIN_PASSWORD:
            errors.append(f"{key}: too short to be a secret ({MIN_PASSWORD} characters or more)")
    return errors


def host_problems(settings: Settings) -> list[str]:
    """Every host that is neither an IP address nor a DNS name, naming its key."""
    hosts = [(f"nodes[{i}].host", node.host) for i, node in enumerate(settings.nodes)]
    hosts += [
        ("api.host", settings.api.host),
        ("router.proxysql.host", settings.router.proxysql.host),
    ]
    if settings.smtp.host:
        hosts.append(("smtp.host", settings.smtp.host))
    problems = []
    for key, host in hosts:
        try:
            check_host(host)
        except ValueError as exc:
            problems.append(f"{key}: {exc} (got {host[:80]!r})")
    return problems


def check_paths(settings: Settings) -> list[str]:
    """Paths that can never be what they must be (reads the filesystem, changes nothing)."""
    journal = settings.controller.journal
    problem = _file_path_problem(journal)
    return [f"controller.journal: {problem}"] if problem else []


def _file_path_problem(path: Path) -> str | None:
    """Why ``path`` can never be a regular file we create and append to, or None."""
    resolved = Path(os.path.realpath(path))
    for pseudo in PSEUDO_FILESYSTEMS:
        if resolved == pseudo or pseudo in resolved.parents:
            return f"{path} is under {pseudo}, a pseudo-filesystem, not storage"
    if resolved.is_dir():
        return f"{path} is a directory; name a file in it"
    if resolved.exists() and not resolved.is_file():
        return f"{path} exists and is not a regular file"
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{path} is under {parent}, which is a file, not a directory"
            break
    return None


# Files a TLS setting names: (section path, field). Relative paths are taken from the settings
# file's folder, like the journal and the secret files.
TLS_FILES: tuple[tuple[tuple[str, ...], str], ...] = (
    *((("mysql", "tls"), f) for f in ("ca", "cert", "key")),
    *((("router", "proxysql", "tls"), f) for f in ("ca", "cert", "key")),
    *((("api",), f) for f in ("tls_cert", "tls_key", "tls_ca", "socket")),
)


def _absolute_tls_paths(settings: Settings, base: Path) -> Settings:
    for section_path, field in TLS_FILES:
        value = getattr(_section(settings, section_path), field)
        if value is not None and not value.is_absolute():
            settings = _replace(settings, section_path, {field: base / value})
    return settings


def tls_problems(settings: Settings) -> list[str]:
    """TLS settings that cannot work: a mode without its CA, half a client certificate, files
    that cannot be loaded, an API certificate without its key. Builds every context once
    (reads the files), naming the key of the file at fault."""
    problems: list[str] = []
    for key, tls in (
        ("mysql.tls", settings.mysql.tls),
        ("router.proxysql.tls", settings.router.proxysql.tls),
    ):
        if tls.mode == "off":
            continue
        try:
            client_context(tls.mode, tls.ca, tls.cert, tls.key)
        except TlsConfigError as exc:
            problems.append(f"{key}.{exc.field}: {exc}")
    api = settings.api
    if (api.tls_cert is None) != (api.tls_key is None):
        missing = "tls_key" if api.tls_key is None else "tls_cert"
        problems.append(f"api.{missing}: HTTPS needs both api.tls_cert and api.tls_key")
    elif api.tls_cert is not None and api.tls_key is not None:
        try:
            server_context(api.tls_cert, api.tls_key)
        except TlsConfigError as exc:
            problems.append(f"api.tls_{exc.field}: {exc}")
    if api.socket is not None and (problem := _socket_path_problem(api.socket)):
        problems.append(f"api.socket: {problem}")
    return problems


def _socket_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a unix socket the API listens on (a stale socket is replaced;
    anything else there is refused), or None."""
    if len(os.fsencode(path)) > 107:
        return f"{path} is longer than a unix socket path may be (107 bytes)"
    if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.stat().st_mode)):
        return f"{path} exists and is not a socket"
    parent = path.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    return None


def _require_secret(errors: list[str], value: SecretStr | None, key: str) -> None:
    if value is None or not value.get_secret_value():
        env = "HACONTROL_" + key.upper().replace(".", "__")
        errors.append(f"{key}: missing password: set {key}, {key}_file, or {env}")


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-ready data, every secret masked."""
    data = settings.model_dump(mode="json")
    for path, field, _ in SECRETS:
        section = data
        for name in path:
            section = section[name]
        if section.get(field) is not None:
            section[field] = "********"
    return data
