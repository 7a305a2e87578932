"""The drill's error: a fault that cannot be injected or undone (its own module, so that the
fault injection and the node rebuild can both raise it without importing each other)."""

from __future__ import annotations


class FaultError(Exception):
    """The fault cannot be injected or undone; the message says why."""
