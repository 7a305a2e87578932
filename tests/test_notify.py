"""Alerts by mail, against a real in-process SMTP server (aiosmtpd, in its own thread)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from hacontrol.actions.notify import (
    Alert,
    MailPolicy,
    Notifier,
    body,
    render,
    retry_delay,
    subject,
    table,
)
from hacontrol.settings import SMTPSettings
from tests.factories import MemoryLog as Log
from tests.support import eventually, free_port

SENDER = "hacontrol@example.org"
RECIPIENTS = ("dba@example.org", "oncall@example.org")
USER = "alerts"
PASSWORD = "s3cr3t-Pa55word"
FAST = MailPolicy(retry_initial=0.05, retry_max=0.2)
CANDIDATES = table(["node", "received gtid"], [["db2", "0-1-42"], ["db3", "0-1-40"]])
TIMINGS = "detected  0.412 s\npromoted  0.803 s\nrouted    0.951 s"


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Recorder:
    """aiosmtpd handler: keeps every received mail; ``delay`` seconds slept in DATA."""

    delay: float = 0.0
    port: int = 0
    received: list[tuple[Envelope, Session, EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.received.append((envelope, session, msg))
        return "250 OK"

    @property
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [msg for _, _, msg in self.received]


# Log: a JsonLog given no secrets: the notifier itself must keep the password out of it.


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def smtp_settings(port: int, **kw: Any) -> SMTPSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": SENDER,
        "recipients": RECIPIENTS,
        "timeout": 5.0,
    }
    values.update(kw)
    return SMTPSettings(**values)


def failover(node: str = "db2", kind: str = "failover", at: float | None = None) -> Alert:
    return Alert(
        kind=kind,
        cluster="prod",
        node=node,
        summary="failover to",
        reason="primary db1 unreachable from the controller and from 2/2 replicas",
        sections=(
            ("Candidates", CANDIDATES),
            ("Timings", TIMINGS),
        ),
        at=time.time() if at is None else at,
    )


Start = Callable[..., Awaitable[Recorder]]


@pytest.fixture
async def smtp_server() -> AsyncIterator[Start]:
    """``await start(port=None, handler=None, **controller_kwargs)`` -> the handler."""
    controllers: list[Controller] = []

    async def start(port: int | None = None, handler: Recorder | None = None, **kw: Any):
        handler = handler or Recorder()
        controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), **kw)
        # start() blocks until the server thread answers: keep our loop (the poster) running.
        await asyncio.to_thread(controller.start)
        controllers.append(controller)
        handler.port = controller.port
        return handler

    yield start
    for controller in controllers:
        await asyncio.to_thread(controller.stop)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Notifier], Notifier]]:
    """Runs a notifier's poster as a task; closes it and checks the task ended."""
    started: list[tuple[Notifier, asyncio.Task[None]]] = []

    def run(notifier: Notifier) -> Notifier:
        started.append((notifier, asyncio.create_task(notifier.run(), name="notify-poster")))
        return notifier

    yield run
    for notifier, task in started:
        await notifier.close(grace=0.5)
        async with asyncio.timeout(10):
            await task


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the openssl CLI), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


def authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any):
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def plain_text(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


# --- pure functions -----------------------------------------------------------------------


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000, 1.0, 60.0) == 60.0


def test_render_subject_headers_and_body_sections() -> None:
    alert = failover(at=1_700_000_000.0)
    msg = render(alert, SENDER, RECIPIENTS)

    assert msg["Subject"] == "[hacontrol] prod: failover to db2"
    assert msg["From"] == SENDER
    assert msg["To"] == "dba@example.org, oncall@example.org"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["X-Hacontrol-Kind"] == "failover"
    assert msg["X-Hacontrol-Node"] == "db2"
    # Rendering is pure: a retry carries the same Message-ID.
    assert msg["Message-ID"] == render(alert, SENDER, RECIPIENTS)["Message-ID"]
    assert msg["Message-ID"].endswith("@example.org>")
    assert (
        msg["Message-ID"] != render(failover(at=1_700_000_001.0), SENDER, RECIPIENTS)["Message-ID"]
    )

    text = msg.get_content()
    assert text.startswith("primary db1 unreachable from the controller and from 2/2 replicas\n")
    candidates = text.index("Candidates\n----------\nnode  received gtid\n----  -------------\n")
    timings = text.index(
        "Timings\n-------\ndetected  0.412 s\npromoted  0.803 s\nrouted    0.951 s"
    )
    assert candidates < timings
    assert "hacontrol alert 'failover' for cluster 'prod', node db2, at 2023-11-14T22:13:20" in text


def test_subject_without_node_and_with_newlines_is_one_line() -> None:
    alert = Alert("halt", "prod", None, "two writers\nin hostgroup 10,", "refusing to act")
    assert subject(alert) == "[hacontrol] prod: two writers in hostgroup 10,"
    msg = render(alert, SENDER, RECIPIENTS)
    assert "X-Hacontrol-Node" not in msg
    assert "node -," in body(alert)


def test_table_aligns_columns() -> None:
    assert table(["node", "lag", "ok"], [["db2", 0.5, True], ["db10", None, False]]) == (
        "node  lag  ok\n----  ---  -----\ndb2   0.5  True\ndb10       False"
    )


def test_alert_key_is_cluster_kind_node() -> None:
    assert failover().key == ("prod", "failover", "db2")
    assert failover(node="db3").key != failover().key
    assert failover(kind="halt").key != failover().key


# --- dedup, queue, logs-only: no poster running -------------------------------------------


def test_dedup_window_with_injected_clock() -> None:
    clock, log = FakeClock(), Log()
    notifier = Notifier(smtp_settings(free_port()), log.log, clock=clock)

    assert notifier.alert(failover()) is True
    clock.now += 100
    assert notifier.alert(failover()) is False  # same key within 300 s
    assert notifier.alert(failover(node="db3")) is True  # other node
    assert notifier.alert(failover(kind="unreachable_primary")) is True  # other kind
    clock.now += 199.9
    assert notifier.alert(failover()) is False  # 299.9 s after the first
    clock.now += 0.2
    assert notifier.alert(failover()) is True  # window over: mailed again

    assert [line["mail"] for line in log.lines("alert")] == [
        "queued",
        "deduplicated",
        "queued",
        "queued",
        "deduplicated",
        "queued",
    ]
    assert (notifier.queued, notifier.deduplicated, notifier.pending) == (4, 2, 4)


def test_dedup_window_is_configurable() -> None:
    clock = FakeClock()
    notifier = Notifier(
        smtp_settings(free_port()), Log().log, policy=MailPolicy(dedup_window=10), clock=clock
    )
    assert notifier.alert(failover())
    clock.now += 10
    assert notifier.alert(failover())


def test_empty_host_logs_only() -> None:
    log = Log()
    notifier = Notifier(SMTPSettings(host="", recipients=RECIPIENTS), log.log)
    assert notifier.enabled is False
    assert notifier.alert(failover()) is False
    assert notifier.alert(failover()) is False  # every alert is logged, never deduplicated
    (first, _) = log.lines("alert")
    assert first["mail"] == "off"
    assert first["node"] == "db2"
    assert first["level"] == "warning"
    assert first["summary"] == "failover to"
    assert first["reason"].startswith("primary db1 unreachable")
    assert first["sections"]["Timings"].startswith("detected  0.412 s")
    assert (notifier.queued, notifier.pending) == (0, 0)


async def test_queue_overflow_drops_the_oldest(smtp_server: Start) -> None:
    log = Log()
    port = free_port()
    notifier = Notifier(smtp_settings(port), log.log, policy=MailPolicy(queue_size=2))
    for node in ("db1", "db2", "db3"):
        assert notifier.alert(failover(node=node)) is True

    (dropped,) = log.lines("mail_dropped")
    assert (dropped["node"], dropped["reason"], dropped["level"]) == ("db1", "queue_full", "error")
    assert (notifier.queued, notifier.dropped, notifier.pending) == (3, 1, 2)

    # The survivors are the newest, delivered in order by close() (no poster was running).
    handler = await smtp_server(port=port)
    await notifier.close(grace=10)
    assert [m["Subject"] for m in handler.messages] == [
        "[hacontrol] prod: failover to db2",
        "[hacontrol] prod: failover to db3",
    ]
    (closed,) = log.lines("notifier_closed")
    assert (closed["flushed"], closed["unsent"], closed["sent"]) == (True, 0, 2)


# --- delivery against a real SMTP server --------------------------------------------------


async def test_plain_smtp_delivers_one_mail(smtp_server: Start, running) -> None:
    handler = await smtp_server()
    log = Log()
    notifier = running(Notifier(smtp_settings(handler.port), log.log))

    assert notifier.alert(failover()) is True
    await eventually(lambda: notifier.sent == 1)

    ((envelope, session, msg),) = handler.received
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == list(RECIPIENTS)
    assert session.ssl is None
    assert msg["Subject"] == "[hacontrol] prod: failover to db2"
    assert msg["From"] == SENDER
    assert msg["To"] == "dba@example.org, oncall@example.org"
    text = plain_text(msg)
    assert text.startswith("primary db1 unreachable")
    assert "Candidates\n----------\nnode  received gtid\n" in text
    assert "db2   0-1-42\ndb3   0-1-40" in text
    assert "routed    0.951 s" in text

    (sent,) = log.lines("mail_sent")
    assert (sent["node"], sent["attempt"], sent["refused"]) == ("db2", 1, {})
    assert (notifier.queued, notifier.sent, notifier.failed, notifier.dropped) == (1, 1, 0, 0)


async def test_starttls_with_trusted_self_signed_cert(smtp_server: Start, running, tls_files):
    handler = await smtp_server(tls_context=server_tls(tls_files), require_starttls=True)
    notifier = running(
        Notifier(
            smtp_settings(handler.port, tls="starttls"),
            Log().log,
            policy=MailPolicy(ca_file=tls_files[0]),
        )
    )
    notifier.alert(failover())
    await eventually(lambda: notifier.sent == 1)
    ((_, session, msg),) = handler.received
    assert session.ssl is not None  # the server refuses MAIL before STARTTLS anyway
    assert msg["Subject"] == "[hacontrol] prod: failover to db2"


async def test_implicit_tls_with_trusted_self_signed_cert(smtp_server: Start, running, tls_files):
    handler = await smtp_server(ssl_context=server_tls(tls_files))
    notifier = running(
        Notifier(
            smtp_settings(handler.port, tls="tls"),
            Log().log,
            policy=MailPolicy(ca_file=tls_files[0]),
        )
    )
    notifier.alert(failover())
    await eventually(lambda: notifier.sent == 1)
    assert [m["Subject"] for m in handler.messages] == ["[hacontrol] prod: failover to db2"]


async def test_untrusted_certificate_is_refused_and_retried(smtp_server: Start, running, tls_files):
    handler = await smtp_server(ssl_context=server_tls(tls_files))
    log = Log()
    notifier = running(Notifier(smtp_settings(handler.port, tls="tls"), log.log, policy=FAST))
    notifier.alert(failover())
    await eventually(lambda: notifier.failed >= 2)
    first = log.lines("mail_failed")[0]
    assert "CERTIFICATE_VERIFY_FAILED" in first["error"]
    assert (first["attempt"], first["retry_in"], first["permanent"]) == (1, 0.05, False)
    assert handler.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_plain_connection(smtp_server: Start, running) -> None:
    handler = await smtp_server(authenticator=authenticator, auth_require_tls=False)
    settings = smtp_settings(handler.port, user=USER, password=SecretStr(PASSWORD))
    log = Log()
    notifier = running(Notifier(settings, log.log))
    notifier.alert(failover())
    await eventually(lambda: notifier.sent == 1)
    ((_, session, _),) = handler.received
    assert session.authenticated is True
    assert PASSWORD not in log.text


async def test_auth_over_starttls(smtp_server: Start, running, tls_files) -> None:
    handler = await smtp_server(
        authenticator=authenticator, tls_context=server_tls(tls_files), require_starttls=True
    )
    settings = smtp_settings(handler.port, tls="starttls", user=USER, password=SecretStr(PASSWORD))
    notifier = running(Notifier(settings, Log().log, policy=MailPolicy(ca_file=tls_files[0])))
    notifier.alert(failover())
    await eventually(lambda: notifier.sent == 1)
    ((_, session, _),) = handler.received
    assert (session.authenticated, session.ssl is not None) == (True, True)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_wrong_password_fails_without_leaking_it(smtp_server: Start, running) -> None:
    handler = await smtp_server(authenticator=authenticator, auth_require_tls=False)
    wrong = "Wr0ng-" + PASSWORD
    settings = smtp_settings(handler.port, user=USER, password=SecretStr(wrong))
    log = Log()
    notifier = running(Notifier(settings, log.log, policy=FAST))
    notifier.alert(failover(node="db2"))
    notifier.alert(failover(node="db3"))
    await eventually(lambda: notifier.dropped == 2)

    failed = log.lines("mail_failed")
    assert [(f["node"], f["attempt"], f["permanent"]) for f in failed] == [
        ("db2", 1, True),
        ("db3", 1, True),
    ]
    assert "SMTPAuthenticationError" in failed[0]["error"]
    assert "535" in failed[0]["error"]
    assert [d["reason"] for d in log.lines("mail_dropped")] == ["rejected", "rejected"]
    plain_blob = base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode()
    for secret in (wrong, plain_blob, base64.b64encode(wrong.encode()).decode()):
        assert secret not in log.text
    assert handler.messages == []
    assert (notifier.sent, notifier.failed, notifier.dropped) == (0, 2, 2)


async def test_server_down_alert_returns_at_once_and_mail_arrives_later(
    smtp_server: Start, running
) -> None:
    port = free_port()  # nothing listens here yet
    log = Log()
    notifier = running(Notifier(smtp_settings(port), log.log, policy=FAST))
    await asyncio.sleep(0)  # the poster is waiting for work

    started = time.perf_counter()
    assert notifier.alert(failover()) is True
    assert time.perf_counter() - started < 0.05

    await eventually(lambda: notifier.failed >= 3)
    failed = log.lines("mail_failed")
    assert [f["attempt"] for f in failed[:3]] == [1, 2, 3]
    assert [f["retry_in"] for f in failed[:3]] == [0.05, 0.1, 0.2]
    assert "Connect" in failed[0]["error"] or "refused" in failed[0]["error"].lower()

    handler = await smtp_server(port=port)  # the server comes back
    await eventually(lambda: notifier.sent == 1)
    assert [m["Subject"] for m in handler.messages] == ["[hacontrol] prod: failover to db2"]
    (sent,) = log.lines("mail_sent")
    assert sent["attempt"] >= 4
    assert notifier.dropped == 0


async def test_slow_server_does_not_block_alerts(smtp_server: Start, running) -> None:
    handler = await smtp_server(handler=Recorder(delay=0.5))
    notifier = running(Notifier(smtp_settings(handler.port), Log().log))

    assert notifier.alert(failover(node="db1"))
    await asyncio.sleep(0.2)  # the poster is now inside DATA on the slow server
    assert notifier.pending == 1 and notifier.sent == 0
    for node in ("db2", "db3"):
        started = time.perf_counter()
        assert notifier.alert(failover(node=node)) is True
        assert time.perf_counter() - started < 0.05

    await eventually(lambda: notifier.sent == 3)
    assert [m["X-Hacontrol-Node"] for m in handler.messages] == ["db1", "db2", "db3"]


async def test_expired_mail_is_dropped(running) -> None:
    clock, log = FakeClock(), Log()
    policy = MailPolicy(retry_initial=0.05, retry_max=0.05, max_age=3600)
    notifier = running(Notifier(smtp_settings(free_port()), log.log, policy=policy, clock=clock))
    notifier.alert(failover(at=clock.now))
    await eventually(lambda: notifier.failed >= 1)
    clock.now += 3601  # the server stayed down for more than an hour
    await eventually(lambda: notifier.dropped == 1)
    (dropped,) = log.lines("mail_dropped")
    assert dropped["reason"] == "expired"
    assert dropped["attempts"] >= 1
    assert notifier.pending == 0


async def test_close_gives_up_after_grace_and_run_returns() -> None:
    log = Log()
    notifier = Notifier(smtp_settings(free_port()), log.log, policy=FAST)
    poster = asyncio.create_task(notifier.run())
    notifier.alert(failover(node="db2"))
    notifier.alert(failover(node="db3"))
    await eventually(lambda: notifier.failed >= 1)

    started = time.perf_counter()
    await notifier.close(grace=0.3)
    assert 0.25 < time.perf_counter() - started < 1.0
    async with asyncio.timeout(5):
        await poster  # returns by itself

    (closed,) = log.lines("notifier_closed")
    assert (closed["flushed"], closed["level"], closed["sent"]) == (False, "warning", 0)
    dropped = log.lines("mail_dropped")
    assert sorted((d["node"], d["reason"]) for d in dropped) == [
        ("db2", "shutdown"),
        ("db3", "shutdown"),
    ]
    assert notifier.dropped == 2
    assert notifier.alert(failover(node="db4")) is False
    assert log.lines("alert")[-1]["mail"] == "closed"


async def test_close_during_a_slow_send_lets_that_attempt_finish(smtp_server: Start) -> None:
    handler = await smtp_server(handler=Recorder(delay=0.6))
    log = Log()
    notifier = Notifier(smtp_settings(handler.port), log.log)
    poster = asyncio.create_task(notifier.run())
    notifier.alert(failover(node="db2"))
    notifier.alert(failover(node="db3"))
    await asyncio.sleep(0.2)  # db2 is inside DATA

    await notifier.close(grace=0.1)
    (closed,) = log.lines("notifier_closed")
    assert (closed["flushed"], closed["unsent"], closed["in_flight"]) == (False, 1, True)
    async with asyncio.timeout(5):
        await poster  # returns once the attempt in flight is over
    assert [m["X-Hacontrol-Node"] for m in handler.messages] == ["db2"]
    assert [line["node"] for line in log.lines("mail_sent")] == ["db2"]
    assert [(d["node"], d["reason"]) for d in log.lines("mail_dropped")] == [("db3", "shutdown")]


async def test_cancelled_poster_leaves_its_mail_for_close(smtp_server: Start) -> None:
    port = free_port()
    notifier = Notifier(smtp_settings(port), Log().log, policy=FAST)
    poster = asyncio.create_task(notifier.run())
    notifier.alert(failover())
    await eventually(lambda: notifier.failed >= 1)
    poster.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poster
    assert notifier.pending == 1

    handler = await smtp_server(port=port)
    await notifier.close(grace=10)
    assert [m["Subject"] for m in handler.messages] == ["[hacontrol] prod: failover to db2"]


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        MailPolicy(queue_size=0)
    with pytest.raises(ValueError, match="retry_initial"):
        MailPolicy(retry_initial=5, retry_max=1)
