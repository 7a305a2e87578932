"""Command line: ``hacontrol <command>``. Thin: parse arguments, call the module that does it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hacontrol import __version__
from hacontrol.settings import SettingsError, load_settings, redacted

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(EXIT_CONFIG)
    sys.exit(args.func(args))


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

    _register_optional(sub)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $HACONTROL_CONFIG, else ./settings.toml)",
    )


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Commands that live in their own modules register their own parsers."""
    try:  # TEMP until sandbox lands
        from hacontrol import sandbox
    except ImportError:
        return
    sandbox.register_cli(sub)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_settings(args.config)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hacontrol: settings error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in loaded.warnings:
        print(f"hacontrol: settings warning: {warning}", file=sys.stderr)
    print(json.dumps(redacted(loaded.settings), indent=2))
    return 0
