"""The spine of a send, part by part: `send_one` turns what the transport did into an
Outcome (against the real test server), and the `Recorder` turns each Outcome into the
journal's marks, the report's counters and the events (against a real SQLite journal)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import CampaignDir, make_mail, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, Sleeps, TLSPair, transport

from bulkmail.deliver.outcome import (
    Accepted,
    Cancelled,
    Outcome,
    Refused,
    Stopped,
    Uncertain,
    send_one,
)
from bulkmail.errors import ConnectError
from bulkmail.journal.sqlite import Journal
from bulkmail.load.campaign import load_campaign
from bulkmail.models import Event, OutgoingMail, Status
from bulkmail.record import Recorder
from bulkmail.reports import CheckReport, SendPlan, SendReport
from bulkmail.send import send_campaign

FINGERPRINT = {"subject": "0123456789abcdef"}


# --- the recorder, against a real journal --------------------------------------------------


@dataclass
class Run:
    """A journal holding mails 1 and 2 (pending), a report and the events heard."""

    journal: Journal
    report: SendReport
    events: list[Event]
    recorder: Recorder
    mail: OutgoingMail

    def committed(self, column: str, table: str = "recipients") -> list[object]:
        """What another connection reads: only what was committed (and synced)."""
        with sqlite3.connect(self.journal.path) as db:
            return [row[0] for row in db.execute(f"SELECT {column} FROM {table} ORDER BY 1")]

    def committed_fingerprint(self) -> dict[str, str] | None:
        with sqlite3.connect(self.journal.path) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def committed_status(self) -> str:
        with sqlite3.connect(self.journal.path) as db:
            query = "SELECT status FROM recipients WHERE key = ?"
            return str(db.execute(query, (self.mail.recipient.key,)).fetchone()[0])


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    campaign = load_campaign(CampaignDir(tmp_path).write())
    mails = [make_mail(1), make_mail(2)]
    with Journal(tmp_path / "journal.sqlite", campaign="spine") as journal:
        journal.begin_batch()
        for mail in mails:
            journal.plan(mail.recipient)
        journal.flush()
        plan = SendPlan(campaign, CheckReport(campaign), 2, 0, 0, 0)
        report = SendReport(plan, journal.path)
        events: list[Event] = []
        recorder = Recorder(journal, report, FINGERPRINT, events.append)
        recorder.start()
        yield Run(journal, report, events, recorder, mails[0])


def test_the_mark_and_the_fingerprint_are_committed_before_the_mail_goes(run: Run) -> None:
    assert run.committed_fingerprint() is None  # not before a mail is marked

    run.recorder.mark(run.mail)

    assert run.committed_status() == "sending"
    assert run.committed("attempts") == [0, 1]
    assert run.committed_fingerprint() == FINGERPRINT


@dataclass(frozen=True)
class Expected:
    status: Status  # in the journal, once committed
    code: int | None
    reply: str | None  # '' as planned: no reply yet
    counts: tuple[int, int, int]  # report: accepted, failed, uncertain
    events: list[tuple[str, int, str]]  # kind, done, detail
    run_outcome: str  # the journal's runs table


STOP = ConnectError("127.0.0.1:2525: the connection was lost 4 times")
CASES: dict[str, tuple[Outcome, Expected]] = {
    "accepted": (
        Accepted("250 OK: queued as 1"),
        Expected(
            Status.ACCEPTED,
            250,
            "250 OK: queued as 1",
            (1, 0, 0),
            [("sent", 1, "250 OK: queued as 1")],
            "completed",
        ),
    ),
    "refused for good": (
        Refused(550, "5.1.1 No such user", True, "reader1: refused: 550 5.1.1 No such user"),
        Expected(
            Status.FAILED,
            550,
            "5.1.1 No such user",
            (0, 1, 0),
            [("failed", 1, "reader1: refused: 550 5.1.1 No such user")],
            "completed",
        ),
    ),
    "still deferred": (
        Refused(451, "4.3.0 Try later", False, "reader1: still deferred: 451 4.3.0 Try later"),
        Expected(
            Status.FAILED,
            451,
            "4.3.0 Try later",
            (0, 1, 0),
            [("failed", 1, "reader1: still deferred: 451 4.3.0 Try later")],
            "completed",
        ),
    ),
    "uncertain": (
        Uncertain("the connection was lost after the mail was sent"),
        Expected(
            Status.SENDING,  # left in doubt: the next run reports it and does not resend
            None,
            "",
            (0, 0, 1),
            [("uncertain", 1, "the connection was lost after the mail was sent")],
            "completed",
        ),
    ),
    "cancelled": (
        Cancelled("not sent: the run was stopped while waiting to retry"),
        Expected(Status.PENDING, None, "", (0, 0, 0), [], "interrupted"),
    ),
    "stopped": (
        Stopped(STOP),
        Expected(Status.PENDING, None, "", (0, 0, 0), [], f"stopped: {STOP}"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_outcome_goes_to_the_journal_the_report_and_the_events(run: Run, name: str) -> None:
    outcome, expected = CASES[name]
    run.recorder.mark(run.mail)

    run.recorder.record(run.mail, outcome, was=Status.PENDING)
    run.recorder.finish([])

    entry = run.journal.status_of(run.mail.recipient.key)
    assert entry is not None
    assert (entry.status, entry.code, entry.reply) == (
        expected.status,
        expected.code,
        expected.reply,
    )
    assert entry.attempts == 1  # an unmarked mail keeps its attempt counted
    assert run.committed_status() == expected.status.value
    report = run.report
    assert (report.accepted, report.failed, report.uncertain) == expected.counts
    refused = [(r.email, why) for r, why in report.failures]
    assert refused == (
        [(run.mail.recipient.email, outcome.why)] if isinstance(outcome, Refused) else []
    )
    assert report.interrupted == (expected.run_outcome == "interrupted")
    assert report.stopped is (STOP if name == "stopped" else None)
    # each event counts the mail it tells of, and says how many there are in all
    assert [(e.kind, e.done, e.detail) for e in run.events] == expected.events
    assert all(e.mail is run.mail and e.total == 2 for e in run.events)
    assert run.committed("outcome", "runs") == [expected.run_outcome]


@pytest.mark.parametrize("was", [Status.FAILED, Status.SENDING])
def test_a_mail_not_handed_over_gets_back_the_status_it_had(run: Run, was: Status) -> None:
    """--retry-failed and --resend-uncertain resend rows that were failed or in doubt."""
    run.journal.outcome(run.mail.recipient, was, 550, "5.1.1 earlier")
    run.recorder.mark(run.mail)
    run.recorder.record(run.mail, Cancelled("stopped"), was=was)
    run.recorder.finish([])
    assert run.committed_status() == was.value


def test_the_outcome_is_committed_with_the_next_mark_or_by_finish(run: Run) -> None:
    run.recorder.mark(run.mail)
    run.recorder.record(run.mail, Accepted("250 OK"), was=Status.PENDING)
    assert run.committed_status() == "sending"  # one sync per mail: not yet
    run.recorder.mark(make_mail(2))
    assert run.committed_status() == "accepted"
    run.recorder.record(make_mail(2), Accepted("250 OK"), was=Status.PENDING)
    run.recorder.finish([])
    assert run.committed("status") == ["accepted", "accepted"]
    assert run.report.elapsed > 0


# --- send_one, against the real test server ------------------------------------------------


def test_send_one_accepted(smtpd: Server, tls: TLSPair) -> None:
    with transport(smtpd, tls) as smtp:
        outcome = send_one(smtp, make_mail(1))
    assert outcome == Accepted("250 OK: queued as 1")
    assert smtpd.inbox.recipients == ["reader1@example.org"]


def test_send_one_refused_for_good(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.refuse["reader1@example.org"] = "550 5.1.1 No such user here"
    with transport(smtpd, tls) as smtp:
        outcome = send_one(smtp, make_mail(1))
        assert send_one(smtp, make_mail(2)) == Accepted("250 OK: queued as 1")
    assert isinstance(outcome, Refused)
    assert (outcome.code, outcome.reply, outcome.permanent) == (
        550,
        "5.1.1 No such user here",
        True,
    )
    assert outcome.why.startswith("reader1@example.org: refused by 127.0.0.1:")


def test_send_one_still_deferred_after_the_retries(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.defer["reader1@example.org"] = 99
    with transport(smtpd, tls, sleep=Sleeps()) as smtp:
        outcome = send_one(smtp, make_mail(1))
    assert isinstance(outcome, Refused)
    assert (outcome.code, outcome.permanent) == (451, False)
    assert "after 3 retries" in outcome.why


def test_send_one_uncertain_when_the_answer_to_data_never_comes(
    smtpd: Server, tls: TLSPair
) -> None:
    smtpd.inbox.faults.vanish_at_data = 1
    with transport(smtpd, tls) as smtp:
        outcome = send_one(smtp, make_mail(1))
    assert isinstance(outcome, Uncertain)
    assert "may or may not have been delivered" in outcome.why
    assert smtpd.inbox.recipients == ["reader1@example.org"]  # the server did keep it


def test_send_one_cancelled_when_a_stop_cuts_a_retry_wait(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.defer["reader1@example.org"] = 1
    stop = threading.Event()
    stop.set()
    with transport(smtpd, tls, sleep=stop.wait) as smtp:
        outcome = send_one(smtp, make_mail(1))
    assert isinstance(outcome, Cancelled)
    assert smtpd.inbox.recipients == []


def test_send_one_stopped_when_the_connection_keeps_dropping(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.close_421 = 100
    with transport(smtpd, tls, sleep=Sleeps(), max_reconnects=1) as smtp:
        outcome = send_one(smtp, make_mail(1))
    assert isinstance(outcome, Stopped)
    assert isinstance(outcome.error, ConnectError)
    assert "the connection was lost 2 times" in str(outcome.error)


# --- the one event stream ------------------------------------------------------------------


def test_reconnects_come_in_the_same_stream_as_the_outcomes(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    campaign = CampaignDir(tmp_path)
    campaign.csv(people(4))
    campaign.write(smtp=smtp_settings(smtpd, tls))
    smtpd.inbox.faults.drop_after = 2
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    events: list[Event] = []

    report = send_campaign(campaign.yaml_path, on_event=events.append)

    sending = [(e.kind, e.done, e.total) for e in events if e.kind not in ("built", "skipped")]
    assert sending == [
        ("sent", 1, 4),
        ("sent", 2, 4),
        ("reconnect", 2, 4),
        ("sent", 3, 4),
        ("failed", 4, 4),
    ]
    assert (report.accepted, report.failed) == (3, 1)
