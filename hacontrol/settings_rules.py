"""Cross-field rules of one cluster's settings. Pure: each returns (errors, warnings), every
line naming its key."""

from __future__ import annotations

import re
import shlex

from pydantic import SecretStr

from hacontrol.rebuild_commands import PLACEHOLDERS, check_datadir, render
from hacontrol.settings_model import (
    MIN_PASSWORD,
    MIN_TOKEN,
    SECRETS,
    FailoverSettings,
    Settings,
    address_key,
    check_host,
    section_at,
)


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
        addr = address_key(node.host, node.port)
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
        value = getattr(section_at(settings, path), field)
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


def _require_secret(errors: list[str], value: SecretStr | None, key: str) -> None:
    if value is None or not value.get_secret_value():
        env = "HACONTROL_" + key.upper().replace(".", "__")
        errors.append(f"{key}: missing password: set {key}, {key}_file, or {env}")
