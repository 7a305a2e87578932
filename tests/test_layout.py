"""The code's shape: the import contracts hold, the core's functions read at once, and shared
test helpers live in the helper modules (not in another test module)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = [
    "controller.py",
    "decide.py",
    "effects.py",
    "events.py",
    "executor.py",
    "journal.py",
    "loglines.py",
    "metrics.py",
    "model.py",
    "plan.py",
    "runtime.py",
    "service.py",
    "status.py",
    "step.py",
    "view.py",
    "rules",
]


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_function_of_the_core_is_longer_than_60_lines():
    script = ROOT / "scripts" / "long_functions.py"
    paths = [str(ROOT / "hacontrol" / p) for p in CORE]
    done = subprocess.run(
        [sys.executable, str(script), *paths], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout


# A test module that still takes a helper from another test module, and why it is not moved yet.
# Every entry must still be true: when the import goes, its entry goes too.
NOT_YET_MOVED = {}


def other_test_modules_imported(path: Path) -> set[str]:
    """Every ``tests.test_*`` module that ``path`` imports from, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("tests.test_")}


def test_shared_test_helpers_come_from_the_helper_modules():
    """tests/factories.py, support.py, fakes.py, live.py (and the other helper modules) hold
    what several test modules use; no test module imports from another one."""
    found = {
        (path.name, module)
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        for module in other_test_modules_imported(path)
    }
    assert found - NOT_YET_MOVED.keys() == set(), "import these from a helper module"
    assert NOT_YET_MOVED.keys() - found == set(), "moved: drop these from NOT_YET_MOVED"
