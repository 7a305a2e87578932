"""The code's shape: the import contracts hold, and the core's functions read at once."""

from __future__ import annotations

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
