"""The SQLite journal on its own: schema, locking, what survives a rerun, commits, summary."""

from __future__ import annotations

import sqlite3
import types
from pathlib import Path

import pytest

import bulkmail.journal.sqlite
from bulkmail.errors import JournalError
from bulkmail.journal.records import Entry
from bulkmail.journal.sqlite import SCHEMA_VERSION, Journal, journal_path
from bulkmail.models import Recipient, Status


def reader(number: int, line: int | None = None) -> Recipient:
    email = f"reader{number}@Example.COM"
    fields = {"email": email, "name": f"Reader {number}", "city": "Lyon, «France»"}
    return Recipient(line=line or number + 2, email=email, name=f"Reader {number}", fields=fields)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path / "campaigns" / ".bulkmail", "june-2026")


class Clock:
    """Stands in for the time module inside bulkmail.journal.sqlite."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(bulkmail.journal.sqlite, "time", types.SimpleNamespace(time=clock.time))
    return clock


def entry(journal: Journal, recipient: Recipient) -> Entry:
    found = journal.status_of(recipient.key)
    assert found is not None
    return found


def statuses_seen_by_another_connection(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT email, status FROM recipients"))


# --- the file ------------------------------------------------------------------------------


def test_journal_lives_next_to_the_campaign_named_after_it(tmp_path: Path) -> None:
    assert journal_path(tmp_path / ".bulkmail", "june-2026") == (
        tmp_path / ".bulkmail" / "june-2026.sqlite"
    )


def test_new_journal_is_in_wal_mode_with_the_schema_version(path: Path) -> None:
    with Journal(path):
        pass

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"meta", "recipients", "runs"} <= tables
    finally:
        db.close()


def test_reopening_keeps_the_data_and_the_version(path: Path) -> None:
    with Journal(path) as journal:
        journal.set_meta("fingerprint", "{}")
    with Journal(path) as journal:
        assert journal.get_meta("fingerprint") == "{}"
        assert journal.get_meta("nothing") is None


def test_journal_from_a_newer_bulkmail_is_refused_untouched_and_unlocked(path: Path) -> None:
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE recipients_v9 (key TEXT)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()

    first = Journal(path)
    with pytest.raises(JournalError) as refused:
        first.open()

    assert str(refused.value) == (
        f"{path}: this journal was written by a newer bulkmail (schema {SCHEMA_VERSION + 1}, "
        f"this one knows {SCHEMA_VERSION}); upgrade bulkmail"
    )
    assert refused.value.exit_code == 4
    # The refused run let go of the lock (while its object lives on): a second attempt
    # is told the same thing, not that a run is in progress.
    with pytest.raises(JournalError, match="newer bulkmail"):
        Journal(path).open()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert tables == {"recipients_v9"}
    finally:
        db.close()
    del first


def test_file_that_is_not_a_journal_is_a_journal_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not SQLite, just text that happens to be here" * 50)

    with pytest.raises(JournalError, match="cannot use the journal: file is not a database"):
        Journal(path).open()
    with pytest.raises(JournalError, match="file is not a database"):  # and not locked
        Journal(path).open()


# --- one run at a time ---------------------------------------------------------------------


def test_second_run_is_refused_while_the_first_holds_the_journal(path: Path) -> None:
    with Journal(path):
        with pytest.raises(JournalError, match="another bulkmail run of this campaign") as exc:
            Journal(path).open()
        assert exc.value.exit_code == 4
        with Journal(path, lock=False) as status_reader:  # `bulkmail status` still works
            assert status_reader.summary().total == 0
    with Journal(path):  # released on close
        pass


# --- planning a list, and a rerun of it -------------------------------------------------------


def test_rerun_plan_keeps_known_outcomes_and_updates_lines(path: Path) -> None:
    r = [reader(i) for i in range(4)]
    with Journal(path) as journal:
        journal.begin_batch()
        for recipient in r[:3]:
            journal.plan(recipient)
        journal.flush()
        journal.sending(r[0], "<m0@example.com>")
        journal.outcome(r[0], Status.ACCEPTED, 250, "2.0.0 queued as 1")
        journal.sending(r[1], "<m1@example.com>")
        journal.outcome(r[1], Status.FAILED, 550, "5.1.1 no such user")
        journal.sending(r[2], "<m2@example.com>")  # then the process dies

    with Journal(path) as journal:  # the rerun, with a row inserted at the top of the CSV
        journal.begin_batch()
        for recipient in [*r, reader(9)]:
            journal.plan(Recipient(recipient.line + 1, recipient.email, recipient.name, {}))
        journal.flush()

        assert [(e.email, e.status, e.line) for e in journal.entries()] == [
            ("reader0@Example.COM", Status.ACCEPTED, 3),
            ("reader1@Example.COM", Status.FAILED, 4),
            ("reader2@Example.COM", Status.SENDING, 5),
            ("reader3@Example.COM", Status.PENDING, 6),
            ("reader9@Example.COM", Status.PENDING, 12),
        ]
        accepted = entry(journal, r[0])
        assert (accepted.attempts, accepted.code, accepted.reply) == (1, 250, "2.0.0 queued as 1")
        assert accepted.message_id == "<m0@example.com>"
        assert entry(journal, r[1]).reply == "5.1.1 no such user"
        assert [e.email for e in journal.entries(Status.SENDING)] == ["reader2@Example.COM"]
        assert journal.anything_sent()


def test_key_ignores_the_case_of_the_whole_address(path: Path) -> None:
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(Recipient(2, "Ann@Example.com", "", {}))
        journal.plan(Recipient(3, "Ann@example.COM", "", {}))
        journal.plan(Recipient(4, "ann@example.com", "", {}))
        journal.flush()
        assert journal.summary().counts[Status.PENDING] == 1


def test_suppressed_then_unsuppressed_row_is_pending_again(path: Path) -> None:
    ann, bob = reader(1), reader(2)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(ann, Status.SKIPPED, "on the suppression list")
        journal.plan(bob)
        journal.flush()
        journal.sending(bob, "<b@example.com>")
        journal.outcome(bob, Status.ACCEPTED, 250, "ok")
        journal.flush()
        assert entry(journal, ann).status is Status.SKIPPED
        assert entry(journal, ann).reply == "on the suppression list"

        # next run: ann was taken off the suppression list, bob was put on it
        journal.begin_batch()
        journal.plan(ann)
        journal.plan(bob, Status.SKIPPED, "on the suppression list")
        journal.flush()

        assert entry(journal, ann).status is Status.PENDING
        assert entry(journal, ann).reply is None
        # bob has the mail already: suppressing him now cannot unsend it
        assert entry(journal, bob).status is Status.ACCEPTED
        assert entry(journal, bob).reply == "ok"

        # and suppressed again
        journal.begin_batch()
        journal.plan(ann, Status.SKIPPED, "on the suppression list")
        journal.flush()
        assert entry(journal, ann).status is Status.SKIPPED


def test_rollback_forgets_a_plan_that_failed_its_check(path: Path) -> None:
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(reader(1))
        journal.rollback()
        assert journal.summary().total == 0


# --- commits: an outcome goes with the next mark ---------------------------------------------


def test_outcome_is_committed_together_with_the_next_sending_mark(path: Path) -> None:
    ann, bob = reader(1), reader(2)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(ann)
        journal.plan(bob)
        journal.flush()

        journal.sending(ann, "<a@example.com>")
        assert statuses_seen_by_another_connection(path)[ann.email] == "sending"

        journal.outcome(ann, Status.ACCEPTED, 250, "ok")
        assert statuses_seen_by_another_connection(path)[ann.email] == "sending"  # not yet

        journal.sending(bob, "<b@example.com>")
        assert statuses_seen_by_another_connection(path) == {
            ann.email: "accepted",
            bob.email: "sending",
        }

        journal.outcome(bob, Status.FAILED, 550, "no")
        journal.flush()
        assert statuses_seen_by_another_connection(path)[bob.email] == "failed"


def test_unmark_puts_a_mail_that_was_never_handed_over_back(path: Path) -> None:
    ann = reader(1)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(ann)
        journal.flush()
        journal.sending(ann, "<a@example.com>")
        journal.unmark(ann, Status.PENDING)
        journal.flush()
        assert statuses_seen_by_another_connection(path) == {ann.email: "pending"}
        assert entry(journal, ann).attempts == 1


def test_close_commits_the_last_outcome(path: Path) -> None:
    ann = reader(1)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(ann)
        journal.flush()
        journal.sending(ann, "<a@example.com>")
        journal.outcome(ann, Status.ACCEPTED, 250, "ok")
    assert statuses_seen_by_another_connection(path) == {ann.email: "accepted"}


# --- summary -----------------------------------------------------------------------------------


def send(journal: Journal, clock: Clock, recipient: Recipient, status: Status) -> None:
    journal.sending(recipient, f"<{recipient.line}@example.com>")
    clock.now += 0.5
    journal.outcome(recipient, status, 250 if status is Status.ACCEPTED else 550, "reply")
    clock.now += 0.5


def test_summary_counts_each_status_and_the_rate_of_the_runs(path: Path, clock: Clock) -> None:
    people = [reader(i) for i in range(14)]
    with Journal(path) as journal:
        journal.begin_batch()
        for person in people[:13]:
            journal.plan(person)
        journal.plan(people[13], Status.SKIPPED, "on the suppression list")
        journal.flush()
        started = clock.now
        journal.start_run()
        for person in people[:8]:
            send(journal, clock, person, Status.ACCEPTED)
        send(journal, clock, people[8], Status.FAILED)
        journal.sending(people[9], "<9@example.com>")  # in doubt
        clock.now += 1
        journal.finish_run("completed")

        summary = journal.summary()

    assert summary.counts == {
        Status.PENDING: 3,
        Status.SENDING: 1,
        Status.ACCEPTED: 8,
        Status.FAILED: 1,
        Status.SKIPPED: 1,
    }
    assert summary.total == 14
    assert summary.runs == 1
    assert summary.started == started
    assert summary.last_sent == started + 7.5  # the eighth outcome
    assert summary.rate == pytest.approx(8 / 10)  # 8 accepted over the run's 10 s


def test_summary_of_a_journal_without_runs(path: Path) -> None:
    with Journal(path) as journal:
        summary = journal.summary()
    assert summary.total == 0
    assert (summary.runs, summary.started, summary.last_sent, summary.rate) == (0, None, None, None)


def test_rate_counts_a_killed_run_until_its_last_mail_only(path: Path, clock: Clock) -> None:
    people = [reader(i) for i in range(10)]
    with Journal(path) as journal:
        journal.begin_batch()
        for person in people:
            journal.plan(person)
        journal.flush()
        journal.start_run()
        for person in people[:5]:
            send(journal, clock, person, Status.ACCEPTED)
        # killed: no finish_run. The rerun comes a day later.
    clock.now += 86_400
    with Journal(path) as journal:
        journal.start_run()
        for person in people[5:]:
            send(journal, clock, person, Status.ACCEPTED)
        journal.finish_run("completed")
        summary = journal.summary()

    # busy 4.5 s in the killed run (start to its last outcome) and 5 s in the rerun
    assert summary.runs == 2
    assert summary.rate == pytest.approx(10 / 9.5)
