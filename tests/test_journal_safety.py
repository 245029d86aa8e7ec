"""The journal as the only record of who was mailed: durable, refused when it cannot be
trusted (empty, damaged, foreign, of another campaign, not ours to write), owner-only, and
migrated from schema 1 without mailing anyone twice."""

from __future__ import annotations

import ctypes
import os
import random
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Inbox, Server, TLSPair, transport
from typer.testing import CliRunner, Result

import bulkmail.journal.sqlite
from bulkmail.cli.app import app
from bulkmail.deliver.smtp import SMTPTransport
from bulkmail.errors import CampaignError, JournalError
from bulkmail.journal.sqlite import SCHEMA_VERSION, Journal, journal_path
from bulkmail.models import OutgoingMail, Recipient, Status, address_key
from bulkmail.send import send_campaign

# Every test against a server without PIPELINING, then against one offering it.
pytestmark = pytest.mark.both_ways

runner = CliRunner()
RUN = ["run", "campaigns/test.yaml", "--yes"]
STATUS = ["status", "campaigns/test.yaml"]
JOURNAL = "campaigns/.bulkmail/test-campaign.sqlite"
STORE = "campaigns/.bulkmail/suppressions.db"
WHAT_TO_DO = "restore it from a backup"


@pytest.fixture
def plain(tmp_path: Path, smtpd_plain: Server, monkeypatch: pytest.MonkeyPatch) -> CampaignDir:
    """Five recipients at the plain local relay; the working directory is the campaign's root."""
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    c.csv(people(5))
    c.write(smtp={"host": smtpd_plain.host, "port": smtpd_plain.port, "security": "none"})
    return c


def journal_of(c: CampaignDir) -> Path:
    return journal_path(c.campaigns / ".bulkmail", "test-campaign")


def refused_in_one_line(result: Result, *phrases: str) -> str:
    """The CLI stopped with exit 4 and one line naming the journal and saying each phrase."""
    assert result.exit_code == 4, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {JOURNAL}: "), line
    for phrase in phrases:
        assert phrase in line
    return str(line)


# --- 1. durability -----------------------------------------------------------------------------


def test_every_commit_is_synced_to_disk(tmp_path: Path) -> None:
    # WAL with synchronous=NORMAL may lose the last commits on a power cut: the sending mark
    # of the mail in flight among them. FULL syncs the WAL at every commit.
    with Journal(journal_path(tmp_path, "june")) as journal:
        db = journal._conn  # the pragma is per connection: only the journal's own tells
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class PeekingTransport(SMTPTransport):
    """The real SMTP transport, which reads the journal from a connection of its own just
    before each DATA (once the run let the mail go: ``before_data`` returned, for a mail
    not marked ahead) and while the server reads each mail (``after_data``)."""

    def __init__(self, journal: Path, inbox: Inbox, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.journal = journal
        self.inbox = inbox
        self.seen: list[dict[str, str]] = []
        self.seen_after: list[dict[str, str]] = []
        self.received_before: list[int] = []

    def _read(self) -> dict[str, str]:
        with sqlite3.connect(self.journal) as db:
            seen = dict(db.execute("SELECT email, status FROM recipients"))
        db.close()
        return seen

    def send(
        self,
        mail: OutgoingMail,
        *,
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> str:
        def peek() -> None:
            if before_data is not None:
                before_data()
            self.received_before.append(len(self.inbox.messages))
            self.seen.append(self._read())

        def after() -> None:
            if after_data is not None:
                after_data()
            self.seen_after.append(self._read())

        return super().send(mail, before_data=peek, after_data=after)


def test_each_mark_is_committed_before_its_mail_is_handed_over(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mark is on disk (seen from another connection) before its DATA, even when
    the disk takes longer than anything else (here a commit that waits first). The first
    mark's commit overlaps MAIL FROM and RCPT TO; each later one is made while the server
    reads the mail before, with the outcome of the mail before that."""
    import bulkmail.journal.sqlite as journal_module

    commit = journal_module._commit

    def slow_commit(db: sqlite3.Connection) -> None:
        time.sleep(0.2)
        commit(db)

    monkeypatch.setattr(journal_module, "_commit", slow_commit)
    c = CampaignDir(tmp_path)
    c.csv(people(4))
    c.write(smtp=smtp_settings(smtpd, tls))
    transport = PeekingTransport(
        journal_of(c), smtpd.inbox, smtpd.settings(), password=PASSWORD, ssl_context=tls.client
    )

    report = send_campaign(c.yaml_path, transport=transport)

    assert report.accepted == 4
    assert transport.received_before == [0, 1, 2, 3]  # each peek came before that DATA
    addresses = [f"reader{i}@example.com" for i in range(4)]
    before = [[seen[a] for a in addresses] for seen in transport.seen]
    assert before == [
        ["sending", "pending", "pending", "pending"],
        ["sending", "sending", "pending", "pending"],
        ["accepted", "sending", "sending", "pending"],
        ["accepted", "accepted", "sending", "sending"],
    ]
    # While the server read each mail, the next one was marked, committed.
    after = [[seen[a] for a in addresses] for seen in transport.seen_after]
    assert after == [
        ["sending", "sending", "pending", "pending"],
        ["accepted", "sending", "sending", "pending"],
        ["accepted", "accepted", "sending", "sending"],
        ["accepted", "accepted", "sending", "sending"],  # the last: nothing left to mark
    ]
    with sqlite3.connect(journal_of(c)) as db:
        assert dict(db.execute("SELECT email, attempts FROM recipients")) == dict.fromkeys(
            addresses, 1
        )
    db.close()


@pytest.mark.parametrize(("burst", "ahead"), [(1, False), (4, True)], ids=["paced", "burst"])
def test_a_mail_is_marked_ahead_only_if_its_rate_lets_it_start_at_once(
    tmp_path: Path, smtpd: Server, tls: TLSPair, burst: int, ahead: bool
) -> None:
    """At 5 mails a second one at a time, the next mail cannot start while the server
    reads one: it is marked when its turn comes, not ahead (which would leave it in doubt
    for a crash during the wait). With a burst of 4, all four may start at once."""
    c = CampaignDir(tmp_path)
    c.csv(people(4))
    c.write(smtp=smtp_settings(smtpd, tls), rate={"per_second": 5, "burst": burst})
    transport = PeekingTransport(
        journal_of(c), smtpd.inbox, smtpd.settings(), password=PASSWORD, ssl_context=tls.client
    )

    report = send_campaign(c.yaml_path, transport=transport)

    assert report.accepted == 4
    addresses = [f"reader{i}@example.com" for i in range(4)]
    after = transport.seen_after[:3]  # (while the server read the last, nothing was left)
    next_marked = [seen[a] == "sending" for seen, a in zip(after, addresses[1:], strict=True)]
    assert next_marked == [ahead] * 3


def test_a_mail_marked_ahead_is_unmarked_when_the_run_ends_before_it(
    tmp_path: Path, smtpd: Server, tls: TLSPair
) -> None:
    """The third mail is deferred (451) at the end of its data, when the fourth is marked
    already; a stop cuts the wait before its retry short. Neither went: both are pending
    again, nobody is left in doubt."""
    inbox = smtpd.inbox
    original = inbox.handle_DATA
    answered = []

    async def defer_the_third(server: Any, session: Any, envelope: Any) -> str:
        answered.append(1)
        if len(answered) == 3:
            return Inbox.DEFER_REPLY
        return await original(server, session, envelope)

    inbox.handle_DATA = defer_the_third  # type: ignore[method-assign]
    c = CampaignDir(tmp_path)
    c.csv(people(6))
    c.write(smtp=smtp_settings(smtpd, tls))
    transport = PeekingTransport(
        journal_of(c),
        inbox,
        smtpd.settings(),
        password=PASSWORD,
        ssl_context=tls.client,
        sleep=lambda seconds: True,  # as a stop during the wait: the mail is given up
    )

    report = send_campaign(c.yaml_path, transport=transport)

    assert report.interrupted
    assert report.accepted == 2
    assert transport.seen_after[2]["reader3@example.com"] == "sending"  # marked ahead
    with sqlite3.connect(journal_of(c)) as db:
        statuses = dict(db.execute("SELECT email, status FROM recipients"))
    db.close()
    assert [statuses[f"reader{i}@example.com"] for i in range(6)] == (
        ["accepted"] * 2 + ["pending"] * 4
    )
    assert inbox.recipients == ["reader0@example.com", "reader1@example.com"]


def test_a_mark_that_does_not_reach_the_disk_keeps_its_mail_from_going(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third mark's commit fails (the disk, while the server read the second mail):
    that mail is never handed over, and the run stops with the journal's error once the
    second mail's outcome is in."""
    import bulkmail.journal.sqlite as journal_module

    commit = journal_module._commit
    calls = []

    def failing_commit(db: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise sqlite3.OperationalError("disk I/O error")
        commit(db)

    monkeypatch.setattr(journal_module, "_commit", failing_commit)
    c = CampaignDir(tmp_path)
    c.csv(people(5))
    c.write(smtp=smtp_settings(smtpd, tls))
    with pytest.raises(JournalError, match="disk I/O error") as caught:
        send_campaign(c.yaml_path, transport=transport(smtpd, tls))
    assert "test-campaign.sqlite" in str(caught.value)
    assert smtpd.inbox.recipients == ["reader0@example.com", "reader1@example.com"]
    with sqlite3.connect(journal_of(c)) as db:
        statuses = dict(db.execute("SELECT email, status FROM recipients"))
    db.close()
    assert statuses == {
        "reader0@example.com": "accepted",
        "reader1@example.com": "accepted",  # its reply came after the failed commit
        "reader2@example.com": "pending",  # never handed over: not left in doubt
        "reader3@example.com": "pending",
        "reader4@example.com": "pending",
    }


# --- 2. a journal that cannot be trusted is never read as "nobody was mailed" ---------------------


def test_journal_truncated_to_nothing_stops_the_rerun(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    assert runner.invoke(app, RUN).exit_code == 0
    assert len(smtpd_plain.inbox.messages) == 5
    journal_of(plain).write_bytes(b"")

    line = refused_in_one_line(runner.invoke(app, RUN), "empty", WHAT_TO_DO)

    assert "delete it only if no mail of this campaign was ever sent" in line
    assert len(smtpd_plain.inbox.messages) == 5  # nobody mailed again
    assert journal_of(plain).stat().st_size == 0  # and the evidence left as it was
    refused_in_one_line(runner.invoke(app, STATUS), "empty")


def corrupt_pages(path: Path) -> None:
    """Overwrite every page but the first two (schema and meta) with noise."""
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[2 * page :] = random.Random(8).randbytes(len(data) - 2 * page)
    path.write_bytes(bytes(data))


def test_journal_with_damaged_pages_stops_the_run_and_status(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    plain.csv(people(300))
    with Journal(journal_of(plain)) as journal:  # an earlier run of 300, 100 of them sent
        journal.begin_batch()
        for n, row in enumerate(people(300)):
            journal.plan(Recipient(n + 2, row["email"], row["name"], row))
        for n, row in enumerate(people(100)):
            recipient = Recipient(n + 2, row["email"], row["name"], row)
            journal.sending(recipient, f"<{n}@example.com>")
            journal.outcome(recipient, Status.ACCEPTED, 250, "ok")
        journal.flush()
    corrupt_pages(journal_of(plain))

    refused_in_one_line(runner.invoke(app, RUN), "damaged", WHAT_TO_DO)
    refused_in_one_line(runner.invoke(app, STATUS), "damaged", WHAT_TO_DO)
    assert smtpd_plain.inbox.messages == []


def test_sqlite_file_that_is_not_a_bulkmail_journal_is_refused_untouched(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    path = journal_of(plain)
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE contacts (email TEXT)")
    db.close()
    before = path.read_bytes()

    refused_in_one_line(runner.invoke(app, RUN), "not a bulkmail journal", WHAT_TO_DO)

    assert smtpd_plain.inbox.messages == []
    assert path.read_bytes() == before


def test_journal_of_another_campaign_is_refused(plain: CampaignDir, smtpd_plain: Server) -> None:
    other = journal_path(plain.campaigns / ".bulkmail", "july-2026")
    with Journal(other) as journal:
        journal.begin_batch()
        journal.plan(Recipient(2, "someone@example.com", "", {}))
        journal.flush()
    other.rename(journal_of(plain))  # copied over by hand, say

    line = refused_in_one_line(runner.invoke(app, RUN), "'july-2026'", "'test-campaign'")

    assert "belongs to campaign" in line
    assert smtpd_plain.inbox.messages == []
    refused_in_one_line(runner.invoke(app, STATUS), "'july-2026'")


def test_journal_without_rows_made_by_bulkmail_is_fine(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    with Journal(journal_of(plain)):  # created, then nothing: no rows, no runs
        pass
    with pytest.raises(CampaignError, match="cancelled"):  # a run cancelled at the prompt
        send_campaign(plain.yaml_path, confirm=lambda plan: False)

    result = runner.invoke(app, RUN)

    assert result.exit_code == 0, result.stderr
    assert smtpd_plain.inbox.recipients == [f"reader{i}@example.com" for i in range(5)]


def test_leftover_of_a_creation_cut_short_does_not_count(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    # A process killed while creating the journal leaves a half-made file beside it, never
    # an empty journal in its place.
    folder = plain.campaigns / ".bulkmail"
    folder.mkdir()
    (folder / "test-campaign.sqlite.new").write_bytes(b"")

    assert runner.invoke(app, RUN).exit_code == 0
    assert len(smtpd_plain.inbox.messages) == 5
    assert sorted(p.name for p in folder.iterdir()) == [
        "test-campaign.lock",
        "test-campaign.sqlite",
    ]


def test_error_after_opening_is_a_journal_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = journal_path(tmp_path, "june")
    ann = Recipient(2, "ann@example.com", "", {})
    monkeypatch.setattr(bulkmail.journal.sqlite, "BUSY_TIMEOUT", 0.05, raising=False)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(ann)
        journal.flush()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # someone else holds the write lock
        try:
            with pytest.raises(JournalError) as busy:
                journal.sending(ann, "<a@example.com>")
        finally:
            other.execute("ROLLBACK")
            other.close()
        journal.rollback()
    assert str(busy.value).startswith(f"{path}: ")
    assert "busy" in str(busy.value)
    assert busy.value.exit_code == 4


# --- 3. owner-only files ------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_journal_files_are_owner_only_whatever_the_umask(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    path = journal_path(tmp_path / "campaigns" / ".bulkmail", "june")
    umask(mask)
    with Journal(path) as journal:
        journal.begin_batch()
        journal.plan(Recipient(2, "ann@example.com", "", {}))
        journal.flush()
        files = {p.name: mode(p) for p in path.parent.iterdir()}
        folder = mode(path.parent)

    assert folder == 0o700
    assert files == {
        "june.sqlite": 0o600,
        "june.sqlite-wal": 0o600,
        "june.sqlite-shm": 0o600,
        "june.lock": 0o600,
    }


def test_journal_files_of_an_earlier_version_are_made_owner_only(tmp_path: Path) -> None:
    path = journal_path(tmp_path / ".bulkmail", "june")
    with Journal(path):
        pass
    path.parent.chmod(0o755)
    path.chmod(0o644)
    path.with_suffix(".lock").chmod(0o644)

    with Journal(path):
        assert mode(path) == mode(path.with_suffix(".lock")) == 0o600
        assert mode(path.parent) == 0o700


# --- 4. a journal this user cannot write ---------------------------------------------------------

NOBODY = 65534
PR_CAPBSET_DROP = 24
# What lets root ignore permission bits: without them it is held to them like anyone.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def held_to_permissions() -> Callable[[], None] | None:
    """For a child run as root: drop the capabilities that bypass permission bits.

    They leave root's bounding set, so the program the child executes starts without them
    (and cannot get them back). A non-root user is held to permission bits already.
    """
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def run_cli(c: CampaignDir, *args: str, restricted: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[PASSWORD_ENV] = PASSWORD
    return subprocess.run(
        [sys.executable, "-m", "bulkmail", *args],
        cwd=c.root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=held_to_permissions() if restricted else None,
    )


def refused_by_permissions(c: CampaignDir, *args: str) -> str:
    done = run_cli(c, *args, restricted=True)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    # The journal, or the suppression store beside it (read first, by the build).
    assert line.startswith((f"error: {JOURNAL}: ", f"error: {STORE}: ")), line
    assert "permission denied" in line
    return line


def test_read_only_journal_folder_is_a_one_line_error(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    folder = plain.campaigns / ".bulkmail"
    folder.mkdir()
    folder.chmod(0o500)

    refused_by_permissions(plain, *RUN)

    assert smtpd_plain.inbox.messages == []


def test_read_only_journal_folder_holding_a_journal_is_a_one_line_error(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    first = run_cli(plain, *RUN, "--limit", "2", restricted=False)
    assert first.returncode == 0, first.stderr
    assert len(smtpd_plain.inbox.messages) == 2
    plain.campaigns.joinpath(".bulkmail").chmod(0o500)

    refused_by_permissions(plain, *RUN)

    assert len(smtpd_plain.inbox.messages) == 2


def test_journal_made_by_another_user_is_a_one_line_error(
    plain: CampaignDir, smtpd_plain: Server
) -> None:
    plain.csv(people(3))
    assert run_cli(plain, *RUN, restricted=False).returncode == 0  # the other user's run
    folder = plain.campaigns / ".bulkmail"
    for path in [folder, *folder.iterdir()]:
        if os.geteuid() == 0:
            os.chown(path, NOBODY, NOBODY)
        else:  # no other user to give it to: take write access away instead
            path.chmod(0o500 if path.is_dir() else 0o400)
    plain.csv(people(5))

    line = refused_by_permissions(plain, *RUN)

    if os.geteuid() == 0:
        assert f"belongs to user {NOBODY}" in line or "belongs to user nobody" in line
    assert len(smtpd_plain.inbox.messages) == 3
    refused_by_permissions(plain, *STATUS)


# --- 5. schema 1 -> 2: keys are whole addresses, compared case-insensitively --------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE recipients (
    key TEXT PRIMARY KEY, email TEXT NOT NULL, line INTEGER NOT NULL, fields TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'accepted', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0, code INTEGER, reply TEXT, message_id TEXT,
    first_attempt REAL, updated REAL NOT NULL
);
CREATE INDEX recipients_status ON recipients (status);
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, outcome TEXT);
PRAGMA user_version = 1;
"""


def v1_key(email: str) -> str:
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def make_v1_journal(path: Path, rows: list[tuple[str, int, str, int]]) -> None:
    """A journal as bulkmail 1 wrote it: (email, line, status, attempts) per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    for n, (email, line, status, attempts) in enumerate(rows):
        db.execute(
            "INSERT INTO recipients (key, email, line, fields, status, attempts, code, reply, "
            "message_id, first_attempt, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                v1_key(email),
                email,
                line,
                f'{{"email": "{email}"}}',
                status,
                attempts,
                250 if status == "accepted" else None,
                f"reply {n}",
                f"<{n}@example.com>" if attempts else None,
                1000.0 + n if attempts else None,
                2000.0 + n,
            ),
        )
    db.execute("INSERT INTO meta VALUES ('fingerprint', '{}')")
    db.execute("INSERT INTO runs (started, finished, outcome) VALUES (1000, 1100, 'completed')")
    db.commit()
    db.close()


def whole_address_key(email: str) -> str:
    local, _, domain = email.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


@pytest.fixture
def new_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys as address_key makes them once it compares whole addresses (issue 8)."""
    if address_key("Bob@example.com") != address_key("bob@example.com"):
        monkeypatch.setattr(bulkmail.journal.sqlite, "address_key", whole_address_key)


def test_v1_journal_is_migrated_keeping_the_most_advanced_status(
    tmp_path: Path, new_keys: None
) -> None:
    path = journal_path(tmp_path / ".bulkmail", "june")
    make_v1_journal(
        path,
        [
            ("Bob@example.com", 2, "accepted", 1),  # mailed as Bob@...
            ("bob@example.com", 3, "pending", 0),  # ...so bob@ must not be mailed again
            ("Cleo@Example.org", 4, "failed", 1),
            ("cleo@example.org", 5, "sending", 1),  # in doubt beats failed
            ("CLEO@example.org", 6, "pending", 0),
            ("Dan@example.net", 7, "skipped", 0),
            ("dan@example.net", 8, "pending", 0),  # pending beats skipped
            ("Eve@example.com", 9, "failed", 2),
            ("eve@example.com", 10, "skipped", 0),
            ("Flo@Example.com", 11, "accepted", 1),  # alone: only its key changes
        ],
    )

    with Journal(path) as journal:
        rows = {e.key: e for e in journal.entries()}
        assert journal.get_meta("campaign") == "june"
        assert journal.get_meta("fingerprint") == "{}"
        assert journal.summary().runs == 1

    assert {key: (e.email, e.status, e.attempts) for key, e in rows.items()} == {
        "bob@example.com": ("Bob@example.com", Status.ACCEPTED, 1),
        "cleo@example.org": ("cleo@example.org", Status.SENDING, 2),
        "dan@example.net": ("dan@example.net", Status.PENDING, 0),
        "eve@example.com": ("Eve@example.com", Status.FAILED, 2),
        "flo@example.com": ("Flo@Example.com", Status.ACCEPTED, 1),
    }
    bob = rows["bob@example.com"]
    assert (bob.code, bob.reply, bob.message_id) == (250, "reply 0", "<0@example.com>")
    assert rows["cleo@example.org"].first_attempt == 1002.0  # the earliest attempt
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_migrated_keys_follow_address_key(tmp_path: Path) -> None:
    path = journal_path(tmp_path / ".bulkmail", "june")
    emails = ["Ann@Example.COM", "bob@example.org", "Chloé@Bücher.example"]
    make_v1_journal(path, [(e, n + 2, "accepted", 1) for n, e in enumerate(emails)])

    with Journal(path) as journal:
        assert sorted(e.key for e in journal.entries()) == sorted(address_key(e) for e in emails)
        for email in emails:
            found = journal.status_of(address_key(email))
            assert found is not None
            assert found.status is Status.ACCEPTED


def test_failed_migration_leaves_the_v1_journal_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = journal_path(tmp_path / ".bulkmail", "june")
    make_v1_journal(path, [("ann@example.com", 2, "accepted", 1)])

    def broken(email: str) -> str:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(bulkmail.journal.sqlite, "address_key", broken)
    with pytest.raises(JournalError, match="disk I/O error"):
        Journal(path).open()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("SELECT key, status FROM recipients").fetchall() == [
            ("ann@example.com", "accepted")
        ]
    db.close()
