"""The whole loop: send, the relay bounces some mails later (a DSN to the VERP envelope
sender lands in a real Dovecot mailbox), people complain and unsubscribe, `bulkmail inbox`
reads it all into the suppression list, and the next send skips those addresses."""

from __future__ import annotations

import email.policy
import json
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Received, Server, TLSPair
from dovecot import Account, Dovecot
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.errors import ConfigError, MailboxError
from bulkmail.feedback.inbox import read_inbox
from bulkmail.feedback.store import SuppressionStore
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.load.campaign import load_campaign
from bulkmail.models import InboxSettings
from bulkmail.send import send_campaign

runner = CliRunner()
RETURN_PATH = "bounces@example.com"


def inbox_yaml(settings: InboxSettings) -> dict[str, object]:
    return {
        "protocol": settings.protocol,
        "host": settings.host,
        "port": settings.port,
        "security": settings.security,
        "username": settings.username,
        "password_env": settings.password_env,
        "ca_file": str(settings.ca_file),
        "timeout": settings.timeout,
    }


@pytest.fixture
def account(dovecot: Dovecot) -> Account:
    return dovecot.account()


@pytest.fixture
def campaign(
    tmp_path: Path,
    smtpd: Server,
    tls: TLSPair,
    account: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> CampaignDir:
    """Ten readers; bounces to bounces@example.com (VERP), read from the test Dovecot over
    IMAPS; one-click unsubscribe by mail too."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)  # the SMTP server's
    settings = account.settings("imap", "ssl")
    assert settings.password_env is not None
    monkeypatch.setenv(settings.password_env, account.password)
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    c.csv(people(10))
    c.write(
        smtp=smtp_settings(smtpd, tls),
        return_path=RETURN_PATH,
        inbox=inbox_yaml(settings),
        unsubscribe={
            "url": "https://example.com/u?e={{ email | urlencode }}",
            "mailto": "unsubscribe@example.com?subject=unsubscribe",
        },
    )
    return c


def second_campaign(c: CampaignDir, name: str = "july") -> Path:
    """Another campaign of the same folder (so the same suppression store), same list."""
    path = c.campaigns / f"{name}.yaml"
    path.write_text(c.yaml_path.read_text().replace("test-campaign", name), encoding="utf-8")
    return path


def received_by(smtpd: Server, address: str) -> Received:
    (message,) = [m for m in smtpd.inbox.messages if address in m.rcpt_tos]
    return message


# --- what comes back, as a relay and people's mail programs make it ---------------------------


def _returned_headers(original: Received) -> str:
    return original.content.split(b"\r\n\r\n", 1)[0].decode("utf-8")


def dsn(original: Received, recipient: str, status: str, diagnostic: str) -> bytes:
    """The relay's bounce (RFC 3464, as Postfix writes it) of ``original`` for
    ``recipient``, addressed to its envelope sender."""
    boundary = make_msgid(domain="relay.example.net")[1:-1]
    action = "failed" if status[0] in "45" else "delayed"
    text = f"""\
Return-Path: <>
Delivered-To: {original.mail_from}
Date: {formatdate()}
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {original.mail_from}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"
Message-Id: {make_msgid(domain="relay.example.net")}

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: {diagnostic}

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net
Arrival-Date: {formatdate()}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{_returned_headers(original)}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("utf-8")


def arf(original: Received, complainer: str) -> bytes:
    """A mailbox provider's complaint feedback report (RFC 5965) about ``original``,
    sent to the sender's feedback address (not the VERP one)."""
    boundary = make_msgid(domain="fbl.example.net")[1:-1]
    text = f"""\
Delivered-To: abuse@example.com
From: feedback@fbl.example.net
To: abuse@example.com
Subject: FW: complaint
Date: {formatdate()}
Message-ID: {make_msgid(domain="fbl.example.net")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: {complainer}
Arrival-Date: {formatdate()}

--{boundary}
Content-Type: text/rfc822-headers

{_returned_headers(original)}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("utf-8")


def plain(sender: str, to: str, subject: str, body: str, **headers: str) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = to
    message["Delivered-To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="example.org")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def suppressed(c: CampaignDir) -> dict[str, str]:
    with SuppressionStore(load_campaign(c.yaml_path).store_path, create=False) as store:
        return {entry.email: entry.reason for entry in store.entries()}


# --- the loop --------------------------------------------------------------------------------


def test_bounces_complaints_and_unsubscribes_are_skipped_by_the_next_send(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    assert len(smtpd.inbox.messages) == 10
    # Later, the relay bounces two mails and a reader's mailbox is full; one reader
    # complains, one unsubscribes by mail, one is on holiday, one writes back.
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1",
            "550 5.1.1 <reader1@example.com>: Recipient address rejected: User unknown")
    )  # fmt: skip
    account.deliver(
        dsn(received_by(smtpd, "reader2@example.com"), "reader2@example.com", "5.7.1",
            "554 5.7.1 <reader2@example.com>: Relay access denied")
    )  # fmt: skip
    account.deliver(
        dsn(received_by(smtpd, "reader3@example.com"), "reader3@example.com", "4.2.2",
            "452 4.2.2 <reader3@example.com>: Mailbox full")
    )  # fmt: skip
    account.deliver(arf(received_by(smtpd, "reader4@example.com"), "reader4@example.com"))
    account.deliver(plain("reader5@example.com", "unsubscribe@example.com", "unsubscribe", ""))
    account.deliver(
        plain("reader6@example.com", "news@example.com", "Out of office", "Back Monday.",
              Auto_Submitted="auto-replied")
    )  # fmt: skip
    account.deliver(
        plain("reader7@example.com", "news@example.com", "Re: the June issue", "Thanks!")
    )

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert report.counts == {
        "hard_bounce": 2, "soft_bounce": 1, "complaint": 1, "unsubscribe": 1,
        "auto_reply": 1, "other": 1,
    }  # fmt: skip
    assert report.suppressed == 4
    assert report.unmatched == 0
    assert suppressed(campaign) == {
        "reader1@example.com": "hard_bounce",
        "reader2@example.com": "hard_bounce",
        "reader4@example.com": "complaint",
        "reader5@example.com": "unsubscribe",
    }
    # The journal of the campaign whose mails they answer says what came back.
    path = journal_path(campaign.campaigns / ".bulkmail", "test-campaign")
    with Journal(path, lock=False) as journal:
        feedback = {e.email: e.feedback for e in journal.entries() if e.feedback}
        summary = journal.summary()
    assert feedback == {
        "reader1@example.com": "bounced",
        "reader2@example.com": "bounced",
        "reader3@example.com": "soft-bounced",
        "reader4@example.com": "complained",
        "reader5@example.com": "unsubscribed",
    }
    assert summary.feedback["bounced"] == 2
    # Nothing was deleted or marked read; every message carries the keyword.
    assert account.message_count() == 7
    assert all("\\Seen" not in flags for flags in account.flags())
    assert all("$BulkmailProcessed" in words for words in account.keywords())

    # The next campaign of this folder skips the four, and says why.
    smtpd.inbox.messages.clear()
    july = send_campaign(second_campaign(campaign))
    assert july.accepted == 6
    mailed = set(smtpd.inbox.recipients)
    assert mailed.isdisjoint(suppressed(campaign))
    assert "reader3@example.com" in mailed  # one soft bounce suppresses nobody
    reasons = {s.recipient.email: s.detail for s in july.plan.check.skipped}
    assert reasons["reader4@example.com"].startswith("on the suppression list (complaint, ")
    assert reasons["reader4@example.com"].endswith(", test-campaign)")


def test_a_second_run_counts_nothing_twice(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1", "550")
    )
    first = read_inbox(load_campaign(campaign.yaml_path))
    assert first.counts == {"hard_bounce": 1}

    second = read_inbox(load_campaign(campaign.yaml_path))

    assert second.messages == 0
    assert second.suppressed == 0
    # The store alone is enough: a mailbox that lost its keywords is not read twice.
    with account.imap() as imap:
        imap.select("INBOX")
        imap.store("1:*", "-FLAGS", "($BulkmailProcessed)")
    third = read_inbox(load_campaign(campaign.yaml_path))
    assert (third.messages, third.already) == (0, 1)
    assert all("$BulkmailProcessed" in words for words in account.keywords())


def test_soft_bounces_from_three_campaigns_in_a_row_suppress(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    for number, name in enumerate(["test-campaign", "july", "august"]):
        path = campaign.yaml_path if number == 0 else second_campaign(campaign, name)
        smtpd.inbox.messages.clear()
        send_campaign(path)
        original = received_by(smtpd, "reader3@example.com")
        account.deliver(dsn(original, "reader3@example.com", "4.2.2", "452 4.2.2 full"))
        # A retry notice about the same mail counts once.
        account.deliver(dsn(original, "reader3@example.com", "4.2.2", "452 4.2.2 full"))
        report = read_inbox(load_campaign(campaign.yaml_path))
        assert report.counts == {"soft_bounce": 2}
        assert report.suppressed == (1 if number == 2 else 0)

    assert suppressed(campaign) == {"reader3@example.com": "soft_bounces"}


def test_a_bounce_whose_token_does_not_verify_suppresses_nobody(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    original = received_by(smtpd, "reader1@example.com")
    local, _, domain = original.mail_from.partition("@")
    forged_sender = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    forged = Received(
        mail_from=forged_sender,
        rcpt_tos=original.rcpt_tos,
        mail_options=original.mail_options,
        content=original.content,
        connection=original.connection,
    )
    account.deliver(dsn(forged, "reader1@example.com", "5.1.1", "550 unknown"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert report.unmatched == 1
    assert report.suppressed == 0
    assert "does not verify" in report.handled[0].action
    assert suppressed(campaign) == {}


def test_a_bounce_of_a_mail_never_sent_from_here_suppresses_nobody(
    campaign: CampaignDir, account: Account
) -> None:
    stranger = Received(
        mail_from="someone@example.org",
        rcpt_tos=("victim@example.com",),
        mail_options=(),
        content=b"Message-ID: <x@example.org>\r\nSubject: hi\r\n\r\nhi\r\n",
        connection=1,
    )
    account.deliver(dsn(stranger, "victim@example.com", "5.1.1", "550 unknown"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert (report.unmatched, report.suppressed) == (1, 0)
    assert report.handled[0].action.startswith("not ours: no mail from this folder")


def test_dry_run_changes_nothing_anywhere(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1", "550")
    )

    report = read_inbox(load_campaign(campaign.yaml_path), dry_run=True)

    assert report.counts == {"hard_bounce": 1}
    assert report.handled[0].action == "would suppress"
    assert not load_campaign(campaign.yaml_path).store_path.exists()
    assert account.keywords() == [frozenset()]
    assert read_inbox(load_campaign(campaign.yaml_path)).suppressed == 1


def test_delete_removes_what_was_handled_but_never_a_persons_reply(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1", "550")
    )
    account.deliver(
        plain("reader6@example.com", "news@example.com", "Automatic reply: June", "Away",
              Auto_Submitted="auto-replied")
    )  # fmt: skip
    account.deliver(plain("reader7@example.com", "news@example.com", "Re: June", "Hi!"))

    report = read_inbox(load_campaign(campaign.yaml_path), delete=True)

    assert report.deleted == 2
    assert account.message_count() == 1  # the reply is still there, for a person to read


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_pop3_works_the_same_and_remembers_what_it_read(
    campaign: CampaignDir, smtpd: Server, account: Account, security: str
) -> None:
    campaign.write(inbox=inbox_yaml(account.settings("pop3", security)))  # type: ignore[arg-type]
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1", "550")
    )

    first = read_inbox(load_campaign(campaign.yaml_path))
    second = read_inbox(load_campaign(campaign.yaml_path))

    assert (first.counts, first.suppressed) == ({"hard_bounce": 1}, 1)
    assert (second.messages, second.already) == (0, 1)
    assert account.message_count() == 1


# --- the command ----------------------------------------------------------------------------


def test_the_command_reports_counts_and_what_it_did(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1",
            "550 5.1.1 user unknown")
    )  # fmt: skip

    dry = runner.invoke(app, ["inbox", str(campaign.yaml_path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output
    assert "would suppress: reader1@example.com" in dry.output

    result = runner.invoke(app, ["inbox", str(campaign.yaml_path), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["counts"] == {"hard_bounce": 1}
    assert data["suppressed"] == 1
    assert data["handled"][0]["address"] == "reader1@example.com"
    assert data["handled"][0]["campaign"] == "test-campaign"
    assert PASSWORD not in result.output


def test_a_wrong_password_is_one_line_naming_the_server(
    campaign: CampaignDir, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(str(account.settings().password_env), "wrong-password")
    result = runner.invoke(app, ["inbox", str(campaign.yaml_path)])
    assert result.exit_code == 4
    assert "error" in result.output
    assert "127.0.0.1" in result.output
    assert "wrong-password" not in result.output
    assert "Traceback" not in result.output
    with pytest.raises(MailboxError):
        read_inbox(load_campaign(campaign.yaml_path))


def test_a_campaign_without_inbox_says_what_to_add(campaign: CampaignDir) -> None:
    campaign.write(inbox=None)
    with pytest.raises(ConfigError, match="no inbox: to read"):
        read_inbox(load_campaign(campaign.yaml_path))
    result = runner.invoke(app, ["inbox", str(campaign.yaml_path)])
    assert result.exit_code == 1
    assert "no inbox: to read" in result.output


def test_the_bounce_of_a_bcc_copy_does_not_suppress_the_reader(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    campaign.write(bcc="archive@example.com")
    send_campaign(campaign.yaml_path)
    original = received_by(smtpd, "reader1@example.com")
    assert "archive@example.com" in original.rcpt_tos
    account.deliver(dsn(original, "archive@example.com", "5.2.2", "552 5.2.2 quota"))
    account.deliver(dsn(original, "archive@example.com", "5.1.1", "550 5.1.1 unknown"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert (report.unmatched, report.suppressed) == (2, 0)
    assert "a copy (cc/bcc) bounced" in report.handled[0].action


def test_a_bounce_naming_the_address_an_alias_led_to_is_the_readers(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    send_campaign(campaign.yaml_path)
    original = received_by(smtpd, "reader1@example.com")
    # reader1@example.com forwards to an address that no longer exists.
    account.deliver(dsn(original, "old-job@example.net", "5.1.1", "550 5.1.1 unknown"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert report.suppressed == 1
    assert suppressed(campaign) == {"reader1@example.com": "hard_bounce"}


def test_without_return_path_a_bounce_is_tied_by_its_message_id(
    campaign: CampaignDir, smtpd: Server, account: Account
) -> None:
    campaign.write(return_path=None)
    send_campaign(campaign.yaml_path)
    original = received_by(smtpd, "reader1@example.com")
    assert original.mail_from == "news@example.com"
    account.deliver(dsn(original, "reader1@example.com", "5.1.1", "550 5.1.1 unknown"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert (report.suppressed, report.unmatched) == (1, 0)
    assert report.handled[0].campaign == "test-campaign"
    assert suppressed(campaign) == {"reader1@example.com": "hard_bounce"}


def test_the_loop_closes_on_a_shared_journal_too(
    campaign: CampaignDir,
    smtpd: Server,
    account: Account,
    postgres: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A campaign whose journal is in PostgreSQL: its bounces and complaints are tied to
    its rows there (VERP token, Message-ID) and noted on them."""
    from postgres import PASSWORD as PG_PASSWORD
    from postgres import PASSWORD_ENV as PG_PASSWORD_ENV

    from bulkmail.journal.postgres import PostgresJournal

    monkeypatch.setenv(PG_PASSWORD_ENV, PG_PASSWORD)
    url = postgres.url(postgres.database())
    campaign.write(journal={"url": url, "password_env": PG_PASSWORD_ENV})
    send_campaign(campaign.yaml_path)
    account.deliver(
        dsn(received_by(smtpd, "reader1@example.com"), "reader1@example.com", "5.1.1",
            "550 5.1.1 <reader1@example.com>: Recipient address rejected: User unknown")
    )  # fmt: skip
    account.deliver(arf(received_by(smtpd, "reader4@example.com"), "reader4@example.com"))

    report = read_inbox(load_campaign(campaign.yaml_path))

    assert report.suppressed == 2
    assert report.unmatched == 0
    assert suppressed(campaign) == {
        "reader1@example.com": "hard_bounce",
        "reader4@example.com": "complaint",
    }
    loaded = load_campaign(campaign.yaml_path)
    assert loaded.journal is not None
    with PostgresJournal(loaded.journal, loaded.name, sender=False) as journal:
        feedback = {e.email: e.feedback for e in journal.entries() if e.feedback}
    assert feedback == {"reader1@example.com": "bounced", "reader4@example.com": "complained"}
    # No journal file was made: the shared database is the campaign's only journal.
    assert not journal_path(campaign.campaigns / ".bulkmail", "test-campaign").exists()
