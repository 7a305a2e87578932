"""The API over TLS and on a unix socket, with the operator commands against each; a slow
TLS handshake is closed after ``api.idle_timeout``; check-config refuses TLS settings that
cannot work, naming the key."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from hacontrol.certs import CertError, authority
from hacontrol.settings import SettingsError, settings_from
from tests.factories import settings as factory_settings
from tests.fakes import TOKEN, FakeHandle, log_lines, run_cli, start_api


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    try:
        authority_ = authority(tmp_path_factory.mktemp("ca"))
    except CertError as exc:
        pytest.skip(str(exc))
    server = authority_.issue("api", server=True, hosts=("127.0.0.1", "localhost"))
    client = authority_.issue("operator", server=False)
    return authority_, server, client


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HACONTROL_API__TOKEN", "HACONTROL_CONFIG", "HACONTROL_API__TLS_CA"):
        monkeypatch.delenv(name, raising=False)


async def test_the_api_serves_https_and_the_operator_command_checks_its_certificate(
    ca, tmp_path, clean_env, capsys
):
    authority_, server, _ = ca
    handle = FakeHandle()
    api, log, url = await start_api(handle, tls_cert=server.cert, tls_key=server.key)
    try:
        https = url.replace("http://", "https://")
        trusted = ssl.create_default_context(cafile=str(authority_.cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(https + "/health", ssl=trusted) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port
                async with http.get(url + "/health") as r:
                    await r.read()
        version = await asyncio.to_thread(_negotiated, api.address[1], trusted)
        assert version in ("TLSv1.2", "TLSv1.3")
        (listening,) = [e for e in log_lines(log) if e["event"] == "api_listening"]
        assert listening["tls"] is True and listening["socket"] is False
        config = settings_toml(
            tmp_path,
            f'port = {api.address[1]}\ntoken = "{TOKEN}"\n'
            f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\ntls_ca = "{authority_.cert}"',
        )
        assert await run_cli(["pause", "--config", str(config)]) == 0
        assert [c.command for c in handle.commands] == ["pause"]
        # Without the CA the certificate is not trusted: unreachable (exit 3), nothing sent.
        code = await run_cli(["resume", "--url", https, "--config", str(config)])
        assert code == 0  # --url, token and CA from the settings
        assert await _untrusted(https, capsys) == 3
        assert [c.command for c in handle.commands] == ["pause", "resume"]
    finally:
        await api.stop()


def _negotiated(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


async def _untrusted(url: str, capsys) -> int:
    os.environ["HACONTROL_API__TOKEN"] = TOKEN
    try:
        code = await run_cli(["ack", "--url", url])
    finally:
        del os.environ["HACONTROL_API__TOKEN"]
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    return code


async def test_a_tls_handshake_that_never_comes_is_closed_after_the_idle_timeout(ca):
    _, server, _ = ca
    api, _, url = await start_api(
        FakeHandle(), tls_cert=server.cert, tls_key=server.key, idle_timeout=0.5
    )
    try:
        port = int(url.rsplit(":", 1)[1])
        started = time.monotonic()
        closed = await asyncio.to_thread(_silent_client, port, 10.0)
        assert closed and time.monotonic() - started < 5.0  # not asyncio's 60 s default
    finally:
        await api.stop()


def _silent_client(port: int, wait: float) -> bool:
    """Connect, send nothing (no ClientHello): True when the server closes first."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


async def test_the_api_on_a_unix_socket(tmp_path, clean_env, capsys):
    path = tmp_path / "api.sock"
    path_socket = socket.socket(socket.AF_UNIX)  # a stale socket from a previous run
    path_socket.bind(str(path))
    path_socket.close()
    handle = FakeHandle()
    api, log, _ = await start_api(handle, socket=path)
    try:
        assert api.address == (str(path), 0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get("http://localhost/health") as r,
        ):
            assert r.status == 200
        config = settings_toml(tmp_path, f'socket = "{path}"\ntoken = "{TOKEN}"')
        assert await run_cli(["pause", "--config", str(config)]) == 0
        assert await run_cli(["resume", "--url", f"unix://{path}", "--config", str(config)]) == 0
        assert [c.command for c in handle.commands] == ["pause", "resume"]
        (listening,) = [e for e in log_lines(log) if e["event"] == "api_listening"]
        assert listening["socket"] is True and listening["host"] == str(path)
        with pytest.raises(OSError, match="another process listens on it"):  # never stolen
            await start_api(FakeHandle(), socket=path)
    finally:
        await api.stop()


def settings_toml(folder: Path, api: str) -> Path:
    path = folder / "settings.toml"
    path.write_text(
        '[[nodes]]\nname = "node1"\nhost = "127.0.0.1"\nport = 3301\n'
        '[[nodes]]\nname = "node2"\nhost = "127.0.0.1"\nport = 3302\n'
        '[[nodes]]\nname = "node3"\nhost = "127.0.0.1"\nport = 3303\n'
        '[mysql]\npassword = "controller-pw"\nreplication_password = "replication-pw"\n'
        f'[api]\nhost = "127.0.0.1"\n{api}\n'
    )
    return path


def problems(tmp_path: Path, **sections) -> list[str]:
    data = factory_settings().model_dump(mode="json", exclude_none=True)
    data["mysql"] = {**data["mysql"], "password": "password-1", "replication_password": "pw-2-2-2"}
    for key, value in sections.items():
        section, _, field = key.partition("__")
        data[section] = {**data.get(section, {}), field: value}
    try:
        settings_from(data, tmp_path / "settings.toml")
    except SettingsError as exc:
        return exc.problems
    return []


def test_check_config_refuses_tls_settings_that_cannot_work(ca, tmp_path):
    authority_, server, client = ca
    assert problems(tmp_path, mysql__tls={"mode": "verify_identity"}) == [
        "mysql.tls.ca: mode 'verify_identity' needs a CA certificate"
    ]
    assert problems(tmp_path, mysql__tls={"mode": "required", "cert": str(client.cert)}) == [
        "mysql.tls.key: a client certificate needs both"
    ]
    missing = problems(tmp_path, mysql__tls={"mode": "verify_ca", "ca": "nowhere/ca.pem"})
    assert missing == [f"mysql.tls.ca: {tmp_path}/nowhere/ca.pem: no such file"]  # relative
    wrong_key = problems(
        tmp_path,
        mysql__tls={
            "mode": "verify_ca",
            "ca": str(authority_.cert),
            "cert": str(client.cert),
            "key": str(server.key),
        },
    )
    assert len(wrong_key) == 1 and wrong_key[0].startswith("mysql.tls.cert: ")
    assert "cannot be loaded" in wrong_key[0]
    assert problems(tmp_path, api__tls_cert=str(server.cert)) == [
        "api.tls_key: HTTPS needs both api.tls_cert and api.tls_key"
    ]
    (tmp_path / "plain").write_text("x")
    assert problems(tmp_path, api__socket=str(tmp_path / "plain")) == [
        f"api.socket: {tmp_path}/plain exists and is not a socket"
    ]
    ok = {"mode": "verify_identity", "ca": str(authority_.cert)}
    assert (
        problems(
            tmp_path, mysql__tls=ok, api__tls_cert=str(server.cert), api__tls_key=str(server.key)
        )
        == []
    )
