"""PIPELINING (RFC 2920): when the server offers it, MAIL FROM, RCPT TO and DATA go in
one write. Against the real aiosmtpd server, which reads pipelined commands in order; the
test handler advertises the extension and notes what the client had sent ahead of MAIL's
reply. (The other transport tests run both ways: `both_ways` in test_smtp.py and others.)"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from builders import make_mail
from conftest import Server, ServerFactory, TLSPair, transport

from bulkmail.errors import RecipientRefused


@pytest.fixture
def offering(make_server: ServerFactory) -> Server:
    """Implicit TLS, AUTH, PIPELINING advertised."""
    server = make_server("ssl")
    server.inbox.pipelining = True
    return server


def test_mail_rcpt_and_data_go_in_one_write(offering: Server, tls: TLSPair) -> None:
    mails = [make_mail(i) for i in range(5)]
    with transport(offering, tls) as smtp:
        for mail in mails:
            smtp.send(mail)

    inbox = offering.inbox
    assert inbox.sent_ahead == [
        f"RCPT TO:<{mail.recipient.email}>\r\nDATA\r\n".encode() for mail in mails
    ]
    assert [m.content for m in inbox.messages] == [mail.data for mail in mails]
    assert len(inbox.connections) == 1


def test_without_the_extension_each_command_waits_for_its_reply(
    smtpd: Server, tls: TLSPair
) -> None:
    with transport(smtpd, tls) as smtp:
        smtp.send(make_mail(1))

    assert smtpd.inbox.sent_ahead == [b""]


def test_with_copies_data_waits_until_the_row_is_accepted(offering: Server, tls: TLSPair) -> None:
    mail = replace(make_mail(1), copies=("boss@example.org",))
    offering.inbox.faults.refuse["reader1@example.org"] = "550 5.1.1 no such user"

    with transport(offering, tls) as smtp, pytest.raises(RecipientRefused, match="RCPT TO"):
        smtp.send(mail)
    with transport(offering, tls) as smtp:
        smtp.send(replace(make_mail(2), copies=("boss@example.org",)))

    inbox = offering.inbox
    assert inbox.sent_ahead[0] == b"RCPT TO:<reader1@example.org>\r\nRCPT TO:<boss@example.org>\r\n"
    # The refused row's copy got nothing; the next mail went to both.
    assert [m.rcpt_tos for m in inbox.messages] == [("reader2@example.org", "boss@example.org")]


def test_a_refused_sender_is_refused_at_mail_from_and_the_next_mail_goes(
    offering: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = offering.inbox.handle_MAIL

    async def handle_mail(
        server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address == "nobody@blocked.example":
            return "553 5.7.1 sender refused"
        return await original(server, session, envelope, address, options)

    monkeypatch.setattr(offering.inbox, "handle_MAIL", handle_mail)
    with transport(offering, tls) as smtp:
        with pytest.raises(RecipientRefused, match="at MAIL FROM: 553"):
            smtp.send(replace(make_mail(1), sender="nobody@blocked.example"))
        smtp.send(make_mail(2))

    assert [m.rcpt_tos for m in offering.inbox.messages] == [("reader2@example.org",)]
    assert len(offering.inbox.connections) == 1  # RSET, not a new connection


def test_a_failing_mark_after_data_was_answered_hangs_up_with_nothing_delivered(
    offering: Server, tls: TLSPair
) -> None:
    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    with transport(offering, tls) as smtp:
        with pytest.raises(OSError, match="No space"):
            smtp.send(make_mail(1), before_data=disk_full)
        smtp.send(make_mail(2))  # a new connection

    assert [m.rcpt_tos for m in offering.inbox.messages] == [("reader2@example.org",)]
    assert len(offering.inbox.connections) == 2


@pytest.mark.both_ways
def test_work_done_while_the_server_reads_the_mail_is_done_once_and_a_failure_hangs_up(
    smtpd: Server, tls: TLSPair
) -> None:
    """``after_data`` runs once the content is sent, before the reply is read: the server
    has the mail by then. If it raises, the reply is never read (the mail is in doubt)
    and the connection is dropped, so the next mail starts on a new one."""
    seen: list[int] = []

    def after_data() -> None:
        seen.append(len(smtpd.inbox.messages))

    def interrupted() -> None:
        raise KeyboardInterrupt

    with transport(smtpd, tls) as smtp:
        smtp.send(make_mail(1), after_data=after_data)
        with pytest.raises(KeyboardInterrupt):
            smtp.send(make_mail(2), after_data=interrupted)
        smtp.send(make_mail(3))

    assert len(seen) == 1  # called once
    # (the second mail's content was all sent: the server has it, unless it saw the
    # connection go first; either way it was not acknowledged)
    got = [m.rcpt_tos[0] for m in smtpd.inbox.messages]
    assert [r for r in got if r != "reader2@example.org"] == [
        "reader1@example.org",
        "reader3@example.org",
    ]
    assert len(smtpd.inbox.connections) == 2
