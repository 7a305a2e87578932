"""Command line: ``hacontrol <command>``. Thin: parse arguments, call the module that does it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from hacontrol import __version__
from hacontrol.settings import Loaded, SettingsError, load_settings, redacted

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(EXIT_CONFIG)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `hacontrol status | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hacontrol",
        description="Failover controller for MySQL/MariaDB replication behind ProxySQL/HAProxy.",
    )
    parser.add_argument("--version", action="version", version=f"hacontrol {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate settings and print them (secrets masked)")
    _config_option(check)
    check.set_defaults(func=cmd_check_config)

    run = sub.add_parser("run", help="run the controller in the foreground (JSON log on stdout)")
    _config_option(run)
    run.add_argument(
        "--paused",
        action="store_true",
        help="start paused: observe and log, no automatic change until `hacontrol resume`",
    )
    run.add_argument(
        "--ack",
        metavar="CLUSTER",
        nargs="?",
        action="append",
        const=ACK_THE_ONLY_ONE,
        help="acknowledge the last failover: clear the recovery block kept in the journal; "
        "with several clusters name them (--ack orders --ack users, or --ack orders,users), "
        "a bare --ack is then refused",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides the log.level setting (debug: one line per probe too)",
    )
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="probe the nodes and router once, print the topology")
    _config_option(status)
    cluster_option(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    status.add_argument(
        "--tls",
        action="store_true",
        help="say which connections are encrypted (the controller's to each node and to the "
        "ProxySQL admin, each replication channel, the API); on by itself when TLS is set up",
    )
    status.set_defaults(func=cmd_status)

    _register_optional(sub)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $HACONTROL_CONFIG, else ./settings.toml)",
    )


def cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="the cluster (required only when the settings hold several)",
    )


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Commands that live in their own modules register their own parsers."""
    from hacontrol import drill, journal_cli, operator_cli, sandbox

    sandbox.register_cli(sub)
    operator_cli.register_cli(sub)
    journal_cli.register_cli(sub)
    drill.register_cli(sub)


def _load(args: argparse.Namespace) -> Loaded | None:
    """Settings, or None after printing every problem (the caller exits 2)."""
    try:
        loaded = load_settings(args.config)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hacontrol: settings error: {problem}", file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(f"hacontrol: settings warning: {warning}", file=sys.stderr)
    return loaded


def cmd_check_config(args: argparse.Namespace) -> int:
    """The effective settings, secrets masked; with [[clusters]], every cluster's by name."""
    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    if loaded.form == "single":
        print(json.dumps(redacted(loaded.settings), indent=2))
    else:
        clusters = {s.cluster.name: redacted(s) for s in loaded.clusters}
        print(json.dumps({"clusters": clusters}, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    from hacontrol.journal import JournalError
    from hacontrol.journal_cli import RESET_HINT
    from hacontrol.jsonlog import JsonLog
    from hacontrol.routing import RouterError
    from hacontrol.service import run_forever, secrets_of

    clusters = loaded.clusters
    settings = clusters[0]  # the process-wide sections (log, api) are the same in every one
    level = args.log_level or settings.log.level
    secrets = sorted({secret for one in clusters for secret in secrets_of(one)})
    try:
        acknowledge = ack_clusters(args.ack, [one.cluster.name for one in clusters])
    except SettingsError as exc:
        print(f"hacontrol: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    name = settings.cluster.name if len(clusters) == 1 else None
    log = JsonLog(name, level=level, secrets=secrets)
    try:
        return run_forever(clusters, log, acknowledge=acknowledge, paused=args.paused)
    except RouterError as exc:
        log.emit("startup_refused", None, "error", reason=str(exc))
        print(f"hacontrol: {exc}", file=sys.stderr)
        return 1
    except JournalError as exc:
        # Which plan was cut, and what must outlive a restart, cannot be known: an operator
        # looks (`hacontrol journal check`) rather than the controller guessing.
        reason = f"the journal cannot be read: {exc}"
        log.emit("startup_refused", None, "error", reason=reason, path=str(exc.path), line=exc.line)
        print(f"hacontrol: {reason}\nhacontrol: {RESET_HINT}", file=sys.stderr)
        return EXIT_CONFIG


ACK_THE_ONLY_ONE = ""
"""``--ack`` without a name: the only cluster's block (refused with several)."""


def ack_clusters(given: Sequence[str] | None, names: Sequence[str]) -> frozenset[str]:
    """The clusters whose recovery block ``run --ack`` clears: the only one for a bare
    ``--ack``; with several, each named (repeated or comma separated). SettingsError for a
    bare ``--ack`` with several clusters, or an unknown name (the known ones listed)."""
    if not given:
        return frozenset()
    known = ", ".join(names)
    chosen: set[str] = set()
    for value in given:
        if value == ACK_THE_ONLY_ONE:
            if len(names) > 1:
                raise SettingsError(
                    [
                        "run --ack: several clusters: name the ones to acknowledge "
                        f"(--ack NAME, repeated or comma separated; one of: {known})"
                    ]
                )
            chosen.update(names)
            continue
        for name in (part.strip() for part in value.split(",")):
            if name not in names:
                raise SettingsError([f"run --ack: no cluster {name!r} (known: {known})"])
            chosen.add(name)
    return frozenset(chosen)


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    import asyncio

    from hacontrol import tlsreport
    from hacontrol.service import snapshot
    from hacontrol.status import render_tree, to_json

    try:
        settings = loaded.pick(args.cluster)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hacontrol: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    view = asyncio.run(snapshot(settings))
    show = args.tls or tlsreport.configured(settings)
    links = asyncio.run(tlsreport.links(settings)) if show else None
    if args.json:
        out = to_json(view)
        if links is not None:
            out["connections"] = tlsreport.to_json(links)
        print(json.dumps(out, indent=2))
    else:
        print(render_tree(view))
        if links is not None:
            print(tlsreport.render(links))
    return 0 if view.quorum.ok else 1
