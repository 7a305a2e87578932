"""Which of the cluster's connections are encrypted, for ``hacontrol status``: the controller's
own connections to each node and to the ProxySQL admin (opened the way probes and actions open
them, and read back from both ends: what the client negotiated and the server's
``Ssl_cipher``), each replica's replication channel (``Master_SSL_Allowed`` /
``Source_SSL_Allowed``), and the API (from its settings).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from hacontrol.flavors import DETECT_SQL, detect, multi_statement
from hacontrol.mysqlconn import connect, describe_error, endpoint_for, fetch_all, tls_of
from hacontrol.settings import Settings

SSL_CIPHER = "SHOW SESSION STATUS LIKE 'Ssl_cipher'"


@dataclass(frozen=True)
class Link:
    kind: str
    """controller (to a node), replication, router (the ProxySQL admin), api."""
    source: str
    target: str
    encrypted: bool | None
    """None: could not be checked (the reason in ``detail``)."""
    detail: str


async def links(settings: Settings, timeout: float = 3.0) -> list[Link]:
    """Every connection's encryption, checked now (one short connection per node)."""
    jobs = [_node_links(settings, n.name, n.host, n.port, timeout) for n in settings.nodes]
    found = [link for group in await asyncio.gather(*jobs) for link in group]
    if settings.router.kind == "proxysql":
        found.append(await _admin_link(settings, timeout))
    found.append(api_link(settings))
    return found


def configured(settings: Settings) -> bool:
    """Is TLS set up anywhere (then ``hacontrol status`` says what is encrypted)?"""
    return (
        settings.mysql.tls.mode != "off"
        or settings.mysql.replication_tls.enabled
        or settings.router.proxysql.tls.mode != "off"
        or settings.api.tls_cert is not None
    )


def all_encrypted(found: list[Link]) -> bool:
    return all(link.encrypted for link in found)


def to_json(found: list[Link]) -> dict[str, Any]:
    return {"all_encrypted": all_encrypted(found), "links": [asdict(link) for link in found]}


def render(found: list[Link]) -> str:
    lines = ["connections:"]
    for link in found:
        mark = {True: "encrypted", False: "PLAIN", None: "unknown"}[link.encrypted]
        lines.append(f"  {link.kind:<11} {link.source} -> {link.target}: {mark} ({link.detail})")
    lines.append(f"  every connection encrypted: {'yes' if all_encrypted(found) else 'NO'}")
    return "\n".join(lines)


async def _node_links(
    settings: Settings, name: str, host: str, port: int, timeout: float
) -> list[Link]:
    mysql = settings.mysql
    password = mysql.password.get_secret_value() if mysql.password else ""
    endpoint = endpoint_for(host, port, mysql.user, password, mysql.tls)
    try:
        conn = await connect(endpoint, timeout, multi_statements=True)
    except Exception as exc:
        return [Link("controller", "hacontrol", name, None, describe_error(exc))]
    try:
        ours = tls_of(conn)
        rows = (await fetch_all(conn, SSL_CIPHER, timeout=timeout))[0]
        theirs = str(rows[0]["Value"]) if rows else ""
        own = Link("controller", "hacontrol", name, bool(ours and theirs), _both(ours, theirs))
        return [own, *await _channels(conn, name, timeout)]
    except Exception as exc:
        return [Link("controller", "hacontrol", name, None, describe_error(exc))]
    finally:
        conn.close()


def _both(ours: str | None, theirs: str) -> str:
    if ours and theirs:
        return f"{ours}; the server sees {theirs}"
    return "plain TCP" if not ours else f"{ours}, but the server reports no cipher"


async def _channels(conn: Any, name: str, timeout: float) -> list[Link]:
    """The node's replication channels, from its status."""
    version = (await fetch_all(conn, DETECT_SQL, timeout=timeout))[0][0]
    flavor = detect(str(version["version"]), str(version["version_comment"] or ""))
    results = await fetch_all(conn, multi_statement(flavor.status_sql()), timeout=timeout)
    status = flavor.parse_status(str(version["version"]), results)
    out = []
    for channel in status.replication:
        source = f"{channel.source_host}:{channel.source_port}"
        detail = {
            "verified": "TLS, the source's certificate verified",
            "on": "TLS, the source's certificate not verified",
            "off": "plain TCP",
        }.get(channel.tls or "", "the server does not say")
        encrypted = None if channel.tls is None else channel.tls != "off"
        out.append(Link("replication", source, name, encrypted, detail))
    return out


async def _admin_link(settings: Settings, timeout: float) -> Link:
    admin = settings.router.proxysql
    password = admin.password.get_secret_value() if admin.password else ""
    endpoint = endpoint_for(admin.host, admin.port, admin.user, password, admin.tls)
    target = f"ProxySQL admin {admin.host}:{admin.port}"
    try:
        conn = await connect(endpoint, timeout)
    except Exception as exc:
        return Link("router", "hacontrol", target, None, describe_error(exc))
    try:
        ours = tls_of(conn)
        return Link("router", "hacontrol", target, ours is not None, ours or "plain TCP")
    finally:
        conn.close()


def api_link(settings: Settings) -> Link:
    api = settings.api
    if not api.enabled:
        return Link("api", "operators", "hacontrol API", True, "disabled")
    if api.socket is not None:
        return Link("api", "operators", "hacontrol API", True, f"unix socket {api.socket} (0600)")
    where = f"{api.host}:{api.port}"
    if api.tls_cert is not None:
        return Link("api", "operators", "hacontrol API", True, f"HTTPS on {where}")
    return Link("api", "operators", "hacontrol API", False, f"plain HTTP on {where}")
