"""Rebuild a sandbox node that came back with errant transactions (placeholder)."""

from __future__ import annotations

from hacontrol.drill.faults import FaultError


async def rebuild_sandbox_node(sandbox, node: str, source: str) -> str:
    raise FaultError(f"{node} has errant transactions; rebuild not implemented yet")
