"""TLS contexts from settings values: one way to build them for every connection the
controller opens (nodes, the ProxySQL admin, the lease sessions) and for the API it serves.

Modes follow the MySQL client's ``--ssl-mode``: ``off``, ``required`` (encrypted, certificate
not checked), ``verify_ca`` (signed by the given CA), ``verify_identity`` (and issued for the
host the connection names). TLS 1.2 at least. Building a context reads the files, so an
unreadable CA or a key that does not match its certificate fails at ``check-config``, naming
the key, not at the first failover.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

MODES = ("off", "required", "verify_ca", "verify_identity")


class TlsConfigError(ValueError):
    """A context cannot be built: ``field`` (mode, ca, cert, key) and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def client_context(
    mode: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | None:
    """The context of a client connection, None for ``off``. TlsConfigError when ``mode``
    needs what is missing or a file cannot be loaded."""
    if mode not in MODES:
        raise TlsConfigError("mode", f"unknown TLS mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "off":
        return None
    if mode.startswith("verify") and ca is None:
        raise TlsConfigError("ca", f"mode {mode!r} needs a CA certificate")
    if (cert is None) != (key is None):
        raise TlsConfigError("key" if key is None else "cert", "a client certificate needs both")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = mode == "verify_identity"
    context.verify_mode = ssl.CERT_NONE if mode == "required" else ssl.CERT_REQUIRED
    if ca is not None:
        _load(ca, "ca", lambda: context.load_verify_locations(cafile=str(ca)))
    if cert is not None and key is not None:
        _load(cert, "cert", lambda: context.load_cert_chain(str(cert), str(key)))
    return context


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context of a TLS server (the API): TLS 1.2 at least, no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(cert, "cert", lambda: context.load_cert_chain(str(cert), str(key)))
    return context


def describe(obj: object) -> str | None:
    """ "TLSv1.3 TLS_AES_256_GCM_SHA384" for an ``ssl.SSLObject``/``SSLSocket``, else None."""
    version = getattr(obj, "version", None)
    cipher = getattr(obj, "cipher", None)
    if not callable(version) or not callable(cipher):
        return None
    name = cipher()
    return f"{version()} {name[0]}" if name else version()


def _load(path: Path, what: str, load: Callable[[], object]) -> None:
    try:
        load()
    except FileNotFoundError:
        raise TlsConfigError(what, f"{path}: no such file") from None
    except PermissionError:
        raise TlsConfigError(what, f"{path}: permission denied") from None
    except IsADirectoryError:
        raise TlsConfigError(what, f"{path}: is a directory") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise TlsConfigError(what, f"{path}: cannot be loaded ({reason})") from None
