"""The statements the fake fleet understands, parsed into plain values. Pure.

Only what the controller (probes, actions, leases) and its tests send: SELECT of literals,
``@@`` variables and a few functions (GET_LOCK, IS_USED_LOCK, IS_FREE_LOCK, RELEASE_LOCK,
RELEASE_ALL_LOCKS, CONNECTION_ID, MASTER_GTID_WAIT, SLEEP); the PROCESSLIST and INNODB_TRX
queries; SHOW ALL SLAVES STATUS; SHOW GLOBAL VARIABLES/STATUS with LIKE or WHERE
Variable_name IN/=; DO; STOP/START/RESET SLAVE; CHANGE MASTER TO; SET GLOBAL; KILL. Anything
else parses to :class:`Unsupported`, which the server answers with an error naming it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
  | (?P<ident>`(?:[^`]|``)*`)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<var>@@(?:global\.|session\.|local\.)?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*)
  | (?P<op><>|!=|<=|>=|[-(),;=*<>+])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper()


class SqlError(ValueError):
    """Text the fake cannot parse (a real server would say 1064)."""


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: str | int | float | None


@dataclass(frozen=True)
class Variable:
    name: str  # lower case, without @@ and scope


@dataclass(frozen=True)
class Call:
    function: str  # upper case
    args: tuple[Literal, ...]


Expr = Literal | Variable | Call
BLOCKING = frozenset({"SLEEP", "MASTER_GTID_WAIT", "GET_LOCK"})


def waits(expr: Expr) -> bool:
    """Whether evaluating ``expr`` may wait: SLEEP, MASTER_GTID_WAIT, GET_LOCK with a timeout."""
    if not isinstance(expr, Call) or expr.function not in BLOCKING:
        return False
    if expr.function == "GET_LOCK":
        timeout = expr.args[1].value if len(expr.args) > 1 else 0
        return timeout != 0
    return True


@dataclass(frozen=True)
class Item:
    column: str  # the alias, else the expression as typed (as MariaDB names the column)
    expr: Expr


# -- statements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Select:
    items: tuple[Item, ...]

    @property
    def blocking(self) -> bool:
        return any(waits(item.expr) for item in self.items)


@dataclass(frozen=True)
class Do(Select):
    """DO expr, ...: evaluated, answered with OK."""


@dataclass(frozen=True)
class Table:
    name: str  # "processlist" or "innodb_trx"


@dataclass(frozen=True)
class ShowSlaves:
    pass


@dataclass(frozen=True)
class Show:
    kind: str  # "variables" or "status"
    like: str | None = None
    names: tuple[str, ...] | None = None  # lower case


@dataclass(frozen=True)
class Slave:
    verb: str  # "start", "stop" or "reset"
    thread: str | None = None  # "io", "sql" or None (both)
    everything: bool = False  # RESET SLAVE ALL


@dataclass(frozen=True)
class ChangeMaster:
    options: tuple[tuple[str, str | int | float | None], ...]  # lower-case keys


@dataclass(frozen=True)
class SetGlobal:
    assignments: tuple[tuple[str, str | int | float | None], ...]


@dataclass(frozen=True)
class Ignored:
    """Session settings a client library sends (SET NAMES, SET autocommit...): OK."""


@dataclass(frozen=True)
class Kill:
    thread: int
    query_only: bool


@dataclass(frozen=True)
class Unsupported:
    code: int
    message: str


Statement = (
    Select | Table | ShowSlaves | Show | Slave | ChangeMaster | SetGlobal | Ignored | Kill
) | Unsupported


# -- parsing --------------------------------------------------------------------------------


def tokens(text: str) -> list[Token]:
    out = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        if kind != "space":
            out.append(Token(kind, match.group(), match.start(), match.end()))
    return out


def literal_value(token: Token) -> str | int | float | None:
    if token.kind == "str":
        return unquote(token.text)
    if token.kind == "num":
        return int(token.text) if token.text.isdigit() else float(token.text)
    if token.kind == "word" and token.upper == "NULL":
        return None
    if token.kind == "word":
        return token.text  # ON, OFF, slave_pos...
    raise SqlError(f"not a value: {token.text!r}")


def unquote(text: str) -> str:
    quote, body = text[0], text[1:-1]
    out, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        elif char == quote and body[i + 1 : i + 2] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def split(items: list[Token], separator: str = ",") -> list[list[Token]]:
    """Top-level pieces (outside parentheses) between separators."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in items:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        if depth == 0 and token.kind == "op" and token.text == separator:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> tuple[Statement, ...]:
    """Every statement of a (multi-statement) query. Never raises."""
    statements = []
    for part in split(tokens(text), ";"):
        if part:
            try:
                statements.append(statement(part, text))
            except SqlError as exc:
                statements.append(_syntax_error(text[part[0].start : part[-1].end], str(exc)))
    return tuple(statements) or (_syntax_error(text, "empty query"),)


def _syntax_error(source: str, why: str) -> Unsupported:
    near = source[:80]
    return Unsupported(
        1064,
        "You have an error in your SQL syntax; check the manual that corresponds to your "
        f"MariaDB server version for the right syntax to use near '{near}' at line 1 ({why})",
    )


def statement(part: list[Token], text: str) -> Statement:
    """One statement: ``part`` are its tokens, positioned in the query ``text``."""
    source = text[part[0].start : part[-1].end]
    words = [t.upper for t in part[:4]]
    first = words[0]
    if first == "SELECT":
        return _select(part, text)
    if first == "DO":
        return Do(_select_items(part[1:], text))
    if first == "SHOW":
        return _show(part)
    if first in ("STOP", "START", "RESET"):
        return _slave(part)
    if words[:3] == ["CHANGE", "MASTER", "TO"]:
        return ChangeMaster(_assignments(part[3:], lower=True))
    if first == "SET":
        return _set(part)
    if first == "KILL":
        return _kill(part)
    return Unsupported(1235, f"The fake fleet does not imitate '{source[:80]}'")


def _select(part: list[Token], text: str) -> Statement:
    upper = [t.upper for t in part]
    if "FROM" not in upper:
        return Select(_select_items(part[1:], text))
    table = part[upper.index("FROM") + 1].text.lower() if upper[-1] != "FROM" else ""
    if table in ("information_schema.processlist", "information_schema.innodb_trx"):
        return Table(table.split(".")[1])
    return Unsupported(1235, f"The fake fleet has no table {table!r}")


def _select_items(part: list[Token], text: str) -> tuple[Item, ...]:
    items = []
    for piece in split(part):
        if not piece:
            raise SqlError("empty select item")
        alias = None
        if len(piece) >= 3 and piece[-2].upper == "AS":
            last = piece[-1]
            alias = last.text.strip("`") if last.kind in ("word", "ident") else unquote(last.text)
            piece = piece[:-2]
        typed = text[piece[0].start : piece[-1].end]
        items.append(Item(alias if alias is not None else typed, _expr(piece)))
    return tuple(items)


def _expr(piece: list[Token]) -> Expr:
    if len(piece) == 1:
        token = piece[0]
        if token.kind == "var":
            name = token.text[2:].lower()
            for scope in ("global.", "session.", "local."):
                name = name.removeprefix(scope)
            return Variable(name)
        return Literal(literal_value(token))
    if len(piece) == 2 and piece[0].text == "-" and piece[1].kind == "num":
        value = literal_value(piece[1])
        assert isinstance(value, int | float)
        return Literal(-value)
    if (
        len(piece) >= 3
        and piece[0].kind == "word"
        and piece[1].text == "("
        and piece[-1].text == ")"
    ):
        inner = piece[2:-1]
        args = tuple(_expr(arg) for arg in split(inner)) if inner else ()
        if not all(isinstance(a, Literal) for a in args):
            raise SqlError(f"{piece[0].text}() takes literal arguments here")
        return Call(piece[0].upper, args)  # type: ignore[arg-type]
    raise SqlError("unsupported expression")


def _show(part: list[Token]) -> Statement:
    words = [t.upper for t in part]
    if words[1:] in (["ALL", "SLAVES", "STATUS"], ["ALL", "REPLICAS", "STATUS"]):
        return ShowSlaves()
    rest = words[1:]
    if rest and rest[0] in ("GLOBAL", "SESSION"):
        rest = rest[1:]
    if not rest or rest[0] not in ("VARIABLES", "STATUS"):
        return Unsupported(1235, f"The fake fleet does not imitate SHOW {' '.join(words[1:])}")
    kind = rest[0].lower()
    tail = part[len(part) - len(rest) + 1 :]
    if not tail:
        return Show(kind)
    if tail[0].upper == "LIKE" and len(tail) == 2:
        return Show(kind, like=str(literal_value(tail[1])))
    if tail[0].upper == "WHERE" and len(tail) >= 4 and tail[1].upper == "VARIABLE_NAME":
        if tail[2].upper == "IN":
            inside = tail[4:-1] if tail[3].text == "(" and tail[-1].text == ")" else []
            names = tuple(str(literal_value(p[0])).lower() for p in split(inside) if p)
            return Show(kind, names=names)
        if tail[2].text == "=" and len(tail) == 4:
            return Show(kind, names=(str(literal_value(tail[3])).lower(),))
        if tail[2].upper == "LIKE" and len(tail) == 4:
            return Show(kind, like=str(literal_value(tail[3])))
    raise SqlError("unsupported SHOW condition")


def _slave(part: list[Token]) -> Statement:
    words = [t.upper for t in part]
    if len(words) < 2 or words[1] not in ("SLAVE", "REPLICA"):
        return Unsupported(1235, f"The fake fleet does not imitate {' '.join(words[:3])}")
    verb = words[0].lower()
    rest = words[2:]
    if verb == "reset":
        if rest not in ([], ["ALL"]):
            raise SqlError("RESET SLAVE [ALL]")
        return Slave("reset", everything=rest == ["ALL"])
    threads = {"IO_THREAD": "io", "SQL_THREAD": "sql"}
    chosen = {threads[w] for w in rest if w in threads}
    if any(w not in threads and w != "," for w in rest):
        raise SqlError(f"{verb.upper()} SLAVE [IO_THREAD] [SQL_THREAD]")
    return Slave(verb, chosen.pop() if len(chosen) == 1 else None)


def _assignments(part: list[Token], *, lower: bool) -> tuple[tuple[str, object], ...]:
    out = []
    for piece in split(part):
        if len(piece) != 3 or piece[1].text != "=":
            raise SqlError("expected name = value")
        name = piece[0].text
        for prefix in ("@@global.", "@@"):
            name = name.removeprefix(prefix)
        out.append((name.lower() if lower else name, literal_value(piece[2])))
    return tuple(out)


def _set(part: list[Token]) -> Statement:
    words = [t.upper for t in part]
    if len(words) >= 2 and words[1] == "GLOBAL":
        return SetGlobal(_assignments(part[2:], lower=True))
    if len(words) >= 2 and part[1].kind == "var" and part[1].text.lower().startswith("@@global."):
        return SetGlobal(_assignments(part[1:], lower=True))
    return Ignored()


def _kill(part: list[Token]) -> Statement:
    words = [t.upper for t in part]
    query_only = len(words) > 1 and words[1] == "QUERY"
    number = part[-1]
    if number.kind != "num" or not number.text.isdigit() or len(part) > 3:
        raise SqlError("KILL [CONNECTION|QUERY] id")
    return Kill(int(number.text), query_only)
