"""List every function in hacontrol/ longer than a limit (default 60 lines), longest first.

    python scripts/long_functions.py [--limit 60] [paths...]

A function's length counts from its ``def`` line (decorators excluded) to its last line,
docstring and comments included: what a reader has to hold at once. Exit status 1 when any
function is over the limit, so that it can run in CI.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def long_functions(paths: list[Path], limit: int) -> Iterator[tuple[int, str]]:
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                    yield length, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    roots = args.paths or [ROOT / "hacontrol"]
    files = sorted({f.resolve() for p in roots for f in (p.rglob("*.py") if p.is_dir() else [p])})
    found = sorted(long_functions(files, args.limit), reverse=True)
    for length, where in found:
        print(f"{length:4d} {where}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
