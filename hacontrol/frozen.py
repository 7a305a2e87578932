"""``evolve``: a frozen dataclass value with some fields changed, for the controller's hot path.

``dataclasses.replace`` rebuilds the value through its ``__init__`` (about 5 us for a view);
``evolve`` copies the fields and sets the changed ones directly (under 1 us). Only for frozen
dataclasses whose ``__init__`` does nothing but store its fields (no ``__post_init__``, no
``InitVar``, no ``slots``): the value is then the same as ``replace`` gives, and equal to it.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def evolve(value: T, **changes: Any) -> T:
    new = object.__new__(type(value))
    fields = new.__dict__  # a frozen dataclass refuses setattr, not its own __dict__
    fields.update(value.__dict__)
    fields.update(changes)
    return new
