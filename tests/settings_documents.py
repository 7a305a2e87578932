"""Settings documents the settings tests share: the single form (``BASE``), the top level of
the ``[[clusters]]`` form (``TOP``) and two cluster entries, with the secrets both forms
carry written once; and the two ways a test reads a document (``write`` then
``load_settings``, or ``run_check`` for what `hacontrol check-config` prints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacontrol.cli import main

SECRETS = """
[mysql]
password = "s3cret-controller"
replication_password_file = "repl.pw"

[router]
kind = "proxysql"

[router.proxysql]
password = "s3cret-admin"
"""
"""The controller's password inline, the replication one in ``repl.pw`` (``write`` puts it
there), ProxySQL with its admin password."""

BASE = (
    """
[cluster]
name = "t"

[[nodes]]
name = "a"
host = "10.0.0.1"
port = 3306

[[nodes]]
name = "b"
host = "10.0.0.2"

[[nodes]]
name = "c"
host = "10.0.0.3"
priority = 5
no_promote = true
"""
    + SECRETS
)

TOP = (
    SECRETS
    + """
[failover]
max_lag = 8.0
recovery_block = 600.0

[api]
token = "s3cret-token-0123456789"

[controller]
journal = "state/journal.jsonl"
"""
)

ORDERS = """
[[clusters]]
name = "orders"
[[clusters.nodes]]
name = "o1"
host = "10.0.0.1"
[[clusters.nodes]]
name = "o2"
host = "10.0.0.2"
[[clusters.nodes]]
name = "o3"
host = "10.0.0.3"
"""

BILLING = """
[[clusters]]
name = "billing"
[[clusters.nodes]]
name = "b1"
host = "10.0.1.1"
[[clusters.nodes]]
name = "b2"
host = "10.0.1.2"
port = 3307
[[clusters.nodes]]
name = "b3"
host = "db-b3.example.com"
[clusters.router.proxysql]
writer_hostgroup = 110
reader_hostgroup = 120
broken_hostgroup = 130
hidden_hostgroup = 140
[clusters.failover]
max_lag = 2.5
"""

TWO = TOP + ORDERS + BILLING


def write(tmp_path: Path, text: str) -> Path:
    """``text`` as settings.toml in ``tmp_path``, next to the replication password file."""
    (tmp_path / "repl.pw").write_text("s3cret-repl\n")
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def run_check(path: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`hacontrol check-config --config path`: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def refused(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    """check-config refused the file (exit 2, nothing on stdout, no secret shown): its
    ``settings error`` lines and the whole of stderr."""
    code, out, err = run_check(path, capsys)
    assert (code, out) == (2, ""), err
    assert "s3cret" not in err
    return [line for line in err.splitlines() if "settings error" in line], err
