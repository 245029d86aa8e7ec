"""Read the messages that came back from the campaign's mailbox, over IMAP or POP3.

This is the only module that imports imaplib and poplib (the standard library's clients;
no protocol is written by hand here). Every imaplib, poplib, ssl and socket error becomes
one :class:`MailboxError` line naming the server and what failed.

What "already processed" means differs by protocol:

- IMAP: a processed message carries the keyword ``$BulkmailProcessed`` (set by
  :meth:`Mailbox.mark_processed`), so `messages` returns only the others, across runs and
  machines. A folder that takes no keywords (PERMANENTFLAGS without ``\\*``) returns all
  its messages; the caller's store remembers their UIDs. Messages are fetched with
  ``BODY.PEEK[]``, so none is marked read (``\\Seen``) for the person who reads the box.
- POP3: the protocol keeps no flags, so `messages` returns every message and the caller
  skips the UIDs (UIDL) it has seen. A server without UIDL is refused: nothing could tell
  one run's messages from the next.

Messages are fetched one at a time, so memory stays flat however large the mailbox is.
Nothing is deleted unless :meth:`Mailbox.delete` is called (``--delete``); IMAP expunges
those messages, and POP3 commits its DELE, when the mailbox is closed.

TLS is verified as for SMTP (the system's CAs or ``ca_file``, and the host name), and no
password goes in clear to another machine unless ``allow_plaintext_auth`` says so.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from bulkmail.errors import MailboxError
from bulkmail.models import InboxSettings, SmtpSettings

# The keyword that marks a message this mailbox has handled (RFC 3501 keyword syntax).
PROCESSED_KEYWORD = "$BulkmailProcessed"
# The longest wait for the server's greeting (or the handshake of implicit TLS), whatever
# `timeout` says, as for SMTP: a server greets at once, and one that stays silent is
# usually an implicit-TLS port spoken to in clear, which waits for a TLS hello for ever.
GREETING_TIMEOUT = 10.0
# The longest line accepted from a POP3 server. poplib's own limit (2048 bytes) is below
# what real mail carries (HTML on one line, long headers); this is imaplib's.
POP3_MAX_LINE = 1_000_000
# OpenSSL's reasons when the answer to a TLS hello was not TLS (a greeting in clear).
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
# What was being done when an error came, for its message.
Stage = Literal["connect", "starttls", "login", "select", "search", "fetch", "store", "expunge"]
_DOING: dict[Stage, str] = {
    "connect": "connecting",
    "starttls": "STARTTLS",
    "login": "logging in",
    "select": "opening the folder",
    "search": "listing the messages",
    "fetch": "fetching a message",
    "store": "flagging a message",
    "expunge": "deleting messages",
}
# The errors the clients let through: their own, and OSError (socket, ssl, timeouts).
_CLIENT_ERRORS = (imaplib.IMAP4.error, poplib.error_proto, OSError)


@dataclass(frozen=True)
class FetchedMessage:
    """One message as the server holds it, byte for byte.

    ``uid`` names it in this mailbox for good: IMAP ``"<uidvalidity>:<uid>"`` (a new
    UIDVALIDITY means the server renumbered the folder), POP3 the server's UIDL.
    """

    uid: str
    raw: bytes

    def __repr__(self) -> str:
        return f"FetchedMessage(uid={self.uid!r}, {len(self.raw):,} bytes)"


class Mailbox(ABC):
    """An open, logged-in mailbox; close it (or use it as a context manager) when done."""

    @property
    @abstractmethod
    def keywords_supported(self) -> bool:
        """Whether `mark_processed` leaves a mark on the server (IMAP with keywords)."""

    @abstractmethod
    def messages(self) -> Iterator[FetchedMessage]:
        """The messages not yet marked processed, fetched one by one as iterated."""

    @abstractmethod
    def mark_processed(self, uid: str) -> None:
        """Mark the message so later `messages` calls (in any run) leave it out, where the
        server can keep such a mark; otherwise do nothing."""

    @abstractmethod
    def delete(self, uid: str) -> None:
        """Delete the message; the deletion is final when the mailbox is closed."""

    @abstractmethod
    def close(self) -> None:
        """Commit the deletions and log out. Closing twice does nothing."""

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        with suppress(MailboxError):  # the error already on its way says more
            self.close()


def open_mailbox(settings: InboxSettings, password: str | None) -> Mailbox:
    """Connect to the mailbox, with TLS as ``settings.security`` says, and log in.

    For IMAP the folder is selected too, so a missing folder is found here. Refuses,
    before connecting, to send a password in clear to another machine unless
    ``allow_plaintext_auth`` is set.
    """
    server = _Server(settings)
    problem = plaintext_auth_problem(settings)
    if problem is not None:  # before connecting: nothing at all goes to that host
        raise MailboxError(f"{server}: {problem}")
    if password is None:
        raise MailboxError(_missing_password(settings))
    context = _tls_context(settings) if settings.security != "none" else None
    if settings.protocol == "imap":
        return ImapMailbox(server, context, password)
    return Pop3Mailbox(server, context, password)


def plaintext_auth_problem(settings: InboxSettings) -> str | None:
    """Why logging in with these settings would expose the password, or None: the rule
    of :meth:`SmtpSettings.plaintext_auth_problem` (only this machine, or a network the
    user vouches for, may see it in clear)."""
    if settings.security != "none" or settings.allow_plaintext_auth:
        return None
    if SmtpSettings(host=settings.host, port=settings.port).host_is_loopback:
        return None
    return (
        f"refusing to send the password for {settings.username} in clear to {settings.host}"
        " (security: none); use `security: starttls` or `security: ssl`, or set"
        " `allow_plaintext_auth: true` if the network to that host is trusted"
    )


def _missing_password(settings: InboxSettings) -> str:
    where = f"{settings.host}:{settings.port}: no password for {settings.username}"
    if settings.password_env:
        return f"{where}: set the environment variable {settings.password_env}"
    return f"{where}: add `password_env: SOME_VARIABLE` to the inbox settings and set that variable"


def _tls_context(settings: InboxSettings) -> ssl.SSLContext:
    """A verifying context: the system's CAs, or only ``ca_file`` when given (as SMTP)."""
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ValueError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise MailboxError(
            f"{settings.ca_file}: cannot load the CA certificates: {reason}"
        ) from exc


class _Server:
    """Where the mailbox is and how to name it in messages: ``IMAP 127.0.0.1:993``."""

    def __init__(self, settings: InboxSettings) -> None:
        self.settings = settings
        self.label = settings.protocol.upper()
        self.where = f"{settings.host}:{settings.port}"
        self.greeting_timeout = min(settings.timeout, GREETING_TIMEOUT)

    def __str__(self) -> str:
        return f"{self.label} {self.where}"

    @contextmanager
    def translating(self, stage: Stage) -> Iterator[None]:
        """Turn what the client raises during ``stage`` into one MailboxError line."""
        try:
            yield
        except _CLIENT_ERRORS as exc:
            raise self.error(exc, stage) from exc

    def error(self, exc: BaseException, stage: Stage) -> MailboxError:
        """The most useful one line for ``exc``, raised while ``stage`` was going on."""
        if isinstance(exc, MailboxError):
            return exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            return MailboxError(f"{self}: {_untrusted(exc)}")
        if isinstance(exc, ssl.SSLError):
            return MailboxError(f"{self}: {self._tls_failure(exc, stage)}")
        if isinstance(exc, TimeoutError):
            return MailboxError(f"{self}: {self._timeout(stage)}")
        if isinstance(exc, ConnectionRefusedError):
            return MailboxError(f"{self}: connection refused")
        if isinstance(exc, socket.gaierror):
            return MailboxError(f"{self}: cannot resolve the host name: {exc.strerror}")
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return MailboxError(f"{self}: {_DOING[stage]} failed: {reason}")
        text = _server_text(exc)
        if isinstance(exc, imaplib.IMAP4.abort):
            return MailboxError(f"{self}: the connection was lost while {_DOING[stage]}: {text}")
        if stage == "login":
            user = f"{self.settings.username}@{self.where}"
            return MailboxError(f"{self.label} login refused for {user}: {text}")
        return MailboxError(f"{self}: {_DOING[stage]} failed: {text}")

    def _tls_failure(self, exc: ssl.SSLError, stage: Stage) -> str:
        reason = str(exc.reason or exc)
        if stage == "connect" and reason in _NOT_TLS:
            return (
                f"TLS failed: {reason.lower().replace('_', ' ')}: this port does not start"
                " with TLS; use `security: starttls`"
            )
        return f"TLS failed: {reason}"

    def _timeout(self, stage: Stage) -> str:
        if stage != "connect":
            return f"no answer within {self.settings.timeout:g} s while {_DOING[stage]}"
        text = f"no greeting within {self.greeting_timeout:g} s"
        if self.settings.security != "ssl":
            text += (
                "; if this port expects TLS from the first byte (as 993 and 995 do),"
                " use `security: ssl`"
            )
        return text


def _untrusted(exc: ssl.SSLCertVerificationError) -> str:
    text = f"certificate not trusted: {exc.verify_message}"
    if exc.verify_code != _HOSTNAME_MISMATCH:
        text += "; if the server's certificate comes from a private CA, name it in `ca_file:`"
    return text


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def _server_text(exc: BaseException) -> str:
    """What the server (or the client library) said, as one line of text."""
    said = exc.args[0] if exc.args else exc
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
    text = text.removeprefix("-ERR ").strip()
    return " / ".join(line.strip() for line in text.splitlines()) or type(exc).__name__


# ---------------------------------------------------------------------------------------
# IMAP
# ---------------------------------------------------------------------------------------


class ImapMailbox(Mailbox):
    """One folder of an IMAP account, selected read-write."""

    def __init__(self, server: _Server, context: ssl.SSLContext | None, password: str) -> None:
        self._server = server
        self._client = self._connect(context)
        self._deleted: list[str] = []
        self._closed = False
        try:
            with server.translating("login"):
                self._login(server.settings.username, password)
                # What the server can do once logged in (UIDPLUS...) is more than it said
                # before; imaplib keeps only the first answer.
                self._capabilities = _capabilities_now(self._client)
            self._uidvalidity, self._keywords = self._select(server.settings.folder)
        except BaseException:
            self._logout()
            raise

    @property
    def keywords_supported(self) -> bool:
        return self._keywords

    def _connect(self, context: ssl.SSLContext | None) -> imaplib.IMAP4:
        server, settings = self._server, self._server.settings
        client: imaplib.IMAP4
        with server.translating("connect"):
            if settings.security == "ssl":
                assert context is not None
                client = imaplib.IMAP4_SSL(
                    settings.host,
                    settings.port,
                    ssl_context=context,
                    timeout=server.greeting_timeout,
                )
            else:
                client = imaplib.IMAP4(
                    settings.host, settings.port, timeout=server.greeting_timeout
                )
        client.sock.settimeout(settings.timeout)  # from now on, the wait for every answer
        if settings.security != "starttls":
            return client
        try:
            # Checked here rather than left to imaplib so the message says what to do,
            # and so that no password is sent over a connection that stayed in clear.
            if "STARTTLS" not in client.capabilities:
                raise MailboxError(
                    f"{server}: the server does not offer STARTTLS;"
                    " refusing to continue without TLS (security: starttls)"
                )
            assert context is not None
            with server.translating("starttls"):
                client.starttls(context)
        except BaseException:
            with suppress(OSError):  # a failed handshake leaves the socket closed
                client.shutdown()
            raise
        return client

    def _login(self, username: str, password: str) -> None:
        """AUTHENTICATE PLAIN where offered (any UTF-8 password, one round trip), else LOGIN."""
        client = self._client
        if "AUTH=PLAIN" in client.capabilities:
            secret = f"\0{username}\0{password}".encode()
            client.authenticate("PLAIN", lambda _challenge: secret)
        elif "LOGINDISABLED" in client.capabilities:
            raise MailboxError(
                f"IMAP login refused for {username}@{self._server.where}: the server allows"
                " no login on this connection (LOGINDISABLED); use `security: starttls` or"
                " `security: ssl`"
            )
        else:
            client.login(username, password)

    def _select(self, folder: str) -> tuple[str, bool]:
        """Select ``folder`` read-write: its UIDVALIDITY, and whether it takes keywords."""
        client, server = self._client, self._server
        with server.translating("select"):
            try:
                typ, data = client.select(_quoted(folder))
            except imaplib.IMAP4.readonly as exc:
                raise MailboxError(
                    f"{server}: folder {folder!r} is read-only for {server.settings.username};"
                    " bulkmail needs to mark the messages it has processed"
                ) from exc
            if typ != "OK":
                raise MailboxError(_select_problem(server, folder, data))
            _, validity = client.response("UIDVALIDITY")
            _, permanent = client.response("PERMANENTFLAGS")
        if not validity or not isinstance(validity[0], bytes):
            raise MailboxError(f"{server}: folder {folder!r} has no UIDVALIDITY")
        flags = permanent[0] if permanent and isinstance(permanent[0], bytes) else b""
        takes_keywords = b"\\*" in flags or PROCESSED_KEYWORD.encode() in flags
        return validity[0].decode("ascii"), takes_keywords

    def messages(self) -> Iterator[FetchedMessage]:
        criteria = ("UNKEYWORD", PROCESSED_KEYWORD) if self._keywords else ("ALL",)
        with self._server.translating("search"):
            typ, data = self._client.uid("SEARCH", *criteria)
            _check(typ, data)
        uids = data[0].split() if data and isinstance(data[0], bytes) else []
        for uid in uids:
            raw = self._fetch(uid)
            if raw is not None:  # None: expunged by another client meanwhile
                yield FetchedMessage(f"{self._uidvalidity}:{uid.decode('ascii')}", raw)

    def _fetch(self, uid: bytes) -> bytes | None:
        with self._server.translating("fetch"):
            typ, data = self._client.uid("FETCH", uid.decode("ascii"), "(BODY.PEEK[])")
            _check(typ, data)
        return _fetched_body(data, uid)

    def mark_processed(self, uid: str) -> None:
        if self._keywords:
            self._store(uid, f"({PROCESSED_KEYWORD})")

    def delete(self, uid: str) -> None:
        self._store(uid, "(\\Deleted)")
        self._deleted.append(self._uid_number(uid))

    def _store(self, uid: str, flags: str) -> None:
        number = self._uid_number(uid)
        with self._server.translating("store"):
            typ, data = self._client.uid("STORE", number, "+FLAGS.SILENT", flags)
            _check(typ, data)

    def _uid_number(self, uid: str) -> str:
        """The IMAP UID in ``uid``, which must come from this folder as it is numbered now."""
        validity, _, number = uid.partition(":")
        if validity != self._uidvalidity or not number.isdigit():
            raise MailboxError(
                f"{self._server}: message {uid!r} is not from folder"
                f" {self._server.settings.folder!r} as numbered now"
                f" (UIDVALIDITY {self._uidvalidity})"
            )
        return number

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._deleted:
                self._expunge()
        finally:
            self._logout()

    def _expunge(self) -> None:
        """Remove the messages deleted here, and only those where the server can tell
        (UIDPLUS); a plain EXPUNGE also removes what another client marked \\Deleted."""
        with self._server.translating("expunge"):
            if "UIDPLUS" in self._capabilities:
                typ, data = self._client.uid("EXPUNGE", ",".join(self._deleted))
            else:
                typ, data = self._client.expunge()
            _check(typ, data)
        self._deleted = []

    def _logout(self) -> None:
        with suppress(*_CLIENT_ERRORS):
            self._client.logout()
        with suppress(OSError):
            self._client.shutdown()


def _capabilities_now(client: imaplib.IMAP4) -> frozenset[str]:
    typ, data = client.capability()
    _check(typ, data)
    said = data[-1] if data and isinstance(data[-1], bytes) else b""
    return frozenset(said.decode("ascii", "replace").upper().split())


def _select_problem(server: _Server, folder: str, data: list[Any]) -> str:
    text = _server_text(imaplib.IMAP4.error(data[-1] if data else b""))
    if "NONEXISTENT" in text.upper() or "doesn't exist" in text:
        return f"{server}: folder {folder!r} does not exist for {server.settings.username} ({text})"
    return f"{server}: cannot open folder {folder!r}: {text}"


def _check(typ: str, data: list[Any]) -> None:
    """Raise imaplib's error for a NO or BAD answer (the translating block names it)."""
    if typ != "OK":
        raise imaplib.IMAP4.error(data[-1] if data else typ)


def _fetched_body(data: list[Any], uid: bytes) -> bytes | None:
    """The BODY[] literal of message ``uid`` among the FETCH answers (others may come
    unasked, e.g. flags another client changed), or None if the message is gone."""
    wanted = re.compile(rb"\bUID " + re.escape(uid) + rb"\b")
    for item in data:
        if isinstance(item, tuple) and b"BODY[]" in item[0] and wanted.search(item[0]):
            body: bytes = item[1]
            return body
    return None


def _quoted(folder: str) -> str:
    """The folder name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501)."""
    encoded = _modified_utf7(folder)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _modified_utf7(name: str) -> str:
    """RFC 3501 5.1.3: ``&`` as ``&-``, runs of non-ASCII as ``&`` + UTF-16 base64 + ``-``."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            utf16 = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


# ---------------------------------------------------------------------------------------
# POP3
# ---------------------------------------------------------------------------------------


class _LongLines(poplib.POP3):
    """poplib's client with a line limit real mail fits in (see POP3_MAX_LINE), which
    closes its socket when the greeting does not come (poplib leaves it open)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # The file from sock.makefile() keeps the socket open until it is closed too.
            for part in (getattr(self, "file", None), getattr(self, "sock", None)):
                if part is not None:
                    part.close()
            raise

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(POP3_MAX_LINE + 1)
        if len(line) > POP3_MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        return line[:-1] if line[-1:] == b"\n" else line, octets


class _LongLinesSSL(_LongLines, poplib.POP3_SSL):
    """The implicit-TLS client with the same line limit."""


class Pop3Mailbox(Mailbox):
    """A POP3 maildrop: every message, each named by its UIDL."""

    def __init__(self, server: _Server, context: ssl.SSLContext | None, password: str) -> None:
        self._server = server
        self._client = self._connect(context)
        self._closed = False
        self._deleting = False  # a DELE was sent: a failed QUIT loses it, so say so
        self._numbers: dict[str, bytes] = {}  # UIDL -> message number in this session
        try:
            with server.translating("login"):
                self._client.user(server.settings.username)
                self._client.pass_(password)
            self._numbers = self._uidl()
        except BaseException:
            self._client.close()
            raise

    @property
    def keywords_supported(self) -> bool:
        return False

    def _connect(self, context: ssl.SSLContext | None) -> poplib.POP3:
        server, settings = self._server, self._server.settings
        client: poplib.POP3
        with server.translating("connect"):
            if settings.security == "ssl":
                client = _LongLinesSSL(
                    settings.host, settings.port, timeout=server.greeting_timeout, context=context
                )
            else:
                client = _LongLines(settings.host, settings.port, timeout=server.greeting_timeout)
        client.sock.settimeout(settings.timeout)  # from now on, the wait for every answer
        if settings.security != "starttls":
            return client
        try:
            with server.translating("starttls"):
                offered = "STLS" in _capabilities(client)
                if not offered:
                    raise MailboxError(
                        f"{server}: the server does not offer STARTTLS (STLS);"
                        " refusing to continue without TLS (security: starttls)"
                    )
                client.stls(context)
        except BaseException:
            with suppress(OSError):
                client.close()
            raise
        return client

    def _uidl(self) -> dict[str, bytes]:
        """Every message's UIDL; a server without UIDL is refused."""
        try:
            _, lines, _ = self._client.uidl()
        except poplib.error_proto as exc:
            raise MailboxError(
                f"{self._server}: the server does not support UIDL ({_server_text(exc)}),"
                " so bulkmail cannot tell which messages it has already processed;"
                " use IMAP for this mailbox"
            ) from exc
        except OSError as exc:
            raise self._server.error(exc, "search") from exc
        numbers: dict[str, bytes] = {}
        for line in lines:
            number, _, uid = line.strip().partition(b" ")
            numbers[uid.decode("ascii", "replace")] = number
        return numbers

    def messages(self) -> Iterator[FetchedMessage]:
        for uid, number in list(self._numbers.items()):
            with self._server.translating("fetch"):
                _, lines, _ = self._client.retr(number.decode("ascii"))
            yield FetchedMessage(uid, b"".join(line + b"\r\n" for line in lines))

    def mark_processed(self, uid: str) -> None:
        """Nothing: POP3 keeps no flags; the caller remembers the UIDL."""

    def delete(self, uid: str) -> None:
        number = self._numbers.get(uid)
        if number is None:
            raise MailboxError(f"{self._server}: no message with UIDL {uid!r} in this session")
        with self._server.translating("expunge"):
            self._client.dele(number.decode("ascii"))
        self._deleting = True

    def close(self) -> None:
        """QUIT, which commits the deletions (a connection dropped without it keeps them)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._deleting:
                with self._server.translating("expunge"):
                    self._client.quit()
            else:
                with suppress(*_CLIENT_ERRORS):
                    self._client.quit()
        finally:
            self._client.close()


def _capabilities(client: poplib.POP3) -> dict[str, list[str]]:
    """The server's CAPA answer; a server without CAPA has none of the extensions."""
    try:
        return client.capa()
    except poplib.error_proto:
        return {}
