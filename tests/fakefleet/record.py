"""Record what a real MariaDB answers to every statement the fake fleet imitates.

    .venv/bin/python -m tests.fakefleet.record PRIMARY_PORT REPLICA_PORT --password-file FILE

Connects to 127.0.0.1 as the controller's user (``hacontrol``, as the probes and actions do:
aiomysql, autocommit, multi-statements) and writes ``tests/fakefleet/mariadb-10.11.json``:
the handshake (server version, capabilities, character set) and, for every statement, each
result set's column definitions exactly as the server sent them (name, table, character set,
length, type, flags, decimals) and its rows as the server's text. The fake answers with these
column definitions, so that aiomysql decodes its answers into the same Python types.

Run it against a sandbox (``hacontrol sandbox up``): a primary with semi-sync replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiomysql
from pymysql.constants import CLIENT

from hacontrol.actions.mysql import _OLDEST_TRX, _PROCESSLIST
from hacontrol.flavors import DETECT_SQL, MariaDB, multi_statement

RECORDING = Path(__file__).with_name("mariadb-10.11.json")

STATUS = multi_statement(MariaDB((10, 11, 0)).status_sql())
EXPRESSIONS = (
    "SELECT GET_LOCK('hacontrol.record', 0), IS_USED_LOCK('hacontrol.record'), "
    "RELEASE_LOCK('hacontrol.record'), CONNECTION_ID(), "
    "MASTER_GTID_WAIT('0-1-1', 0.001) AS result, 1, 'text', "
    "@@version, @@version_comment, @@global.server_id, @@global.read_only, @@global.log_bin, "
    "@@global.gtid_current_pos, @@global.gtid_binlog_pos, @@global.gtid_slave_pos, "
    "@@global.rpl_semi_sync_master_enabled, @@global.slave_net_timeout, "
    "@@global.gtid_binlog_state"
)

# name -> (which server, statement). Each answer is recorded as the server sent it.
STATEMENTS: dict[str, tuple[str, str]] = {
    "probe_version": ("primary", "SELECT @@version AS version, @@version_comment AS comment"),
    "detect": ("primary", DETECT_SQL),
    "status_primary": ("primary", STATUS),
    "status_replica": ("replica", STATUS),
    "expressions": ("primary", EXPRESSIONS),
    "show_status_like": ("replica", "SHOW GLOBAL STATUS LIKE 'Slave_heartbeat_period'"),
    "show_variables_like": ("replica", "SHOW GLOBAL VARIABLES LIKE 'slave_net_timeout'"),
    "processlist": ("primary", _PROCESSLIST.sql),
    "oldest_trx": ("primary", _OLDEST_TRX.sql),
}


async def connect(port: int, password: str) -> aiomysql.Connection:
    # conv={}: no converters, so every value comes back as the server's text (or bytes for
    # binary columns), which is what the fake must send.
    return await aiomysql.connect(
        host="127.0.0.1",
        port=port,
        user="hacontrol",
        password=password,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
        conv={},
    )


def field(f: Any) -> dict[str, Any]:
    return {
        "name": f.name,
        "org_name": f.org_name,
        "table": f.table_name,
        "org_table": f.org_table,
        "db": f.db.decode() if isinstance(f.db, bytes) else f.db,
        "charset": f.charsetnr,
        "length": f.length,
        "type": f.type_code,
        "flags": f.flags,
        "decimals": f.scale,
    }


def text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


async def answer(conn: aiomysql.Connection, sql: str) -> list[dict[str, Any]]:
    cursor = await conn.cursor()
    await cursor.execute(sql)
    sets = []
    while True:
        result = conn._result
        sets.append(
            {
                "fields": [field(f) for f in result.fields or ()],
                "rows": [[text(v) for v in row] for row in result.rows or ()],
            }
        )
        if not await cursor.nextset():
            break
    await cursor.close()
    return sets


async def record(ports: dict[str, int], password: str) -> dict[str, Any]:
    conns = {role: await connect(port, password) for role, port in ports.items()}
    try:
        primary = conns["primary"]
        document: dict[str, Any] = {
            "handshake": {
                "server_version": primary.server_version,
                "capabilities": primary.server_capabilities,
                "charset": primary.server_language,
                "status": primary.server_status,
            },
            "statements": {},
        }
        for name, (role, sql) in STATEMENTS.items():
            document["statements"][name] = {"sql": sql, "sets": await answer(conns[role], sql)}
        return document
    finally:
        for conn in conns.values():
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("primary_port", type=int)
    parser.add_argument("replica_port", type=int)
    parser.add_argument("--password-file", type=Path, required=True)
    args = parser.parse_args()
    password = args.password_file.read_text().strip()
    document = asyncio.run(
        record({"primary": args.primary_port, "replica": args.replica_port}, password)
    )
    document = {
        "_source": "recorded by tests/fakefleet/record.py from a sandbox: a semi-sync primary "
        "and one of its replicas (MASTER_HEARTBEAT_PERIOD 0.5)",
        **document,
    }
    RECORDING.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {RECORDING}")


if __name__ == "__main__":
    main()
