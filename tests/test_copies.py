"""Copies of every mail (campaign `cc:` and `bcc:`, a row's `cc` column), sent to a real
SMTP server on 127.0.0.1: who is in the envelope, what the headers say (never a Bcc),
and that the journal and the outcome stay one per list row."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import CSV_ROWS, CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.errors import ConfigError, PreflightError
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.models import Event, Status
from bulkmail.pipeline import check_campaign
from bulkmail.send import send_campaign, send_test

# Every test against a server without PIPELINING, then against one offering it.
pytestmark = pytest.mark.both_ways

runner = CliRunner()
ARCHIVE = "archive@example.com"
BOSS = "boss@example.org"


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """Three recipients, pointed at the implicit-TLS test server."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.csv(people(3))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


def _journal(campaign: CampaignDir) -> list[tuple[str, Status]]:
    with Journal(journal_path(campaign.campaigns / ".bulkmail", "test-campaign")) as journal:
        return [(entry.email, entry.status) for entry in journal.entries()]


def test_cc_and_bcc_go_in_the_envelope_and_only_cc_in_the_headers(
    campaign: CampaignDir, smtpd: Server
) -> None:
    campaign.write(cc=BOSS, bcc=[ARCHIVE])
    report = send_campaign(campaign.yaml_path)
    assert (report.accepted, report.failed) == (3, 0)
    assert len(smtpd.inbox.messages) == 3  # one transaction per row, copies included
    for i, received in enumerate(smtpd.inbox.messages):
        assert received.rcpt_tos == (f"reader{i}@example.com", BOSS, ARCHIVE)
        message = received.parsed()
        assert [a.addr_spec for a in message["To"].addresses] == [f"reader{i}@example.com"]
        assert [a.addr_spec for a in message["Cc"].addresses] == [BOSS]
        # No Bcc header in any part (not "bcc" anywhere: a random MIME boundary has it
        # now and then), and the hidden address nowhere.
        assert not [key for part in message.walk() for key in part if key.lower() == "bcc"]
        assert ARCHIVE.encode() not in received.content
    assert _journal(campaign) == [(f"reader{i}@example.com", Status.ACCEPTED) for i in range(3)]


def test_a_copy_to_the_row_itself_is_not_sent_twice(campaign: CampaignDir, smtpd: Server) -> None:
    campaign.write(bcc=["Reader0@example.com", ARCHIVE, ARCHIVE.upper()])
    send_campaign(campaign.yaml_path)
    assert smtpd.inbox.messages[0].rcpt_tos == ("reader0@example.com", ARCHIVE)
    # An address is sent as written.
    assert smtpd.inbox.messages[1].rcpt_tos == (
        "reader1@example.com",
        "Reader0@example.com",
        ARCHIVE,
    )


def test_a_refused_copy_is_a_warning_and_the_row_is_accepted(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse[ARCHIVE] = "550 5.1.1 No such mailbox"
    campaign.write(bcc=ARCHIVE)
    events: list[Event] = []
    report = send_campaign(campaign.yaml_path, on_event=events.append)
    assert (report.accepted, report.failed) == (3, 0)
    assert [m.rcpt_tos for m in smtpd.inbox.messages] == [
        (f"reader{i}@example.com",) for i in range(3)
    ]
    refusals = [e.detail for e in events if e.kind == "copy-refused"]
    assert len(refusals) == 3
    assert all(ARCHIVE in r and "550 5.1.1 No such mailbox" in r for r in refusals)
    assert _journal(campaign) == [(f"reader{i}@example.com", Status.ACCEPTED) for i in range(3)]


def test_a_refused_recipient_fails_its_row_and_its_copies_are_not_sent(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader1@example.com"] = "550 5.1.1 No such mailbox"
    campaign.write(cc=BOSS)
    report = send_campaign(campaign.yaml_path)
    assert (report.accepted, report.failed) == (2, 1)
    assert [m.rcpt_tos[0] for m in smtpd.inbox.messages] == [
        "reader0@example.com",
        "reader2@example.com",
    ]
    assert _journal(campaign)[1] == ("reader1@example.com", Status.FAILED)


def test_a_row_cc_column_adds_that_rows_copies(campaign: CampaignDir, smtpd: Server) -> None:
    rows = [dict(row, cc="") for row in CSV_ROWS]
    rows[0]["cc"] = "mum@example.com; dad@example.com"
    campaign.csv(rows)
    campaign.write(cc=BOSS)
    send_campaign(campaign.yaml_path)
    first, second, _ = smtpd.inbox.messages
    assert first.rcpt_tos == ("alice@example.com", BOSS, "mum@example.com", "dad@example.com")
    assert [a.addr_spec for a in first.parsed()["Cc"].addresses] == [
        BOSS,
        "mum@example.com",
        "dad@example.com",
    ]
    assert second.rcpt_tos == ("bob@example.org", BOSS)
    assert len(_journal(campaign)) == 3


def test_no_copies_no_cc_header(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)
    assert smtpd.inbox.messages[0].rcpt_tos == ("reader0@example.com",)
    assert smtpd.inbox.messages[0].parsed()["Cc"] is None


def test_a_bad_cc_address_in_the_csv_is_refused_with_its_line(campaign: CampaignDir) -> None:
    rows = [dict(row, cc="") for row in CSV_ROWS]
    rows[1]["cc"] = "friend@example.com, not an address\r\nBcc: evil@example.com"
    campaign.csv(rows)
    with pytest.raises(PreflightError) as caught:
        check_campaign(campaign.yaml_path)
    (problem,) = caught.value.problems
    assert "list.csv:3: cc: 'not' is not a valid address" in str(problem)
    assert "\n" not in str(problem)


def test_a_bad_campaign_cc_is_one_error_at_its_line(campaign: CampaignDir) -> None:
    campaign.write(bcc=[ARCHIVE, "archive@@example.com"])
    lines = campaign.yaml_path.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "archive@@" in text)
    with pytest.raises(ConfigError) as caught:
        send_campaign(campaign.yaml_path)
    assert f"test.yaml:{line}: bcc[1]: 'archive@@example.com' is not a valid address" in str(
        caught.value
    )


def test_a_cc_header_line_break_cannot_be_injected(campaign: CampaignDir) -> None:
    campaign.write(cc="boss@example.org\nBcc: evil@example.com")
    with pytest.raises(ConfigError, match=r"cc: .* is not a valid address"):
        send_campaign(campaign.yaml_path)


def test_a_test_mail_goes_to_the_tester_only(campaign: CampaignDir, smtpd: Server) -> None:
    rows = [dict(row, cc="mum@example.com") for row in CSV_ROWS]
    campaign.csv(rows)
    campaign.write(cc=BOSS, bcc=ARCHIVE)
    send_test(campaign.yaml_path, to="me@example.com")
    (received,) = smtpd.inbox.messages
    assert received.rcpt_tos == ("me@example.com",)
    assert ARCHIVE.encode() not in received.content


def test_the_cli_says_a_refused_copy_as_a_warning(campaign: CampaignDir, smtpd: Server) -> None:
    smtpd.inbox.faults.refuse[ARCHIVE] = "550 5.1.1 No such mailbox"
    campaign.write(bcc=ARCHIVE)
    result = runner.invoke(app, ["run", str(campaign.yaml_path), "--yes"])
    assert result.exit_code == 0, result.output
    assert f"warning: {ARCHIVE}: copy refused" in result.stderr
    assert "550 5.1.1 No such mailbox" in result.stderr
