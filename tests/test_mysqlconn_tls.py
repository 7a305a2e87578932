"""TLS of the controller's own MySQL connections without a TLS server: a server that does not
offer TLS is refused when TLS is configured (never a silent plain-text fallback), one context
per setting. Real TLS handshakes with mariadbd: tests/test_tls_live.py."""

from __future__ import annotations

import pymysql
import pytest

from hacontrol.mysqlconn import (
    CR_SSL_CONNECTION_ERROR,
    Endpoint,
    TlsRefused,
    connect,
    describe_error,
    endpoint_for,
    tls_context,
    tls_of,
)
from hacontrol.settings import TlsSettings
from hacontrol.tlsconf import client_context
from tests.fakes import FakeMySQL


async def test_tls_required_refuses_a_server_that_does_not_offer_it():
    async with FakeMySQL() as server:
        tls = client_context("required")
        with pytest.raises(TlsRefused) as refused:
            await connect(Endpoint("127.0.0.1", server.port, "u", "secret", tls), 2.0)
        assert refused.value.args[0] == CR_SSL_CONNECTION_ERROR
        assert "does not offer it" in describe_error(refused.value)
        assert server.queries == []  # no login was sent: the password never left in clear
        plain = await connect(Endpoint("127.0.0.1", server.port, "u", "secret"), 2.0)
        try:
            assert tls_of(plain) is None
        finally:
            plain.close()


def test_one_context_per_setting_and_none_when_off():
    assert tls_context(TlsSettings()) is None
    required = TlsSettings(mode="required")
    assert tls_context(required) is tls_context(TlsSettings(mode="required"))
    endpoint = endpoint_for("127.0.0.1", 3306, "u", "hunter2-secret", required)
    assert endpoint.tls is tls_context(required)
    assert repr(endpoint) == "Endpoint(u@127.0.0.1:3306 tls)"  # never the password


def test_tls_refused_is_a_mysql_error_the_probes_already_handle():
    assert issubclass(TlsRefused, pymysql.err.OperationalError)
