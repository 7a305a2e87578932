"""A throwaway certificate authority for the sandbox (``hacontrol sandbox up --tls``) and the
tests: a CA, server certificates for 127.0.0.1/localhost and client certificates, made with the
``openssl`` command (no Python dependency). Never for production: the keys are written
unencrypted next to the certificates.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 30


class CertError(RuntimeError):
    """openssl is missing or refused: the message says which step and why."""


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """The CA's certificate and key in ``folder``; ``issue`` makes leaf certificates."""

    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def key(self) -> Path:
        return self.folder / "ca-key.pem"

    def issue(self, name: str, *, server: bool, hosts: tuple[str, ...] = ()) -> Pair:
        """A certificate for ``name`` signed by this CA: a server's (its ``hosts`` in the
        subject alternative names: IP addresses and DNS names) or a client's."""
        pair = Pair(self.folder / f"{name}.pem", self.folder / f"{name}-key.pem")
        request = self.folder / f"{name}.csr"
        extensions = self.folder / f"{name}.ext"
        names = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
        usage = "serverAuth" if server else "clientAuth"
        extensions.write_text(
            "basicConstraints=CA:FALSE\n"
            f"extendedKeyUsage={usage}\n" + (f"subjectAltName={names}\n" if names else "")
        )
        _ec_key("key", pair.key)
        _openssl(
            "request", "req", "-new", "-key", pair.key, "-out", request, "-subj", f"/CN={name}"
        )
        _openssl(
            "signing",
            *("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key),
            *("-CAcreateserial", "-days", DAYS, "-extfile", extensions, "-out", pair.cert),
        )
        request.unlink()
        extensions.unlink()
        pair.key.chmod(0o644)  # the sandbox's servers run as another user: never production
        return pair


def authority(folder: Path, name: str = "hacontrol sandbox CA") -> Authority:
    """A new CA in ``folder`` (created). CertError when openssl is missing or fails."""
    if shutil.which("openssl") is None:
        raise CertError("the openssl command is needed to make the sandbox's certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ca = Authority(folder)
    _ec_key("CA key", ca.key)
    _openssl(
        "CA certificate",
        *("req", "-x509", "-new", "-key", ca.key, "-days", DAYS, "-out", ca.cert),
        *("-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return ca


def _ec_key(step: str, path: Path) -> None:
    _openssl(
        step, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path
    )


def _openssl(step: str, *args: object) -> None:
    argv = ["openssl", *(str(a) for a in args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise CertError(f"openssl ({step}) failed: {done.stderr.strip()[-300:]}")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
