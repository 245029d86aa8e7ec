"""The addresses a pass over the list has met, and on which line: to find duplicates with
memory that stays flat however long the list.

A list's first `IN_MEMORY` address keys are kept in a dict (a key, its line and the dict's
own entry take ~140 bytes: 140 MB for a million rows); the rest go to a private temporary
SQLite database on disk (``sqlite3.connect("")``: a file SQLite deletes as soon as it has
opened it, so nothing is left behind and no other process can open it), indexed by key,
with a small page cache. Lookups stay exact: a duplicate is never guessed from a hash.
"""

from __future__ import annotations

import sqlite3

from bulkmail.opening import Opened

# Keys kept in memory before the rest go to disk: every list of up to this many rows is
# checked as fast as a plain dict allows.
IN_MEMORY = 20_000
# The temporary database's page cache, in KiB (SQLite's "-N" form).
CACHE_KIB = 2048


class SeenAddresses(Opened):
    """Address keys met so far, each with the line it was first met on."""

    def __init__(self, in_memory: int | None = None) -> None:
        self._limit = IN_MEMORY if in_memory is None else in_memory
        self._lines: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None

    def line_of(self, key: str) -> int | None:
        """The line ``key`` was first met on, or None if it is new."""
        line = self._lines.get(key)
        if line is not None or self._db is None:
            return line
        row = self._db.execute("SELECT line FROM seen WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def add(self, key: str, line: int) -> None:
        """Note ``key``, met on ``line`` (the caller checked it is new)."""
        if len(self._lines) < self._limit:
            self._lines[key] = line
            return
        if self._db is None:
            self._db = _temporary_database()
        self._db.execute("INSERT INTO seen (key, line) VALUES (?, ?)", (key, line))

    def close(self) -> None:
        """Forget everything; the temporary database's file goes with its connection."""
        self._lines.clear()
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _temporary_database() -> sqlite3.Connection:
    db = sqlite3.connect("", isolation_level=None)  # "": a temporary file, deleted at once
    db.execute("PRAGMA journal_mode = OFF")  # a scratch table: nothing to recover
    db.execute("PRAGMA synchronous = OFF")
    db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("BEGIN")  # one transaction for the pass: no commit per row
    return db
