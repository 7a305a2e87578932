"""``hacontrol journal check`` and ``hacontrol journal reset --yes``: the way out of a journal
the controller refuses to start with.

``check`` reads the journal as the controller would at start-up and says what it holds (the
unfinished plan, the kept state) or which line is wrong and why; then whether it can be
written now and the room left. ``reset --yes`` moves the journal aside (a copy named
``<journal>.<UTC time>.bak``, never deleted): the controller then starts with no unfinished
plan and no kept state. Stop the controller first.

Exit codes: 0 readable and writable; 1 readable but not writable now (a failover still runs;
see docs/hardening.md); 2 not a journal (or usage: ``reset`` without ``--yes``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hacontrol.journal import Journal, JournalError, read_records, replay, reset
from hacontrol.settings import SettingsError, load_settings

EXIT_OK, EXIT_UNWRITABLE, EXIT_BAD = 0, 1, 2

RESET_HINT = (
    "`hacontrol journal reset --yes` moves it aside (a copy is kept) so that the controller "
    "starts without it; check the topology first (`hacontrol status`): an unfinished plan in "
    "it would not be finished"
)


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    journal = subparsers.add_parser("journal", help="check or reset the intent journal")
    sub = journal.add_subparsers(title="journal commands", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="read the journal as `run` would; say what is wrong")
    _path_options(check)
    check.set_defaults(func=cmd_check)
    reset_ = sub.add_parser("reset", help="move the journal aside (a copy is kept)")
    _path_options(reset_)
    reset_.add_argument("--yes", action="store_true", help="really move it aside")
    reset_.set_defaults(func=cmd_reset)


def _path_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="settings file (for controller.journal)")
    parser.add_argument("--path", metavar="FILE", help="the journal file (instead of settings)")
    parser.add_argument(
        "--cluster", metavar="NAME", help="whose journal, when the settings hold several clusters"
    )


def journal_path(args: argparse.Namespace) -> Path | None:
    if args.path:
        return Path(args.path)
    try:
        return load_settings(args.config).pick(args.cluster).controller.journal
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hacontrol: settings error: {problem}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    path = journal_path(args)
    if path is None:
        return EXIT_BAD
    try:
        records, torn = read_records(path)
        unfinished, state = replay(records)
    except JournalError as exc:
        print(f"hacontrol: journal error: {exc}", file=sys.stderr)
        print(f"hacontrol: {RESET_HINT}", file=sys.stderr)
        return EXIT_BAD
    print(f"{path}: {len(records)} record(s)" + (" (no file yet)" if not path.exists() else ""))
    for line in torn:
        print(f"  line {line}: a torn record (a crash mid-write): skipped")
    if unfinished is not None:
        done = ", ".join(str(i) for i in sorted(unfinished.done)) or "none"
        print(
            f"  unfinished plan {unfinished.plan_id} ({unfinished.plan.rule}, "
            f"{len(unfinished.plan.actions)} steps, done: {done}): finished or undone at start"
        )
    if state is not None:
        print(f"  kept state: {_state_line(state)}")
    space = Journal(path).check_space()
    if not space.writable:
        print(f"  NOT writable now: {space.reason}")
        return EXIT_UNWRITABLE
    free = "" if space.free_bytes is None else f", {space.free_bytes / 2**20:.1f} MiB free"
    print(f"  writable{free}" + (" (LOW)" if space.low else ""))
    return EXIT_OK


def _state_line(state: dict) -> str:
    parts = [f"paused={state.get('paused', False)}"]
    if state.get("maintenance"):
        parts.append(f"maintenance={','.join(state['maintenance'])}")
    if state.get("quarantined"):
        parts.append(f"quarantined={','.join(sorted(state['quarantined']))}")
    if state.get("blocked_until") is not None:
        parts.append("recovery block set")
    if state.get("consents"):
        given = [f"without {c['node']} (away from {c['dead']})" for c in state["consents"]]
        parts.append(f"failover consents={'; '.join(given)}")
    return ", ".join(parts)


def cmd_reset(args: argparse.Namespace) -> int:
    path = journal_path(args)
    if path is None:
        return EXIT_BAD
    if not args.yes:
        print(
            f"hacontrol: journal reset moves {path} aside and the controller forgets what it "
            "holds (an unfinished plan, the pause, maintenance, quarantined old primaries, the "
            "recovery block); add --yes to do it",
            file=sys.stderr,
        )
        return EXIT_BAD
    try:
        kept = reset(path)
    except OSError as exc:
        print(f"hacontrol: cannot move {path} aside: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD
    if kept is None:
        print(f"{path}: no journal; nothing to do")
    else:
        print(f"{path} moved to {kept}; the controller starts with an empty journal")
    return EXIT_OK
