"""Where the API listens: ``api.host:api.port``, over TLS when ``api.tls_cert`` and
``api.tls_key`` are set, or a unix socket (``api.socket``, mode 0600: only its owner and root
may call it).

Over TLS a client has ``api.idle_timeout`` to finish its handshake (asyncio's default is 60 s,
during which a connection that never handshakes holds a descriptor without counting against
``api.max_connections``). A stale socket file (nothing listens on it) is replaced; a socket
another process listens on is refused.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from pathlib import Path

from aiohttp import web

from hacontrol.settings import ApiSettings
from hacontrol.tlsconf import server_context

SOCKET_MODE = 0o600


class _TlsTcpSite(web.TCPSite):
    """aiohttp's TCP site with a bounded TLS handshake."""

    def __init__(self, *args: object, handshake_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


def tls_of(settings: ApiSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key)


def site_for(runner: web.BaseRunner, settings: ApiSettings) -> web.BaseSite:
    tls = tls_of(settings)
    if settings.socket is not None:
        replace_stale_socket(settings.socket)
        return web.UnixSite(runner, str(settings.socket), ssl_context=tls)
    if tls is not None:
        return _TlsTcpSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=tls,
            backlog=1024,
            handshake_timeout=settings.idle_timeout,
        )
    return web.TCPSite(runner, settings.host, settings.port, backlog=1024)


def bound(runner: web.BaseRunner, settings: ApiSettings) -> tuple[str, int]:
    """(host, port) the API listens on; (socket path, 0) for a unix socket, made 0600."""
    if settings.socket is not None:
        os.chmod(settings.socket, SOCKET_MODE)
        return str(settings.socket), 0
    host, port = runner.addresses[0][:2]
    return host, port


def replace_stale_socket(path: Path) -> None:
    """Remove a socket file nothing listens on; OSError when something does, or when the path
    is not a socket (never removed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"api.socket {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise OSError(f"api.socket {path}: another process listens on it")
