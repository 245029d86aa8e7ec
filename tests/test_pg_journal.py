"""The PostgreSQL journal against a real server (tests/postgres.py): the SQLite journal's
states and promises, campaigns side by side in one database, several senders sharing a
campaign (claims, leases, heartbeats, a sender killed mid-run), and every error a user can
meet, as a JournalError naming the database and never showing the password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bulkmail.journal.postgres
from bulkmail.errors import JournalError, Location
from bulkmail.journal.postgres import SCHEMA_VERSION, PostgresJournal
from bulkmail.models import PostgresSettings, Recipient, Status

# The test server's role and the variable its password is read from (tests/postgres.py).
PASSWORD = "pg-s3cret"
PASSWORD_ENV = "BULKMAIL_PG_PASSWORD"
PENDING = [Status.PENDING]
WHERE = Location("campaigns/june.yaml", field="journal")


def reader(number: int, line: int | None = None) -> Recipient:
    email = f"reader{number}@Example.COM"
    fields = {"email": email, "name": f"Reader {number}", "city": "Lyon, «France»"}
    return Recipient(line=line or number + 2, email=email, name=f"Reader {number}", fields=fields)


Settings = Callable[..., PostgresSettings]


@pytest.fixture
def settings(postgres: Any, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """PostgresSettings for a new empty database of this test's own; the password in the
    environment, as a campaign's password_env would have it."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    database = postgres.database()

    def make(**overrides: Any) -> PostgresSettings:
        settings: PostgresSettings = postgres.settings(database, **overrides)
        return settings

    return make


@pytest.fixture
def open_journal(settings: Settings) -> Iterator[Callable[..., PostgresJournal]]:
    """Open journals on the test's database (``lease=`` sets the settings' lease); every
    one still open is closed at the end."""
    opened: list[PostgresJournal] = []

    def start(campaign: str = "june", *, lease: float = 30.0, **options: Any) -> PostgresJournal:
        journal = PostgresJournal(settings(lease=lease), campaign, where=WHERE, **options)
        journal.open()
        opened.append(journal)
        return journal

    yield start
    for journal in opened:
        journal.close()


OpenJournal = Callable[..., PostgresJournal]


def planned(journal: PostgresJournal, count: int) -> list[Recipient]:
    """Plan readers 1..count (lines 3..) and commit."""
    recipients = [reader(n) for n in range(1, count + 1)]
    journal.begin_batch()
    for recipient in recipients:
        journal.plan(recipient)
    journal.flush()
    return recipients


def statuses(journal: PostgresJournal) -> dict[str, Status]:
    return {entry.email: entry.status for entry in journal.entries()}


# --- one sender: the SQLite journal's semantics --------------------------------------------------


def test_a_mark_is_committed_before_sending_returns_and_an_outcome_with_the_next(
    open_journal: OpenJournal,
) -> None:
    sender = open_journal()
    ann, bob, cat = planned(sender, 3)
    status = open_journal(sender=False)
    assert sender.claim(0, 10, PENDING) == [(ann.key, 3), (bob.key, 4), (cat.key, 5)]

    assert sender.sending(ann, "<1@x>", "bounce+1@example.com")
    seen = status.status_of(ann.key)
    assert seen is not None
    assert seen.status is Status.SENDING
    assert seen.attempts == 1
    assert seen.envelope_from == "bounce+1@example.com"
    assert seen.message_id == "<1@x>"

    sender.outcome(ann, Status.ACCEPTED, 250, "2.0.0 OK")
    assert statuses(status)[ann.email] is Status.SENDING  # not committed yet
    assert sender.sending(bob, "<2@x>")
    assert statuses(status)[ann.email] is Status.ACCEPTED  # with bob's mark
    sender.outcome(bob, Status.FAILED, 550, "5.1.1 no such user")
    assert sender.claim(0, 10, PENDING) == [(cat.key, 5)]  # commits bob's outcome
    assert statuses(status)[bob.email] is Status.FAILED
    entries = list(status.entries())
    assert [e.status for e in entries] == [Status.ACCEPTED, Status.FAILED, Status.PENDING]
    assert entries[1].code == 550
    assert entries[1].reply == "5.1.1 no such user"
    assert entries[0].fields == dict(ann.fields)  # the row, columns in order, for --failed-csv
    assert list(entries[0].fields) == ["email", "name", "city"]
    assert [e.email for e in status.entries(Status.FAILED)] == [bob.email]
    assert status.anything_sent()


def test_a_mail_costs_one_round_trip_to_the_journal(
    open_journal: OpenJournal, tmp_path: Path
) -> None:
    # The outcome of one mail goes with the next mail's mark and its commit, in one
    # pipeline: across a network each round trip is a wait (there were four a mail).
    sender = open_journal()
    rows = planned(sender, 6)
    sender.claim(0, 10, PENDING)
    sender.sending(rows[0], "<0@x>")
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as file:
        sender._conn.pgconn.trace(file.fileno())
        for n, row in enumerate(rows[1:], 1):
            sender.outcome(rows[n - 1], Status.ACCEPTED, 250, "2.0.0 OK")
            assert sender.sending(row, f"<{n}@x>")
        sender._conn.pgconn.untrace()
    # Each round trip ends with a Sync (or is a simple Query) from the client.
    ends = [
        line
        for line in trace.read_text().splitlines()
        if re.search(r"\tF\t\d+\t(Sync|Query)", line)
    ]
    # One a mail: BEGIN, the outcome, the mark and COMMIT in one pipeline.
    assert len(ends) <= 5, ends


def test_plan_keeps_what_was_sent_and_moves_between_pending_and_skipped(
    open_journal: OpenJournal,
) -> None:
    journal = open_journal()
    ann, bob, cat = planned(journal, 3)
    journal.claim(0, 10, PENDING)
    journal.sending(ann, "<1@x>")
    journal.outcome(ann, Status.ACCEPTED, 250, "OK")
    journal.plan(bob, Status.SKIPPED, "suppressed")
    journal.flush()
    assert statuses(journal) == {
        ann.email: Status.ACCEPTED,
        bob.email: Status.SKIPPED,
        cat.email: Status.PENDING,
    }
    moved = Recipient(9, ann.email, ann.name, {"email": ann.email})
    journal.plan(moved, Status.SKIPPED, "suppressed")  # mailed already: stays accepted
    journal.plan(bob)  # no longer suppressed: pending again, without the reason
    journal.flush()
    after = {e.email: e for e in journal.entries()}
    assert after[ann.email].status is Status.ACCEPTED
    assert after[ann.email].line == 9
    assert after[bob.email].status is Status.PENDING
    assert after[bob.email].reply is None
    assert journal.entry_at_line(9) == after[ann.email]


def test_plan_many_notes_rows_in_one_go_as_plan_does_one_by_one(
    open_journal: OpenJournal,
) -> None:
    journal = open_journal()
    ann, bob, cat = planned(journal, 3)
    journal.claim(0, 10, PENDING)
    journal.sending(ann, "<1@x>")
    journal.outcome(ann, Status.ACCEPTED, 250, "OK")
    journal.plan(bob, Status.SKIPPED, "suppressed")
    journal.flush()
    dan = Recipient(9, "dan@example.com", "Dan", {"email": "dan@example.com"})

    entries = journal.plan_many([ann, bob, cat, dan])  # as the preflight of a rerun does
    journal.flush()

    assert [e.email for e in entries] == [ann.email, bob.email, cat.email, dan.email]
    assert [e.status for e in entries] == [
        Status.ACCEPTED,  # mailed already: kept
        Status.PENDING,  # no longer suppressed
        Status.PENDING,
        Status.PENDING,  # new
    ]
    assert entries == [journal.status_of(r.key) for r in (ann, bob, cat, dan)]
    assert journal.plan_many([]) == []


def test_unmark_undoes_a_mark_and_rollback_forgets_what_was_not_committed(
    open_journal: OpenJournal,
) -> None:
    journal = open_journal()
    ann, bob = planned(journal, 2)
    journal.claim(0, 10, PENDING)
    journal.sending(ann, "<1@x>")
    journal.unmark(ann, Status.PENDING)
    journal.flush()
    entry = journal.status_of(ann.key)
    assert entry is not None
    assert entry.status is Status.PENDING
    assert entry.attempts == 1
    journal.sending(bob, "<2@x>")
    journal.outcome(bob, Status.ACCEPTED, 250, "OK")
    journal.rollback()
    assert statuses(journal)[bob.email] is Status.SENDING


def test_feedback_keeps_the_strongest_and_rows_are_found_by_message_id(
    open_journal: OpenJournal,
) -> None:
    sender = open_journal()
    (ann,) = planned(sender, 1)
    sender.claim(0, 1, PENDING)
    sender.sending(ann, "<1@x>")
    sender.outcome(ann, Status.ACCEPTED, 250, "OK")
    sender.flush()
    inbox = open_journal(sender=False)
    found = inbox.entry_for_message("<1@x>")
    assert found is not None
    assert found.key == ann.key
    assert inbox.note_feedback(ann.key, "bounced", "5.1.1")
    assert inbox.note_feedback(ann.key, "soft-bounced", "4.2.2")  # weaker: kept out
    entry = sender.status_of(ann.key)
    assert entry is not None
    assert (entry.feedback, entry.feedback_detail) == ("bounced", "5.1.1")
    assert inbox.note_feedback(ann.key, "complained", "abuse report")
    assert not inbox.note_feedback("nobody@example.com", "bounced", "")
    assert sender.summary().feedback == {
        "soft-bounced": 0,
        "bounced": 0,
        "unsubscribed": 0,
        "complained": 1,
    }


def test_meta_runs_and_summary(open_journal: OpenJournal) -> None:
    journal = open_journal()
    assert journal.get_meta("campaign") == "june"
    assert journal.get_meta("fingerprint") is None
    journal.set_meta("fingerprint", "abc")
    journal.set_meta("fingerprint", "def")
    recipients = planned(journal, 3)
    journal.start_run()
    journal.claim(0, 10, PENDING)
    for number, recipient in enumerate(recipients[:2]):
        journal.sending(recipient, f"<{number}@x>")
        journal.outcome(recipient, Status.ACCEPTED, 250, "OK")
    time.sleep(0.05)
    journal.finish_run("completed")
    other = open_journal(sender=False)
    assert other.get_meta("fingerprint") == "def"
    summary = other.summary()
    assert summary.counts[Status.ACCEPTED] == 2
    assert summary.counts[Status.PENDING] == 1
    assert summary.total == 3
    assert summary.runs == 1
    assert summary.started is not None
    assert summary.last_sent is not None
    assert summary.rate is not None
    assert summary.rate > 0
    (me,) = other.senders()
    assert me.id == journal.sender_id
    assert me.state == "completed"
    assert not me.alive


def test_a_reader_of_an_empty_database_finds_no_campaign_and_makes_nothing(
    open_journal: OpenJournal, postgres: Any
) -> None:
    status = open_journal(sender=False)
    summary = status.summary()
    assert summary.total == 0
    assert summary.runs == 0
    assert list(status.entries()) == []
    assert status.get_meta("campaign") is None
    assert status.senders() == []
    assert status.outstanding(PENDING) == (0, 0)
    assert not status.anything_sent()


def test_campaigns_in_one_database_never_see_each_other(open_journal: OpenJournal) -> None:
    june = open_journal("june")
    july = open_journal("july")
    (ann,) = planned(june, 1)
    planned(july, 2)
    june.set_meta("fingerprint", "june's")
    june.flush()
    assert july.claim(0, 10, PENDING) == [(ann.key, 3), (reader(2).key, 4)]
    assert july.sending(ann, "<july@x>")  # july's own row of the same address
    assert statuses(june) == {ann.email: Status.PENDING}
    assert july.get_meta("fingerprint") is None
    assert june.summary().total == 1
    assert july.summary().total == 2
    assert june.entry_for_message("<july@x>") is None
    assert [s.id for s in june.senders()] == [june.sender_id]


def test_entries_are_read_a_page_at_a_time_in_list_order(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulkmail.journal.postgres, "_ENTRIES_PAGE", 2)
    journal = open_journal()
    recipients = [reader(n, line=10 - n) for n in range(1, 6)]
    for recipient in recipients:
        journal.plan(recipient)
    journal.flush()
    assert [e.line for e in journal.entries()] == [5, 6, 7, 8, 9]
    assert [e.line for e in journal.entries(Status.PENDING, Status.FAILED)] == [5, 6, 7, 8, 9]
    assert list(journal.entries(Status.ACCEPTED)) == []


def test_commits_are_synchronous_whatever_the_server_says(
    settings: Settings, postgres: Any
) -> None:
    database = settings().url.rsplit("/", 1)[1]
    with postgres.admin() as admin:
        admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    with PostgresJournal(settings(), "june") as journal:
        row = journal._conn.execute("SHOW synchronous_commit").fetchone()
        assert row == ("on",)
        assert journal._heartbeat is not None
        beat = journal._heartbeat._db
        assert beat is not None
        assert beat.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_senders_starting_together_make_the_tables_once(settings: Settings) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait(5)
            with PostgresJournal(settings(), "june") as journal:
                journal.plan(reader(1))
                journal.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    with PostgresJournal(settings(), "june", sender=False) as status:
        assert status.summary().total == 1
        assert len(status.senders()) == 4


# --- several senders -----------------------------------------------------------------------------


def test_claims_never_overlap_and_a_sender_sends_only_what_it_holds(
    open_journal: OpenJournal,
) -> None:
    a, b = open_journal(), open_journal()
    recipients = planned(a, 10)
    got_a = a.claim(0, 4, PENDING)
    got_b = b.claim(0, 4, PENDING)
    assert [line for _, line in got_a] == [3, 4, 5, 6]
    assert [line for _, line in got_b] == [7, 8, 9, 10]
    assert a.outstanding(PENDING) == (6, 4)  # its own 4 and the 2 free; b's 4
    assert not b.sending(recipients[0], "<stolen@x>")  # a's row: b may not mark it
    entry = a.status_of(recipients[0].key)
    assert entry is not None
    assert entry.status is Status.PENDING
    assert entry.attempts == 0
    assert a.sending(recipients[0], "<1@x>")
    a.outcome(recipients[0], Status.ACCEPTED, 250, "OK")
    assert not a.sending(recipients[0], "<again@x>")  # accepted: never marked again
    a.flush()
    assert a.claim(0, 10, PENDING) == [(r.key, r.line) for r in recipients[1:4] + recipients[8:]]


def test_a_sender_that_asks_what_is_left_commits_its_last_outcome_first(
    open_journal: OpenJournal,
) -> None:
    a = open_journal()
    (ann,) = planned(a, 1)
    status = open_journal(sender=False)
    a.claim(0, 1, PENDING)
    a.sending(ann, "<1@x>")
    a.outcome(ann, Status.ACCEPTED, 250, "OK")
    assert statuses(status)[ann.email] is Status.SENDING
    assert a.outstanding(PENDING) == (0, 0)
    assert statuses(status)[ann.email] is Status.ACCEPTED


def test_a_claim_skips_rows_another_transaction_has_locked(
    open_journal: OpenJournal, postgres: Any
) -> None:
    journal = open_journal()
    planned(journal, 3)
    database = journal.settings.url.rsplit("/", 1)[1]
    with postgres.admin(database) as admin, admin.transaction():
        admin.execute(
            "SELECT 1 FROM bulkmail_recipients WHERE key = %s FOR UPDATE", (reader(1).key,)
        )
        started = time.monotonic()
        got = journal.claim(0, 10, PENDING)
        assert time.monotonic() - started < 2  # skipped, not waited for
    assert [line for _, line in got] == [4, 5]


def test_a_lease_that_runs_out_gives_the_rows_to_another_sender(
    open_journal: OpenJournal,
) -> None:
    a, b = open_journal(lease=1.0), open_journal(lease=1.0)
    ann, bob = planned(a, 2)
    assert len(a.claim(0, 10, PENDING)) == 2
    assert a._heartbeat is not None
    a._heartbeat.stop()  # a stalls: no more heartbeats
    assert b.claim(0, 10, PENDING) == []
    time.sleep(1.3)
    assert b.claim(0, 10, PENDING) == [(ann.key, 3), (bob.key, 4)]
    assert not a.sending(ann, "<late@x>")  # a lost it: it must not send
    entry = b.status_of(ann.key)
    assert entry is not None
    assert entry.status is Status.PENDING
    assert entry.message_id is None
    assert b.sending(ann, "<1@x>")


def test_the_heartbeat_keeps_a_lease_alive_past_its_length(open_journal: OpenJournal) -> None:
    a, b = open_journal(lease=1.0), open_journal(lease=1.0)
    ann, bob = planned(a, 2)
    a.claim(0, 1, PENDING)
    time.sleep(2.2)
    assert b.claim(0, 10, PENDING) == [(bob.key, 4)]
    assert b.outstanding(PENDING) == (1, 1)
    assert a.sending(ann, "<1@x>")
    (a_info,) = [s for s in b.senders() if s.id == a.sender_id]
    assert a_info.alive
    assert a_info.last_seen > a_info.started + 1


def test_release_gives_unsent_rows_back_at_once_and_keeps_the_sent(
    open_journal: OpenJournal,
) -> None:
    a, b = open_journal(), open_journal()
    ann, bob, cat, dan = planned(a, 4)
    a.claim(0, 4, PENDING)
    a.sending(ann, "<1@x>")
    a.outcome(ann, Status.ACCEPTED, 250, "OK")
    a.sending(bob, "<2@x>")  # in flight: stays a's
    a.release()
    assert b.claim(0, 10, [Status.PENDING, Status.SENDING]) == [(cat.key, 5), (dan.key, 6)]
    counts = {s.id: (s.accepted, s.uncertain, s.held) for s in b.senders()}
    assert counts == {a.sender_id: (1, 1, 0), b.sender_id: (0, 0, 2)}


def test_senders_counts_each_ones_rows_and_whether_it_is_alive(
    open_journal: OpenJournal,
) -> None:
    a, b = open_journal(), open_journal()
    rows = planned(a, 6)
    a.start_run()
    a.claim(0, 3, PENDING)
    b.claim(0, 3, PENDING)
    a.sending(rows[0], "<1@x>")
    a.outcome(rows[0], Status.ACCEPTED, 250, "OK")
    a.sending(rows[1], "<2@x>")
    a.outcome(rows[1], Status.FAILED, 550, "no")
    b.sending(rows[3], "<4@x>")
    b.outcome(rows[3], Status.ACCEPTED, 250, "OK")
    a.sending(rows[2], "<3@x>")  # left uncertain
    b.flush()
    status = open_journal(sender=False)
    first = {s.id: s for s in status.senders()}
    assert (first[a.sender_id].accepted, first[a.sender_id].failed) == (1, 1)
    assert (first[a.sender_id].uncertain, first[a.sender_id].held) == (1, 0)
    assert (first[b.sender_id].accepted, first[b.sender_id].held) == (1, 2)
    assert all(s.alive and s.state == "running" for s in first.values())
    assert first[a.sender_id].pid == os.getpid()
    b.close()
    b.close()  # twice is fine
    a.finish_run("stopped: the server refused the login")
    after = {s.id: s for s in status.senders()}
    assert after[b.sender_id].state == "interrupted"
    assert not after[b.sender_id].alive
    assert after[b.sender_id].held == 0  # given back on close
    assert after[a.sender_id].state == "stopped: the server refused the login"
    assert not after[a.sender_id].alive


def test_one_sender_at_a_time_holds_the_preflight_lock(open_journal: OpenJournal) -> None:
    a, b = open_journal(), open_journal()
    other = open_journal("july")
    entered = threading.Event()
    leave = threading.Event()

    def second() -> None:
        with b.preflight_lock():
            entered.set()
            leave.wait(10)

    with a.preflight_lock():
        with other.preflight_lock():  # another campaign's lock is another lock
            pass
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5)
    assert entered.wait(5)
    leave.set()
    thread.join(5)
    with a.preflight_lock():  # and b let go of it
        pass


def test_a_killed_senders_unsent_rows_return_after_its_lease_and_its_mail_in_flight_stays_uncertain(
    open_journal: OpenJournal, settings: Settings
) -> None:
    b = open_journal(lease=1.0)
    ann, bob, cat = planned(b, 3)
    child = _sender_process(settings(lease=1.0), claim=3, mark=ann)
    try:
        assert b.claim(0, 10, PENDING) == []
        assert b.outstanding(PENDING) == (0, 2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(1.3)
    assert b.outstanding(PENDING) == (2, 0)
    assert b.claim(0, 10, PENDING) == [(bob.key, 4), (cat.key, 5)]
    entry = b.status_of(ann.key)
    assert entry is not None
    assert entry.status is Status.SENDING
    assert entry.message_id == "<k@x>"
    (dead,) = [s for s in b.senders() if s.id != b.sender_id]
    assert not dead.alive
    assert dead.state == "running"
    assert dead.uncertain == 1
    assert dead.held == 0
    assert not b.sending(ann, "<again@x>")  # uncertain: not b's unless it claims it


def _sender_process(settings: PostgresSettings, *, claim: int, mark: Recipient) -> Any:
    """A sender in a process of its own: it claims ``claim`` rows, marks ``mark`` sending,
    says so, and waits to be killed."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from bulkmail.journal.postgres import PostgresJournal
        from bulkmail.models import PostgresSettings, Recipient, Status
        settings = PostgresSettings({settings.url!r}, {settings.password_env!r}, {settings.lease!r})
        journal = PostgresJournal(settings, "june")
        journal.open()
        journal.claim(0, {claim}, [Status.PENDING])
        assert journal.sending(Recipient({mark.line}, {mark.email!r}, "", {{}}), "<k@x>")
        print("marked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    child.stdout.close()
    if line.strip() != b"marked":
        child.kill()
        child.wait()
        pytest.fail(f"the sender process did not mark its row: {line!r}")
    return child


# --- errors --------------------------------------------------------------------------------------


def _refused(settings: PostgresSettings, **options: Any) -> JournalError:
    journal = PostgresJournal(settings, "june", where=WHERE, **options)
    with pytest.raises(JournalError) as caught:
        journal.open()
    journal.close()
    error = caught.value
    assert error.where == WHERE
    assert error.exit_code == 4
    assert settings.url in error.message
    assert PASSWORD not in str(error)
    assert "wrong-secret" not in str(error)
    return error


def test_a_server_that_is_not_there(settings: Settings, postgres: Any) -> None:
    from conftest import free_port

    url = postgres.url("mail", port=free_port())
    error = _refused(settings(url=url))
    assert "cannot connect" in error.message
    assert "is the server running" in error.message


def test_a_wrong_password(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-secret")
    error = _refused(settings())
    assert "refused the login" in error.message
    assert f"the password in the variable {PASSWORD_ENV}" in error.message
    assert "wrong-secret" not in repr(PostgresJournal(settings(), "june", password="wrong-secret"))


def test_no_password_at_all(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    error = _refused(settings(password_env=None))
    assert "refused the login" in error.message
    assert "set PGPASSWORD, ~/.pgpass, or the variable password_env names" in error.message


def test_without_password_env_libpq_finds_the_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    monkeypatch.delenv(PASSWORD_ENV)
    with PostgresJournal(settings(password_env=None), "june") as journal:
        assert journal.get_meta("campaign") == "june"


def test_the_password_given_wins(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-secret")
    with PostgresJournal(settings(), "june", password=PASSWORD) as journal:
        assert journal.summary().total == 0


def test_a_missing_password_variable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    error = _refused(settings())
    assert PASSWORD_ENV in error.message
    assert "not set" in error.message


def test_a_missing_database(settings: Settings, postgres: Any) -> None:
    error = _refused(settings(url=postgres.url("nosuchdb")))
    assert "does not exist" in error.message
    assert "createdb" in error.message


def test_a_role_without_rights(settings: Settings, postgres: Any) -> None:
    database = settings().url.rsplit("/", 1)[1]
    with postgres.admin(database) as admin:
        admin.execute("CREATE ROLE reader LOGIN PASSWORD 'pg-s3cret'")
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        error = _refused(settings(url=postgres.url(database, user="reader")))
        assert "permission denied" in error.message
        assert "grant" in error.message
    finally:
        with postgres.admin(database) as admin:
            admin.execute("DROP ROLE reader")


def test_a_journal_from_a_newer_bulkmail(settings: Settings, postgres: Any) -> None:
    with PostgresJournal(settings(), "june"):
        pass
    database = settings().url.rsplit("/", 1)[1]
    with postgres.admin(database) as admin:
        admin.execute("UPDATE bulkmail_schema SET version = %s", (SCHEMA_VERSION + 1,))
    error = _refused(settings())
    assert "upgrade bulkmail" in error.message


def test_a_mark_whose_transaction_fails_keeps_nothing_and_the_journal_usable(
    open_journal: OpenJournal, postgres: Any
) -> None:
    # The held-back outcome fails on the server (here a constraint added for the test):
    # neither it nor the mark sent with it is kept, the mail must not go, and the journal
    # goes on working on the same connection.
    journal = open_journal()
    ann, bob = planned(journal, 2)
    journal.claim(0, 2, PENDING)
    assert journal.sending(ann, "<1@x>")
    database = journal.settings.url.rsplit("/", 1)[1]
    with postgres.admin(database) as admin:
        admin.execute(
            "ALTER TABLE bulkmail_recipients ADD CONSTRAINT test_no_boom CHECK (reply <> 'boom')"
        )
    journal.outcome(ann, Status.ACCEPTED, 250, "boom")
    with pytest.raises(JournalError):
        journal.sending(bob, "<2@x>")
    states = {key: entry.status for key in (ann.key, bob.key) if (entry := journal.status_of(key))}
    assert states == {ann.key: Status.SENDING, bob.key: Status.PENDING}
    journal.outcome(ann, Status.ACCEPTED, 250, "2.0.0 OK")
    assert journal.sending(bob, "<2@x>")
    assert journal.status_of(ann.key).status is Status.ACCEPTED  # type: ignore[union-attr]


def test_a_connection_lost_mid_run(open_journal: OpenJournal, postgres: Any) -> None:
    journal = open_journal()
    (ann,) = planned(journal, 1)
    journal.claim(0, 1, PENDING)
    database = journal.settings.url.rsplit("/", 1)[1]
    with postgres.admin(database) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    with pytest.raises(JournalError) as caught:
        journal.sending(ann, "<1@x>")
    assert "lost the connection" in caught.value.message
    assert caught.value.where == WHERE
    journal.close()  # best effort: nothing more to say
    with PostgresJournal(journal.settings, "june") as again:
        entry = again.status_of(ann.key)
        assert entry is not None
        assert entry.status is Status.PENDING
