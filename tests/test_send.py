"""Sending a campaign end to end against a real SMTP server on 127.0.0.1, through the journal."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, USERNAME, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.errors import AuthError, ConfigError, JournalError, PreflightError
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.journal.status import campaign_status
from bulkmail.models import Event, Status
from bulkmail.send import send_campaign, send_test

runner = CliRunner()
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """50 recipients, a shared PDF, pointed at the implicit-TLS test server."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.csv(people(50))
    c.file("files/report.pdf", PDF)
    c.write(attachments=["files/report.pdf"], smtp=smtp_settings(smtpd, tls))
    return c


def test_batch_goes_through_one_connection_and_one_login(
    campaign: CampaignDir, smtpd: Server
) -> None:
    report = send_campaign(campaign.yaml_path)
    inbox = smtpd.inbox
    assert report.accepted == 50
    assert report.failed == 0
    assert report.complete
    assert len(inbox.connections) == 1
    assert [(login.username, login.success) for login in inbox.logins] == [(USERNAME, True)]
    assert len(inbox.messages) == 50
    expected = [f"reader{i}@example.com" for i in range(50)]
    assert inbox.recipients == expected
    for received, address in zip(inbox.messages, expected, strict=True):
        assert received.rcpt_tos == (address,)
        assert received.mail_from == "news@example.com"
        message = received.parsed()
        assert message["To"].addresses[0].addr_spec == address
        assert len(message["To"].addresses) == 1
        assert message["Cc"] is None
        assert message["Bcc"] is None
        (attachment,) = list(message.iter_attachments())
        payload = attachment.get_content()
        assert hashlib.sha256(payload).digest() == hashlib.sha256(PDF).digest()
        assert message.get_body(("plain",)) is not None
        html = message.get_body(("html",))
        assert html is not None
        assert "style=" in html.get_content()
    assert inbox.connections[0].quit


def test_rerun_skips_recipients_already_accepted(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)
    report = send_campaign(campaign.yaml_path)
    assert report.plan.already_accepted == 50
    assert report.accepted == 0
    assert len(smtpd.inbox.messages) == 50
    assert len(smtpd.inbox.connections) == 1  # the second run did not even connect


def test_new_rows_added_later_are_the_only_ones_sent(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)
    campaign.csv(people(50) + people(5, start=50))
    report = send_campaign(campaign.yaml_path)
    assert (report.plan.already_accepted, report.accepted) == (50, 5)
    assert smtpd.inbox.recipients[50:] == [f"reader{i}@example.com" for i in range(50, 55)]
    assert len(smtpd.inbox.recipients) == len(set(smtpd.inbox.recipients)) == 55


def test_refused_recipient_is_recorded_and_the_rest_go_through(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader7@example.com"] = "550 5.1.1 No such user here"
    report = send_campaign(campaign.yaml_path)
    assert (report.accepted, report.failed) == (49, 1)
    ((recipient, why),) = report.failures
    assert recipient.email == "reader7@example.com"
    assert "550" in why
    assert "No such user here" in why
    assert "reader8@example.com" in smtpd.inbox.recipients
    status = campaign_status(campaign.yaml_path)
    assert status.summary is not None
    assert status.summary.counts[Status.ACCEPTED] == 49
    assert [(e.email, e.code, e.reply) for e in status.failed] == [
        ("reader7@example.com", 550, "5.1.1 No such user here")
    ]

    # Failed recipients are retried only when asked.
    smtpd.inbox.faults.refuse.clear()
    assert send_campaign(campaign.yaml_path).accepted == 0
    retried = send_campaign(campaign.yaml_path, retry_failed=True)
    assert retried.accepted == 1
    assert smtpd.inbox.recipients.count("reader7@example.com") == 1


def test_deferred_recipient_is_retried_and_delivered(campaign: CampaignDir, smtpd: Server) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 1  # one 451, then accepted
    report = send_campaign(campaign.yaml_path)
    assert report.accepted == 50
    assert smtpd.inbox.recipients.count("reader3@example.com") == 1


def test_dropped_connection_is_resumed_on_a_new_one(campaign: CampaignDir, smtpd: Server) -> None:
    smtpd.inbox.faults.drop_after = 10
    report = send_campaign(campaign.yaml_path)
    assert report.accepted == 50
    assert len(smtpd.inbox.connections) == 2
    assert len(smtpd.inbox.logins) == 2
    assert sorted(smtpd.inbox.recipients) == sorted(f"reader{i}@example.com" for i in range(50))


def test_max_per_connection(campaign: CampaignDir, smtpd: Server, tls: TLSPair) -> None:
    campaign.write(smtp=smtp_settings(smtpd, tls, max_per_connection=20))
    assert send_campaign(campaign.yaml_path).accepted == 50
    assert [m.connection for m in smtpd.inbox.messages].count(3) == 10
    assert len(smtpd.inbox.connections) == 3


def test_wrong_password_stops_before_anything_is_sent(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    report = send_campaign(campaign.yaml_path)
    assert isinstance(report.stopped, AuthError)
    assert "535" in str(report.stopped)
    assert "wrong-password" not in str(report.stopped)
    assert smtpd.inbox.messages == []
    assert report.accepted == 0
    # and nobody is marked as sent or in doubt
    status = campaign_status(campaign.yaml_path)
    assert status.summary is not None
    assert status.summary.counts[Status.PENDING] == 50


def test_missing_password_is_a_clear_error(
    campaign: CampaignDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(AuthError, match=f"set the environment variable {PASSWORD_ENV}"):
        send_campaign(campaign.yaml_path)


def test_untrusted_certificate_is_refused(
    campaign: CampaignDir, smtpd: Server, tls: TLSPair
) -> None:
    settings = smtp_settings(smtpd, tls)
    del settings["ca_file"]  # the system trust store does not know the test CA
    campaign.write(smtp=settings)
    report = send_campaign(campaign.yaml_path)
    assert report.stopped is not None
    assert "certificate verify failed" in str(report.stopped)
    assert smtpd.inbox.messages == []


def test_preflight_problem_sends_nothing(campaign: CampaignDir, smtpd: Server) -> None:
    rows = people(50)
    rows[30]["email"] = "broken@@example.com"
    campaign.csv(rows)
    with pytest.raises(PreflightError):
        send_campaign(campaign.yaml_path)
    assert smtpd.inbox.connections == []
    summary = campaign_status(campaign.yaml_path).summary
    assert summary is not None
    assert summary.total == 0  # the journal learnt nothing of a list that failed its check


def test_changed_template_between_runs_is_detected(campaign: CampaignDir, smtpd: Server) -> None:
    stop = threading.Event()

    def stop_after_ten(event: Event) -> None:
        if event.kind == "sent" and event.done >= 10:
            stop.set()

    first = send_campaign(campaign.yaml_path, stop=stop, on_event=stop_after_ten)
    assert first.interrupted
    assert first.accepted == 10
    campaign.template("issue.html", "<p>Hello {{ first_name }}, a new version</p>")
    with pytest.raises(
        ConfigError, match=r"changed since its first run \(template ../templates/issue.html\)"
    ):
        send_campaign(campaign.yaml_path)
    assert len(smtpd.inbox.messages) == 10
    report = send_campaign(campaign.yaml_path, allow_changes=True)
    assert report.accepted == 40


def test_stop_between_mails_then_resume_sends_each_once(
    campaign: CampaignDir, smtpd: Server
) -> None:
    stop = threading.Event()

    def stop_after_five(event: Event) -> None:
        if event.kind == "sent" and event.done == 5:
            stop.set()

    report = send_campaign(campaign.yaml_path, stop=stop, on_event=stop_after_five)
    assert report.interrupted
    assert report.accepted == 5
    status = campaign_status(campaign.yaml_path)
    assert status.uncertain == []
    resumed = send_campaign(campaign.yaml_path)
    assert (resumed.plan.already_accepted, resumed.accepted) == (5, 45)
    assert sorted(smtpd.inbox.recipients) == sorted(f"reader{i}@example.com" for i in range(50))


def test_a_second_run_of_the_same_campaign_is_refused(campaign: CampaignDir, smtpd: Server) -> None:
    path = journal_path(campaign.campaigns / ".bulkmail", "test-campaign")
    with Journal(path), pytest.raises(JournalError, match="another bulkmail run of this campaign"):
        send_campaign(campaign.yaml_path)
    assert smtpd.inbox.messages == []


def test_suppressed_addresses_are_journaled_as_skipped(
    campaign: CampaignDir, smtpd: Server
) -> None:
    campaign.file("suppress.csv", "email\nreader4@example.com\n")
    campaign.write(suppress="suppress.csv")
    report = send_campaign(campaign.yaml_path)
    assert report.accepted == 49
    assert "reader4@example.com" not in smtpd.inbox.recipients
    status = campaign_status(campaign.yaml_path)
    assert status.summary is not None
    assert status.summary.counts[Status.SKIPPED] == 1


def test_send_test_mails_one_rendered_row_to_the_given_address(
    campaign: CampaignDir, smtpd: Server
) -> None:
    send_test(campaign.yaml_path, to="me@example.org", row=3)
    (received,) = smtpd.inbox.messages
    assert received.rcpt_tos == ("me@example.org",)
    message = received.parsed()
    assert message["Subject"] == "[TEST] R2, the June issue"
    assert message["To"].addresses[0].addr_spec == "me@example.org"
    assert not journal_path(campaign.campaigns / ".bulkmail", "test-campaign").exists()


def test_password_appears_in_no_output_journal_or_file(
    campaign: CampaignDir, smtpd: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Zq9-very-secret-pw"
    smtpd.inbox.accounts[USERNAME] = secret
    monkeypatch.setenv(PASSWORD_ENV, secret)
    monkeypatch.chdir(tmp_path)
    smtpd.inbox.faults.refuse["reader1@example.com"] = "550 5.1.1 nope"
    results = [
        runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"]),
        runner.invoke(app, ["status", "campaigns/test.yaml", "--json"]),
        runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run"]),
    ]
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    results.append(runner.invoke(app, ["run", "campaigns/test.yaml", "--yes", "--retry-failed"]))
    for result in results:
        assert secret not in result.output
        assert secret not in result.stderr
    assert results[0].exit_code == 3
    assert results[3].exit_code == 4
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
