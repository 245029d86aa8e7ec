"""Reading the mailbox bounces come back to, over IMAP and POP3, from a real Dovecot.

Each test has an account of its own on the session's Dovecot (tests/dovecot.py), with TLS
from the session's test CA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import free_port
from dovecot import PASSWORD, Account, Dovecot, running_dovecot

from bulkmail.errors import MailboxError
from bulkmail.feedback.mailbox import (
    PROCESSED_KEYWORD,
    FetchedMessage,
    open_mailbox,
)
from bulkmail.models import MailboxProtocol, Security

# Every way a client reaches the mailbox.
WAYS: list[tuple[MailboxProtocol, Security]] = [
    ("imap", "ssl"),
    ("imap", "starttls"),
    ("pop3", "ssl"),
    ("pop3", "starttls"),
]


def message(number: int, body: bytes = b"") -> bytes:
    """A small mail, CRLF line ends as on the wire (so it comes back byte for byte)."""
    return (
        b"From: MAILER-DAEMON@example.com\r\n"
        b"To: bounces@example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender " + str(number).encode() + b"\r\n"
        b"Message-ID: <" + str(number).encode() + b"@example.com>\r\n"
        b"\r\n"
        b"The mail could not be delivered.\r\n" + body
    )


@pytest.fixture
def account(dovecot: Dovecot) -> Account:
    return dovecot.account()


def read_all(
    account: Account, protocol: MailboxProtocol, security: Security = "ssl"
) -> list[FetchedMessage]:
    with open_mailbox(account.settings(protocol, security), PASSWORD) as mailbox:
        return list(mailbox.messages())


def error_of(
    account: Account,
    protocol: MailboxProtocol = "imap",
    security: Security = "ssl",
    *,
    password: str = PASSWORD,
    **overrides: Any,
) -> str:
    """The one line open_mailbox fails with for these settings, which never shows the
    password."""
    with pytest.raises(MailboxError) as caught:
        open_mailbox(account.settings(protocol, security, **overrides), password)
    text = str(caught.value)
    assert "\n" not in text
    assert PASSWORD not in text
    assert password not in text
    return text


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "security"), WAYS)
def test_reads_every_message_byte_for_byte(
    account: Account, protocol: MailboxProtocol, security: Security
) -> None:
    sent = [message(1), message(2)]
    for raw in sent:
        account.deliver(raw)

    fetched = read_all(account, protocol, security)

    assert sorted(m.raw for m in fetched) == sorted(sent)
    assert len({m.uid for m in fetched}) == 2
    if protocol == "imap":
        assert all(re.fullmatch(r"\d+:\d+", m.uid) for m in fetched)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_eight_bit_and_non_utf8_bytes_come_back_exactly(
    account: Account, protocol: MailboxProtocol
) -> None:
    raw = message(
        1,
        b"Latin-1: caf\xe9, invalid UTF-8: \xff\xfe\xc3(, a NUL-free control: \x1b[0m\r\n"
        b".a line starting with a dot (POP3 stuffs it)\r\n"
        b"..and two\r\n"
        b"a lone CR \r inside a line\r\n",
    )
    account.deliver(raw)

    assert [m.raw for m in read_all(account, protocol)] == [raw]


def test_imap_marks_nothing_seen(account: Account) -> None:
    account.deliver(message(1))

    read_all(account, "imap")
    read_all(account, "imap", "starttls")

    assert account.flags() == [frozenset()]


def test_an_empty_mailbox_gives_no_messages(account: Account) -> None:
    assert read_all(account, "imap") == []
    assert read_all(account, "pop3") == []


def test_reads_the_named_folder(account: Account) -> None:
    account.deliver(message(1))
    account.deliver(message(2), folder="Bounces")

    with open_mailbox(account.settings("imap", folder="Bounces"), PASSWORD) as mailbox:
        assert [m.raw for m in mailbox.messages()] == [message(2)]


def test_a_folder_name_with_non_ascii_letters(account: Account) -> None:
    # Dovecot keeps folder names on disk as IMAP writes them: modified UTF-7 (RFC 3501).
    account.deliver(message(1), folder="R&APw-ckl&AOQ-ufer")

    with open_mailbox(account.settings("imap", folder="Rückläufer"), PASSWORD) as mailbox:
        assert [m.raw for m in mailbox.messages()] == [message(1)]


# ---------------------------------------------------------------------------------------
# Remembering what was processed
# ---------------------------------------------------------------------------------------


def test_mark_processed_sets_the_keyword_and_hides_the_message(account: Account) -> None:
    account.deliver(message(1))
    account.deliver(message(2))

    with open_mailbox(account.settings("imap"), PASSWORD) as mailbox:
        assert mailbox.keywords_supported
        first, second = mailbox.messages()
        mailbox.mark_processed(first.uid)
        assert [m.uid for m in mailbox.messages()] == [second.uid]

    assert account.keywords() == [frozenset({PROCESSED_KEYWORD}), frozenset()]
    assert [m.raw for m in read_all(account, "imap", "starttls")] == [second.raw]
    assert account.message_count() == 2  # marked, not deleted


def test_imap_uids_are_stable_across_connections(account: Account) -> None:
    account.deliver(message(1))
    account.deliver(message(2))

    assert [m.uid for m in read_all(account, "imap")] == [
        m.uid for m in read_all(account, "imap", "starttls")
    ]


def test_pop3_uids_are_stable_across_connections(account: Account) -> None:
    account.deliver(message(1))
    account.deliver(message(2))

    first = read_all(account, "pop3")
    account.deliver(message(3))
    second = read_all(account, "pop3", "starttls")

    assert [m.uid for m in second[:2]] == [m.uid for m in first]
    assert len({m.uid for m in second}) == 3


def test_pop3_keeps_no_marks(account: Account) -> None:
    account.deliver(message(1))

    with open_mailbox(account.settings("pop3"), PASSWORD) as mailbox:
        assert not mailbox.keywords_supported
        (fetched,) = mailbox.messages()
        mailbox.mark_processed(fetched.uid)

    assert [m.uid for m in read_all(account, "pop3")] == [fetched.uid]
    assert account.keywords() == [frozenset()]  # (RETR makes it \\Seen: Dovecot's POP3 does)


def test_a_uid_from_another_numbering_is_refused(account: Account) -> None:
    account.deliver(message(1))

    with open_mailbox(account.settings("imap"), PASSWORD) as mailbox:
        (fetched,) = mailbox.messages()
        validity, _, number = fetched.uid.partition(":")
        with pytest.raises(MailboxError, match="is not from folder 'INBOX' as numbered now"):
            mailbox.mark_processed(f"{int(validity) + 1}:{number}")


# ---------------------------------------------------------------------------------------
# Deleting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_delete_removes_only_that_message_at_close(
    account: Account, protocol: MailboxProtocol
) -> None:
    account.deliver(message(1))
    account.deliver(message(2))

    with open_mailbox(account.settings(protocol), PASSWORD) as mailbox:
        first, second = mailbox.messages()
        mailbox.delete(first.uid)
        assert account.message_count() == 2  # not before the mailbox is closed

    assert account.message_count() == 1
    assert [m.raw for m in read_all(account, protocol)] == [second.raw]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_reading_and_marking_delete_nothing(account: Account, protocol: MailboxProtocol) -> None:
    account.deliver(message(1))
    account.deliver(message(2))

    with open_mailbox(account.settings(protocol), PASSWORD) as mailbox:
        for fetched in mailbox.messages():
            mailbox.mark_processed(fetched.uid)

    assert account.message_count() == 2


def test_imap_expunges_only_its_own_deletions(account: Account) -> None:
    account.deliver(message(1))
    account.deliver(message(2))
    with account.imap() as client:  # another mail client marks message 2 deleted
        client.select("INBOX")
        client.uid("STORE", "2", "+FLAGS", "(\\Deleted)")

    with open_mailbox(account.settings("imap"), PASSWORD) as mailbox:
        first = next(iter(mailbox.messages()))
        mailbox.delete(first.uid)

    assert account.flags() == [frozenset({"\\Deleted"})]


# ---------------------------------------------------------------------------------------
# A large folder
# ---------------------------------------------------------------------------------------


def test_a_large_folder_is_read_one_message_at_a_time(account: Account) -> None:
    count, padding = 2_000, b"x" * 76 + b"\r\n"
    for number in range(count):
        account.deliver(message(number, padding * 100))  # ~8 KB each, ~16 MB in all
    with open_mailbox(account.settings("imap"), PASSWORD) as mailbox:
        messages = mailbox.messages()
        seen = 0
        with traced_memory() as peak:
            for fetched in messages:
                seen += 1
                del fetched

    assert seen == count
    assert peak() < 1_000_000, f"{peak():,} bytes at the peak: messages are held, not streamed"


@contextlib.contextmanager
def traced_memory() -> Iterator[Callable[[], int]]:
    """Trace allocations in the block; the callable gives the peak above where it began
    (also under PYTHONTRACEMALLOC, which traces from the start)."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline, _ = tracemalloc.get_traced_memory()
    peak = 0
    try:
        yield lambda: peak
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        if started_here:
            tracemalloc.stop()


# ---------------------------------------------------------------------------------------
# What the user can get wrong: one line each, never the password
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "security"), WAYS)
def test_a_wrong_password_is_one_line(
    account: Account, protocol: MailboxProtocol, security: Security
) -> None:
    text = error_of(account, protocol, security, password="wrong-password")

    port = account.settings(protocol, security).port
    label = protocol.upper()
    assert text.startswith(f"{label} login refused for {account.username}@127.0.0.1:{port}: ")
    assert "Authentication failed" in text


@pytest.mark.parametrize(("protocol", "security"), WAYS)
def test_a_certificate_from_an_unknown_ca_is_refused(
    account: Account, protocol: MailboxProtocol, security: Security, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))

    text = error_of(account, protocol, security, ca_file=other_ca)

    port = account.settings(protocol, security).port
    assert text.startswith(f"{protocol.upper()} 127.0.0.1:{port}: certificate not trusted: ")
    assert "ca_file" in text


def test_a_missing_folder_is_named(account: Account) -> None:
    text = error_of(account, folder="Bounces")

    assert "folder 'Bounces' does not exist" in text
    assert text.startswith("IMAP 127.0.0.1:")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_closed_port_is_connection_refused(account: Account, protocol: MailboxProtocol) -> None:
    port = free_port()

    text = error_of(account, protocol, port=port)

    assert text == f"{protocol.upper()} 127.0.0.1:{port}: connection refused"


def test_no_password_in_clear_to_another_machine(account: Account) -> None:
    # Resolving this name would fail: the refusal comes before any connection is tried.
    text = error_of(account, "imap", "none", host="mail.example.invalid", port=143)

    assert text.startswith("IMAP mail.example.invalid:143: refusing to send the password")
    assert "allow_plaintext_auth" in text


def test_plaintext_to_this_machine_is_allowed(account: Account) -> None:
    account.deliver(message(1))

    assert len(read_all(account, "imap", "none")) == 1
    assert len(read_all(account, "pop3", "none")) == 1


def test_implicit_tls_against_a_starttls_port(account: Account) -> None:
    port = account.settings("imap", "starttls").port

    text = error_of(account, port=port)

    assert text.startswith(f"IMAP 127.0.0.1:{port}: TLS failed: ")
    assert "use `security: starttls`" in text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (an implicit-TLS port
    waiting for the client's TLS hello, as seen by a client speaking in clear)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_silent_server_times_out(
    account: Account, protocol: MailboxProtocol, silent_port: int
) -> None:
    text = error_of(account, protocol, "starttls", port=silent_port, timeout=0.3)

    assert text.startswith(f"{protocol.upper()} 127.0.0.1:{silent_port}: no greeting within 0.3 s")
    assert "use `security: ssl`" in text


def test_no_password_given(account: Account) -> None:
    with pytest.raises(MailboxError, match=r"no password for user.*BULKMAIL_INBOX_PASSWORD"):
        open_mailbox(account.settings("imap"), None)


def test_an_unreadable_ca_file(account: Account, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"

    text = error_of(account, ca_file=missing)

    assert text.startswith(f"{missing}: cannot load the CA certificates")


@pytest.fixture(scope="module")
def dovecot_without_tls(ca: trustme.CA) -> Iterator[Dovecot]:
    with running_dovecot(ca, tls=False) as server:
        yield server


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_starttls_asked_of_a_server_without_it(
    dovecot_without_tls: Dovecot, protocol: MailboxProtocol
) -> None:
    account = dovecot_without_tls.account()
    settings = dataclasses.replace(account.settings(protocol, "none"), security="starttls")

    with pytest.raises(MailboxError) as caught:
        open_mailbox(settings, PASSWORD)

    assert str(caught.value).startswith(
        f"{protocol.upper()} 127.0.0.1:{settings.port}: the server does not offer STARTTLS"
    )


def test_the_password_is_in_no_repr(account: Account) -> None:
    account.deliver(message(1))

    with open_mailbox(account.settings("imap"), PASSWORD) as mailbox:
        shown = repr(mailbox) + repr(vars(mailbox)) + repr(list(mailbox.messages()))

    assert PASSWORD not in shown
