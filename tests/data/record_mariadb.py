"""Record a live server's status result sets as JSON for tests/test_flavors.py.

    python tests/data/record_mariadb.py PORT NAME "what this server was doing"

connects as root (or $RECORD_USER / $RECORD_PASSWORD) to 127.0.0.1:PORT, runs the detected
flavor's status_sql() as one
multi-statement query, and writes tests/data/NAME.json. Values are stored as the JSON form of
what aiomysql returned (str, int, float, None).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiomysql
from pymysql.constants import CLIENT

from hacontrol.flavors import DETECT_SQL, detect, multi_statement


async def record(port: int) -> dict[str, object]:
    conn = await aiomysql.connect(
        host="127.0.0.1",
        port=port,
        user=os.environ.get("RECORD_USER", "root"),
        password=os.environ.get("RECORD_PASSWORD", ""),
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    try:
        async with conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute(DETECT_SQL)
            server = await cur.fetchone()
            flavor = detect(server["version"], server["version_comment"])
            statements = flavor.status_sql()
            await cur.execute(multi_statement(statements))
            results = [list(await cur.fetchall())]
            while await cur.nextset():
                results.append(list(await cur.fetchall()))
    finally:
        conn.close()
    return {
        "version": server["version"],
        "version_comment": server["version_comment"],
        "statements": list(statements),
        "results": results,
    }


def main() -> None:
    port, name, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    recorded = asyncio.run(record(port))
    document = {"_source": f"recorded from a live server: {scenario}", **recorded}
    target = Path(__file__).with_name(f"{name}.json")
    target.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
