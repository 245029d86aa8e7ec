"""The SQLite journal of a campaign: each recipient's outcome, so a rerun resumes safely.

One file per campaign, ``<campaign folder>/.bulkmail/<name>.sqlite``, in WAL mode with
``synchronous=FULL``: every commit is synced to disk before it returns. A recipient is
marked ``sending`` and committed before the message is handed to the server, and its
outcome is committed together with the next mark (one commit, one sync, per mail;
`flush` commits the last one). A send marks each mail while the server reads the one
before (`bulkmail.send._Upcoming`), so a crash or a power cut leaves at most two
neighbouring recipients in doubt.

The journal is the only record of who was mailed, so a file that cannot be trusted is
refused (`JournalError`, exit 4) and never read as "nobody was mailed": an empty file,
damaged pages (``PRAGMA quick_check`` at open), an SQLite file bulkmail did not make, or
the journal of another campaign (each journal names its campaign in ``meta``). A new
journal is built beside its place and moved there complete, so bulkmail itself never
leaves an empty or half-made journal behind. The folder is 0700 and the files 0600
(they hold the list), whatever the umask. Every sqlite3 error becomes a JournalError
naming the file.

A second process running the same campaign is refused by an OS file lock, which the kernel
releases when the process dies, so no stale lock is ever left behind.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import filelock

from bulkmail.errors import JournalError, Location, display_path
from bulkmail.journal.records import FEEDBACK, Entry, Summary, entry_from_row
from bulkmail.models import Recipient, Status, address_key
from bulkmail.opening import Opened
from bulkmail.owner_only import database_files, sync_folder, tighten, user_name

# 2: keys compare whole addresses case-insensitively; meta names the campaign.
# 3: each row's envelope sender, and what came back (bounced, complained, unsubscribed).
SCHEMA_VERSION = 3
BUSY_TIMEOUT = 10.0  # seconds to wait while another connection (a `status`) holds the file
_TABLES = [
    """CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                -- 'campaign': its name; 'fingerprint': the content
)""",
    """CREATE TABLE recipients (
    key TEXT PRIMARY KEY,              -- models.address_key of the address
    email TEXT NOT NULL,
    line INTEGER NOT NULL,             -- CSV line, as of the latest run
    fields TEXT NOT NULL,              -- the CSV row as JSON, for --failed-csv
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'accepted', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    code INTEGER,                      -- the server's last reply code
    reply TEXT,                        -- ... and text, or why it was skipped
    message_id TEXT,
    first_attempt REAL,
    updated REAL NOT NULL,
    envelope_from TEXT,                -- MAIL FROM: the VERP address, with return_path
    feedback TEXT,                     -- what came back: FEEDBACK below
    feedback_detail TEXT,              -- ... its status code and diagnostic, or report
    feedback_at REAL
)""",
    "CREATE INDEX recipients_status ON recipients (status)",
    "CREATE INDEX recipients_message_id ON recipients (message_id)",
    """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT                       -- completed | interrupted | stopped: <why>
)""",
]
_TABLE_NAMES = {"meta", "recipients", "runs"}
_SCHEMA_3 = [
    "ALTER TABLE recipients ADD COLUMN envelope_from TEXT",
    "ALTER TABLE recipients ADD COLUMN feedback TEXT",
    "ALTER TABLE recipients ADD COLUMN feedback_detail TEXT",
    "ALTER TABLE recipients ADD COLUMN feedback_at REAL",
    "CREATE INDEX recipients_message_id ON recipients (message_id)",
]
# When rows merge (two spellings of one address), the one that got furthest wins: nobody
# already mailed, or perhaps mailed, is mailed again.
_PRECEDENCE = {
    Status.ACCEPTED: 4,
    Status.SENDING: 3,
    Status.FAILED: 2,
    Status.PENDING: 1,
    Status.SKIPPED: 0,
}
_UNTRUSTED = "restore it from a backup, or delete it only if no mail of this campaign was ever sent"
# Primary SQLite result codes (the low byte of sqlite_errorcode).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = (
    3, 5, 6, 8, 10, 11, 13, 14, 26,
)  # fmt: skip

P = ParamSpec("P")
R = TypeVar("R")


def journal_path(journal_dir: Path, name: str) -> Path:
    """Where the journal of the campaign called ``name`` lives."""
    return journal_dir / f"{name}.sqlite"


def journal_exists(path: Path) -> bool:
    """Whether a journal is there; a JournalError if this user may not even look."""
    try:
        return path.exists()
    except OSError as exc:
        raise _os_error(path, exc, "cannot look for the journal") from None


def _translated(
    method: Callable[Concatenate[Journal, P], R],
) -> Callable[Concatenate[Journal, P], R]:
    """Turn any sqlite3 error of ``method`` into a JournalError naming the file."""

    @functools.wraps(method)
    def wrapper(journal: Journal, /, *args: P.args, **kwargs: P.kwargs) -> R:
        journal.settle()  # a mark's commit still in flight is finished first
        try:
            return method(journal, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _sqlite_error(journal.path, exc) from exc

    return wrapper


class Journal(Opened):
    """A campaign's journal, opened (and locked) for one run, or read-only for status.

    ``campaign`` is the name stored in a new journal and required of an existing one; by
    default the name `journal_path` made the file's name from.
    """

    def __init__(self, path: Path, *, lock: bool = True, campaign: str | None = None) -> None:
        self.path = path
        self.campaign = path.stem if campaign is None else campaign
        self._lock = (
            filelock.FileLock(str(self._lock_path), mode=0o600, timeout=0) if lock else None
        )
        self._db: sqlite3.Connection | None = None
        self._run_id: int | None = None
        # The commit of a mark made with durable=False, running in `_committer`'s thread.
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._commit: concurrent.futures.Future[None] | None = None

    @property
    def where(self) -> str:
        """The journal's file, as messages name it."""
        return display_path(self.path)

    @property
    def _lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def _files(self) -> list[Path]:
        """The journal, its WAL and shared-memory files, and the lock."""
        return [*database_files(self.path), self._lock_path]

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the journal; refuse if another run holds it or it can't be trusted."""
        self._make_folder()
        self._acquire()
        try:
            self._connect()
            self._check_and_migrate()
            for path in self._files():
                tighten(path)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, sqlite3.Error):
                raise _sqlite_error(self.path, exc) from exc
            if isinstance(exc, OSError):
                raise _os_error(self.path, exc, "cannot open the journal") from exc
            raise

    def _make_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True)
            folder.chmod(0o700)  # the umask may have taken the owner's own bits
        except FileExistsError:
            tighten(folder)
        except OSError as exc:
            raise _os_error(self.path, exc, "cannot create the journal's folder") from None

    def _acquire(self) -> None:
        if self._lock is None:
            return
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise JournalError(
                "another bulkmail run of this campaign is in progress; wait for it to "
                "finish (or stop it) before starting again",
                where=Location(self.path),
            ) from None
        except OSError as exc:
            raise _os_error(self.path, exc, "cannot lock the journal") from None

    def _connect(self) -> None:
        if not self.path.exists():
            if self._lock is None:  # only a run, holding the lock, makes a journal
                raise JournalError("there is no journal yet", where=Location(self.path))
            self._create()
        if self.path.stat().st_size == 0:
            raise JournalError(
                f"the journal is empty (0 bytes), so it cannot tell who was already "
                f"mailed; {_UNTRUSTED}",
                where=Location(self.path),
            )
        if not os.access(self.path, os.R_OK | os.W_OK):
            # SQLite would open it read-only without a word and fail at the first write.
            raise _permission_denied(self.path)
        self._db = _connect(self.path)

    def _create(self) -> None:
        """Build a new journal beside its place, then move it there complete.

        So a journal file that exists was finished by bulkmail and names its campaign:
        an empty or foreign file is never mistaken for a new journal.
        """
        new = self.path.with_name(self.path.name + ".new")
        for leftover in database_files(new):  # of a creation cut short
            leftover.unlink(missing_ok=True)
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: the WAL and SHM files copy this mode
        finally:
            os.close(fd)
        db = _connect(new)
        try:
            db.execute("BEGIN")
            for statement in _TABLES:
                db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('campaign', ?)", (self.campaign,))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        finally:
            db.close()  # checkpoints the WAL into the file and removes it
        os.replace(new, self.path)
        sync_folder(self.path.parent)

    def _check_and_migrate(self) -> None:
        db = self._conn
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            detail = " ".join(str(problem).replace("*** in database main ***", "").split())
            raise JournalError(
                f"the journal is damaged ({detail}); {_UNTRUSTED}", where=Location(self.path)
            )
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"this journal was written by a newer bulkmail (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade bulkmail",
                where=Location(self.path),
            )
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if version == 0 or _TABLE_NAMES - tables:
            raise JournalError(
                f"this file is not a bulkmail journal; {_UNTRUSTED}", where=Location(self.path)
            )
        db.execute("PRAGMA journal_mode=WAL")
        if version == 1:
            self._migrate_from_1()
        if version <= 2:
            self._migrate_to_3()
        named = self.get_meta("campaign")
        if named is None:
            raise JournalError(
                f"this journal names no campaign: it is damaged, or not a bulkmail journal; "
                f"{_UNTRUSTED}",
                where=Location(self.path),
            )
        if named != self.campaign:
            raise JournalError(
                f"this journal belongs to campaign {named!r}, not {self.campaign!r}; put "
                f"{self.campaign!r}'s own journal back (from a backup), or delete this file "
                f"only if no mail of {self.campaign!r} was ever sent",
                where=Location(self.path),
            )

    def _migrate_from_1(self) -> None:
        """Schema 1 keyed recipients by address with only the domain lower-cased.

        Every key is recomputed with `address_key`; rows that now share a key merge into
        the one that got furthest, with the attempts of all, so that nobody already
        mailed is mailed again. The journal gets the campaign's name.
        """
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        merged: dict[str, list[Any]] = {}
        for row in db.execute(f"SELECT {_COLUMNS} FROM recipients").fetchall():
            values = list(row)
            key = values[0] = address_key(str(row[1]))
            kept = merged.get(key)
            if kept is None:
                merged[key] = values
                continue
            attempts = kept[5] + values[5]
            firsts = [t for t in (kept[9], values[9]) if t is not None]
            if _rank(values) > _rank(kept):
                merged[key] = kept = values
            kept[5], kept[9] = attempts, min(firsts, default=None)
        db.execute("DELETE FROM recipients")
        db.executemany(
            f"INSERT INTO recipients ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",
            merged.values(),
        )
        db.execute("INSERT INTO meta (key, value) VALUES ('campaign', ?)", (self.campaign,))
        db.execute("PRAGMA user_version = 2")
        db.execute("COMMIT")

    def _migrate_to_3(self) -> None:
        """Schema 3 adds columns (empty for the rows of earlier runs) and an index."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA_3:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the journal is not open")
        return self._db

    def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        db = self._db
        try:
            self.settle()  # a mark's commit in flight: finished, or its error raised
        finally:
            self._stop_committer()
            self._db = None
            self._close(db)

    def _close(self, db: sqlite3.Connection | None) -> None:
        try:
            if db is not None:
                try:
                    if db.in_transaction:
                        db.execute("COMMIT")
                finally:
                    db.close()
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) from exc
        finally:
            self._release()

    def _stop_committer(self) -> None:
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.shutdown(wait=True)

    def _discard(self) -> None:
        """Close without committing, and release the lock: an open that was refused or
        failed keeps nothing of a migration cut half-way, and blocks no later run."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()

    # --- campaign-wide facts -------------------------------------------------------------

    @_translated
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_translated
    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @_translated
    def start_run(self) -> None:
        cursor = self._conn.execute("INSERT INTO runs (started) VALUES (?)", (time.time(),))
        self._run_id = cursor.lastrowid

    @_translated
    def finish_run(self, outcome: str) -> None:
        if self._run_id is not None:
            self._conn.execute(
                "UPDATE runs SET finished = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, self._run_id),
            )
            self.flush()

    # --- recipients ----------------------------------------------------------------------

    @_translated
    def plan(self, recipient: Recipient, status: Status = Status.PENDING, reply: str = "") -> Entry:
        """Note a recipient of the list (pending, or skipped with why); keep a known outcome.
        Returns the row as it now stands (one statement).

        Call between `begin_batch` and `flush`: planning a whole list is one transaction.
        """
        fields = json.dumps(dict(recipient.fields), ensure_ascii=False)
        now = time.time()
        found = self._conn.execute(
            "INSERT INTO recipients (key, email, line, fields, status, reply, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET line = excluded.line, fields = excluded.fields, "
            # a row that is skipped now (suppressed since) stays skipped unless it was mailed
            "status = CASE WHEN excluded.status = 'skipped' AND status IN ('pending', 'skipped') "
            "THEN 'skipped' WHEN status = 'skipped' THEN 'pending' ELSE status END, "
            "reply = CASE WHEN excluded.status = 'skipped' AND status IN ('pending', 'skipped') "
            "THEN excluded.reply WHEN status = 'skipped' THEN NULL ELSE reply END "
            f"RETURNING {_ALL}",
            (recipient.key, recipient.email, recipient.line, fields, status.value, reply, now),
        ).fetchone()
        return entry_from_row(found)

    def plan_many(self, recipients: Sequence[Recipient]) -> list[Entry]:
        """`plan` for each of ``recipients`` (pending): the file is local, one at a time
        costs nothing more."""
        return [self.plan(recipient) for recipient in recipients]

    @_translated
    def begin_batch(self) -> None:
        """Start a transaction that `flush` (or the next `sending`) commits."""
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    @_translated
    def status_of(self, key: str) -> Entry | None:
        row = self._conn.execute(f"SELECT {_ALL} FROM recipients WHERE key = ?", (key,))
        found = row.fetchone()
        return None if found is None else entry_from_row(found)

    @_translated
    def sending(
        self,
        recipient: Recipient,
        message_id: str,
        envelope_from: str | None = None,
        *,
        durable: bool = True,
    ) -> bool:
        """Mark a recipient as being sent, and commit (with any outcome recorded before).

        The commit is synced to disk before this returns: only then may the message go.
        ``durable=False``: the commit (its wait for the disk) goes on in another thread
        and this returns at once; `settle` waits for it, and must return before the
        message is handed over (the SMTP transport calls it before DATA, so the sync
        overlaps MAIL FROM and RCPT TO). Any other use of the journal settles first.
        True: one run holds the file, so the row is always this run's to send.
        """
        self.begin_batch()
        now = time.time()
        self._conn.execute(
            "UPDATE recipients SET status = 'sending', attempts = attempts + 1, "
            "message_id = ?, envelope_from = ?, first_attempt = COALESCE(first_attempt, ?), "
            "updated = ? WHERE key = ?",
            (message_id, envelope_from, now, now, recipient.key),
        )
        if durable:
            _commit(self._conn)
            return True
        if self._committer is None:
            self._committer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="journal-commit"
            )
        self._commit = self._committer.submit(_commit, self._conn)
        return True

    def settle(self) -> None:
        """Wait until a mark made with ``durable=False`` is on disk; a JournalError if its
        commit failed (then nothing of the mark or the outcomes before it was kept)."""
        commit, self._commit = self._commit, None
        if commit is None:
            return
        try:
            commit.result()
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) from exc

    @_translated
    def outcome(self, recipient: Recipient, status: Status, code: int | None, reply: str) -> None:
        """Record the server's answer; committed with the next mail's mark or by `flush`."""
        self.begin_batch()
        self._conn.execute(
            "UPDATE recipients SET status = ?, code = ?, reply = ?, updated = ? WHERE key = ?",
            (status.value, code, reply, time.time(), recipient.key),
        )

    @_translated
    def unmark(self, recipient: Recipient, status: Status) -> None:
        """Undo `sending` (back to ``status``): the mail was not handed over after all.

        Committed with the next mark or by `flush`; the attempt stays counted.
        """
        self.begin_batch()
        self._conn.execute(
            "UPDATE recipients SET status = ?, updated = ? WHERE key = ? AND status = 'sending'",
            (status.value, time.time(), recipient.key),
        )

    @_translated
    def rollback(self) -> None:
        """Forget everything since the last commit."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    @_translated
    def anything_sent(self) -> bool:
        """Whether any recipient was ever handed to the server."""
        row = self._conn.execute(
            "SELECT 1 FROM recipients WHERE status IN ('sending', 'accepted', 'failed') LIMIT 1"
        ).fetchone()
        return row is not None

    @_translated
    def flush(self) -> None:
        """Commit every outcome recorded so far."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    @_translated
    def entry_at_line(self, line: int) -> Entry | None:
        """The row of CSV line ``line`` (as of the latest run)."""
        found = self._conn.execute(
            f"SELECT {_ALL} FROM recipients WHERE line = ? LIMIT 1", (line,)
        ).fetchone()
        return None if found is None else entry_from_row(found)

    @_translated
    def entry_for_message(self, message_id: str) -> Entry | None:
        """The row whose mail had this Message-ID (``<...>``, compared as written)."""
        found = self._conn.execute(
            f"SELECT {_ALL} FROM recipients WHERE message_id = ? LIMIT 1", (message_id,)
        ).fetchone()
        return None if found is None else entry_from_row(found)

    @_translated
    def note_feedback(self, key: str, feedback: str, detail: str) -> bool:
        """Record what came back for a row's mail (one of FEEDBACK), unless something
        stronger came back before; committed at once. False if there is no such row.

        Meant for `bulkmail inbox`, which may run while a send writes the journal: the
        write lock is taken first, so the row read is the row updated.
        """
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
        row = self._conn.execute("SELECT feedback FROM recipients WHERE key = ?", (key,))
        found = row.fetchone()
        if found is not None and (
            found[0] is None or FEEDBACK.index(found[0]) <= FEEDBACK.index(feedback)
        ):
            self._conn.execute(
                "UPDATE recipients SET feedback = ?, feedback_detail = ?, feedback_at = ? "
                "WHERE key = ?",
                (feedback, detail, time.time(), key),
            )
        self._conn.execute("COMMIT")
        return found is not None

    def entries(self, *statuses: Status) -> Iterator[Entry]:
        """Recipients with one of ``statuses`` (all if none), in list order."""
        self.settle()
        query = f"SELECT {_ALL} FROM recipients"
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
        try:
            for row in self._conn.execute(query + " ORDER BY line", [s.value for s in statuses]):
                yield entry_from_row(row)
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) from exc

    @_translated
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
        feedback = dict.fromkeys(FEEDBACK, 0)
        for kind, count in db.execute(
            "SELECT feedback, COUNT(*) FROM recipients WHERE feedback IS NOT NULL GROUP BY 1"
        ):
            feedback[str(kind)] = count
        return Summary(counts, runs, started, last, rate, feedback)


# --- the file and its errors -------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: a mark's commit may run in another thread (`sending` with
    # durable=False), never while this one uses the connection (`settle` comes first).
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    # Every commit synced to disk (the WAL, at each commit) before it returns: a power cut
    # loses no committed mark. fullfsync: where fsync alone stops at the drive's cache (macOS).
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA fullfsync=ON")
    return db


def _commit(db: sqlite3.Connection) -> None:
    db.execute("COMMIT")


def _rank(values: list[Any]) -> tuple[int, float]:
    return _PRECEDENCE[Status(values[4])], float(values[10])


def _permission_denied(path: Path) -> JournalError:
    """Say which of the journal's folder and files this user cannot use, and whose it is."""
    for place in [path.parent, *database_files(path), path.with_suffix(".lock")]:
        try:
            info = place.stat()
        except OSError:
            continue  # missing, or inside a folder found below (or above) already
        wanted = os.R_OK | os.W_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)
        if os.access(place, wanted):
            continue
        if info.st_uid != os.geteuid():
            return JournalError(
                f"permission denied: {display_path(place)} belongs to user "
                f"{user_name(info.st_uid)}; run bulkmail as that user",
                where=Location(path),
            )
        return JournalError(
            f"permission denied: {display_path(place)} is read-only; make it writable "
            "(chmod u+w) and rerun",
            where=Location(path),
        )
    return JournalError("permission denied", where=Location(path))


def _os_error(path: Path, exc: OSError, doing: str) -> JournalError:
    if isinstance(exc, PermissionError):
        return _permission_denied(path)
    return JournalError(f"{doing}: {exc.strerror or exc}", where=Location(path))


def _sqlite_error(path: Path, exc: sqlite3.Error) -> JournalError:
    """A JournalError naming the file, saying what went wrong and what to do."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_CORRUPT, _NOTADB):
        message = (
            f"cannot use the journal: {exc}: it is damaged, or not a bulkmail journal; {_UNTRUSTED}"
        )
    elif code in (_PERM, _READONLY, _CANTOPEN):
        denied = _permission_denied(path)
        if denied.message != "permission denied":
            return denied
        message = f"cannot use the journal: {exc}"
    elif code in (_BUSY, _LOCKED):
        message = (
            f"the journal is busy ({exc}): another program has held it for "
            f"{BUSY_TIMEOUT:g} s; rerun when it is done"
        )
    elif code == _FULL:
        message = f"cannot write the journal: {exc}; free some space and rerun"
    else:
        message = f"cannot use the journal: {exc}"
    return JournalError(message, where=Location(path))


_COLUMNS = (
    "key, email, line, fields, status, attempts, code, reply, message_id, first_attempt, updated"
)
_COLUMNS_3 = "envelope_from, feedback, feedback_detail"
_ALL = f"{_COLUMNS}, {_COLUMNS_3}"
