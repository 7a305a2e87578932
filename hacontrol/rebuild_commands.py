"""The commands of a rebuild, as values: pure, no I/O (``docs/rebuild.md``).

hacontrol usually runs in a container next to ProxySQL, far from the database hosts, so it
never touches a datadir itself. Every step on a host is a command run through a configured
prefix (``source_exec`` / ``target_exec``: ``[]`` runs it locally, ``["ssh", "{target_host}"]``
on the host) and the node's service is stopped and started with configured commands. The
stream goes from the backup on the source, through hacontrol (which counts the bytes), into
``mbstream -x`` on the target.

File operations are short POSIX ``sh`` scripts sent on the standard input of ``sh -s``, so they
are parsed exactly once, by the host's shell, whatever the prefix (local, ssh, kubectl exec).
Paths inside them are quoted with :func:`shlex.quote`. Values put into argv words (hosts,
ports, node names, paths) must be made of ``[A-Za-z0-9_./:@%+=,-]`` only: an ``ssh`` prefix
hands its words to a remote shell, which would re-parse anything else; other values are
refused with the placeholder's name.

The target's datadir is replaced by two renames on one filesystem::

    DATADIR.rebuild          the copy, streamed then prepared (removed on a failed copy)
    DATADIR.before-rebuild   the old datadir, kept until the rebuilt node replicates
    DATADIR.rebuild-swapped  marker: DATADIR is the new copy (restore puts the old one back)
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]+$")
PLACEHOLDERS = (
    "target",
    "target_host",
    "target_port",
    "target_datadir",
    "source",
    "source_host",
    "source_port",
    "source_datadir",
    "staging",
    "old",
)
DEFAULT_DATADIR = "/var/lib/mysql"
EXIT_REFUSED = 3  # a preflight script's "not safe to go on" (leftovers, mount point)


@dataclass(frozen=True)
class RebuildCommands:
    """How to reach the hosts. Every command is a list of argv words with ``{placeholder}``s
    (:data:`PLACEHOLDERS`); ``stop_target`` / ``start_target`` may be empty when the caller
    stops and starts nodes itself (the sandbox)."""

    source_exec: tuple[str, ...] = ()
    target_exec: tuple[str, ...] = ()
    stop_target: tuple[str, ...] = ()
    start_target: tuple[str, ...] = ()
    backup_options: tuple[str, ...] = ()  # right after mariadb-backup: --defaults-file works
    prepare_options: tuple[str, ...] = ()
    mariadb_backup: str = "mariadb-backup"
    mbstream: str = "mbstream"
    datadir: str = DEFAULT_DATADIR
    datadirs: Mapping[str, str] = field(default_factory=dict)  # per node, overrides datadir
    datadir_owner: str = ""  # "mysql:mysql"; "" keeps the old datadir's owner (if any)

    def datadir_of(self, node: str) -> str:
        return check_datadir(self.datadirs.get(node, self.datadir), f"datadir of {node}")


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Command:
    """One process to run: argv, and the text for its standard input (a script) or None."""

    argv: tuple[str, ...]
    stdin: str | None = None

    def __str__(self) -> str:  # for logs and errors: never carries a secret
        return shlex.join(self.argv)


@dataclass(frozen=True)
class RebuildPaths:
    datadir: str

    @property
    def staging(self) -> str:
        return f"{self.datadir}.rebuild"

    @property
    def old(self) -> str:
        return f"{self.datadir}.before-rebuild"

    @property
    def mark(self) -> str:
        return f"{self.datadir}.rebuild-swapped"


def check_datadir(path: str, what: str) -> str:
    """An absolute, shell-safe path without ``..``; a trailing ``/`` is dropped."""
    clean = path.rstrip("/")
    parts = clean.split("/")
    if not path.startswith("/") or len(parts) < 3 or ".." in parts or "" in parts[1:]:
        raise ValueError(f"{what} {path!r}: expected an absolute path below / (no '..', no '//')")
    check_value(clean, what)
    return clean


def check_value(value: str, what: str) -> str:
    if not SAFE_VALUE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: only letters, digits and _./:@%+=,- are allowed in values "
            "put into commands"
        )
    return value


@dataclass(frozen=True)
class RebuildSteps:
    """Every command of one rebuild, rendered."""

    preflight: Command  # on the target: refuse leftovers, make the staging dir; prints free KiB
    size: Command  # on the source: bytes the copy will take, about (prints du -sb)
    backup: Command  # on the source: the stream on stdout, the log on stderr
    receive: Command  # on the target: the stream on stdin
    prepare: Command  # on the target
    discard_staging: Command  # on the target, after a failed copy or prepare
    stop_target: Command | None
    swap: Command  # on the target: old datadir aside, the copy in place
    start_target: Command | None
    restore: Command  # on the target, after a failure past the swap: the old datadir back
    discard_old: Command  # on the target, once the rebuilt node replicates
    paths: RebuildPaths


def rebuild_steps(commands: RebuildCommands, target: Endpoint, source: Endpoint) -> RebuildSteps:
    """Render every command; ValueError naming the value or placeholder that is refused."""
    paths = RebuildPaths(commands.datadir_of(target.name))
    source_datadir = commands.datadir_of(source.name)
    values = {
        "target": target.name,
        "target_host": target.host,
        "target_port": str(target.port),
        "target_datadir": paths.datadir,
        "source": source.name,
        "source_host": source.host,
        "source_port": str(source.port),
        "source_datadir": source_datadir,
        "staging": paths.staging,
        "old": paths.old,
    }
    for key, value in values.items():
        check_value(value, key)

    def on(prefix: tuple[str, ...], *argv: str, stdin: str | None = None) -> Command:
        return Command(render(prefix + argv, values), stdin)

    def script(prefix: tuple[str, ...], text: str) -> Command:
        return on(prefix, "sh", "-s", stdin=text)

    def optional(template: tuple[str, ...]) -> Command | None:
        return Command(render(template, values)) if template else None

    src, dst = commands.source_exec, commands.target_exec
    return RebuildSteps(
        preflight=script(dst, preflight_script(paths)),
        size=script(src, size_script(source_datadir)),
        backup=on(src, commands.mariadb_backup, *commands.backup_options, *BACKUP_ARGS),
        receive=on(dst, commands.mbstream, "-x", "-C", paths.staging),
        prepare=on(
            dst,
            commands.mariadb_backup,
            *commands.prepare_options,
            "--prepare",
            f"--target-dir={paths.staging}",
        ),
        discard_staging=script(dst, f"set -eu\nrm -rf {shlex.quote(paths.staging)}\n"),
        stop_target=optional(commands.stop_target),
        swap=script(dst, swap_script(paths, commands.datadir_owner)),
        start_target=optional(commands.start_target),
        restore=script(dst, restore_script(paths)),
        # The marker first: once it is gone, no restore can take the new datadir away.
        discard_old=script(
            dst, f"set -eu\nrm -f {shlex.quote(paths.mark)}\nrm -rf {shlex.quote(paths.old)}\n"
        ),
        paths=paths,
    )


BACKUP_ARGS = ("--backup", "--stream=mbstream", "--slave-info")
"""No ``--safe-slave-backup``: it stops the source's SQL thread for the whole copy, and a
killed backup would leave it stopped. With row-based replication there are no replicated
temporary tables to protect, and ``BACKUP STAGE BLOCK_COMMIT`` makes the positions match the
data. No ``--target-dir``: with ``--stream`` nothing is written there."""


def render(template: tuple[str, ...], values: Mapping[str, str]) -> tuple[str, ...]:
    """Replace ``{name}`` in every word; ValueError naming an unknown placeholder."""
    out = []
    for word in template:
        for _, name, spec, conversion in string.Formatter().parse(word):
            if name is not None and (name not in values or spec or conversion):
                raise ValueError(
                    f"unknown placeholder {{{name}}} in {word!r}: use one of "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                )
        out.append(word.format_map(values))
    return tuple(out)


# -- scripts (POSIX sh, run by "sh -s" on the host) -----------------------------------------


def _vars(paths: RebuildPaths) -> str:
    q = shlex.quote
    return (
        f"datadir={q(paths.datadir)}\nstaging={q(paths.staging)}\n"
        f"old={q(paths.old)}\nmark={q(paths.mark)}\n"
    )


def preflight_script(paths: RebuildPaths) -> str:
    """Refuse what a previous rebuild left, a datadir that is a mount point (the swap renames
    it), then make an empty staging directory and print its free space in KiB."""
    return (
        "set -eu\n" + _vars(paths) + 'refuse() { echo "$1" >&2; exit ' + str(EXIT_REFUSED) + "; }\n"
        '[ ! -e "$mark" ] || refuse "a previous rebuild did not finish ($mark exists): '
        'restore it first"\n'
        '[ ! -e "$old" ] || refuse "$old exists (left by a previous rebuild): remove it first"\n'
        'if [ -d "$datadir" ] && command -v mountpoint >/dev/null 2>&1 '
        '&& mountpoint -q "$datadir"; then\n'
        '  refuse "$datadir is a mount point: use a directory below it as the datadir"\n'
        "fi\n"
        'mkdir -p "$(dirname "$staging")"\n'
        'rm -rf "$staging"\n'
        'mkdir "$staging"\n'
        "df -Pk \"$staging\" | awk 'NR == 2 { print $4 }'\n"
    )


def size_script(datadir: str) -> str:
    """Bytes in the source's datadir that the copy takes: without binlogs and relay logs
    (``name.NNNNNN``), the redo log (only its tail is copied) and the temporary tablespace."""
    return (
        "set -eu\n"
        f"cd {shlex.quote(datadir)}\n"
        "du -sb --exclude='*.[0-9][0-9][0-9][0-9][0-9][0-9]' --exclude='ib_logfile*' "
        "--exclude='ibtmp*' .\n"
    )


def swap_script(paths: RebuildPaths, owner: str) -> str:
    """The old datadir aside (if there is one), the marker, then the copy in its place."""
    chown = (
        f'chown -R {shlex.quote(owner)} "$datadir"\n'
        if owner
        else 'if [ -e "$old" ]; then chown -R --reference="$old" "$datadir"; fi\n'
    )
    return (
        "set -eu\n" + _vars(paths) + 'if [ -e "$datadir" ]; then mv "$datadir" "$old"; fi\n'
        ': > "$mark"\n'
        'mv "$staging" "$datadir"\n' + chown
    )


def restore_script(paths: RebuildPaths) -> str:
    """Undo a swap: only when the marker says the datadir is the new copy."""
    return (
        "set -eu\n" + _vars(paths) + 'if [ -e "$mark" ]; then\n'
        '  rm -rf "$datadir"\n'
        '  if [ -e "$old" ]; then mv "$old" "$datadir"; fi\n'
        '  rm -f "$mark"\n'
        "fi\n"
        'rm -rf "$staging"\n'
    )
