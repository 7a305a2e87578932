"""Alerts: always one ``alert`` JSON log line, and a mail when ``smtp.host`` is set.

A decision never waits for mail. ``Notifier.alert()`` is synchronous: it logs the alert,
decides deduplication, appends the alert to a bounded in-memory queue and returns. One
background poster (``Notifier.run()``) sends the queued mails one at a time, in order, and
retries a failed one with exponential backoff, so a slow or dead SMTP server delays only
other mails, never the controller.

Decisions written down here:

- Deduplication is decided in ``alert()``, on ``Alert.key`` = (cluster, kind, node): an alert
  whose key was queued less than ``dedup_window`` seconds ago is logged but not mailed. The
  window starts when a mail is queued, not when a duplicate arrives, so a condition that keeps
  firing is mailed again once per window.
- When the queue is full, the OLDEST waiting alert is dropped (logged ``mail_dropped`` with
  ``reason = "queue_full"``, counted), and the new one is queued: the newest alert describes
  the cluster as it is now. The mail being sent at that moment is not in the queue and is
  never dropped for room. Every alert is in the JSON log anyway.
- Retries: connection errors, timeouts and 4xx replies are retried after ``initial``, 2x, 4x ...
  seconds, capped at ``maximum``, until the mail is sent or is older than ``max_age``
  (``mail_dropped``, ``reason = "expired"``). A 5xx reply (authentication refused, sender or
  every recipient rejected, message refused) is permanent in SMTP: that mail is not retried
  (``mail_dropped``, ``reason = "rejected"``), and the next one is tried.
- One attempt (connect to QUIT) is bounded by ``smtp.timeout``. A mail whose delivery timed
  out after the server had accepted it may arrive twice; its ``Message-ID`` is derived from
  the alert and is the same on every attempt, so mail clients can tell.
- The SMTP password never goes into a log line or an error text produced here: error texts
  are scrubbed of the password and of its base64 forms used by AUTH PLAIN and LOGIN.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiosmtplib

from hacontrol.jsonlog import MASK, JsonLog
from hacontrol.settings import SMTPSettings

Clock = Callable[[], float]


@dataclass(frozen=True)
class Alert:
    """Something an operator must hear about.

    ``summary`` is what happened, short (it goes in the subject, followed by the node);
    ``reason`` is the decision's explanation (first in the body); ``sections`` are
    ``(title, preformatted text)`` pairs such as a candidate table, the topology before and
    after, the timings. ``at`` is the wall-clock time of the alert (``time.time()``).
    """

    kind: str
    cluster: str
    node: str | None
    summary: str
    reason: str
    sections: tuple[tuple[str, str], ...] = ()
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str, str | None]:
        """Alerts with the same key are one alert for deduplication."""
        return (self.cluster, self.kind, self.node)


@dataclass(frozen=True)
class MailPolicy:
    """Knobs of the notifier that ``SMTPSettings`` does not have (yet)."""

    dedup_window: float = 300.0
    """Seconds during which an alert with the same key is not mailed again."""
    queue_size: int = 100
    """Alerts waiting for the poster, not counting the one being sent."""
    retry_initial: float = 1.0
    retry_max: float = 60.0
    max_age: float = 86400.0
    """A mail not delivered this many seconds after its alert is given up."""
    ca_file: Path | None = None
    """CA bundle (PEM) to verify the server certificate; None: the system's CAs."""
    validate_certs: bool = True
    """False accepts any certificate (TLS still encrypts; anyone can impersonate the server)."""

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")


# --- pure rendering -----------------------------------------------------------------------


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): 1, 2, 4 ... capped."""
    return min(maximum, initial * 2.0 ** min(attempt - 1, 64))


def subject(alert: Alert) -> str:
    """``[hacontrol] <cluster>: <what happened> <node>``, on one line."""
    text = f"[hacontrol] {alert.cluster}: {alert.summary}"
    if alert.node:
        text += f" {alert.node}"
    return _one_line(text)


def body(alert: Alert) -> str:
    """The reason, each section under an underlined title, then the alert's facts."""
    parts = [alert.reason.strip() or alert.summary]
    for title, text in alert.sections:
        title = _one_line(title)
        parts.append(f"{title}\n{'-' * len(title)}\n{text.rstrip()}")
    when = datetime.fromtimestamp(alert.at, UTC).isoformat(timespec="milliseconds")
    parts.append(
        f"-- \nhacontrol alert {alert.kind!r} for cluster {alert.cluster!r}, "
        f"node {alert.node or '-'}, at {when}"
    )
    return "\n\n".join(parts) + "\n"


def render(alert: Alert, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The mail for ``alert``. Pure: the same alert renders the same message, headers included."""
    msg = EmailMessage()
    msg["Subject"] = subject(alert)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(alert.at, usegmt=True)
    msg["Message-ID"] = message_id(alert, sender)
    msg["X-Hacontrol-Cluster"] = _one_line(alert.cluster)
    msg["X-Hacontrol-Kind"] = _one_line(alert.kind)
    if alert.node:
        msg["X-Hacontrol-Node"] = _one_line(alert.node)
    msg.set_content(body(alert))
    return msg


def message_id(alert: Alert, sender: str) -> str:
    """Stable per alert, so a retried mail keeps its Message-ID."""
    digest = hashlib.sha256(repr((alert.key, alert.at, alert.summary)).encode()).hexdigest()
    domain = sender.rpartition("@")[2].strip(" <>") or "localhost"
    return f"<hacontrol.{digest[:32]}@{domain}>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns, for a section of an alert.

    >>> print(table(["node", "gtid"], [["db2", "0-1-42"], ["db3", "0-1-40"]]))
    node  gtid
    ----  ------
    db2   0-1-42
    db3   0-1-40
    """
    cells = [[_one_line(str(h)) for h in headers]]
    cells += [[_one_line("" if v is None else str(v)) for v in row] for row in rows]
    width = max(len(row) for row in cells)
    for row in cells:
        row.extend([""] * (width - len(row)))
    sizes = [max(len(row[i]) for row in cells) for i in range(width)]
    lines = ["  ".join(v.ljust(sizes[i]) for i, v in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * size for size in sizes))
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def is_permanent(exc: BaseException) -> bool:
    """True for an SMTP 5xx reply: the same mail would be refused again."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return False  # a greeting refusal is often a server starting up or overloaded
    return isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600


# --- the notifier -------------------------------------------------------------------------


class Notifier:
    """Logs every alert, mails it through one background poster.

    Lifecycle: run ``run()`` as a task; stop with ``await close(grace)``, which lets the poster
    flush for up to ``grace`` seconds, then drops (and logs) what is left and makes ``run()``
    return (at the latest ``smtp.timeout`` later, when an attempt is in flight). Cancelling
    ``run()`` also stops it; the mail it was sending goes back to the queue for ``close()``.
    ``close()`` without a running ``run()`` flushes the queue itself.

    Counters (plain attributes, for metrics): ``queued``, ``sent``, ``failed`` (failed
    attempts), ``dropped`` (mails given up), ``deduplicated`` (alerts not mailed because of the
    dedup window).
    """

    def __init__(
        self,
        smtp: SMTPSettings,
        log: JsonLog,
        *,
        policy: MailPolicy = MailPolicy(),
        clock: Clock = time.time,
    ) -> None:
        self._smtp = smtp
        self._log = log
        self._policy = policy
        self._clock = clock
        self._pending: deque[Alert] = deque()
        self._current: Alert | None = None
        self._last_queued: dict[tuple[str, str, str | None], float] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._closing = False
        self._secret_forms = _secret_forms(smtp)
        self.queued = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.deduplicated = 0

    @property
    def enabled(self) -> bool:
        """Mail is sent only with a host and at least one recipient."""
        return bool(self._smtp.host and self._smtp.recipients)

    @property
    def pending(self) -> int:
        """Mails not yet delivered: waiting ones plus the one being sent."""
        return len(self._pending) + (self._current is not None)

    def alert(self, alert: Alert) -> bool:
        """Log ``alert`` and queue its mail. Never blocks. True when a mail was queued.

        Call it from the event loop's thread (the decision task), like any asyncio object.
        """
        mail = self._admit(alert, self._clock())
        self._log.emit(
            "alert",
            alert.node,
            level="warning",
            kind=alert.kind,
            summary=alert.summary,
            reason=alert.reason,
            sections=dict(alert.sections),
            mail=mail,
        )
        if mail != "queued":
            return False
        if len(self._pending) >= self._policy.queue_size:
            self._drop(self._pending.popleft(), "queue_full")
        self._pending.append(alert)
        self.queued += 1
        self._wake.set()
        return True

    def _admit(self, alert: Alert, now: float) -> str:
        """What happens to the mail: queued, off, closed or deduplicated."""
        if self._closing:
            return "closed"
        if not self.enabled:
            return "off"
        window = self._policy.dedup_window
        self._last_queued = {k: t for k, t in self._last_queued.items() if 0 <= now - t < window}
        if alert.key in self._last_queued:
            self.deduplicated += 1
            return "deduplicated"
        self._last_queued[alert.key] = now
        return "queued"

    async def run(self) -> None:
        """The poster: sends queued mails in order, one at a time, until stopped."""
        if self._running:
            raise RuntimeError("Notifier.run() is already running")
        self._running = True
        self._finished.clear()
        try:
            while not self._stop.is_set():
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                alert = self._current = self._pending.popleft()
                try:
                    await self._deliver(alert)
                except asyncio.CancelledError:
                    if self._stop.is_set():
                        self._drop(alert, "shutdown")
                    else:
                        self._pending.appendleft(alert)  # unsent: close() may still flush it
                    raise
                finally:
                    self._current = None
        finally:
            self._running = False
            self._finished.set()

    async def close(self, grace: float) -> None:
        """Flush for up to ``grace`` seconds, then give up on what is left (logged)."""
        if self._stop.is_set():
            return
        self._closing = True
        self._wake.set()
        flushed = True
        try:
            async with asyncio.timeout(grace):
                if self._running:
                    await self._finished.wait()
                else:
                    await self.run()
        except TimeoutError:
            flushed = False
        self._stop.set()
        self._wake.set()
        unsent = len(self._pending)
        while self._pending:
            self._drop(self._pending.popleft(), "shutdown")
        self._log.emit(
            "notifier_closed",
            level="info" if flushed else "warning",
            flushed=flushed,
            grace=grace,
            unsent=unsent,
            in_flight=self._current is not None,
            queued=self.queued,
            sent=self.sent,
            failed=self.failed,
            dropped=self.dropped,
        )

    async def _deliver(self, alert: Alert) -> None:
        """Send one mail, retrying until sent, rejected, expired or stopped."""
        attempt = 0
        while True:
            if self._stop.is_set():  # close() gave up while this mail waited for a retry
                self._drop(alert, "shutdown", attempts=attempt)
                return
            if self._clock() - alert.at > self._policy.max_age:
                self._drop(alert, "expired", attempts=attempt)
                return
            attempt += 1
            try:
                refused = await self._send(alert)
            except Exception as exc:
                self.failed += 1
                error = self._error_text(exc)
                if is_permanent(exc):
                    self._failed(alert, attempt, error, None)
                    self._drop(alert, "rejected", attempts=attempt)
                    return
                if self._stop.is_set():
                    self._failed(alert, attempt, error, None)
                    self._drop(alert, "shutdown", attempts=attempt)
                    return
                delay = retry_delay(attempt, self._policy.retry_initial, self._policy.retry_max)
                self._failed(alert, attempt, error, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                continue
            self.sent += 1
            self._log.emit(
                "mail_sent",
                alert.node,
                kind=alert.kind,
                summary=alert.summary,
                attempt=attempt,
                recipients=list(self._smtp.recipients),
                refused={rcpt: self._scrub(str(r)) for rcpt, r in refused.items()},
                delay=round(self._clock() - alert.at, 3),
            )
            return

    async def _send(self, alert: Alert) -> dict[str, Any]:
        """One attempt. Returns the recipients the server refused (others got the mail)."""
        smtp = self._smtp
        msg = render(alert, smtp.sender, smtp.recipients)
        password = smtp.password.get_secret_value() if smtp.password is not None else None
        async with asyncio.timeout(smtp.timeout):
            refused, _ = await aiosmtplib.send(
                msg,
                sender=smtp.sender,
                recipients=list(smtp.recipients),
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.user or None,
                password=password if smtp.user else None,
                use_tls=smtp.tls == "tls",
                start_tls=smtp.tls == "starttls",
                validate_certs=self._policy.validate_certs,
                cert_bundle=str(self._policy.ca_file) if self._policy.ca_file else None,
                timeout=smtp.timeout,
            )
        return dict(refused)

    def _failed(self, alert: Alert, attempt: int, error: str, retry_in: float | None) -> None:
        self._log.emit(
            "mail_failed",
            alert.node,
            level="warning",
            kind=alert.kind,
            summary=alert.summary,
            attempt=attempt,
            retry_in=retry_in,
            permanent=retry_in is None,
            error=error,
        )

    def _drop(self, alert: Alert, reason: str, **fields: Any) -> None:
        self.dropped += 1
        self._log.emit(
            "mail_dropped",
            alert.node,
            level="error",
            kind=alert.kind,
            summary=alert.summary,
            reason=reason,
            age=round(self._clock() - alert.at, 3),
            **fields,
        )

    def _error_text(self, exc: BaseException) -> str:
        text = str(exc) or "no detail"
        return self._scrub(f"{type(exc).__name__}: {text}")

    def _scrub(self, text: str) -> str:
        for secret in self._secret_forms:
            text = text.replace(secret, MASK)
        return text


def _secret_forms(smtp: SMTPSettings) -> tuple[str, ...]:
    """The password as typed and as AUTH PLAIN / AUTH LOGIN put it on the wire."""
    if smtp.password is None or not smtp.password.get_secret_value():
        return ()
    password = smtp.password.get_secret_value()
    plain = f"\0{smtp.user}\0{password}".encode()
    forms = {
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(plain).decode(),
    }
    return tuple(sorted(forms, key=len, reverse=True))
