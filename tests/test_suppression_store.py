"""The suppression store: what it keeps and why, soft-bounce streaks over campaigns, one
commit per handled message (a kill leaves all or nothing), files refused when they can't be
trusted, owner-only files, and an export a spreadsheet can't be tricked by."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bulkmail.feedback.store
from bulkmail.errors import JournalError
from bulkmail.feedback.store import SCHEMA_VERSION, StoreError, Suppression, SuppressionStore
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.models import Recipient

BOX = "imap://bounces@mail.example.com:993/INBOX"
UNTRUSTED = "restore it from a backup"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "campaigns" / ".bulkmail" / "suppressions.db"


@pytest.fixture
def store(path: Path) -> Iterator[SuppressionStore]:
    with SuppressionStore(path) as opened:
        yield opened


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- 1. what it keeps ---------------------------------------------------------------------------


def test_new_store_is_durable_and_says_what_it_is(store: SuppressionStore, path: Path) -> None:
    db = store._conn  # the pragmas are per connection: only the store's own tells
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert dict(db.execute("SELECT key, value FROM meta")) == {"kind": "suppressions"}


def test_added_address_is_suppressed_in_any_spelling(store: SuppressionStore) -> None:
    assert store.add("Bob@Example.com", "complaint", campaign="june", detail="abuse", when=5.0)

    found = store.is_suppressed("bob@EXAMPLE.COM")

    assert found == Suppression("Bob@Example.com", "complaint", "june", "abuse", 5.0)
    assert store.keys() == frozenset({"bob@example.com"})
    assert store.is_suppressed("ann@example.com") is None
    assert store.count() == 1


def test_second_add_keeps_the_first_reason(store: SuppressionStore) -> None:
    store.add("bob@example.com", "hard_bounce", campaign="june", detail="550 5.1.1", when=1.0)

    again = store.add("BOB@example.com", "complaint", campaign="july", when=2.0)

    assert again is False
    assert store.is_suppressed("bob@example.com") == Suppression(
        "bob@example.com", "hard_bounce", "june", "550 5.1.1", 1.0
    )
    assert store.count() == 1


def test_a_fact_replaces_soft_bounces_the_one_guess(store: SuppressionStore) -> None:
    store.add("bob@example.com", "soft_bounces", campaign="june", when=1.0)

    again = store.add("bob@example.com", "unsubscribe", campaign="july", detail="mailto", when=2.0)

    assert again is False  # suppressed already: nothing new to report
    assert store.is_suppressed("bob@example.com") == Suppression(
        "bob@example.com", "unsubscribe", "july", "mailto", 2.0
    )


def test_remove_mails_the_address_again(store: SuppressionStore) -> None:
    store.add("bob@example.com", "manual")

    assert store.remove("BOB@example.com") is True
    assert store.remove("bob@example.com") is False
    assert store.is_suppressed("bob@example.com") is None
    assert store.keys() == frozenset()


def test_entries_are_ordered_by_date_then_address(store: SuppressionStore) -> None:
    store.add("carl@example.com", "manual", when=20.0)
    store.add("bob@example.com", "manual", when=10.0)
    store.add("ann@example.com", "manual", when=20.0)

    emails = [entry.email for entry in store.entries()]

    assert emails == ["bob@example.com", "ann@example.com", "carl@example.com"]


def test_store_is_shared_between_openings(path: Path) -> None:
    with SuppressionStore(path) as first:
        first.add("bob@example.com", "hard_bounce", campaign="june")
    with SuppressionStore(path) as second:
        assert second.keys() == frozenset({"bob@example.com"})


# --- 2. soft bounces ----------------------------------------------------------------------------


def test_third_campaign_in_a_row_that_soft_bounces_suppresses(store: SuppressionStore) -> None:
    bob = "bob@example.com"
    assert not store.soft_bounce(bob, campaign="may", detail="452 4.2.2 full", limit=3, when=1)
    assert not store.soft_bounce(bob, campaign="june", detail="452 4.2.2 full", limit=3, when=2)
    assert store.is_suppressed(bob) is None

    made = store.soft_bounce(bob, campaign="july", detail="421 4.7.0 later", limit=3, when=3)

    assert made is True
    found = store.is_suppressed(bob)
    assert found is not None
    assert found.reason == "soft_bounces"
    assert found.campaign == "july"
    assert found.detail == "3 soft bounces in a row: may, june, july; last: 421 4.7.0 later"
    assert store.soft_bounce_streak(bob) == []  # suppressed: the streak is over


def test_several_notices_about_one_campaigns_mail_count_once(store: SuppressionStore) -> None:
    bob = "bob@example.com"
    for detail in ["delayed", "delayed again", "4.4.7 gave up"]:
        assert not store.soft_bounce(bob, campaign="june", detail=detail, limit=2)

    assert store.soft_bounce_streak("BOB@example.com") == ["june"]
    assert store.is_suppressed(bob) is None
    assert store.soft_bounce(bob, campaign="july", detail="full", limit=2)


def test_hard_bounce_ends_the_streak(store: SuppressionStore) -> None:
    bob = "bob@example.com"
    store.soft_bounce(bob, campaign="may", detail="full", limit=3)
    store.soft_bounce(bob, campaign="june", detail="full", limit=3)

    store.add(bob, "hard_bounce", campaign="july", detail="550 5.1.1")

    assert store.soft_bounce_streak(bob) == []
    assert not store.soft_bounce(bob, campaign="aug", detail="full", limit=3)
    assert store.soft_bounce_streak(bob) == []  # suppressed: soft bounces change nothing
    assert store.is_suppressed(bob) == store.is_suppressed(bob.upper())
    found = store.is_suppressed(bob)
    assert found is not None
    assert found.reason == "hard_bounce"


def test_remove_starts_the_streak_afresh(store: SuppressionStore) -> None:
    bob = "bob@example.com"
    store.soft_bounce(bob, campaign="may", detail="full", limit=2)
    store.soft_bounce(bob, campaign="june", detail="full", limit=2)
    assert store.remove(bob)

    assert not store.soft_bounce(bob, campaign="july", detail="full", limit=2)
    assert store.soft_bounce_streak(bob) == ["july"]

    store.remove(bob)  # not suppressed, but the streak goes all the same
    assert store.soft_bounce_streak(bob) == []


def test_limit_of_one_suppresses_at_once(store: SuppressionStore) -> None:
    assert store.soft_bounce("bob@example.com", campaign="june", detail="full", limit=1)
    with pytest.raises(ValueError, match="at least 1"):
        store.soft_bounce("ann@example.com", campaign="june", detail="full", limit=0)


# --- 3. one commit per handled message ----------------------------------------------------------


def test_marking_a_message_twice_says_it_was_handled(store: SuppressionStore) -> None:
    assert not store.processed(BOX, "41:7")

    assert store.mark_processed(BOX, "41:7", "hard_bounce") is True
    assert store.mark_processed(BOX, "41:7", "hard_bounce") is False
    assert store.processed(BOX, "41:7")
    assert not store.processed(BOX, "41:8")
    assert not store.processed("pop3://other", "41:7")


def test_transaction_commits_changes_and_mark_together(path: Path) -> None:
    with SuppressionStore(path) as store, SuppressionStore(path) as other:
        with store.transaction():
            assert store.mark_processed(BOX, "1", "complaint")
            store.add("bob@example.com", "complaint", campaign="june")
            assert not other.processed(BOX, "1")  # not committed yet: nobody sees it
            assert other.keys() == frozenset()
        assert other.processed(BOX, "1")
        assert other.keys() == frozenset({"bob@example.com"})


def test_transaction_that_raises_keeps_nothing(store: SuppressionStore) -> None:
    store.soft_bounce("ann@example.com", campaign="may", detail="full", limit=3)

    def handle_message() -> None:
        with store.transaction():
            store.mark_processed(BOX, "1", "soft_bounce")
            store.soft_bounce("ann@example.com", campaign="june", detail="full", limit=3)
            store.add("bob@example.com", "hard_bounce")
            raise KeyError("the classifier failed")

    with pytest.raises(KeyError):
        handle_message()

    assert not store.processed(BOX, "1")
    assert store.keys() == frozenset()
    assert store.soft_bounce_streak("ann@example.com") == ["may"]
    store.add("bob@example.com", "manual")  # and the store goes on working
    assert store.count() == 1


def test_transactions_do_not_nest(store: SuppressionStore) -> None:
    with store.transaction():
        store.add("bob@example.com", "manual")
        with pytest.raises(RuntimeError, match="do not nest"), store.transaction():
            pass
    assert store.count() == 1


def test_second_run_that_saw_the_message_unhandled_changes_nothing(path: Path) -> None:
    # Two `inbox` runs over one mailbox: both find the message unhandled, the first commits.
    with SuppressionStore(path) as first, SuppressionStore(path) as second:
        assert not first.processed(BOX, "9")
        assert not second.processed(BOX, "9")
        with first.transaction():
            if first.mark_processed(BOX, "9", "soft_bounce"):
                first.soft_bounce("bob@example.com", campaign="june", detail="x", limit=2)
        with second.transaction():
            if second.mark_processed(BOX, "9", "soft_bounce"):
                second.soft_bounce("bob@example.com", campaign="july", detail="x", limit=2)

        assert second.soft_bounce_streak("bob@example.com") == ["june"]
        assert second.keys() == frozenset()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bulkmail.feedback.store import SuppressionStore

    path, stop = Path(sys.argv[1]), sys.argv[2]
    with SuppressionStore(path) as store:
        with store.transaction():
            store.mark_processed("imap://box", "7", "hard_bounce")
            store.add("bob@example.com", "hard_bounce", campaign="june", detail="550")
            store.soft_bounce("ann@example.com", campaign="june", detail="452", limit=3)
            print("written", flush=True)
            if stop == "before-commit":
                sys.stdin.readline()  # blocks: killed here
        print("committed", flush=True)
        if stop == "after-commit":
            sys.stdin.readline()
    """
)


def killed_at(path: Path, stop: str) -> list[str]:
    """Run CHILD until it prints that it reached ``stop``, SIGKILL it: what it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), stop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    printed = [child.stdout.readline().strip()]
    if stop == "after-commit":
        printed.append(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return printed


def test_kill_before_commit_keeps_neither_the_changes_nor_the_mark(path: Path) -> None:
    with SuppressionStore(path):
        pass  # created before: the child's transaction is all it does

    assert killed_at(path, "before-commit") == ["written"]

    with SuppressionStore(path) as store:
        assert not store.processed("imap://box", "7")
        assert store.keys() == frozenset()
        assert store.soft_bounce_streak("ann@example.com") == []


def test_kill_after_commit_keeps_both(path: Path) -> None:
    assert killed_at(path, "after-commit") == ["written", "committed"]

    with SuppressionStore(path) as store:
        assert store.processed("imap://box", "7")
        assert store.keys() == frozenset({"bob@example.com"})
        assert store.soft_bounce_streak("ann@example.com") == ["june"]


def test_busy_store_is_a_store_error_naming_the_file(
    store: SuppressionStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulkmail.feedback.store, "BUSY_TIMEOUT", 0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with SuppressionStore(path) as late, pytest.raises(StoreError) as busy:
            late.add("bob@example.com", "manual")
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert str(busy.value).startswith(f"{path}: the suppression store is busy")
    assert busy.value.exit_code == 4
    assert store.add("bob@example.com", "manual")


# --- 4. reading only ----------------------------------------------------------------------------


def test_missing_store_read_only_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".bulkmail" / "suppressions.db"

    with SuppressionStore(path, create=False) as store:
        assert store.keys() == frozenset()
        assert list(store.entries()) == []
        assert store.count() == 0
        assert store.is_suppressed("bob@example.com") is None
        assert not store.processed(BOX, "1")
        assert store.export_csv(io.StringIO()) == 0
        with pytest.raises(RuntimeError, match="read only"):
            store.add("bob@example.com", "manual")

    assert not path.parent.exists()


def test_existing_store_read_only_is_read_and_not_written(path: Path) -> None:
    with SuppressionStore(path) as store:
        store.add("bob@example.com", "manual")

    with SuppressionStore(path, create=False) as reader:
        assert reader.keys() == frozenset({"bob@example.com"})
        with pytest.raises(RuntimeError, match="read only"):
            reader.remove("bob@example.com")
        with pytest.raises(RuntimeError, match="read only"), reader.transaction():
            pass
        assert reader.count() == 1


# --- 5. a file that can't be trusted is refused, one line, untouched ----------------------------


def refused(path: Path, *phrases: str, create: bool = True) -> str:
    before = path.read_bytes()
    with pytest.raises(StoreError) as error, SuppressionStore(path, create=create):
        pass
    line = str(error.value)
    assert isinstance(error.value, JournalError)  # the CLI's one line and exit 4
    assert error.value.exit_code == 4
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in line
    assert path.read_bytes() == before
    return line


@pytest.mark.parametrize("create", [True, False])
def test_empty_store_is_refused(path: Path, create: bool) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")

    refused(path, "empty", UNTRUSTED, "mailed again", create=create)


def test_file_of_noise_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(random.Random(3).randbytes(8192))

    refused(path, "not a suppression store", UNTRUSTED)


def test_other_sqlite_file_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE contacts (email TEXT)")
    db.close()

    refused(path, "not a bulkmail suppression store", UNTRUSTED)


def test_campaign_journal_is_not_taken_for_a_store(path: Path) -> None:
    journal = journal_path(path.parent, "june")
    with Journal(journal) as opened:
        opened.begin_batch()
        opened.plan(Recipient(2, "ann@example.com", "", {}))
        opened.flush()

    refused(journal, "journal of campaign 'june'", "not a suppression store")


def test_store_is_not_taken_for_a_journal(path: Path) -> None:
    with SuppressionStore(path):
        pass
    path.rename(path.with_name("june.sqlite"))

    with pytest.raises(JournalError, match="not a bulkmail journal"):
        Journal(path.with_name("june.sqlite")).open()


def test_store_from_a_newer_bulkmail_is_refused(path: Path) -> None:
    with SuppressionStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    refused(path, "newer bulkmail", "upgrade bulkmail")


def test_store_with_damaged_pages_is_refused(path: Path) -> None:
    with SuppressionStore(path) as store, store.transaction():
        for n in range(3000):
            store.add(f"reader{n}@example.com", "hard_bounce", detail="550 " * 20)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[2 * page :] = random.Random(8).randbytes(len(data) - 2 * page)
    path.write_bytes(bytes(data))

    refused(path, "damaged", UNTRUSTED)


def test_leftover_of_a_killed_creation_is_removed(path: Path) -> None:
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    leftover = path.with_name(f"{path.name}.new-{int(dead.stdout)}-0a1b2c3d")
    leftover.write_bytes(b"")
    running = path.with_name(f"{path.name}.new-{os.getppid()}-0a1b2c3d")  # alive: in progress
    running.write_bytes(b"")

    with SuppressionStore(path):
        pass

    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, running.name])


SPAWNED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bulkmail.feedback.store import SuppressionStore

    sys.stdin.readline()  # all start together
    with SuppressionStore(Path(sys.argv[1])) as store:
        store.add(sys.argv[2], "manual")
    """
)


def test_processes_creating_the_store_at_once_share_one(path: Path) -> None:
    addresses = [f"reader{n}@example.com" for n in range(6)]
    children = [
        subprocess.Popen([sys.executable, "-c", SPAWNED, str(path), a], stdin=subprocess.PIPE)
        for a in addresses
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    for child in children:
        child.communicate(timeout=60)
        assert child.returncode == 0

    with SuppressionStore(path) as store:
        assert store.keys() == frozenset(addresses)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_rival_that_creates_the_store_first_is_never_replaced(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministically in the window the processes above rarely hit: after this opening
    # found no store, a rival creates one and writes to it.
    path.parent.mkdir(parents=True)
    remove_leftovers = bulkmail.feedback.store._remove_leftovers

    def rival_first(where: Path) -> None:
        monkeypatch.setattr(bulkmail.feedback.store, "_remove_leftovers", remove_leftovers)
        with SuppressionStore(where) as rival:
            rival.add("ann@example.com", "complaint")
        remove_leftovers(where)

    monkeypatch.setattr(bulkmail.feedback.store, "_remove_leftovers", rival_first)

    with SuppressionStore(path) as store:
        assert store.keys() == frozenset({"ann@example.com"})
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- 6. owner-only files ------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_store_files_are_owner_only_whatever_the_umask(
    path: Path, umask: Callable[[int], int], mask: int
) -> None:
    umask(mask)
    with SuppressionStore(path) as store:
        store.add("bob@example.com", "manual")
        files = {p.name: mode(p) for p in path.parent.iterdir()}
        folder = mode(path.parent)

    assert folder == 0o700
    assert files == {
        "suppressions.db": 0o600,
        "suppressions.db-wal": 0o600,
        "suppressions.db-shm": 0o600,
    }


def test_store_opened_later_is_made_owner_only(path: Path) -> None:
    with SuppressionStore(path):
        pass
    path.parent.chmod(0o755)
    path.chmod(0o644)

    with SuppressionStore(path, create=False):
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700


# --- 7. export ----------------------------------------------------------------------------------


def test_export_writes_every_entry_with_its_date_in_utc(store: SuppressionStore) -> None:
    store.add("bob@example.com", "hard_bounce", campaign="june", detail="550 5.1.1", when=0.0)
    store.add("ann@example.com", "manual", when=1780000000.5)
    out = io.StringIO(newline="")

    rows = store.export_csv(out)

    assert rows == 2
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [
        ["email", "reason", "campaign", "added", "detail"],
        ["bob@example.com", "hard_bounce", "june", "1970-01-01T00:00:00Z", "550 5.1.1"],
        ["ann@example.com", "manual", "", "2026-05-28T20:26:40Z", ""],
    ]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_export_keeps_spreadsheets_from_running_formulas(
    store: SuppressionStore, start: str
) -> None:
    # Addresses (an unsubscribe's From) and diagnostics come from strangers' mail.
    formula = f'{start}HYPERLINK("http://evil.example","x")'
    address = f"{start}cmd@example.com"
    store.add(address, "unsubscribe", campaign=formula, detail=formula)
    out = io.StringIO(newline="")

    store.export_csv(out)

    (_, row) = list(csv.reader(io.StringIO(out.getvalue())))
    assert row == ["'" + address, "unsubscribe", "'" + formula, row[3], "'" + formula]


def test_export_leaves_ordinary_values_alone(store: SuppressionStore) -> None:
    store.add("bob-smith@example.com", "hard_bounce", campaign="june-2026", detail="550 5.1.1 =")
    out = io.StringIO(newline="")

    store.export_csv(out)

    row = list(csv.reader(io.StringIO(out.getvalue())))[1]
    assert row[:3] == ["bob-smith@example.com", "hard_bounce", "june-2026"]
    assert row[4] == "550 5.1.1 ="
