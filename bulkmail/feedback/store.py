"""The suppression store: the addresses no campaign that names it mails again, and why.

One SQLite file shared by every campaign that names it (by default the one in the campaign
folder's ``.bulkmail``), opened by a run to skip what it holds and by `bulkmail inbox` to
fill it. Like the journal (journal/sqlite.py) it is in WAL mode with ``synchronous=FULL``
(every commit synced before it returns), its folder 0700 and its files 0600 whatever the
umask (they hold addresses), and a file that cannot be trusted is refused (`StoreError`,
exit 4), never read as "nobody is suppressed": an empty file, damaged pages, an SQLite
file bulkmail did not make, a campaign journal (``meta`` names each file's kind), or a
store from a newer bulkmail. A new store is built beside its place and linked there
complete, so two processes creating it at once end with the same one.

There is no lock: several runs may read the store while `inbox` writes to it (WAL lets
readers go on during a write). Each write commits on its own, or inside `transaction`,
which is how `inbox` makes handling one message atomic::

    if not store.processed(mailbox, uid):            # cheap, takes no write lock
        with store.transaction():                    # one commit, or nothing at all
            if store.mark_processed(mailbox, uid, kind):   # False: another run was first
                store.add(address, "hard_bounce", campaign="june", detail="550 5.1.1 ...")

So a crash (or a kill) at any point either keeps both the suppression and the note that
the message was handled, or neither: the next run handles the message again, once.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TextIO, TypeVar, cast

from bulkmail.errors import JournalError, Location, display_path
from bulkmail.models import SuppressionReason, address_key
from bulkmail.opening import Opened
from bulkmail.owner_only import database_files, place_once, sync_folder, tighten, user_name

SCHEMA_VERSION = 1
KIND = "suppressions"  # meta 'kind': what tells a store from a journal or another database
BUSY_TIMEOUT = 10.0  # seconds to wait while another process writes
_TABLES = [
    """CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                -- 'kind': 'suppressions'
)""",
    """CREATE TABLE suppressions (
    key TEXT PRIMARY KEY,              -- models.address_key of the address
    email TEXT NOT NULL,               -- as it was first given
    reason TEXT NOT NULL CHECK (reason IN
        ('hard_bounce', 'soft_bounces', 'complaint', 'unsubscribe', 'manual')),
    campaign TEXT,                     -- the campaign whose mail it was about, if any
    detail TEXT NOT NULL,              -- the server's diagnostic, the feedback report...
    added REAL NOT NULL                -- unix time
)""",
    "CREATE INDEX suppressions_added ON suppressions (added, email)",
    """CREATE TABLE soft_bounces (      -- the current streak of each address not suppressed
    key TEXT NOT NULL,
    campaign TEXT NOT NULL,
    detail TEXT NOT NULL,              -- the latest diagnostic for that campaign's mail
    added REAL NOT NULL,
    PRIMARY KEY (key, campaign)
)""",
    """CREATE TABLE processed (         -- messages of a mailbox already handled
    mailbox TEXT NOT NULL,             -- InboxSettings.identity
    uid TEXT NOT NULL,                 -- IMAP UIDVALIDITY/UID, POP3 UIDL
    kind TEXT NOT NULL,                -- what it was found to be (models.FeedbackKind)
    handled REAL NOT NULL,
    PRIMARY KEY (mailbox, uid)
)""",
]
_TABLE_NAMES = {"meta", "suppressions", "soft_bounces", "processed"}
_UNTRUSTED = (
    "restore it from a backup, or delete it to start an empty list (everyone on it would "
    "be mailed again)"
)
# Primary SQLite result codes (the low byte of sqlite_errorcode).
_PERM, _BUSY, _LOCKED, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = (
    3, 5, 6, 8, 11, 13, 14, 26,
)  # fmt: skip
# What a spreadsheet takes for the start of a formula (OWASP's CSV injection list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

P = ParamSpec("P")
R = TypeVar("R")


class StoreError(JournalError):
    """The suppression store cannot be opened or written: damaged, foreign, busy, not
    ours, or from a newer bulkmail. A JournalError: one line, exit 4."""


@dataclass(frozen=True)
class Suppression:
    """One suppressed address: why, since when, and after which campaign's mail."""

    email: str
    reason: SuppressionReason
    campaign: str | None
    detail: str
    added: float  # unix time


def _translated(
    method: Callable[Concatenate[SuppressionStore, P], R],
) -> Callable[Concatenate[SuppressionStore, P], R]:
    """Turn any sqlite3 error of ``method`` into a StoreError naming the file."""

    @functools.wraps(method)
    def wrapper(store: SuppressionStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(store, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _sqlite_error(store.path, exc) from exc

    return wrapper


class SuppressionStore(Opened):
    """The suppression store at ``path``, used inside ``with``.

    ``create=False`` is for commands that only look (check, preview, status, list): a
    missing file reads as an empty store and nothing is created; writing raises
    RuntimeError. An existing file is checked the same way either way.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.create = create
        self._db: sqlite3.Connection | None = None
        self._in_transaction = False

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store (creating it if allowed); refuse a file that can't be trusted."""
        try:
            if not self._exists():
                if not self.create:
                    return
                self._make_folder()
                self._create()
            self._connect()
            self._check()
            for path in [self.path.parent, *database_files(self.path)]:
                tighten(path)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, sqlite3.Error):
                raise _sqlite_error(self.path, exc) from exc
            if isinstance(exc, OSError):
                raise _os_error(self.path, exc, "cannot open the suppression store") from exc
            raise

    def _exists(self) -> bool:
        try:
            return self.path.exists()
        except OSError as exc:
            raise _os_error(self.path, exc, "cannot look for the suppression store") from None

    def _make_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True)
            folder.chmod(0o700)  # the umask may have taken the owner's own bits
        except FileExistsError:
            return  # an existing folder is used as it is
        except OSError as exc:
            raise _os_error(self.path, exc, "cannot create the store's folder") from None

    def _create(self) -> None:
        """Build a new store beside its place, then link it there complete.

        A link never replaces a file: when two processes create the store at once, the
        second one's link fails and it uses the first one's. So a store file that exists
        was finished by bulkmail, and nothing written to it is ever lost to a rival.
        """
        _remove_leftovers(self.path)
        new = self.path.with_name(f"{self.path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: the WAL and SHM files copy this mode
        finally:
            os.close(fd)
        try:
            db = _connect(new)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("BEGIN")
                for statement in _TABLES:
                    db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('kind', ?)", (KIND,))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            finally:
                db.close()  # checkpoints the WAL into the file and removes it
            place_once(new, self.path)
        finally:
            for leftover in database_files(new):
                leftover.unlink(missing_ok=True)
        sync_folder(self.path.parent)

    def _connect(self) -> None:
        if self.path.stat().st_size == 0:
            raise StoreError(
                f"the suppression store is empty (0 bytes), so it cannot tell who must not "
                f"be mailed; {_UNTRUSTED}",
                where=Location(self.path),
            )
        if not os.access(self.path, os.R_OK | os.W_OK):
            # SQLite would open it read-only without a word and fail at the first write.
            raise _permission_denied(self.path)
        self._db = _connect(self.path)

    def _check(self) -> None:
        db = self._conn
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            detail = " ".join(str(problem).replace("*** in database main ***", "").split())
            raise StoreError(
                f"the suppression store is damaged ({detail}); {_UNTRUSTED}",
                where=Location(self.path),
            )
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if meta.get("kind") != KIND:
            raise StoreError(_foreign(meta), where=Location(self.path))
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"this suppression store was written by a newer bulkmail (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade bulkmail",
                where=Location(self.path),
            )
        if version < 1 or _TABLE_NAMES - tables:
            raise StoreError(
                f"this file is not a complete suppression store; {_UNTRUSTED}",
                where=Location(self.path),
            )

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the suppression store is not open")
        return self._db

    def _writer(self) -> sqlite3.Connection:
        if not self.create:
            raise RuntimeError("the suppression store was opened to read only (create=False)")
        return self._conn

    def close(self) -> None:
        """Close the store; a transaction still open (there is none outside `transaction`)
        is rolled back. Safe to call twice."""
        self._discard()

    def _discard(self) -> None:
        db, self._db = self._db, None
        self._in_transaction = False
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # --- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every write inside the block one commit: all of them are kept, or none.

        Commits at the end of the block, rolls back if it raises. Takes the write lock
        at once (waiting up to BUSY_TIMEOUT for another writer), so what the block reads
        (`mark_processed`'s answer) cannot change under it. Transactions do not nest.
        """
        if self._in_transaction:
            raise RuntimeError("transactions of the suppression store do not nest")
        with self._atomic():
            yield

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        """The writes inside as one commit; inside a `transaction`, part of that one."""
        db = self._writer()
        if self._in_transaction:
            yield
            return
        self._execute(db, "BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._in_transaction = False
        self._execute(db, "COMMIT")

    def _execute(self, db: sqlite3.Connection, statement: str) -> None:
        try:
            db.execute(statement)
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) from exc

    # --- suppressions --------------------------------------------------------------------

    @_translated
    def keys(self) -> frozenset[str]:
        """The `address_key` of every suppressed address: what a run skips."""
        return frozenset(str(key) for (key,) in self._rows("SELECT key FROM suppressions"))

    @_translated
    def is_suppressed(self, address: str) -> Suppression | None:
        """Why ``address`` (in any spelling) is suppressed, or None if it isn't."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM suppressions WHERE key = ?", address_key(address)
        )
        return _suppression(rows[0]) if rows else None

    @_translated
    def add(
        self,
        address: str,
        reason: SuppressionReason,
        *,
        campaign: str | None = None,
        detail: str = "",
        when: float | None = None,
    ) -> bool:
        """Suppress ``address``; False if it already was.

        An address already suppressed keeps its first entry, with one exception:
        "soft_bounces" is the one reason that is a guess (a full mailbox may be emptied),
        so any later reason (a hard bounce, a complaint, the person's own unsubscribe)
        replaces it; an operator reviewing soft-bounce suppressions then does not lift
        those by mistake. That still returns False: the address was suppressed already.
        The address's soft-bounce streak ends (it is not mailed any more).
        """
        key = address_key(address)
        now = _now(when)
        with self._atomic():
            db = self._conn
            db.execute("DELETE FROM soft_bounces WHERE key = ?", (key,))
            existing = db.execute("SELECT reason FROM suppressions WHERE key = ?", (key,))
            found = existing.fetchone()
            if found is None:
                db.execute(
                    f"INSERT INTO suppressions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, address, reason, campaign, detail, now),
                )
                return True
            if found[0] == "soft_bounces" and reason != "soft_bounces":
                db.execute(
                    "UPDATE suppressions SET reason = ?, campaign = ?, detail = ?, added = ? "
                    "WHERE key = ?",
                    (reason, campaign, detail, now, key),
                )
            return False

    @_translated
    def remove(self, address: str) -> bool:
        """Mail ``address`` again; False if it wasn't suppressed. Its soft-bounce streak
        starts afresh too."""
        key = address_key(address)
        with self._atomic():
            self._conn.execute("DELETE FROM soft_bounces WHERE key = ?", (key,))
            removed = self._conn.execute("DELETE FROM suppressions WHERE key = ?", (key,))
            return removed.rowcount > 0

    def entries(self) -> Iterator[Suppression]:
        """Every suppression, oldest first (then by address)."""
        try:
            rows = self._rows(f"SELECT {_COLUMNS} FROM suppressions ORDER BY added, email")
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) from exc
        for row in rows:
            yield _suppression(row)

    @_translated
    def count(self) -> int:
        rows = self._rows("SELECT COUNT(*) FROM suppressions")
        return int(rows[0][0]) if rows else 0

    # --- soft bounces --------------------------------------------------------------------

    @_translated
    def soft_bounce(
        self,
        address: str,
        *,
        campaign: str,
        detail: str,
        limit: int,
        when: float | None = None,
    ) -> bool:
        """Count a soft bounce of ``campaign``'s mail; True if it made ``address``
        suppressed ("soft_bounces"), its ``limit``-th in a row.

        A delivery that went well is never seen (no report comes back), so "in a row"
        means over consecutive campaigns that soft-bounced: the streak counts distinct
        campaigns, and several notices about one campaign's mail (retries, "delayed"
        then "failed") count once. It ends when the address is suppressed for any
        reason (a hard bounce, a complaint...) or removed; nothing else resets it. A
        soft bounce of an address already suppressed changes nothing.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        key = address_key(address)
        now = _now(when)
        with self._atomic():
            db = self._conn
            if db.execute("SELECT 1 FROM suppressions WHERE key = ?", (key,)).fetchone():
                return False
            db.execute(
                "INSERT INTO soft_bounces (key, campaign, detail, added) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, campaign) DO UPDATE SET detail = excluded.detail",
                (key, campaign, detail, now),
            )
            streak = [
                str(name)
                for (name,) in db.execute(
                    "SELECT campaign FROM soft_bounces WHERE key = ? ORDER BY added, campaign",
                    (key,),
                )
            ]
            if len(streak) < limit:
                return False
            summary = f"{len(streak)} soft bounces in a row: {', '.join(streak)}; last: {detail}"
            self.add(address, "soft_bounces", campaign=campaign, detail=summary, when=now)
            return True

    @_translated
    def soft_bounce_streak(self, address: str) -> list[str]:
        """The campaigns whose mail to ``address`` soft-bounced in its current streak."""
        rows = self._rows(
            "SELECT campaign FROM soft_bounces WHERE key = ? ORDER BY added, campaign",
            address_key(address),
        )
        return [str(name) for (name,) in rows]

    # --- messages handled ----------------------------------------------------------------

    @_translated
    def processed(self, mailbox: str, uid: str) -> bool:
        """Whether the message ``uid`` of ``mailbox`` was handled already."""
        return bool(
            self._rows("SELECT 1 FROM processed WHERE mailbox = ? AND uid = ?", mailbox, uid)
        )

    @_translated
    def mark_processed(
        self, mailbox: str, uid: str, kind: str, *, when: float | None = None
    ) -> bool:
        """Note that message ``uid`` of ``mailbox`` was handled (found to be ``kind``);
        False if it already was, by this run or a concurrent one: then make no change
        for it. Call it inside the `transaction` that makes those changes."""
        with self._atomic():
            inserted = self._conn.execute(
                "INSERT INTO processed (mailbox, uid, kind, handled) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (mailbox, uid) DO NOTHING",
                (mailbox, uid, kind, _now(when)),
            )
            return inserted.rowcount > 0

    # --- export --------------------------------------------------------------------------

    def export_csv(self, out: TextIO) -> int:
        """Write every suppression to ``out`` as CSV (open it with ``newline=""``); the
        number of rows written.

        Columns: email, reason, campaign, added (ISO 8601, UTC), detail. The file is
        meant for spreadsheets, so a value a spreadsheet would run as a formula (it
        starts with = + - @, a tab or a carriage return: addresses and diagnostics come
        from strangers' mail) gets a leading ' and is shown as text.
        """
        writer = csv.writer(out)
        writer.writerow(["email", "reason", "campaign", "added", "detail"])
        rows = 0
        for entry in self.entries():
            added = datetime.fromtimestamp(entry.added, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            values = [entry.email, entry.reason, entry.campaign or "", added, entry.detail]
            writer.writerow([_as_text(value) for value in values])
            rows += 1
        return rows

    def _rows(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of ``query``; none while there is no store (``create=False``)."""
        if self._db is None and not self.create:
            return []
        return self._conn.execute(query, params).fetchall()


# --- the file and its errors -------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    # Every commit synced to disk before it returns: a suppression, once reported, stays.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA fullfsync=ON")
    return db


def _remove_leftovers(path: Path) -> None:
    """Remove what creations of the store cut short (a killed process) left beside it."""
    for leftover in path.parent.glob(f"{path.name}.new-*"):
        pid = leftover.name.removeprefix(f"{path.name}.new-").partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _foreign(meta: dict[Any, Any]) -> str:
    """Why a file whose ``meta`` says it is no store is refused."""
    if "campaign" in meta:
        return (
            f"this is the journal of campaign {meta['campaign']!r}, not a suppression store; "
            "name another file in suppression_store:"
        )
    if "kind" in meta:
        return f"this is a bulkmail {meta['kind']} file, not a suppression store"
    return f"this file is not a bulkmail suppression store; {_UNTRUSTED}"


def _permission_denied(path: Path) -> StoreError:
    """Say which of the store's folder and files this user cannot use, and whose it is."""
    for place in [path.parent, *database_files(path)]:
        try:
            info = place.stat()
        except OSError:
            continue
        wanted = os.R_OK | os.W_OK | (os.X_OK if place == path.parent else 0)
        if os.access(place, wanted):
            continue
        if info.st_uid != os.geteuid():
            return StoreError(
                f"permission denied: {display_path(place)} belongs to user "
                f"{user_name(info.st_uid)}; run bulkmail as that user",
                where=Location(path),
            )
        return StoreError(
            f"permission denied: {display_path(place)} is read-only; make it writable "
            "(chmod u+w) and rerun",
            where=Location(path),
        )
    return StoreError("permission denied", where=Location(path))


def _os_error(path: Path, exc: OSError, doing: str) -> StoreError:
    if isinstance(exc, PermissionError):
        return _permission_denied(path)
    return StoreError(f"{doing}: {exc.strerror or exc}", where=Location(path))


def _sqlite_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """A StoreError naming the file, saying what went wrong and what to do."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_CORRUPT, _NOTADB):
        message = (
            f"cannot use the suppression store: {exc}: it is damaged, or not a suppression "
            f"store; {_UNTRUSTED}"
        )
    elif code in (_PERM, _READONLY, _CANTOPEN):
        denied = _permission_denied(path)
        if denied.message != "permission denied":
            return denied
        message = f"cannot use the suppression store: {exc}"
    elif code in (_BUSY, _LOCKED):
        message = (
            f"the suppression store is busy ({exc}): another program has held it for "
            f"{BUSY_TIMEOUT:g} s; rerun when it is done"
        )
    elif code == _FULL:
        message = f"cannot write the suppression store: {exc}; free some space and rerun"
    else:
        message = f"cannot use the suppression store: {exc}"
    return StoreError(message, where=Location(path))


_COLUMNS = "key, email, reason, campaign, detail, added"


def _suppression(row: tuple[Any, ...]) -> Suppression:
    _key, email, reason, campaign, detail, added = row
    return Suppression(
        email=str(email),
        reason=cast(SuppressionReason, reason),  # the table's CHECK allows no other
        campaign=campaign,
        detail=str(detail),
        added=float(added),
    )


def _now(when: float | None) -> float:
    return time.time() if when is None else when


def _as_text(value: str) -> str:
    """``value``, made to read as text (not a formula) in a spreadsheet."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value
