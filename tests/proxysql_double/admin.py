"""The admin brain of the ProxySQL double: SQLite tables and statement handling, no network.

Statement handling follows ProxySQL 2.7.1's `admin_session_handler` (lib/Admin_Handler.cpp):
the query is first normalised (runs of white space collapsed, leading/trailing blanks and
trailing ';' removed), a few commands are intercepted on that normalised text (LOAD/SAVE,
BEGIN/COMMIT/ROLLBACK, some SET, SELECT @@version, SHOW ...), and everything else goes to
SQLite as written. SQLite errors come back as 1045/28000 "ProxySQL Admin Error: <message>".
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.proxysql_double.schema import (
    ALL_TABLES,
    DEFAULT_GLOBAL_VARIABLES,
    PROXYSQL_VERSION,
    SERVERS_TABLES,
    ReplicationHostgroupRow,
    ServerRow,
    disk_schema,
    main_schema,
)

ADMIN_ERROR_CODE = 1045
ADMIN_SQLSTATE = "28000"


@dataclass(frozen=True)
class OkReply:
    affected_rows: int = 0
    info: str = ""


@dataclass(frozen=True)
class ErrorReply:
    message: str
    code: int = ADMIN_ERROR_CODE
    sqlstate: str = ADMIN_SQLSTATE


@dataclass(frozen=True)
class RowsReply:
    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]


Reply = OkReply | ErrorReply | RowsReply
Row = tuple[int | str, ...]


def normalize(query: str) -> str:
    """ProxySQL's `query_no_space`: white space collapsed, trailing ';' and blanks removed."""
    return " ".join(query.split()).rstrip("; ")


def first_statement(query: str) -> str:
    """SQLite's prepare_v2 compiles only the first statement and ignores the tail; so does
    ProxySQL's admin. Python's sqlite3 refuses several statements, so cut the tail here."""
    for match in re.finditer(";", query):
        head = query[: match.end()]
        if sqlite3.complete_statement(head):
            return head
    return query


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


@dataclass(frozen=True)
class _Module:
    """A LOAD/SAVE module: the tables it moves and, for variables, the name prefix."""

    name: str
    tables: tuple[str, ...]
    prefix: str | None = None  # global_variables modules only move rows with this prefix

    def where(self) -> str:
        return f" WHERE variable_name LIKE '{self.prefix}%'" if self.prefix else ""


MODULES = (
    _Module("MYSQL SERVERS", tuple(SERVERS_TABLES)),
    _Module("MYSQL VARIABLES", ("global_variables",), "mysql-"),
    _Module("ADMIN VARIABLES", ("global_variables",), "admin-"),
)

# Real ProxySQL modules whose LOAD/SAVE the double does not emulate: fail loudly, never pretend.
_NOT_EMULATED = re.compile(
    r"^(LOAD|SAVE) (MYSQL (USERS?|QUERY RULES|FIREWALL|DIGEST)|PGSQL|SCHEDULER|PROXYSQL SERVERS"
    r"|RESTAPI|LDAP|SQLITESERVER|CLICKHOUSE|DEBUG|COREDUMP|MCP|GENAI)\b",
    re.IGNORECASE,
)

_ORDER = {
    "mysql_servers": "hostgroup_id, hostname, port",
    "mysql_replication_hostgroups": "writer_hostgroup",
    "global_variables": "variable_name",
}

# Statements ProxySQL's admin answers OK without running them (prefix match, case-insensitive).
_OK_PREFIXES = (
    "BEGIN",
    "START TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SET character_set_results",
    "SET SQL_AUTO_IS_NULL",
    "SET NAMES",
    "SET AUTOCOMMIT",
    "USE ",
)


def _command_table(modules: Sequence[_Module]) -> dict[str, tuple[_Module, str]]:
    """Every accepted spelling (upper case) -> (module, direction)."""
    table: dict[str, tuple[_Module, str]] = {}
    spellings = {
        "memory_to_runtime": ("LOAD {} FROM MEMORY", "LOAD {} FROM MEM", "LOAD {} TO RUNTIME",
                              "LOAD {} TO RUN"),
        "runtime_to_memory": ("SAVE {} TO MEMORY", "SAVE {} TO MEM", "SAVE {} FROM RUNTIME",
                              "SAVE {} FROM RUN"),
        "disk_to_memory": ("LOAD {} TO MEMORY", "LOAD {} TO MEM", "LOAD {} FROM DISK"),
        "memory_to_disk": ("SAVE {} FROM MEMORY", "SAVE {} FROM MEM", "SAVE {} TO DISK"),
        "config_to_memory": ("LOAD {} FROM CONFIG",),
    }  # fmt: skip
    for module in modules:
        for direction, forms in spellings.items():
            for form in forms:
                table[form.format(module.name)] = (module, direction)
    return table


_COMMANDS = _command_table(MODULES)


class AdminDb:
    """ProxySQL's admin databases: `main` (in memory, config + runtime_ tables) and `disk`.

    The runtime is held apart from SQLite (as ProxySQL holds it in its hostgroup manager) and
    copied into the `runtime_*` tables before every statement, so writes to those tables never
    change it.
    """

    def __init__(
        self,
        disk_path: Path,
        *,
        seed_servers: Sequence[ServerRow] = (),
        seed_replication_hostgroups: Sequence[ReplicationHostgroupRow] = (),
        initial: bool = False,
    ) -> None:
        self._seed_servers = tuple(seed_servers)
        self._seed_rhg = tuple(seed_replication_hostgroups)
        existed = disk_path.exists()
        if initial and existed:
            disk_path.replace(disk_path.with_name(disk_path.name + ".bak"))
            existed = False
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for statement in main_schema():
            self._db.execute(statement)
        self._db.execute("ATTACH DATABASE ? AS disk", (str(disk_path),))
        for statement in disk_schema():
            self._db.execute(statement)
        self._db.executemany(
            "INSERT INTO main.global_variables VALUES (?, ?)", DEFAULT_GLOBAL_VARIABLES.items()
        )
        self._runtime: dict[str, tuple[Row, ...]] = {name: () for name in ALL_TABLES}
        self._runtime["global_variables"] = tuple(sorted(DEFAULT_GLOBAL_VARIABLES.items()))
        with self._transaction():
            for module in MODULES:
                if existed:
                    self._disk_to_memory(module)
                else:
                    self._config_to_memory(module)
                    self._memory_to_disk(module)
                self._memory_to_runtime(module)

    def close(self) -> None:
        self._db.close()

    # --- what tests look at -------------------------------------------------------------

    def runtime_servers(self) -> tuple[ServerRow, ...]:
        return tuple(ServerRow(*row) for row in self._runtime["mysql_servers"])  # type: ignore[arg-type]

    def runtime_variables(self) -> dict[str, str]:
        return {str(name): str(value) for name, value in self._runtime["global_variables"]}

    def set_runtime_status(self, hostname: str, port: int, status: str) -> int:
        """Stand-in for ProxySQL's monitor/connection pool (e.g. SHUNNED): change the runtime
        status of every runtime row of hostname:port. Returns how many rows changed."""
        rows, changed = [], 0
        for row in self._runtime["mysql_servers"]:
            if row[1] == hostname and row[2] == port:
                row, changed = (*row[:4], status, *row[5:]), changed + 1
            rows.append(row)
        self._runtime["mysql_servers"] = tuple(rows)
        return changed

    # --- statements -----------------------------------------------------------------------

    def execute(self, query: str) -> Reply:
        text = normalize(query)
        if not text:
            return ErrorReply("Empty query")
        upper = text.upper()
        if upper.startswith(("LOAD ", "SAVE ")):
            handled = self._load_or_save(upper)
            if handled is not None:
                return handled
        if upper.startswith(tuple(p.upper() for p in _OK_PREFIXES)):
            return OkReply()
        rewritten = self._rewrite(text, upper)
        if isinstance(rewritten, OkReply | ErrorReply):
            return rewritten
        return self._run_sql(rewritten if rewritten is not None else query)

    def _load_or_save(self, upper: str) -> Reply | None:
        command = _COMMANDS.get(upper)
        if command is None:
            if _NOT_EMULATED.match(upper):
                return ErrorReply(f"ProxySQL Admin Error: (test double) not emulated: {upper}")
            return None  # ProxySQL hands unknown LOAD/SAVE text to SQLite: a syntax error
        module, direction = command
        handler: Callable[[_Module], None] = getattr(self, f"_{direction}")
        try:
            with self._transaction():
                handler(module)
        except sqlite3.Error as exc:
            return ErrorReply(f"ProxySQL Admin Error: {exc}")
        return OkReply()

    def _rewrite(self, text: str, upper: str) -> str | Reply | None:
        """ProxySQL's query rewrites for the admin session; None = run the query as sent."""
        if upper == "SELECT @@VERSION_COMMENT LIMIT 1":
            return "SELECT '(ProxySQL Admin Module)'"
        if upper.startswith("SELECT @@VERSION"):
            return f"SELECT '{PROXYSQL_VERSION}' AS '@@version'"
        if upper.startswith("SELECT VERSION()"):
            return f"SELECT '{PROXYSQL_VERSION}' AS 'version()'"
        if upper == "SELECT DATABASE()":
            return "SELECT \"admin\" AS 'DATABASE()'"
        if upper.startswith("SET "):
            return self._set(text)
        return _show_rewrite(text, upper)

    def _set(self, text: str) -> str | Reply:
        name, _, value = text[4:].partition("=")
        name = name.strip()
        if name == "mysql-init_connect":
            return ErrorReply(
                f"ERROR: Global variable '{name}' is not configurable using SET command. "
                "You must run UPDATE global_variables"
            )
        if name not in DEFAULT_GLOBAL_VARIABLES:
            return OkReply(info=f"ERROR: Unknown global variable: '{name}'.")
        return f"UPDATE global_variables SET variable_value={value} WHERE variable_name='{name}'"

    def _run_sql(self, query: str) -> Reply:
        self._refresh_runtime_tables()
        try:
            cursor = self._db.execute(first_statement(query))
            if cursor.description is None:
                return OkReply(max(cursor.rowcount, 0))
            columns = tuple(str(d[0]) for d in cursor.description)
            rows = tuple(tuple(_text(v) for v in row) for row in cursor.fetchall())
            return RowsReply(columns, rows)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            return ErrorReply(f"ProxySQL Admin Error: {exc}")

    # --- moving configuration between layers ---------------------------------------------

    def _select(self, schema: str, table: str, module: _Module) -> list[Row]:
        sql = f"SELECT * FROM {schema}.{table}{module.where()} ORDER BY {_ORDER[table]}"
        return self._db.execute(sql).fetchall()

    def _write(self, schema: str, table: str, module: _Module, rows: Iterable[Row]) -> None:
        """Servers tables are replaced whole; variables are merged (INSERT OR REPLACE)."""
        rows = list(rows)
        if module.prefix is None:
            self._db.execute(f"DELETE FROM {schema}.{table}")
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            sql = f"INSERT OR REPLACE INTO {schema}.{table} VALUES ({marks})"
            self._db.executemany(sql, rows)

    def _memory_to_runtime(self, module: _Module) -> None:
        for table in module.tables:
            rows = self._select("main", table, module)
            if table == "mysql_servers":
                rows = [(*row[:4], str(row[4]).upper(), *row[5:]) for row in rows]
            if module.prefix is None:
                self._runtime[table] = tuple(rows)
            else:  # only variables ProxySQL knows reach its runtime
                merged = dict(self._runtime[table])
                merged.update({k: v for k, v in rows if k in merged})
                self._runtime[table] = tuple(sorted(merged.items()))

    def _runtime_to_memory(self, module: _Module) -> None:
        for table in module.tables:
            rows = self._runtime[table]
            if module.prefix is not None:
                rows = tuple(r for r in rows if str(r[0]).startswith(module.prefix))
            self._write("main", table, module, rows)

    def _disk_to_memory(self, module: _Module) -> None:
        for table in module.tables:
            self._write("main", table, module, self._select("disk", table, module))

    def _memory_to_disk(self, module: _Module) -> None:
        for table in module.tables:
            self._write("disk", table, module, self._select("main", table, module))

    def _config_to_memory(self, module: _Module) -> None:
        """LOAD ... FROM CONFIG: the seed plays the config file (INSERT OR REPLACE, as ProxySQL)."""
        if module.name == "MYSQL SERVERS":
            self._db.executemany(
                "INSERT OR REPLACE INTO main.mysql_servers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [row.values() for row in self._seed_servers],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO main.mysql_replication_hostgroups VALUES (?,?,?,?)",
                [row.values() for row in self._seed_rhg],
            )

    def _refresh_runtime_tables(self) -> None:
        for table, rows in self._runtime.items():
            self._db.execute(f"DELETE FROM main.runtime_{table}")
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                self._db.executemany(f"INSERT INTO main.runtime_{table} VALUES ({marks})", rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _show_rewrite(text: str, upper: str) -> str | None:
    """The SHOW commands of ProxySQL's admin that are cheap to emulate."""
    simple = {
        "SHOW TABLES": "SELECT name AS tables FROM sqlite_master WHERE type='table' "
        "AND name NOT IN ('sqlite_sequence') ORDER BY name",
        "SHOW DATABASES": "PRAGMA DATABASE_LIST",
        "SHOW SCHEMAS": "PRAGMA DATABASE_LIST",
        "SHOW MYSQL SERVERS": "SELECT * FROM mysql_servers ORDER BY hostgroup_id, hostname, port",
        "SHOW VARIABLES": "SELECT variable_name AS Variable_name, variable_value AS Value "
        "FROM global_variables ORDER BY variable_name",
        "SHOW MYSQL VARIABLES": "SELECT variable_name AS Variable_name, variable_value AS Value "
        "FROM global_variables WHERE variable_name LIKE 'mysql-%' ORDER BY variable_name",
        "SHOW ADMIN VARIABLES": "SELECT variable_name AS Variable_name, variable_value AS Value "
        "FROM global_variables WHERE variable_name LIKE 'admin-%' ORDER BY variable_name",
    }
    if upper in simple:
        return simple[upper]
    if upper.startswith("SHOW CREATE TABLE "):
        schema, _, table = text[len("SHOW CREATE TABLE ") :].rpartition(".")
        table = table.strip("`")
        return (
            f"SELECT name AS 'table', sql AS 'Create Table' FROM {schema or 'main'}.sqlite_master "
            f"WHERE type='table' AND name='{table}'"
        )
    return None


def write_disk_servers(disk_path: Path, rows: Sequence[ServerRow]) -> None:
    """Replace disk.mysql_servers in the on-disk database file (to plant stale rows)."""
    disk_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(disk_path, isolation_level=None)
    try:
        for statement in disk_schema("main"):
            db.execute(statement)
        db.execute("BEGIN")
        db.execute("DELETE FROM mysql_servers")
        db.executemany(
            "INSERT INTO mysql_servers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [row.values() for row in rows],
        )
        db.execute("COMMIT")
    finally:
        db.close()
