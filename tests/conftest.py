"""Shared fixtures. The sandbox ones start real mariadbd and HAProxy processes."""

from tests.sandbox_fixtures import fresh_sandbox, sandbox  # noqa: F401
