"""The documentation tells the truth about the command line and covers the runbook scenarios.

Every ``hacontrol ...`` command line in README.md and docs/*.md (fenced code blocks and inline
code spans) is parsed by the real parser, ``hacontrol.cli.build_parser()``; a subcommand or an
option that does not exist fails with the file and the line. The runbook has a section per
scenario, and the journal line it tells operators to write really starts a paused controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hacontrol.cli import build_parser
from hacontrol.controller import Controller
from hacontrol.journal import Journal
from hacontrol.jsonlog import JsonLog
from tests.factories import settings

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

RUNBOOK_SCENARIOS = (
    "A replica down",
    "All replicas down",
    "Primary down",
    "ProxySQL down",
    "The old primary returns",
    "Errant transactions",
    "Planned maintenance and switchover",
    "The controller itself crashed",
    "Rollout to an existing cluster",
)

# Tokens after which the next word is a command (shell separators, wrappers, prompts).
COMMAND_POSITION = {"&&", "||", ";", "|", "(", "$(", "--", "$", "exec", "sudo", "time", "then"}
# Tokens that end a command's arguments.
END_OF_ARGS = {"&&", "||", ";", "|", ")", ">", ">>", "2>", "2>&1", "<"}
# Placeholders used in the docs, and a plausible value for each.
PLACEHOLDERS = {
    "NODE": "node2",
    "F": "settings.toml",
    "FILE": "settings.toml",
    "D": "./sandbox",
    "N": "3",
    "URL": "http://127.0.0.1:8008",
}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class CommandLine:
    file: Path
    line: int
    text: str
    """The command as written, from ``hacontrol`` on."""
    argv: tuple[str, ...]
    """The arguments after ``hacontrol``, placeholders replaced."""

    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}: `{self.text}`"


def code_snippets(text: str) -> Iterator[tuple[int, str]]:
    """(line number, code) for every line of a fenced block and every inline code span.

    An inline span may wrap onto the next line (Markdown allows it): prose is scanned one
    paragraph at a time, and the span's newlines become spaces."""
    lines = text.splitlines()
    in_fence = False
    paragraph: list[str] = []
    start = 0

    def spans() -> Iterator[tuple[int, str]]:
        block = "\n".join(paragraph)
        for match in re.finditer(r"`([^`]+)`", block):
            yield start + block.count("\n", 0, match.start()), match.group(1).replace("\n", " ")

    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            yield from spans()
            paragraph = []
            in_fence = not in_fence
            continue
        if in_fence:
            yield number, line
            continue
        if not line.strip():
            yield from spans()
            paragraph = []
            continue
        if not paragraph:
            start = number
        paragraph.append(line)
    yield from spans()


def _is_program(token: str) -> bool:
    return token == "hacontrol" or token.endswith("/bin/hacontrol")


def _in_command_position(tokens: list[str], i: int) -> bool:
    if i == 0:
        return True
    before = tokens[i - 1]
    if before in COMMAND_POSITION or ASSIGNMENT.match(before):
        return True
    return before == "-m" and i >= 2 and Path(tokens[i - 2]).name.startswith("python")


def _argument(token: str) -> list[str]:
    """A documented argument as the parser would receive it: no optional brackets, the first
    of alternatives (``up|down``), placeholders replaced, ``...`` dropped."""
    token = token.strip("[]")
    if "|" in token:
        token = token.split("|")[0]
    if not token or token == "..." or re.fullmatch(r"<[^>]*>", token):
        return []
    return [PLACEHOLDERS.get(token, token)]


def commands_in(snippet: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(text, argv) of every ``hacontrol`` command in one line of code."""
    tokens = snippet.replace("\\|", "|").split()
    for i, token in enumerate(tokens):
        if not (_is_program(token) and _in_command_position(tokens, i)):
            continue
        raw: list[str] = []
        for arg in tokens[i + 1 :]:
            if arg in END_OF_ARGS or arg.startswith("#"):
                break
            raw.append(arg)
        argv = tuple(a for r in raw for a in _argument(r))
        if argv:
            yield " ".join([token, *raw]), argv


def documented_commands(files: tuple[Path, ...] = DOCUMENTS) -> list[CommandLine]:
    found = []
    for path in files:
        for number, code in code_snippets(path.read_text(encoding="utf-8")):
            for text, argv in commands_in(code):
                found.append(CommandLine(path, number, text, argv))
    return found


def parse_error(argv: tuple[str, ...]) -> str | None:
    """None when the real parser accepts ``argv``, else its error message."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(list(argv))
        except SystemExit as exc:
            return None if exc.code in (0, None) else err.getvalue().strip().splitlines()[-1]
    if getattr(args, "func", None) is None:
        return "no command"
    return None


# ---- the extractor itself ------------------------------------------------------------------


def test_commands_are_found_in_command_position_only():
    found = [argv for _, argv in commands_in("journalctl -u hacontrol -o cat | jq .")]
    assert found == []
    line = "kubectl exec deploy/x -c hacontrol -- hacontrol pause --config /etc/h.toml"
    assert [argv for _, argv in commands_in(line)] == [("pause", "--config", "/etc/h.toml")]
    line = "HACONTROL_API__TOKEN=t .venv/bin/hacontrol ack && hacontrol status --json | head"
    assert [argv for _, argv in commands_in(line)] == [("ack",), ("status", "--json")]
    assert [argv for _, argv in commands_in("python -m hacontrol status")] == [("status",)]


def test_documented_syntax_becomes_plausible_arguments():
    line = r"hacontrol sandbox up\|down\|status [--nodes 3] [--dir ./sandbox] [--json]"
    assert [argv for _, argv in commands_in(line)] == [
        ("sandbox", "up", "--nodes", "3", "--dir", "./sandbox", "--json")
    ]
    assert [argv for _, argv in commands_in("hacontrol maintenance NODE on|off")] == [
        ("maintenance", "node2", "on")
    ]


def test_inline_code_wrapped_over_two_lines_is_one_command(tmp_path: Path):
    doc = tmp_path / "wrapped.md"
    doc.write_text("Text and `hacontrol run\n--ack` at start-up.\n\n```sh\nhacontrol ack\n```\n")
    found = [(c.line, c.argv) for c in documented_commands((doc,))]
    assert found == [(1, ("run", "--ack")), (5, ("ack",))]


def test_a_command_that_does_not_exist_is_reported_with_its_line(tmp_path: Path):
    doc = tmp_path / "wrong.md"
    doc.write_text("Run `hacontrol swtichover --to db2`\nand `hacontrol status --colour`.\n")
    errors = {c.line: parse_error(c.argv) for c in documented_commands((doc,))}
    assert "invalid choice: 'swtichover'" in (errors[1] or "")
    assert "unrecognized arguments: --colour" in (errors[2] or "")


# ---- the documents -----------------------------------------------------------------------


def test_every_documented_command_parses_with_the_real_parser():
    commands = documented_commands()
    # The docs document these at least; an extractor that finds nothing would prove nothing.
    subcommands = {c.argv[0] for c in commands}
    assert {"run", "status", "check-config", "switchover", "maintenance", "ack", "pause"} <= (
        subcommands
    )
    failures = [f"{c.where()}: {error}" for c in commands if (error := parse_error(c.argv))]
    assert not failures, "documented commands the parser rejects:\n" + "\n".join(failures)


def test_runbook_has_a_section_per_scenario():
    text = (REPO / "docs" / "runbook.md").read_text(encoding="utf-8")
    titles = {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}
    missing = [s for s in RUNBOOK_SCENARIOS if s not in titles]
    assert not missing, f"docs/runbook.md lacks sections: {missing}"
    for title in RUNBOOK_SCENARIOS:  # each says what hacontrol does, what you see, what you do
        section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        if title != "Rollout to an existing cluster":
            assert "**You do:**" in section, title


def test_run_paused_of_the_rollout_starts_paused_and_stays_paused(tmp_path: Path):
    text = (REPO / "docs" / "runbook.md").read_text(encoding="utf-8")
    assert "hacontrol run --paused" in text
    journal = Journal(tmp_path / "journal.jsonl")
    log = JsonLog("t", stream=io.StringIO())
    first = Controller(settings(), log, asyncio.Queue(), journal=journal, paused=True)
    assert first.state.paused is True
    # Restarted without the flag: still paused (kept in the journal) until `resume`.
    again = Controller(settings(), log, asyncio.Queue(), journal=Journal(journal.path))
    assert again.state.paused is True


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_point_at_existing_files(path: Path):
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (path.parent / target).exists():
            broken.append(target)
    assert not broken, f"{path.name}: links to missing files: {broken}"
