"""Router membership: which managed node the router sends writes and reads to.

One value type for every router (ProxySQL hostgroups, HAProxy backends), so the view and the
decisions never know which router is in front. Pure: no I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Role(StrEnum):
    WRITER = "writer"  # ProxySQL hostgroup 10
    READER = "reader"  # 20
    BROKEN = "broken"  # 30: quarantined by the controller
    HIDDEN = "hidden"  # 40: hidden by an operator; never touched by the controller


@dataclass(frozen=True)
class Membership:
    """What the router does (read back) or should do (desired) for the managed nodes.

    A node may be writer and reader at once (the primary also serves reads). A managed node
    in no set is not routed at all.
    """

    writers: frozenset[str] = field(default_factory=frozenset)
    readers: frozenset[str] = field(default_factory=frozenset)
    broken: frozenset[str] = field(default_factory=frozenset)
    hidden: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        writers: Iterable[str] = (),
        readers: Iterable[str] = (),
        broken: Iterable[str] = (),
        hidden: Iterable[str] = (),
    ) -> Membership:
        return cls(frozenset(writers), frozenset(readers), frozenset(broken), frozenset(hidden))

    def roles(self, node: str) -> frozenset[Role]:
        pairs = (
            (Role.WRITER, self.writers),
            (Role.READER, self.readers),
            (Role.BROKEN, self.broken),
            (Role.HIDDEN, self.hidden),
        )
        return frozenset(role for role, members in pairs if node in members)

    def nodes(self) -> frozenset[str]:
        return self.writers | self.readers | self.broken | self.hidden

    @property
    def writer(self) -> str | None:
        """The single writer, or None when there is none or more than one."""
        return next(iter(self.writers)) if len(self.writers) == 1 else None

    def to_json(self) -> dict[str, list[str]]:
        return {
            "writers": sorted(self.writers),
            "readers": sorted(self.readers),
            "broken": sorted(self.broken),
            "hidden": sorted(self.hidden),
        }


def desired_state_problem(desired: Membership, *, allow_no_writer: bool = False) -> str | None:
    """Why a desired membership must not be applied, or None when it may be.

    ``allow_no_writer``: the first step of a failover takes the dead primary out of the writer
    group before the new one is promoted; no writer for a moment is safe, two never are.
    """
    if allow_no_writer and not desired.writers:
        pass
    elif len(desired.writers) != 1:
        count, names = len(desired.writers), sorted(desired.writers)
        return f"desired state has {count} writers {names}; exactly one is allowed"
    for role_set, name in ((desired.writers, "writer"), (desired.readers, "reader")):
        if overlap := role_set & (desired.broken | desired.hidden):
            return f"node(s) {sorted(overlap)} cannot be {name} and broken/hidden at once"
    if overlap := desired.broken & desired.hidden:
        return f"node(s) {sorted(overlap)} cannot be broken and hidden at once"
    return None


class RouterError(Exception):
    """The router could not be read or changed (down, timed out, refused)."""


class Lines(Protocol):
    """Where a router's lines go: its cluster's JsonLog (``hacontrol.jsonlog``: JSON, the
    cluster named), or ``StdlibLines`` for a router built without one."""

    def emit(
        self, event: str, node: str | None = None, level: str = "info", **fields: Any
    ) -> None: ...


class StdlibLines:
    """A router module's stdlib logger, for a router built without a JsonLog (a one-shot
    ``hacontrol status``)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def emit(self, event: str, node: str | None = None, level: str = "info", **fields: Any) -> None:
        detail = " ".join(f"{key}={value}" for key, value in fields.items())
        number = logging.getLevelNamesMapping()[level.upper()]
        self.logger.log(number, "%s %s %s", event, node or "", detail)


class RouterBusy(RouterError):
    """A read skipped because the router's admin was busy with another call (another
    cluster's apply on a shared ProxySQL admin) past the read's own wait: the router did not
    fail, and nothing was read. The router probe reports it apart, never as a problem."""


@dataclass(frozen=True)
class Drained:
    """What ``Router.drain`` saw when it returned."""

    node: str
    idle: bool
    """True: nothing of the node's writer traffic was in use any more; False: the deadline
    passed first."""
    in_use: int
    """Connections (ProxySQL: ConnUsed) or sessions (HAProxy: scur) still in use at the end."""
    seconds: float


class Router(Protocol):
    """Desired-state interface over one router. Both methods are idempotent."""

    kind: str

    async def read(self) -> Membership:
        """What the router is really doing now, for the managed nodes. Raises RouterError."""
        ...

    async def apply(
        self,
        desired: Membership,
        *,
        allow_no_writer: bool = False,
        allow_hidden_change: bool = False,
    ) -> bool:
        """Make the router do ``desired``; returns True when anything was sent.

        Applying a state equal to the current one sends no write. Refuses (RouterError) a
        desired state with other than one writer (zero allowed with ``allow_no_writer``).
        The hidden group changes only with ``allow_hidden_change`` (an operator's command).
        Never leaves two writers, even for a moment. Raises RouterError when the router
        cannot be changed or does not confirm the change.
        """
        ...

    async def drain(self, node: str, *, timeout: float) -> Drained:
        """Stop new writes from starting on ``node`` (the writer) and wait, at most ``timeout``
        seconds, until what is in flight there has finished. Existing work is never cut: that
        is the caller's next step (fence). ``read()`` no longer counts ``node`` as a writer;
        ``apply`` of any desired state replaces the drain. Raises RouterError when ``node`` is
        not routed as the writer or the router cannot be changed.
        """
        ...

    async def close(self) -> None: ...


def fenced(current: Membership, node: str) -> Membership:
    """``current`` with ``node`` out of the writer and reader groups, into broken."""
    return Membership(
        writers=current.writers - {node},
        readers=current.readers - {node},
        broken=(current.broken | {node}) - current.hidden,
        hidden=current.hidden,
    )
