"""Shared fixtures: a real SMTP server on 127.0.0.1 (aiosmtpd, trustme TLS, AUTH), a client
for it, and a fake clock and sleep.

Sections: environment, clock, TLS, the recording SMTP server. Campaign fixtures live
below the last marker (or in their own module).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from bulkmail.deliver.smtp import SMTPTransport
from bulkmail.models import SmtpSettings

# ---------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------

# Child processes (`python -m bulkmail` in a campaign's folder) run this checkout's code,
# whatever this interpreter has installed: an editable install may point at another clone,
# or at none.
CHECKOUT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(CHECKOUT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BULKMAIL_* variable of the developer's shell leaks into a test (cf. httpx)."""
    for name in list(os.environ):
        if name.startswith("BULKMAIL_"):
            monkeypatch.delenv(name)


# ---------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when slept on (or advanced); records each sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept {seconds!r} s: a busy wait in disguise"
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


class Sleeps(list[float]):
    """A no-op sleep that remembers what it was asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# ---------------------------------------------------------------------------------------
# TLS: one test CA per session; the server certificate is valid for 127.0.0.1
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSPair:
    """Server and client contexts for the test CA, plus a client that trusts another CA."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_file: Path  # the test CA in PEM, for SmtpSettings.ca_file
    untrusting_client: ssl.SSLContext


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TLSPair:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    untrusting = ssl.create_default_context()
    trustme.CA().configure_trust(untrusting)  # verifies, but against an unrelated CA
    ca_file = tmp_path_factory.mktemp("tls") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TLSPair(server=server, client=client, ca_file=ca_file, untrusting_client=untrusting)


# ---------------------------------------------------------------------------------------
# The recording SMTP server
# ---------------------------------------------------------------------------------------

USERNAME = "news@example.com"
PASSWORD = "s3cret"
PASSWORD_ENV = "BULKMAIL_SMTP_PASSWORD"


@dataclass(frozen=True)
class Login:
    username: str
    success: bool
    connection: int


@dataclass(frozen=True)
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    content: bytes
    connection: int
    received_at: float = field(default_factory=time.monotonic)  # when the server recorded it

    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=policy.default).parsebytes(self.content)
        assert isinstance(message, EmailMessage)
        return message

    def html(self) -> str:
        """The content of the message's text/html part."""
        part = self.parsed().get_body(("html",))
        assert part is not None, "no text/html part"
        content = part.get_content()
        assert isinstance(content, str)
        return content


@dataclass
class Connection:
    """One client connection that said EHLO; ``ehlo`` records (name, over TLS?) per EHLO."""

    number: int
    ehlo: list[tuple[str, bool]] = field(default_factory=list)
    rsets: int = 0
    quit: bool = False


@dataclass
class Faults:
    """Misbehaviour to inject; each counter is consumed as the fault fires."""

    refuse: dict[str, str] = field(default_factory=dict)  # RCPT address -> 5xx reply, always
    defer: dict[str, int] = field(default_factory=dict)  # RCPT address -> how many 451s first
    drop_after: int | None = None  # close the connection after accepting this many messages
    close_421: int = 0  # answer this many MAIL commands with 421 and close
    vanish_at_data: int = 0  # this many times: keep the message, close without answering
    data_delay: float = 0.0  # seconds to wait before answering each DATA


class Inbox:
    """An aiosmtpd handler recording every connection, EHLO, AUTH and message, with faults.

    Hooks run in the server's thread; tests read the records after the client got its
    reply (or after QUIT), so no lock is needed for appends.
    """

    DEFER_REPLY = "451 4.3.0 Temporary failure, try again later"

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self.accounts = {USERNAME: PASSWORD} if accounts is None else accounts
        self.connections: list[Connection] = []
        self.logins: list[Login] = []
        self.messages: list[Received] = []
        self.faults = Faults()
        self.require_auth = False  # answer MAIL with 530 until the client logged in
        # Advertise PIPELINING (RFC 2920; aiosmtpd reads pipelined commands in order but
        # does not say so), and note what the client had already sent when MAIL came.
        self.pipelining = False
        self.sent_ahead: list[bytes] = []
        self._by_server: dict[SMTPServer, Connection] = {}
        self._lock = threading.Lock()

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient, in order of arrival."""
        return [rcpt for message in self.messages for rcpt in message.rcpt_tos]

    def _connection(self, server: SMTPServer) -> Connection:
        with self._lock:
            if server not in self._by_server:
                self._by_server[server] = Connection(len(self.connections) + 1)
                self.connections.append(self._by_server[server])
            return self._by_server[server]

    def authenticate(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        """aiosmtpd authenticator: accept the accounts; record each attempt (no password)."""
        assert isinstance(auth_data, LoginPassword)
        username = auth_data.login.decode()
        success = self.accounts.get(username) == auth_data.password.decode()
        self.logins.append(Login(username, success, self._connection(server).number))
        # handled=False: aiosmtpd then sends the 535 itself. With the default (True) it
        # sends nothing and the client waits for a reply until its timeout.
        return AuthResult(success=success, handled=False)

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        over_tls = _transport(server).get_extra_info("ssl_object") is not None
        session.host_name = hostname
        self._connection(server).ehlo.append((hostname, over_tls))
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # The bytes the client sent after MAIL FROM without waiting for its reply (the
        # server's read buffer: aiosmtpd offers no other way to see it).
        self.sent_ahead.append(bytes(server._reader._buffer))  # type: ignore[attr-defined]
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.faults.close_421 > 0:
            self.faults.close_421 -= 1
            _close_soon(server)
            return "421 4.3.2 Service shutting down, closing the connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.faults.refuse:
            return self.faults.refuse[address]
        if self.faults.defer.get(address, 0) > 0:
            self.faults.defer[address] -= 1
            return self.DEFER_REPLY
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.faults.data_delay:
            await asyncio.sleep(self.faults.data_delay)
        connection = self._connection(server)
        assert isinstance(envelope.content, bytes)
        self.messages.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                mail_options=tuple(envelope.mail_options),
                content=envelope.content,
                connection=connection.number,
            )
        )
        if self.faults.vanish_at_data > 0:
            self.faults.vanish_at_data -= 1
            _transport(server).abort()
            await asyncio.Event().wait()  # cancelled by connection_lost; no reply is sent
        if self.faults.drop_after is not None and len(self.messages) >= self.faults.drop_after:
            self.faults.drop_after = None
            _close_soon(server)  # after this 250 is written: close() flushes first
        return f"250 OK: queued as {len(self.messages)}"

    async def handle_RSET(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self._connection(server).rsets += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self._connection(server).quit = True
        return "221 Bye"


def _transport(server: SMTPServer) -> asyncio.Transport:
    """The connection a handler runs on (aiosmtpd types it optional: it is unset between
    connections, never inside a handler)."""
    transport = server.transport
    assert isinstance(transport, asyncio.Transport)
    return transport


def _close_soon(server: SMTPServer) -> None:
    server.loop.call_soon(_transport(server).close)


Security = Literal["ssl", "starttls", "none"]


@dataclass
class Server:
    """A running test server and what it recorded."""

    host: str
    port: int
    security: Security
    auth: bool
    inbox: Inbox

    def settings(self, **overrides: Any) -> SmtpSettings:
        """SmtpSettings pointing at this server (with the test account if it wants AUTH)."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "username": USERNAME if self.auth else None,
            "password_env": PASSWORD_ENV,
            "timeout": 5.0,
        }
        values.update(overrides)
        return SmtpSettings(**values)


def free_port() -> int:
    """A port nobody listens on right now (the Controller's self-check cannot use port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


ServerFactory = Callable[..., Server]


@pytest.fixture
def pipelining() -> bool:
    """Whether the test servers advertise PIPELINING: no, but a module marked
    ``both_ways`` runs each of its tests both ways (see pytest_generate_tests)."""
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_ways") and (
        "pipelining" in metafunc.fixturenames
    ):
        metafunc.parametrize("pipelining", [False, True], ids=["stepwise", "pipelining"])


@pytest.fixture
def make_server(tls: TLSPair, pipelining: bool) -> Iterator[ServerFactory]:
    """Start aiosmtpd servers on 127.0.0.1; each is stopped at the end of the test.

    ``security``: "ssl" (implicit TLS), "starttls" (STARTTLS required before anything
    else) or "none"; ``auth``: offer AUTH and require it before MAIL (over plaintext when
    security is "none"); ``smtputf8``: advertise SMTPUTF8. PIPELINING is advertised
    when the ``pipelining`` fixture says so.
    """
    controllers: list[Controller] = []

    def start(security: Security, *, auth: bool = True, smtputf8: bool = True) -> Server:
        inbox = Inbox()
        inbox.pipelining = pipelining
        options: dict[str, Any] = {}
        if security == "ssl":
            options["ssl_context"] = tls.server
        elif security == "starttls":
            options.update(tls_context=tls.server, require_starttls=True)
        if auth:
            options["authenticator"] = inbox.authenticate
            inbox.require_auth = True
            # aiosmtpd only counts STARTTLS as TLS: with implicit TLS (ssl_context) it
            # would not even advertise AUTH unless auth_require_tls=False. And its own
            # auth_required=True with auth_require_tls=False emits a UserWarning (an
            # error under filterwarnings=error), so the Inbox enforces "login first".
            options["auth_require_tls"] = security == "starttls"
        controller = Controller(
            inbox,
            hostname="127.0.0.1",
            port=free_port(),
            server_hostname="mx.test",  # else aiosmtpd calls socket.getfqdn() per connection
            enable_SMTPUTF8=smtputf8,
            **options,
        )
        controller.start()
        controllers.append(controller)
        return Server("127.0.0.1", controller.port, security, auth, inbox)

    yield start
    for controller in controllers:
        controller.stop()


def transport(
    server: Server, tls: TLSPair, *, password: str | None = PASSWORD, **options: Any
) -> SMTPTransport:
    """A client for a test server that trusts the test CA (``settings=`` to point it elsewhere)."""
    settings = options.pop("settings", None) or server.settings()
    options.setdefault("ssl_context", tls.client)
    return SMTPTransport(settings, password=password, **options)


@pytest.fixture
def smtpd(make_server: ServerFactory) -> Server:
    """Implicit TLS (port-465 style) with AUTH required."""
    return make_server("ssl")


@pytest.fixture
def smtpd_starttls(make_server: ServerFactory) -> Server:
    """Plain connection that requires STARTTLS before anything else, then AUTH."""
    return make_server("starttls")


@pytest.fixture
def smtpd_plain(make_server: ServerFactory) -> Server:
    """No TLS, no AUTH: a local relay."""
    return make_server("none", auth=False)


@pytest.fixture
def smtpd_no_starttls(make_server: ServerFactory) -> Server:
    """Offers AUTH over plaintext but no STARTTLS: a client asking for STARTTLS must stop."""
    return make_server("none", auth=True)


# ---------------------------------------------------------------------------------------
# Campaign fixtures go below this line (or in tests/campaign_fixtures.py).
# ---------------------------------------------------------------------------------------


class DataHold:
    """Stall the server inside the ``number``-th DATA (counting from 1) of an Inbox.

    ``queued=False`` stalls before the message is recorded, ``queued=True`` after it is
    recorded but before the reply is sent. ``entered`` is set when the stall begins; it
    ends on `release`, after ``limit`` seconds, or when the client goes away (aiosmtpd
    cancels the handler then, so a message held before queueing is never recorded).
    """

    def __init__(self, inbox: Inbox, number: int, *, queued: bool, limit: float = 20.0) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()
        self._count = 0
        original = inbox.handle_DATA

        async def handle_DATA(server: SMTPServer, session: Session, envelope: Envelope) -> str:
            self._count += 1
            held = self._count == number
            if held and not queued:
                await self._stall(limit)
            reply = await original(server, session, envelope)
            if held and queued:
                await self._stall(limit)
            return reply

        # aiosmtpd looks the hooks up on the handler when each connection starts.
        inbox.handle_DATA = handle_DATA  # type: ignore[method-assign]

    async def _stall(self, limit: float) -> None:
        self.entered.set()
        deadline = time.monotonic() + limit
        while not self._released.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def release(self) -> None:
        self._released.set()


@pytest.fixture(scope="session")
def dovecot(ca: trustme.CA) -> Iterator[Any]:
    """A private Dovecot (tests/dovecot.py) on 127.0.0.1 for the whole session: IMAP and POP3,
    each with STARTTLS and implicit TLS. Each test takes its own `dovecot.account()`.
    Skipped when Dovecot is not installed."""
    from dovecot import running_dovecot

    with running_dovecot(ca) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL (tests/postgres.py) on 127.0.0.1 for the whole session, with a
    role that logs in with a password. Each test takes its own `postgres.database()`.
    Skipped when PostgreSQL is not installed."""
    from postgres import running_postgres

    with running_postgres() as server:
        yield server
