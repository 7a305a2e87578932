"""Comparing server addresses the same way everywhere (the view, the actions)."""

from __future__ import annotations

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def host_key(host: str) -> str:
    """Host names compare case-insensitively; every loopback spelling is one host."""
    host = host.strip().lower()
    return "127.0.0.1" if host in LOOPBACK else host


def same_address(a_host: str, a_port: int, b_host: str, b_port: int) -> bool:
    return a_port == b_port and host_key(a_host) == host_key(b_host)
