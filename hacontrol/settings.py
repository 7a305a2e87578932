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

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError
from pydantic_settings import EnvSettingsSource
from pydantic_settings import SettingsError as SourceError

from hacontrol import settings_clusters as multi
from hacontrol.settings_model import (
    MAX_NODES,
    MAX_SECRET_FILE,
    MIN_INTERVAL,
    MIN_PASSWORD,
    MIN_TOKEN,
    PSEUDO_FILESYSTEMS,
    SECRETS,
    ApiSettings,
    ClusterSettings,
    ControllerSettings,
    FailoverSettings,
    HAProxySettings,
    HookSettings,
    LeaseSettings,
    LogSettings,
    MySQLSettings,
    NodeSettings,
    ProbeSettings,
    ProxySQLSettings,
    RebuildSettings,
    ReplicationTlsSettings,
    RouterSettings,
    Settings,
    SettingsError,
    SMTPSettings,
    TlsSettings,
    check_host,
    replace_at,
    section_at,
    settings_without_environment,
)
from hacontrol.settings_rules import check, drain_problems, host_problems, secret_strength
from hacontrol.tlsconf import TlsConfigError, client_context, server_context

__all__ = [
    "MAX_NODES",
    "MIN_INTERVAL",
    "MIN_PASSWORD",
    "MIN_TOKEN",
    "SECRETS",
    "ApiSettings",
    "ClusterSettings",
    "ControllerSettings",
    "FailoverSettings",
    "HAProxySettings",
    "HookSettings",
    "LeaseSettings",
    "Loaded",
    "LogSettings",
    "MySQLSettings",
    "NodeSettings",
    "ProbeSettings",
    "ProxySQLSettings",
    "RebuildSettings",
    "ReplicationTlsSettings",
    "RouterSettings",
    "SMTPSettings",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "check",
    "check_host",
    "check_paths",
    "config_path",
    "drain_problems",
    "host_problems",
    "load_settings",
    "read_secret",
    "redacted",
    "secret_strength",
    "settings_from",
    "tls_problems",
]  # fmt: skip

DEFAULT_CONFIG = Path("settings.toml")
CONFIG_ENV = "HACONTROL_CONFIG"
MAX_FILE_NAME = 255
"""Bytes in one file name on Linux file systems (NAME_MAX)."""


@dataclass(frozen=True)
class Loaded:
    """Valid settings: one ``Settings`` per cluster (``clusters``; the single form gives one).
    ``settings`` is the first, for what is process-wide (api, log, controller.instance_id are
    the same in every cluster's settings); ``form`` says how the file was written."""

    settings: Settings
    path: Path
    warnings: tuple[str, ...]
    clusters: tuple[Settings, ...] = ()
    form: Literal["single", "clusters"] = "single"

    def __post_init__(self) -> None:
        if not self.clusters:
            object.__setattr__(self, "clusters", (self.settings,))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.cluster.name for s in self.clusters)

    def pick(self, name: str | None) -> Settings:
        """The cluster named ``name``; None: the only one. Raises SettingsError otherwise,
        naming the clusters there are."""
        known = ", ".join(self.names)
        if name is None:
            if len(self.clusters) == 1:
                return self.clusters[0]
            raise SettingsError([f"several clusters: give --cluster NAME (one of: {known})"])
        for settings in self.clusters:
            if settings.cluster.name == name:
                return settings
        raise SettingsError([f"unknown cluster {name!r}: give --cluster NAME (one of: {known})"])


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
    the file ``path``: the single form, or ``[[clusters]]`` (``hacontrol.settings_clusters``).
    Raises SettingsError naming every bad key, never anything else."""
    if "clusters" in data:
        return _clusters_from(data, path)
    settings, warnings = _one_cluster(data, path, environment=True)
    return Loaded(settings=settings, path=path, warnings=tuple(warnings))


def _one_cluster(
    data: Mapping[str, Any], path: Path, *, environment: bool
) -> tuple[Settings, list[str]]:
    """One cluster's settings and warnings, or SettingsError. ``environment``: whether the
    HACONTROL_* variables override ``data`` (False: they were merged into it already)."""
    unknown = [k for k in data if k not in Settings.model_fields]
    if unknown:  # before Settings(**data): a key like `_secrets_dir` would configure pydantic
        raise SettingsError([f"{_dotted((k,))}: unknown key" for k in unknown])
    try:
        settings = Settings(**data) if environment else settings_without_environment(dict(data))
    except ValidationError as exc:
        raise SettingsError([_describe(err) for err in exc.errors()]) from None
    except SourceError as exc:  # an HACONTROL_* variable that is not valid JSON
        raise SettingsError([_describe_source(exc)]) from None
    settings, problems = _resolve_secrets(settings, path.parent)
    if not settings.controller.journal.is_absolute():
        journal = path.parent.resolve() / settings.controller.journal
        settings = replace_at(settings, ("controller",), {"journal": journal})
    settings = _absolute_tls_paths(settings, path.parent.resolve())
    errors, warnings = check(settings)
    errors += check_paths(settings)
    errors += tls_problems(settings)
    # A secret whose file failed is already reported once, under its *_file key.
    failed = {p.split(":", 1)[0].removesuffix("_file") for p in problems}
    problems += [e for e in errors if e.split(":", 1)[0] not in failed]
    if problems:
        raise SettingsError(problems)
    return settings, warnings


def _clusters_from(data: Mapping[str, Any], path: Path) -> Loaded:
    """The ``[[clusters]]`` form: the environment over the top level, each entry over that,
    each result validated like the single form, then what clusters may not share."""
    top, entries, journal = _top_level(data, path)
    clusters: list[tuple[str, Settings]] = []
    problems: list[str] = []
    warnings: list[str] = []
    for index, entry in enumerate(entries):
        where = multi.label(index, entry)
        try:
            settings, more = _one_cluster(
                multi.merged(top, entry, journal), path, environment=False
            )
        except SettingsError as exc:
            problems += _named(where, exc.problems, problems)
            continue
        clusters.append((where, settings))
        warnings += _named(where, more, warnings)
    if not problems:
        problems = multi.cross_problems(clusters)
    if problems:
        raise SettingsError(problems)
    return Loaded(
        settings=clusters[0][1],
        path=path,
        warnings=tuple(warnings),
        clusters=tuple(settings for _, settings in clusters),
        form="clusters",
    )


def _top_level(
    data: Mapping[str, Any], path: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """The top level with the environment merged in, the entries and the journal they derive
    theirs from, once the entries' shape and the top level's own values are valid
    (SettingsError otherwise)."""
    try:
        env = EnvSettingsSource(Settings)()
    except SourceError as exc:
        raise SettingsError([_describe_source(exc)]) from None
    unknown = [k for k in data if k not in Settings.model_fields and k != "clusters"]
    if unknown:
        raise SettingsError([f"{_dotted((k,))}: unknown key" for k in unknown])
    top = multi.deep_merge({k: v for k, v in data.items() if k != "clusters"}, env)
    problems = multi.shape_problems(top, data["clusters"], tuple(env))
    try:
        journal = settings_without_environment(top).controller.journal
    except ValidationError as exc:
        raise SettingsError(problems + [_describe(err) for err in exc.errors()]) from None
    problem = multi.journal_problem(journal)
    problem = problem or multi.single_form_journal_left(_beside(journal, path))
    if problem:
        problems.append(problem)
    if problems:
        raise SettingsError(problems)
    return top, data["clusters"], journal


def _beside(journal: Path, path: Path) -> Path:
    """A relative ``controller.journal`` taken from the settings file's folder."""
    return journal if journal.is_absolute() else path.parent.resolve() / journal


def _named(where: str, problems: list[str], already: list[str]) -> list[str]:
    """Problems of one cluster, each naming it; those of a process-wide section (the same in
    every cluster) once, as they are."""
    shared = [p for p in problems if multi.is_process_wide(p) and p not in already]
    return shared + multi.prefixed(where, [p for p in problems if not multi.is_process_wide(p)])


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
        section = section_at(settings, path)
        file = getattr(section, file_field)
        if getattr(section, field) is not None or file is None:
            continue
        key = ".".join((*path, file_field))
        secret, problem = read_secret(base / file)
        if problem is not None:
            problems.append(f"{key}: {problem}")
            continue
        settings = replace_at(settings, path, {field: SecretStr(secret)})
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


def check_paths(settings: Settings) -> list[str]:
    """Paths that can never be what they must be (reads the filesystem, changes nothing)."""
    journal = settings.controller.journal
    try:
        problem = _file_path_problem(journal)
    except OSError as exc:  # a name longer than the file system allows, ...
        problem = f"{str(journal)[:120]}...: {exc.strerror}"
    return [f"controller.journal: {problem}"] if problem else []


def _file_path_problem(path: Path) -> str | None:
    """Why ``path`` can never be a regular file we create and append to, or None."""
    if len(os.fsencode(path.name)) > MAX_FILE_NAME:
        return f"{str(path)[:120]}...: the file name is too long ({MAX_FILE_NAME} bytes at most)"
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
        value = getattr(section_at(settings, section_path), field)
        if value is not None and not value.is_absolute():
            settings = replace_at(settings, section_path, {field: base / value})
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
