"""The SQLite journal of a campaign: each recipient's outcome, so a rerun resumes safely.

One file per campaign, ``<campaign folder>/.bulkmail/<name>.sqlite``, in WAL mode. A
recipient is marked ``sending`` and committed before the message is handed to the server,
and its outcome is recorded right after the reply, so a crash leaves at most one recipient
in doubt. Outcomes are committed together with the next ``sending`` mark (one commit per
mail); `flush` commits the last one.

A second process running the same campaign is refused by an OS file lock, which the kernel
releases when the process dies, so no stale lock is ever left behind.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from bulkmail.errors import JournalError, Location
from bulkmail.models import Recipient, Status
from bulkmail.opening import Opened

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    key TEXT PRIMARY KEY,              -- the address, domain lower-cased
    email TEXT NOT NULL,
    line INTEGER NOT NULL,             -- CSV line, as of the latest run
    fields TEXT NOT NULL,              -- the CSV row as JSON, for --failed-csv
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'accepted', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    code INTEGER,                      -- the server's last reply code
    reply TEXT,                        -- ... and text, or why it was skipped
    message_id TEXT,
    first_attempt REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_status ON recipients (status);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT                       -- completed | interrupted | stopped: <why>
);
"""


@dataclass(frozen=True)
class Entry:
    """One recipient's row in the journal."""

    key: str
    email: str
    line: int
    fields: dict[str, str]
    status: Status
    attempts: int
    code: int | None
    reply: str | None
    message_id: str | None
    first_attempt: float | None
    updated: float


@dataclass(frozen=True)
class Summary:
    """Counts per status and the timing of the campaign's runs."""

    counts: dict[Status, int]
    runs: int
    started: float | None
    last_sent: float | None
    rate: float | None  # accepted mails per second while runs were going

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def journal_path(journal_dir: Path, name: str) -> Path:
    """Where the journal of the campaign called ``name`` lives."""
    return journal_dir / f"{name}.sqlite"


class Journal(Opened):
    """A campaign's journal, opened (and locked) for one run, or read-only for status."""

    def __init__(self, path: Path, *, lock: bool = True) -> None:
        self.path = path
        self._lock = filelock.FileLock(str(path.with_suffix(".lock"))) if lock else None
        self._db: sqlite3.Connection | None = None
        self._run_id: int | None = None

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the journal; refuse if another run of this campaign holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal's folder: {exc.strerror}", where=Location(self.path)
            ) from None
        if self._lock is not None:
            try:
                self._lock.acquire(timeout=0)
            except filelock.Timeout:
                raise JournalError(
                    "another bulkmail run of this campaign is in progress; wait for it to "
                    "finish (or stop it) before starting again",
                    where=Location(self.path),
                ) from None
        try:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException as exc:
            # Refused (newer schema) or unusable: release the lock at once, and keep
            # nothing of a migration that failed half-way.
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise JournalError(
                    f"cannot use the journal: {exc}", where=Location(self.path)
                ) from exc
            raise

    def _migrate(self) -> None:
        db = self._conn
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"this journal was written by a newer bulkmail (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade bulkmail",
                where=Location(self.path),
            )
        if version < SCHEMA_VERSION:
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the journal is not open")
        return self._db

    def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        if self._db is not None:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.close()
            self._db = None
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()

    # --- campaign-wide facts -------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def start_run(self) -> None:
        cursor = self._write("INSERT INTO runs (started) VALUES (?)", (time.time(),))
        self._run_id = cursor.lastrowid

    def finish_run(self, outcome: str) -> None:
        if self._run_id is not None:
            self._write(
                "UPDATE runs SET finished = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, self._run_id),
            )
            self.flush()

    # --- recipients ----------------------------------------------------------------------

    def plan(self, recipient: Recipient, status: Status = Status.PENDING, reply: str = "") -> None:
        """Note a recipient of the list (pending, or skipped with why); keep a known outcome.

        Call between `begin_batch` and `flush`: planning a whole list is one transaction.
        """
        fields = json.dumps(dict(recipient.fields), ensure_ascii=False)
        now = time.time()
        self._write(
            "INSERT INTO recipients (key, email, line, fields, status, reply, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET line = excluded.line, fields = excluded.fields, "
            # a row that is skipped now (suppressed since) stays skipped unless it was mailed
            "status = CASE WHEN excluded.status = 'skipped' AND status IN ('pending', 'skipped') "
            "THEN 'skipped' WHEN status = 'skipped' THEN 'pending' ELSE status END, "
            "reply = CASE WHEN excluded.status = 'skipped' AND status IN ('pending', 'skipped') "
            "THEN excluded.reply WHEN status = 'skipped' THEN NULL ELSE reply END",
            (recipient.key, recipient.email, recipient.line, fields, status.value, reply, now),
        )

    def begin_batch(self) -> None:
        """Start a transaction that `flush` (or the next `sending`) commits."""
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def status_of(self, key: str) -> Entry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM recipients WHERE key = ?", (key,))
        found = row.fetchone()
        return None if found is None else _entry(found)

    def sending(self, recipient: Recipient, message_id: str) -> None:
        """Mark a recipient as being sent, and commit (with any outcome recorded before)."""
        self.begin_batch()
        now = time.time()
        self._conn.execute(
            "UPDATE recipients SET status = 'sending', attempts = attempts + 1, "
            "message_id = ?, first_attempt = COALESCE(first_attempt, ?), updated = ? "
            "WHERE key = ?",
            (message_id, now, now, recipient.key),
        )
        self._conn.execute("COMMIT")

    def outcome(self, recipient: Recipient, status: Status, code: int | None, reply: str) -> None:
        """Record the server's answer; committed with the next mail's mark or by `flush`."""
        self.begin_batch()
        self._conn.execute(
            "UPDATE recipients SET status = ?, code = ?, reply = ?, updated = ? WHERE key = ?",
            (status.value, code, reply, time.time(), recipient.key),
        )

    def unmark(self, recipient: Recipient, status: Status) -> None:
        """Undo `sending` (back to ``status``): the mail was not handed over after all.

        Committed with the next mark or by `flush`; the attempt stays counted.
        """
        self.begin_batch()
        self._conn.execute(
            "UPDATE recipients SET status = ?, updated = ? WHERE key = ? AND status = 'sending'",
            (status.value, time.time(), recipient.key),
        )

    def rollback(self) -> None:
        """Forget everything since the last commit."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def anything_sent(self) -> bool:
        """Whether any recipient was ever handed to the server."""
        row = self._conn.execute(
            "SELECT 1 FROM recipients WHERE status IN ('sending', 'accepted', 'failed') LIMIT 1"
        ).fetchone()
        return row is not None

    def flush(self) -> None:
        """Commit every outcome recorded so far."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def entries(self, *statuses: Status) -> Iterator[Entry]:
        """Recipients with one of ``statuses`` (all if none), in list order."""
        query = f"SELECT {_COLUMNS} FROM recipients"
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
        for row in self._conn.execute(query + " ORDER BY line", [s.value for s in statuses]):
            yield _entry(row)

    def summary(self) -> Summary:
        db = self._conn
        counts = dict.fromkeys(Status, 0)
        for status, count in db.execute("SELECT status, COUNT(*) FROM recipients GROUP BY 1"):
            counts[Status(status)] = count
        runs, started = db.execute("SELECT COUNT(*), MIN(started) FROM runs").fetchone()
        last = db.execute(
            "SELECT MAX(updated) FROM recipients WHERE status = 'accepted'"
        ).fetchone()[0]
        # A run that never finished (killed) lasted until its last journaled mail: the
        # last update before the next run began.
        busy = db.execute(
            "SELECT SUM(COALESCE(r.finished, ("
            "  SELECT MAX(x.updated) FROM recipients AS x WHERE x.updated >= r.started"
            "  AND NOT EXISTS (SELECT 1 FROM runs AS n"
            "                  WHERE n.started > r.started AND n.started <= x.updated)"
            "), r.started) - r.started) FROM runs AS r"
        ).fetchone()[0]
        rate = counts[Status.ACCEPTED] / busy if busy and counts[Status.ACCEPTED] else None
        return Summary(counts, runs, started, last, rate)

    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise JournalError(
                f"cannot write the journal: {exc}", where=Location(self.path)
            ) from exc


_COLUMNS = (
    "key, email, line, fields, status, attempts, code, reply, message_id, first_attempt, updated"
)


def _entry(row: tuple[Any, ...]) -> Entry:
    key, email, line, fields, status, attempts, code, reply, message_id, first, updated = row
    return Entry(
        key=str(key),
        email=str(email),
        line=int(line),
        fields=json.loads(str(fields)),
        status=Status(status),
        attempts=int(attempts),
        code=code,
        reply=reply,
        message_id=message_id,
        first_attempt=first,
        updated=float(updated),
    )
