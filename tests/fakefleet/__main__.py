"""Run a fake fleet as its own process.

    .venv/bin/python -m tests.fakefleet --nodes 1000 [--sizes 3,3,4] [--base-port auto]
    .venv/bin/python -m tests.fakefleet --spec fleet.json

Prints ``ready <control URL>`` once every node listens (read the nodes with GET /nodes), then
serves until SIGTERM or SIGINT. uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from hacontrol.sandbox import find_free_base_port
from tests.fakefleet.control import serve
from tests.fakefleet.server import FakeFleet
from tests.fakefleet.spec import FleetSpec, cluster_sizes, fleet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakefleet", description=__doc__)
    parser.add_argument("--spec", type=Path, help="a fleet spec (JSON, FleetSpec.to_json)")
    parser.add_argument("--nodes", type=int, default=9, help="nodes in all (without --spec)")
    parser.add_argument("--sizes", default="3,3,4", help="cluster sizes, cycled")
    parser.add_argument(
        "--base-port",
        default="auto",
        help="first node port, 'auto' (a free range below the ephemeral ports) or 0 (any)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--write-rate", type=float, default=1.0, help="transactions/s/cluster")
    parser.add_argument("--password", default=FleetSpec.password)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--spec-out", type=Path, help="write the spec with its ports here")
    parser.add_argument(
        "--kernel-stamps",
        action="store_true",
        help="also record when the kernel received each probe (GET /cadence?stamp=kernel)",
    )
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> FleetSpec:
    if args.spec is not None:
        return FleetSpec.load(args.spec)
    sizes = cluster_sizes(args.nodes, [int(s) for s in args.sizes.split(",")])
    base = find_free_base_port(args.nodes) if args.base_port == "auto" else int(args.base_port)
    return fleet(
        sizes,
        host=args.host,
        base_port=base,
        write_rate=args.write_rate,
        password=args.password,
    )


async def run(args: argparse.Namespace) -> None:
    fake = FakeFleet(build_spec(args), kernel_stamps=args.kernel_stamps)
    await fake.start()
    runner = await serve(fake, "127.0.0.1", args.control_port)
    try:
        if args.spec_out is not None:
            args.spec_out.write_text(fake.spec.to_json())
        host, port = runner.addresses[0][:2]
        print(f"ready http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(run(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args))
    sys.exit(0)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
