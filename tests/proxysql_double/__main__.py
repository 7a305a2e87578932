"""Run the ProxySQL admin double as a process:

    python -m tests.proxysql_double --datadir /tmp/psql --port 6032 \
        --server 10:127.0.0.1:3306 --server 20:127.0.0.1:3307

Prints one line `ready <host> <port>` on stdout once it listens; stops on SIGTERM/SIGINT
(like a killed proxysql: only what was SAVEd TO DISK survives).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from tests.proxysql_double.schema import ServerRow
from tests.proxysql_double.server import ProxySQLAdminDouble


def _server(text: str) -> ServerRow:
    hostgroup, host, port = text.split(":")
    return ServerRow(hostgroup_id=int(hostgroup), hostname=host, port=int(port))


async def _main(args: argparse.Namespace) -> None:
    double = ProxySQLAdminDouble(
        datadir=args.datadir,
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        seed_servers=args.server,
    )
    double.delay = args.delay
    await double.start(initial=args.initial)
    print(f"ready {double.host} {double.port}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await double.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.proxysql_double")
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--initial", action="store_true", help="ignore proxysql.db, use seeds")
    parser.add_argument(
        "--server", type=_server, action="append", default=[], help="HOSTGROUP:HOST:PORT seed"
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
