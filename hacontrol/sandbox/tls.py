"""The sandbox's own TLS (``hacontrol sandbox up --tls``): a throwaway CA in ``<dir>/tls`` and
certificates for the nodes and ProxySQL (server, for 127.0.0.1 and localhost), the controller
(a client certificate: its user REQUIRE X509), and the API (server).

With it the nodes serve TLS, the controller's user must present its certificate and the
replication user must use TLS (so that a plain connection is refused by the server itself),
the replicas replicate with ``MASTER_SSL=1`` and a verified source certificate, ProxySQL's
admin offers TLS with the sandbox's certificate, and the settings ask for ``verify_identity``
everywhere. Application traffic through the router stays as it is.
"""

from __future__ import annotations

import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

from hacontrol.certs import authority

TLS_DIR = "tls"
HOSTS = ("127.0.0.1", "localhost")
PROXYSQL_FILES = ("proxysql-ca.pem", "proxysql-cert.pem", "proxysql-key.pem")
"""What ProxySQL loads from its datadir at start (it generates its own when absent)."""


@dataclass(frozen=True)
class SandboxTls:
    """Where the sandbox's certificates are (all under ``folder``)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}-key.pem"

    def client_context(self) -> ssl.SSLContext:
        """What the sandbox's own connections use: the CA, the controller's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert("hacontrol")), str(self.key("hacontrol")))
        return context

    def install_for_proxysql(self, datadir: Path) -> None:
        """The server certificate where ProxySQL looks for it, before its first start."""
        sources = (self.ca, self.cert("server"), self.key("server"))
        for source, name in zip(sources, PROXYSQL_FILES, strict=True):
            shutil.copy(source, datadir / name)


def make_tls(directory: Path) -> SandboxTls:
    """A new CA and the sandbox's certificates in ``directory/tls``. CertError (openssl)."""
    ca = authority(directory / TLS_DIR, "hacontrol sandbox CA")
    ca.issue("server", server=True, hosts=HOSTS)
    ca.issue("api", server=True, hosts=HOSTS)
    ca.issue("hacontrol", server=False)
    return SandboxTls(ca.folder)
