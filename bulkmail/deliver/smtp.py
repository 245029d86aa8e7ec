"""Deliver built mails over one verified SMTP connection: log in once, reconnect, retry 4xx.

This is the only module that imports smtplib. Every smtplib, ssl and socket error becomes
a bulkmail :class:`~bulkmail.errors.DeliveryError` in one place, :func:`translate_error`.

Per mail, the outcome is one of:

- the server's 2xx reply, returned by :meth:`SMTPTransport.send`;
- :class:`RecipientRefused` ``permanent=True``: 5xx for this recipient (or it needs
  SMTPUTF8 and the server has none); the batch goes on;
- :class:`RecipientRefused` ``permanent=False``: still 4xx after every retry;
- :class:`DeliveryUncertain`: the connection died (or no reply came) after the whole
  mail was sent, so it may have been delivered;
- :class:`SendCancelled`: a stop was asked while waiting to try the mail again; not sent;
- :class:`ConnectError`, :class:`TLSError`, :class:`AuthError`: stop the batch.

No password is sent without TLS to a host other than this machine unless the settings
allow it (:meth:`SmtpSettings.plaintext_auth_problem`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bulkmail.errors import (
    AuthError,
    ConnectError,
    DeliveryError,
    DeliveryUncertain,
    RecipientRefused,
    TLSError,
)
from bulkmail.models import OutgoingMail, SmtpSettings
from bulkmail.opening import Opened

EventHandler = Callable[[str, dict[str, Any]], None]
Stage = Literal["ca_file", "connect", "starttls", "login", "send"]

# The errors smtplib lets through: its own, and OSError (socket, ssl, timeouts).
_FOREIGN_ERRORS = (smtplib.SMTPException, OSError)

# The mechanisms smtplib implements, strongest first (as its login() orders them).
_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")
# A server that hangs must not hold up the end of a run (after a second Ctrl-C) for long.
_QUIT_TIMEOUT = 3.0
# The longest wait for the server's first words (or the TLS handshake of implicit TLS),
# whatever `timeout` says: a server greets at once, and one that stays silent is usually
# an implicit-TLS port spoken to in clear (security: starttls against 465), which waits
# for the client's TLS hello for ever. Deliberate greeting delays stay under this.
GREETING_TIMEOUT = 10.0
# OpenSSL's reasons when the answer to a TLS hello was not TLS (an SMTP greeting in clear).
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
# The command whose reply a stage of connecting waits for, for "no reply to ... within".
_STAGE_COMMANDS = {"connect": "EHLO", "starttls": "STARTTLS", "login": "AUTH"}


class Delivered(str):
    """The server's 2xx reply to the end of DATA (what `send` returns), carrying the Cc/Bcc
    copies it refused at RCPT TO, each in one line with the address and the reply: the
    mail went to the row's recipient, so the row is not failed for them, but said."""

    refused_copies: tuple[str, ...]

    def __new__(cls, reply: str, refused_copies: tuple[str, ...] = ()) -> Delivered:
        delivered = super().__new__(cls, reply)
        delivered.refused_copies = refused_copies
        return delivered


class SendCancelled(Exception):
    """A stop was asked while the transport waited to try a mail again: it was not sent.

    Not a DeliveryError: nothing went wrong with the server, the run is being stopped.
    """


def resolve_password(
    settings: SmtpSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] | None = None,
) -> str | None:
    """Find the SMTP password: the ``password_env`` variable, else ``prompt``, else an error.

    The CLI passes a getpass-based ``prompt`` only when a terminal is attached. An empty
    variable counts as unset. Returns None when no ``username`` is set and no password
    was found: the server is used without logging in.
    """
    if settings.password_env and environ.get(settings.password_env):
        return environ[settings.password_env]
    if settings.username is None:
        return None
    if prompt is not None:
        return prompt(f"SMTP password for {settings.username} at {settings.host}: ")
    raise AuthError(_missing_password(settings))


def _missing_password(settings: SmtpSettings) -> str:
    where = f"{settings.host}:{settings.port}: no password for {settings.username}"
    if settings.password_env:
        return f"{where}: set the environment variable {settings.password_env}"
    return f"{where}: add `password_env: SOME_VARIABLE` to the smtp settings and set that variable"


def translate_error(
    exc: BaseException, *, where: str, stage: Stage, username: str | None = None
) -> DeliveryError:
    """Map an smtplib/ssl/socket error to the most specific bulkmail error.

    ``where`` is ``host:port`` (or the CA file for stage ``ca_file``); ``stage`` says what
    was going on, which decides the class of a bare SMTP reply (a 454 to STARTTLS is a
    TLS failure, a 535 to AUTH an authentication failure). No message carries a password.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if stage == "ca_file":
        return TLSError(f"{where}: cannot load the CA certificates: {_os_reason(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"{where}: certificate verify failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return TLSError(f"{where}: TLS failed: {exc.reason or exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return ConnectError(f"{where}: the server closed the connection ({exc})")
    if isinstance(exc, smtplib.SMTPConnectError):
        return ConnectError(f"{where}: the server refused the session: {_reply_text(exc)}")
    if isinstance(exc, smtplib.SMTPException):
        return _refusal_by_stage(exc, where=where, stage=stage, username=username)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused")
    if isinstance(exc, TimeoutError):
        return ConnectError(f"{where}: timed out")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{where}: cannot resolve the host name: {exc.strerror}")
    if isinstance(exc, OSError):
        return ConnectError(f"{where}: {_os_reason(exc)}")
    raise TypeError(f"not an SMTP, TLS or socket error: {exc!r}") from exc


def _refusal_by_stage(
    exc: smtplib.SMTPException, *, where: str, stage: Stage, username: str | None
) -> DeliveryError:
    """An SMTP-level refusal (a reply code, or a missing extension) during ``stage``."""
    text = _reply_text(exc) if isinstance(exc, smtplib.SMTPResponseException) else str(exc)
    if stage == "login" and isinstance(exc, smtplib.SMTPNotSupportedError):
        return AuthError(
            f"{where}: cannot log in as {username}: the server offers no AUTH"
            " (some offer it only after STARTTLS)"
        )
    if stage == "login":
        return AuthError(f"{where}: login refused for {username}: {text}")
    if stage == "starttls":
        return TLSError(f"{where}: STARTTLS failed: {text}")
    return ConnectError(f"{where}: {text}")


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_decode(exc.smtp_error)}"


def _os_reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _decode(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines()) or text


@dataclass(frozen=True)
class _Reply:
    """The answer that ended one transaction attempt, and to which command."""

    command: str
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @classmethod
    def of(cls, command: str, response: tuple[int, bytes]) -> _Reply:
        code, text = response
        return cls(command, code, _decode(text))

    def __str__(self) -> str:
        return f"{self.code} {_one_line(self.text)}"


class _Dropped(Exception):
    """The connection went away (or the server said 421) before the mail was complete."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Client(smtplib.SMTP):
    """smtplib's client, waiting at most ``greeting_timeout`` for the server's first words
    (and, given a context, speaking TLS from the first byte, as smtplib.SMTP_SSL does).

    ``phase`` says how far connecting got, for the error message if it fails there.
    """

    def __init__(
        self, settings: SmtpSettings, tls: ssl.SSLContext | None, greeting_timeout: float
    ) -> None:
        super().__init__(local_hostname=settings.local_hostname, timeout=settings.timeout)
        # smtplib names the server for the certificate check (implicit TLS and STARTTLS)
        # only after a host given to its constructor, which would connect at once: before
        # the greeting could have a timeout of its own.
        self._host = settings.host
        self._tls = tls
        self._greeting_timeout = greeting_timeout
        self.phase: Literal["connect", "handshake", "greeting"] = "connect"

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own hook (SMTP_SSL overrides it the same way), called by connect().
        sock = socket.create_connection((host, port), timeout, self.source_address)
        sock.settimeout(self._greeting_timeout)
        if self._tls is not None:
            self.phase = "handshake"
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except BaseException:
                sock.close()
                raise
        self.phase = "greeting"
        return sock


class SMTPTransport(Opened):
    """Send mails through one SMTP connection, opened and logged into once.

    Reconnects (and logs in again) when the server drops the connection, answers 421
    or ``settings.max_per_connection`` mails went through one connection, then carries
    on with the same mail. 4xx replies are retried after each of ``retry_delays``.
    ``on_event(name, info)`` hears of "connect", "login", "reconnect" and "retry"
    (:func:`event_text` says them in words). ``sleep`` waits before a retry or a repeated
    reconnect; when it returns True (as ``threading.Event.wait`` does once the event is
    set) the wait was cut short by a stop: the mail is given up with SendCancelled.
    The server's greeting is awaited at most ``greeting_timeout`` seconds (or
    ``settings.timeout`` if shorter); every later reply, ``settings.timeout``.

    >>> with SMTPTransport(settings, password=resolve_password(settings)) as smtp:
    ...     reply = smtp.send(mail)
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: str | None,
        ssl_context: ssl.SSLContext | None = None,
        retry_delays: Sequence[float] = (1, 2, 4),
        max_reconnects: int = 3,
        sleep: Callable[[float], bool | None] = time.sleep,
        on_event: EventHandler | None = None,
        greeting_timeout: float = GREETING_TIMEOUT,
    ) -> None:
        if settings.security not in ("ssl", "starttls", "none"):
            raise ValueError(f"unknown security {settings.security!r}")
        self.settings = settings
        self._password = password
        self._ssl_context = ssl_context
        self._retry_delays = tuple(retry_delays)
        self._max_reconnects = max_reconnects
        self._sleep = sleep
        self._on_event = on_event
        self._greeting_timeout = greeting_timeout
        self._smtp: smtplib.SMTP | None = None
        # Transactions begun on this connection, refused ones included: a server that
        # limits mails per connection usually counts MAIL commands.
        self._sent_on_connection = 0
        self._needs_rset = False  # the last transaction failed half-way
        self.connections = 0  # connections opened so far

    def __repr__(self) -> str:
        s = self.settings
        return f"SMTPTransport({s.host}:{s.port}, security={s.security!r}, username={s.username!r})"

    @property
    def where(self) -> str:
        """``host:port``, the prefix of every error message."""
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def greeting_timeout(self) -> float:
        """Seconds to wait for the server's first words: a silent server is a wrong port."""
        return min(self.settings.timeout, self._greeting_timeout)

    @property
    def socket(self) -> socket.socket | None:
        """The current connection's socket (an SSLSocket once TLS is on), for diagnostics."""
        return self._smtp.sock if self._smtp is not None else None

    # -- the Transport protocol -------------------------------------------------------

    def open(self) -> None:
        """Connect, say EHLO, set up TLS as configured and log in. Does nothing if open."""
        if self._smtp is None:
            self._connect()

    def takes_before_data(self) -> bool:
        """`send` calls its ``before_data`` itself, just before DATA."""
        return True

    def takes_after_data(self) -> bool:
        """`send` calls its ``after_data`` while the server reads the mail."""
        return True

    def send(
        self,
        mail: OutgoingMail,
        *,
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> str:
        """Deliver ``mail`` to its one recipient; return the server's 2xx reply.

        ``before_data`` is called once MAIL FROM and RCPT TO are accepted, before DATA:
        the mail is handed over only after it returns (an exception from it leaves the
        mail unsent, and the next transaction starts with RSET).
        ``after_data`` is called once the mail's content is sent, before the server's
        reply to it is read (on each attempt that gets that far): work done there
        overlaps the server's, which is mostly spent on the content. An exception from
        it leaves this mail in doubt.
        Raises RecipientRefused for this recipient only; DeliveryUncertain if the outcome
        cannot be known; SendCancelled if a stop cut a wait short (the mail was not sent);
        ConnectError, TLSError or AuthError when the batch must stop.
        """
        payload = _dot_stuff(mail.data)
        retries = drops = 0
        refused: list[str] = []  # copies refused in the last attempt
        while True:
            smtp = self._ready_connection()
            try:
                reply = self._transaction(smtp, mail, payload, refused, before_data, after_data)
            except DeliveryUncertain:
                self._discard_connection()
                raise
            except _Dropped as drop:
                self._discard_connection()
                drops += 1
                self._before_reconnect(mail, drop.reason, drops)
                continue
            if reply.accepted:
                return Delivered(str(reply), tuple(refused))
            if reply.transient and retries < len(self._retry_delays):
                delay = self._retry_delays[retries]
                retries += 1
                self._emit(
                    "retry",
                    recipient=mail.recipient.email,
                    code=reply.code,
                    reply=reply.text,
                    delay=delay,
                    attempt=retries,
                )
                self._wait(delay, mail)
                continue
            raise self._refusal(mail, reply, retries)

    def close(self) -> None:
        """Say QUIT and close the connection; errors on the way out are ignored."""
        self._quit()

    # -- connecting ---------------------------------------------------------------------

    def _connect(self) -> None:
        s = self.settings
        problem = s.plaintext_auth_problem()
        if problem is not None:  # before connecting: nothing at all goes to that host
            raise AuthError(f"{self.where}: {problem}")
        if s.username is not None and self._password is None:
            raise AuthError(_missing_password(s))
        smtp = self._new_client()
        try:
            with self._translating("connect"):
                _set_nodelay(smtp)
                smtp.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                self._starttls(smtp)
            self.connections += 1
            self._emit(
                "connect",
                host=s.host,
                port=s.port,
                security=s.security,
                connection=self.connections,
            )
            if s.username is not None:
                self._login(smtp, s.username)
        except DeliveryError as exc:
            if _in_step(exc):
                # The server answered (535 to AUTH, no STARTTLS...): end the session as
                # RFC 5321 asks, so its log shows a QUIT, not a client that vanished
                # after AUTH, which some servers count toward blocking the address.
                self._say_quit(smtp)
            smtp.close()
            raise
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        self._sent_on_connection = 0
        self._needs_rset = False

    def _new_client(self) -> smtplib.SMTP:
        """A client connected for the configured security, greeting read."""
        s = self.settings
        context = self._context() if s.security == "ssl" else None
        client = _Client(s, context, self.greeting_timeout)
        try:
            code, message = client.connect(s.host, s.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, message)
        except BaseException as exc:
            client.close()
            if isinstance(exc, _FOREIGN_ERRORS):
                raise self._connect_failure(exc, client.phase) from exc
            raise
        assert client.sock is not None
        client.sock.settimeout(s.timeout)  # from now on, the wait for every reply
        return client

    def _connect_failure(self, exc: BaseException, phase: str) -> DeliveryError:
        """What went wrong while connecting, with the likely fix when the security setting
        does not match the port."""
        wait = f"{self.greeting_timeout:g} s"
        if phase == "greeting" and _timed_out(exc):
            hint = ""
            if self.settings.security != "ssl":
                hint = (
                    "; if this port expects TLS from the first byte (as 465 does),"
                    " use `security: ssl`"
                )
            return ConnectError(f"{self.where}: no greeting within {wait}{hint}")
        if phase == "handshake" and isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
            reason = str(exc.reason).lower().replace("_", " ")
            return TLSError(
                f"{self.where}: TLS failed: {reason}: this port does not start with TLS;"
                " use `security: starttls` (or `none` for a local relay on port 25)"
            )
        if phase == "handshake" and isinstance(exc, TimeoutError):
            return ConnectError(f"{self.where}: no reply to the TLS handshake within {wait}")
        return translate_error(exc, where=self.where, stage="connect")

    def _context(self) -> ssl.SSLContext:
        """The one verifying SSL context of this transport, created on first use."""
        if self._ssl_context is None:
            ca_file = self.settings.ca_file
            with self._translating("ca_file", where=str(ca_file)):
                self._ssl_context = ssl.create_default_context(cafile=ca_file)
        return self._ssl_context

    def _starttls(self, smtp: smtplib.SMTP) -> None:
        # Checked here rather than left to smtplib so the message says what to do, and so
        # that no password is ever sent over a connection that stayed in the clear.
        if not smtp.has_extn("starttls"):
            raise TLSError(
                f"{self.where}: the server does not offer STARTTLS;"
                " refusing to continue without TLS (security: starttls)"
            )
        with self._translating("starttls"):
            smtp.starttls(context=self._context())
            smtp.ehlo_or_helo_if_needed()  # RFC 3207 4.2: forget what was said in clear

    def _login(self, smtp: smtplib.SMTP, username: str) -> None:
        assert self._password is not None  # checked in _connect
        with self._translating("login", username=username):
            smtp.user, smtp.password = username, self._password
            # smtplib's login() tries the next mechanism after a refusal, so a wrong
            # password would count twice toward the provider's lockout: use one.
            advertised = smtp.esmtp_features.get("auth", "").upper().split()
            mechanism = next((m for m in _MECHANISMS if m in advertised), None)
            if mechanism is None:
                smtp.login(username, self._password)  # let smtplib say what is missing
            else:
                method = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
                smtp.auth(mechanism, method, initial_response_ok=True)
        self._emit("login", username=username)

    def _ready_connection(self) -> smtplib.SMTP:
        """The open connection, replaced first if it carried ``max_per_connection`` mails."""
        limit = self.settings.max_per_connection
        if self._smtp is not None and limit and self._sent_on_connection >= limit:
            self._quit()
            self._emit(
                "reconnect",
                reason=f"{limit} mails sent on one connection (max_per_connection)",
                attempt=1,
                planned=True,
            )
        if self._smtp is None:
            self._connect()
        assert self._smtp is not None
        return self._smtp

    def _before_reconnect(self, mail: OutgoingMail, reason: str, drops: int) -> None:
        """Give up after ``max_reconnects`` drops for one mail; else wait if this is a repeat."""
        if drops > self._max_reconnects:
            raise ConnectError(
                f"{self.where}: the connection was lost {drops} times while sending to"
                f" {mail.recipient.email}; last: {reason}"
            )
        self._emit("reconnect", reason=reason, attempt=drops)
        if drops > 1 and self._retry_delays:
            self._wait(self._retry_delays[min(drops - 2, len(self._retry_delays) - 1)], mail)

    def _wait(self, seconds: float, mail: OutgoingMail) -> None:
        """Wait before trying ``mail`` again; a stop asked meanwhile gives it up, unsent."""
        if self._sleep(seconds):
            raise SendCancelled(
                f"{mail.recipient.email}: not sent: the run was stopped while waiting to retry"
            )

    def _discard_connection(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _quit(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            self._say_quit(smtp)

    def _say_quit(self, smtp: smtplib.SMTP) -> None:
        """QUIT, waiting a few seconds at most for the reply, then close."""
        try:
            # The server may be gone already; then there is nothing left to tell it.
            with contextlib.suppress(*_FOREIGN_ERRORS):
                if smtp.sock is not None:
                    smtp.sock.settimeout(min(self.settings.timeout, _QUIT_TIMEOUT))
                smtp.quit()
        finally:
            smtp.close()

    # -- one mail -------------------------------------------------------------------------

    def _transaction(
        self,
        smtp: smtplib.SMTP,
        mail: OutgoingMail,
        payload: bytes,
        refused: list[str],
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> _Reply:
        """MAIL, RCPT, DATA for one mail. Raises _Dropped when the mail can safely be resent."""
        options = self._mail_options(smtp, mail)
        if self._needs_rset:
            # listmonk #300/#1192: without RSET every later mail got "503 sender
            # already specified" after one refused recipient.
            self._check(self._command("RSET", smtp.rset))
            self._needs_rset = False
        self._sent_on_connection += 1
        self._needs_rset = True  # until the server accepts this mail
        reply = self._exchange(smtp, mail, options, payload, refused, before_data, after_data)
        self._check(reply)
        self._needs_rset = not reply.accepted
        return reply

    def _exchange(
        self,
        smtp: smtplib.SMTP,
        mail: OutgoingMail,
        options: list[str],
        payload: bytes,
        refused: list[str],
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> _Reply:
        """MAIL FROM, RCPT TO the row's recipient then each copy, ``before_data``, DATA. A
        refused copy is noted in ``refused`` and the mail still goes to the others."""
        refused.clear()
        if smtp.has_extn("pipelining"):
            return self._pipelined(smtp, mail, options, payload, refused, before_data, after_data)
        reply = self._command("MAIL FROM", lambda: smtp.mail(mail.sender, options))
        if not reply.accepted:
            return reply
        reply = self._command("RCPT TO", lambda: smtp.rcpt(mail.recipient.email))
        if not reply.accepted:
            return reply
        for copy in mail.copies:
            answer = self._command("RCPT TO", functools.partial(smtp.rcpt, copy))
            self._check(answer)
            if not answer.accepted:
                refused.append(f"{copy}: copy refused by {self.where} at RCPT TO: {answer}")
        if before_data is not None:
            before_data()  # e.g. the journal's mark reaching the disk: only then may it go
        reply = self._command("DATA", lambda: smtp.docmd("DATA"))
        if reply.code != 354:
            return reply
        return self._content(smtp, mail, payload, after_data)

    def _pipelined(
        self,
        smtp: smtplib.SMTP,
        mail: OutgoingMail,
        options: list[str],
        payload: bytes,
        refused: list[str],
        before_data: Callable[[], None] | None,
        after_data: Callable[[], None] | None = None,
    ) -> _Reply:
        """The same transaction with PIPELINING (RFC 2920), which the server offered: MAIL
        FROM, RCPT TO and DATA go in one write and their replies are read in order: two
        round trips a mail instead of four (over a WAN, half the time). ``before_data``
        runs once DATA is answered, before any of the content is sent; if it fails, the
        connection is dropped, which ends the transaction with nothing handed over.

        A mail with Cc/Bcc copies sends DATA only once the row's own recipient is
        accepted (three round trips): were the row refused, a DATA sent ahead would be
        taken for the copies alone.
        """
        utf8 = "SMTPUTF8" in options
        extra = "".join(f" {option}" for option in options)
        rcpts = (mail.recipient.email, *mail.copies)
        lines = [f"MAIL FROM:{smtplib.quoteaddr(mail.sender)}{extra}"]
        lines += [f"RCPT TO:{smtplib.quoteaddr(rcpt)}" for rcpt in rcpts]
        ahead = not mail.copies  # DATA in the same write
        if ahead:
            lines.append("DATA")
        try:
            smtp.send("".join(f"{line}\r\n" for line in lines).encode("utf-8" if utf8 else "ascii"))
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(self._lost(exc, "MAIL FROM")) from exc
        sender = self._reply("MAIL FROM", smtp)
        rcpt = self._reply("RCPT TO", smtp)
        for copy in mail.copies:
            answer = self._reply("RCPT TO", smtp)
            if not answer.accepted:
                refused.append(f"{copy}: copy refused by {self.where} at RCPT TO: {answer}")
        failed = next((reply for reply in (sender, rcpt) if not reply.accepted), None)
        if ahead:
            data = self._reply("DATA", smtp)
            if failed is not None and data.code == 354:
                # DATA taken with no recipient accepted, against RFC 2920: only hanging
                # up ends it with nothing delivered.
                self._discard_connection()
        if failed is not None:
            return failed
        if not ahead:
            data = self._command("DATA", lambda: smtp.docmd("DATA"))
        if data.code != 354:
            return data
        if before_data is not None:
            try:
                before_data()  # e.g. the journal's mark reaching the disk: only then may it go
            except BaseException:
                self._discard_connection()  # in the middle of DATA: only hanging up ends it
                raise
        return self._content(smtp, mail, payload, after_data)

    def _reply(self, command: str, smtp: smtplib.SMTP) -> _Reply:
        """The next reply, to ``command`` sent ahead; a 421 ends the connection."""
        reply = self._command(command, smtp.getreply)
        self._check(reply)
        return reply

    def _content(
        self,
        smtp: smtplib.SMTP,
        mail: OutgoingMail,
        payload: bytes,
        after_data: Callable[[], None] | None = None,
    ) -> _Reply:
        """The mail itself, once DATA was answered 354, and the server's final reply;
        ``after_data`` runs in between, while the server reads the mail."""
        # smtplib's data() sends and reads the reply in one call; they are separate here
        # because a drop while sending means "not delivered" but a drop while waiting for
        # the reply means "maybe delivered".
        try:
            smtp.send(payload)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if _timed_out(exc):
                raise _Dropped(f"the server took no data for {self._wait_text}") from exc
            raise _Dropped(self._lost(exc, "DATA")) from exc
        if after_data is not None:
            try:
                after_data()
            except BaseException:
                self._discard_connection()  # the reply is never read: the mail is in doubt
                raise
        try:
            return _Reply.of("end of data", smtp.getreply())
        except smtplib.SMTPServerDisconnected as exc:
            if _timed_out(exc):
                what = f"no reply to end of data within {self._wait_text}"
            else:
                what = "the connection was lost"
            raise DeliveryUncertain(
                f"{self.where}: {what} after the mail to {mail.recipient.email} was sent;"
                " the server did not confirm it, so it may or may not have been delivered",
                recipient=mail.recipient.email,
            ) from exc

    def _command(self, command: str, call: Callable[[], tuple[int, bytes]]) -> _Reply:
        """Send one command and read its reply; raises _Dropped if none came."""
        try:
            return _Reply.of(command, call())
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Dropped(self._lost(exc, command)) from exc

    def _lost(self, exc: BaseException, command: str) -> str:
        """Why ``command`` got no reply, for the reconnect note and the final error."""
        if _timed_out(exc):
            return f"no reply to {command} within {self._wait_text}"
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return "the server closed the connection"
        return _os_reason(exc)

    @property
    def _wait_text(self) -> str:
        return f"{self.settings.timeout:g} s"

    def _check(self, reply: _Reply) -> None:
        """A 421 means the server is closing the connection: reconnect and try again."""
        if reply.code == 421:
            raise _Dropped(f"the server is closing the connection: {reply}")

    def _mail_options(self, smtp: smtplib.SMTP, mail: OutgoingMail) -> list[str]:
        """MAIL FROM parameters: SIZE, BODY=8BITMIME and SMTPUTF8 as the mail needs them."""
        options = [f"SIZE={len(mail.data)}"] if smtp.has_extn("size") else []
        if mail.smtputf8 or not (mail.sender.isascii() and mail.recipient.email.isascii()):
            if not smtp.has_extn("smtputf8"):
                raise RecipientRefused(
                    f"{mail.recipient.email}: this mail needs SMTPUTF8 (non-ASCII addresses),"
                    f" which {self.where} does not offer; not sent",
                    code=0,
                    reply="",
                    permanent=True,
                )
            options.append("SMTPUTF8")
        if not mail.data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    def _refusal(self, mail: OutgoingMail, reply: _Reply, retries: int) -> DeliveryError:
        rcpt = mail.recipient.email
        if reply.command == "MAIL FROM" and reply.code == 530:
            return AuthError(f"{self.where}: the server wants a login before sending: {reply}")
        if reply.transient:
            message = f"{rcpt}: still deferred by {self.where} after {retries} retries: {reply}"
        else:
            message = f"{rcpt}: refused by {self.where} at {reply.command}: {reply}"
        return RecipientRefused(
            message, code=reply.code, reply=reply.text, permanent=not reply.transient
        )

    # -- plumbing -----------------------------------------------------------------------

    @contextmanager
    def _translating(
        self, stage: Stage, *, where: str | None = None, username: str | None = None
    ) -> Iterator[None]:
        try:
            yield
        except _FOREIGN_ERRORS as exc:
            command = _STAGE_COMMANDS.get(stage)
            if command is not None and _timed_out(exc):
                if stage == "starttls" and isinstance(exc, TimeoutError):
                    command = "the TLS handshake"  # the reply to STARTTLS came, then silence
                raise ConnectError(
                    f"{self.where}: no reply to {command} within {self._wait_text}"
                ) from exc
            raise translate_error(
                exc, where=where or self.where, stage=stage, username=username
            ) from exc

    def _emit(self, name: str, **info: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, info)


def event_text(name: str, info: Mapping[str, Any], *, where: str) -> str | None:
    """The transport event ``name`` in one line for a person, or None for routine ones
    (connecting, logging in, a reconnect planned by max_per_connection)."""
    if name == "reconnect" and not info.get("planned"):
        return f"reconnecting to {where} ({info['reason']})..."
    if name == "retry":
        return (
            f"{info['code']} from {where} for {info['recipient']}: retrying in {info['delay']:g} s"
        )
    return None


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a wait for the server that ran out (smtplib reports one as a
    disconnection, with the timeout as its context)."""
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return isinstance(exc.__context__, TimeoutError)
    return isinstance(exc, TimeoutError)


def _in_step(exc: DeliveryError) -> bool:
    """Whether the server answered the last command, so that it would understand a QUIT
    (not so after a lost connection, a timeout or a TLS handshake gone wrong)."""
    cause = exc.__cause__
    if cause is None:
        return True  # refused by bulkmail itself after the server's reply
    return isinstance(cause, smtplib.SMTPException) and not isinstance(
        cause, smtplib.SMTPServerDisconnected
    )


def _set_nodelay(smtp: smtplib.SMTP) -> None:
    """Disable Nagle: a multi-record TLS write otherwise waits for a delayed ACK (~40 ms)."""
    assert smtp.sock is not None
    # An SSLSocket shares the file descriptor, so STARTTLS keeps the option.
    smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _dot_stuff(data: bytes) -> bytes:
    """The DATA payload: ``data`` with leading dots doubled (RFC 5321 4.5.2), ended by
    CRLF "." CRLF."""
    # The same as re.sub(rb"(?m)^\.", b"..", data), at memcpy speed: ~1 ms a 300 KB mail less.
    stuffed = data.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
