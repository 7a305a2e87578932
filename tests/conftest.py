"""Shared fixtures. The sandbox ones start real mariadbd and a real router (ProxySQL when it
is on PATH, else HAProxy). The report header and the summary say which ProxySQL the tests used,
or why none."""

from __future__ import annotations

import pytest

from tests.proxysql_real import describe_proxysql
from tests.sandbox_fixtures import (  # noqa: F401
    fresh_proxysql_sandbox,
    fresh_sandbox,
    haproxy_sandbox,
    netns_sandbox,
    proxysql_sandbox,
    sandbox,
)


def pytest_report_header(config: pytest.Config) -> str:
    return f"proxysql: {describe_proxysql()}"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(f"ProxySQL used by the tests: {describe_proxysql()}")
