"""The suppression list by hand (bulkmail suppress ...), every send skipping it, and the
journal recording what came back (schema 3)."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from typer.testing import CliRunner, Result

from bulkmail.cli.app import app
from bulkmail.feedback.store import SuppressionStore
from bulkmail.journal.sqlite import SCHEMA_VERSION, Journal, journal_path
from bulkmail.journal.status import campaign_status
from bulkmail.load.campaign import load_campaign
from bulkmail.models import Status
from bulkmail.pipeline import check_campaign
from bulkmail.send import send_campaign

runner = CliRunner()


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    c.csv(people(6))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def store_of(c: CampaignDir) -> Path:
    return load_campaign(c.yaml_path).store_path


# --- bulkmail suppress ------------------------------------------------------------------------


def test_added_addresses_are_skipped_by_the_next_send_saying_why(
    campaign: CampaignDir, smtpd: Server
) -> None:
    result = invoke(
        "suppress", "add", str(campaign.yaml_path), "READER2@example.com", "--note", "by phone"
    )
    assert result.exit_code == 0, result.output
    assert "READER2@example.com: suppressed" in result.output

    report = send_campaign(campaign.yaml_path)

    assert report.accepted == 5
    assert "reader2@example.com" not in smtpd.inbox.recipients
    (skipped,) = report.plan.check.skipped
    assert skipped.recipient.email == "reader2@example.com"
    assert skipped.detail.startswith("on the suppression list (manual, ")


def test_every_campaign_of_the_folder_shares_the_list(campaign: CampaignDir) -> None:
    invoke("suppress", "add", str(campaign.yaml_path), "reader1@example.com")
    other = campaign.campaigns / "july.yaml"
    other.write_text(
        campaign.yaml_path.read_text().replace("test-campaign", "july"), encoding="utf-8"
    )
    assert check_campaign(other).suppressed == 1
    assert check_campaign(campaign.yaml_path).suppressed == 1


def test_list_shows_reason_campaign_and_date(campaign: CampaignDir) -> None:
    with SuppressionStore(store_of(campaign)) as store:
        store.add("ann@example.org", "complaint", campaign="june", detail="abuse report")
    invoke("suppress", "add", str(campaign.yaml_path), "bob@example.org")

    result = invoke("suppress", "list", str(campaign.yaml_path), "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["email"], r["reason"], r["campaign"]) for r in rows] == [
        ("ann@example.org", "complaint", "june"),
        ("bob@example.org", "manual", None),
    ]
    assert rows[0]["added"][:4].isdigit()
    table = invoke("suppress", "list", str(campaign.yaml_path))
    assert "2 suppressed" in table.output
    assert "complaint" in table.output


def test_remove_lets_the_next_send_mail_the_address_again(
    campaign: CampaignDir, smtpd: Server
) -> None:
    invoke("suppress", "add", str(campaign.yaml_path), "reader3@example.com")
    result = invoke("suppress", "remove", str(campaign.yaml_path), "Reader3@Example.com")
    assert result.exit_code == 0, result.output
    assert "removed (was: manual)" in result.output

    send_campaign(campaign.yaml_path)
    assert "reader3@example.com" in smtpd.inbox.recipients


def test_removing_an_address_not_on_the_list_says_so_and_fails(campaign: CampaignDir) -> None:
    result = invoke("suppress", "remove", str(campaign.yaml_path), "nobody@example.com")
    assert result.exit_code == 1
    assert "nobody@example.com: not on the list" in result.output
    assert not store_of(campaign).exists()  # nothing was created to say so


def test_a_bad_address_is_one_line_and_nothing_is_added(campaign: CampaignDir) -> None:
    result = invoke("suppress", "add", str(campaign.yaml_path), "ok@example.com", "not-an-address")
    assert result.exit_code == 1
    assert "'not-an-address' is not a valid address" in result.output
    assert "Traceback" not in result.output
    assert load_store_keys(campaign) == frozenset()


def load_store_keys(c: CampaignDir) -> frozenset[str]:
    with SuppressionStore(store_of(c), create=False) as store:
        return store.keys()


def test_export_writes_an_owner_only_csv_that_spreadsheets_show_as_text(
    campaign: CampaignDir,
) -> None:
    with SuppressionStore(store_of(campaign)) as store:
        store.add("eve@example.org", "hard_bounce", detail='=HYPERLINK("http://x")')
    out = campaign.root / "suppressed.csv"

    result = invoke("suppress", "export", str(campaign.yaml_path), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    (row,) = csv.DictReader(io.StringIO(out.read_text(encoding="utf-8")))
    assert row["email"] == "eve@example.org"
    assert row["detail"].startswith("'=")
    stdout = invoke("suppress", "export", str(campaign.yaml_path))
    assert stdout.stdout.startswith("email,reason,campaign,added,detail")


def test_export_to_an_unwritable_place_is_one_line(campaign: CampaignDir) -> None:
    result = invoke("suppress", "export", str(campaign.yaml_path), "-o", "/proc/nope/x.csv")
    assert result.exit_code == 1
    assert "cannot write the suppression list here" in result.output


# --- the journal: schema 3 -------------------------------------------------------------------


def _journal(c: CampaignDir) -> Path:
    return journal_path(c.campaigns / ".bulkmail", "test-campaign")


def test_feedback_is_kept_strongest_first_and_counted_by_status(campaign: CampaignDir) -> None:
    send_campaign(campaign.yaml_path)
    with Journal(_journal(campaign), lock=False) as journal:
        assert journal.note_feedback("reader0@example.com", "soft-bounced", "4.2.2 full")
        assert journal.note_feedback("reader0@example.com", "bounced", "5.1.1 unknown")
        assert journal.note_feedback("reader0@example.com", "soft-bounced", "4.4.1 later")
        assert journal.note_feedback("reader1@example.com", "complained", "abuse")
        assert journal.note_feedback("reader1@example.com", "unsubscribed", "mail")
        assert not journal.note_feedback("stranger@example.com", "bounced", "")
        first = journal.status_of("reader0@example.com")
    assert first is not None
    assert (first.feedback, first.feedback_detail) == ("bounced", "5.1.1 unknown")
    assert first.status is Status.ACCEPTED  # what the server said stays as it was

    state = campaign_status(campaign.yaml_path)
    assert state.summary is not None
    assert state.summary.feedback == {
        "soft-bounced": 0, "bounced": 1, "unsubscribed": 0, "complained": 1,
    }  # fmt: skip
    assert state.to_dict()["feedback"] == state.summary.feedback
    shown = invoke("status", str(campaign.yaml_path))
    assert "bounced" in shown.output
    assert "complained" in shown.output


def test_a_schema_2_journal_is_upgraded_keeping_every_row(campaign: CampaignDir) -> None:
    send_campaign(campaign.yaml_path)
    path = _journal(campaign)
    db = sqlite3.connect(path)
    db.execute("DROP INDEX recipients_message_id")
    for column in ("envelope_from", "feedback", "feedback_detail", "feedback_at"):
        db.execute(f"ALTER TABLE recipients DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()

    with Journal(path, lock=False) as journal:
        entries = list(journal.entries())
        assert len(entries) == 6
        assert {e.status for e in entries} == {Status.ACCEPTED}
        assert journal.note_feedback("reader4@example.com", "bounced", "5.1.1")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
    # ... and the rerun sends nobody again.
    report = send_campaign(campaign.yaml_path)
    assert report.accepted == 0
