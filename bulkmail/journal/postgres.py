"""The journal of a campaign kept in PostgreSQL, shared by several senders at once.

`journal: postgresql://user@host/db` in a campaign keeps its journal in a database instead
of a file: the same rows, states and promises as journal/sqlite.py (a row is marked
``sending`` and the mark committed, with ``synchronous_commit = on``, before its mail is
handed over; its outcome is committed with the next mark or by `flush`; a row left in
``sending`` is uncertain, reported and never resent unless asked), and besides, several
senders (processes, perhaps on several machines) may send one campaign together.

A journal across a network costs a round trip per statement, so a mail costs one: BEGIN,
the previous mail's outcome (held back until now), this mail's mark and COMMIT, in one
pipeline. Anything else the journal does first sends what is held back, so a sender
always reads what it wrote.

One database holds any number of campaigns: every row of every ``bulkmail_`` table names
its campaign, and every query asks for one. The tables are made at the first open, under
an advisory lock so that two senders starting together do not race.

Sharing the list. A sender `claim`\\ s a batch of rows at a time (``FOR UPDATE SKIP
LOCKED``: no two senders ever take the same row) with a lease, which its heartbeat thread
renews every ``lease / 3`` seconds on a connection of its own. A sender that dies stops
renewing: after the lease its unsent rows are free for the others; the row it had in
flight stays ``sending``, uncertain, as with one sender. `sending` is a compare-and-set:
the row is marked only while this sender still holds it, so a sender that stalled past
its lease and lost its rows sends none of them. A row keeps the name of the sender that
marked it (``claimed_by``) after it is sent, for `senders`; its lease is cleared then, so
it is held by nobody. Leases are compared with the database's clock, so the senders'
own clocks do not matter.

Every psycopg error becomes a JournalError that names the database (never a password)
and says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg

from bulkmail.errors import JournalError, Location
from bulkmail.journal.records import FEEDBACK, Entry, SenderInfo, Summary, entry_from_row
from bulkmail.models import PostgresSettings, Recipient, Status
from bulkmail.opening import Opened

SCHEMA_VERSION = 1
CONNECT_TIMEOUT = 10  # seconds to wait for the server to answer at all
_ENTRIES_PAGE = 1000  # rows `entries` reads at a time

# The database's own clock, in epoch seconds: leases and heartbeats are compared with it,
# so several machines' clocks need not agree.
_NOW = "extract(epoch FROM clock_timestamp())::double precision"

_TABLES = [
    """CREATE TABLE IF NOT EXISTS bulkmail_schema (
    version integer NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS bulkmail_meta (
    campaign text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,             -- 'campaign': its name; 'fingerprint': the content
    PRIMARY KEY (campaign, key)
)""",
    """CREATE TABLE IF NOT EXISTS bulkmail_recipients (
    campaign text NOT NULL,
    key text NOT NULL,                -- models.address_key of the address
    email text NOT NULL,
    line integer NOT NULL,            -- CSV line, as of the latest run
    fields text NOT NULL,             -- the CSV row as JSON (its columns in order)
    status text NOT NULL
        CHECK (status IN ('pending', 'sending', 'accepted', 'failed', 'skipped')),
    attempts integer NOT NULL DEFAULT 0,
    code integer,                     -- the server's last reply code
    reply text,                       -- ... and text, or why it was skipped
    message_id text,
    first_attempt double precision,
    updated double precision NOT NULL,
    envelope_from text,               -- MAIL FROM: the VERP address, with return_path
    feedback text,                    -- what came back: records.FEEDBACK
    feedback_detail text,
    feedback_at double precision,
    claimed_by text,                  -- the sender holding it, or that marked it last
    lease_until double precision,     -- database clock; NULL once the row is sent
    PRIMARY KEY (campaign, key)
)""",
    "CREATE INDEX IF NOT EXISTS bulkmail_recipients_status "
    "ON bulkmail_recipients (campaign, status, line)",
    "CREATE INDEX IF NOT EXISTS bulkmail_recipients_line ON bulkmail_recipients (campaign, line)",
    "CREATE INDEX IF NOT EXISTS bulkmail_recipients_message_id "
    "ON bulkmail_recipients (campaign, message_id)",
    "CREATE INDEX IF NOT EXISTS bulkmail_recipients_claimed_by "
    "ON bulkmail_recipients (campaign, claimed_by)",
    """CREATE TABLE IF NOT EXISTS bulkmail_runs (
    id serial PRIMARY KEY,
    campaign text NOT NULL,
    sender text NOT NULL,
    started double precision NOT NULL,
    finished double precision,
    outcome text                      -- completed | interrupted | stopped: <why>
)""",
    """CREATE TABLE IF NOT EXISTS bulkmail_senders (
    id text PRIMARY KEY,              -- host:pid:random
    campaign text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started double precision NOT NULL,    -- database clock
    heartbeat double precision NOT NULL,  -- database clock
    lease double precision NOT NULL,
    state text NOT NULL               -- running | completed | interrupted | stopped: <why>
)""",
    "CREATE INDEX IF NOT EXISTS bulkmail_senders_campaign ON bulkmail_senders (campaign)",
    "CREATE INDEX IF NOT EXISTS bulkmail_runs_campaign ON bulkmail_runs (campaign)",
]

_COLUMNS = (
    "key, email, line, fields, status, attempts, code, reply, message_id, first_attempt, "
    "updated, envelope_from, feedback, feedback_detail"
)
_R_COLUMNS = ", ".join(f"r.{column.strip()}" for column in _COLUMNS.split(","))
# Whether a row is free for a claim by sender %(me)s: nobody holds it, the sender holding
# it is this one, or its lease ran out (or was cleared: the row was sent).
_FREE = (
    f"(claimed_by IS NULL OR claimed_by = %(me)s OR lease_until IS NULL OR lease_until < {_NOW})"
)

# Note a row of the list; a row that is skipped now (suppressed since) stays skipped
# unless it was mailed; returns the row as it now stands.
_PLAN = (
    "INSERT INTO bulkmail_recipients AS r "
    "(campaign, key, email, line, fields, status, reply, updated) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (campaign, key) DO UPDATE SET line = excluded.line, "
    "fields = excluded.fields, "
    "status = CASE WHEN excluded.status = 'skipped' AND r.status IN ('pending', 'skipped') "
    "THEN 'skipped' WHEN r.status = 'skipped' THEN 'pending' ELSE r.status END, "
    "reply = CASE WHEN excluded.status = 'skipped' AND r.status IN ('pending', 'skipped') "
    "THEN excluded.reply WHEN r.status = 'skipped' THEN NULL ELSE r.reply END "
    f"RETURNING {_COLUMNS}"
)

P = ParamSpec("P")
R = TypeVar("R")


def _translated(
    method: Callable[Concatenate[PostgresJournal, P], R],
) -> Callable[Concatenate[PostgresJournal, P], R]:
    """Turn any psycopg error of ``method`` into a JournalError naming the database."""

    takes_pending = method.__name__ in _TAKES_PENDING

    @functools.wraps(method)
    def wrapper(journal: PostgresJournal, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            if journal._pending and not takes_pending:
                journal._write_pending()  # what this sender reads includes what it wrote
            return method(journal, *args, **kwargs)
        except psycopg.Error as exc:
            raise journal._error(exc) from exc

    return wrapper


# The methods that send the writes `outcome` and `unmark` left waiting (or drop them)
# themselves, in the same round trip as their own statements.
_TAKES_PENDING = frozenset({"sending", "flush", "rollback"})


class PostgresJournal(Opened):
    """A campaign's journal in a PostgreSQL database, opened by a sender, or (``sender=
    False``) by `status` and `inbox`, which only read and note feedback.

    ``password``: given by the caller; else the variable ``settings.password_env`` names;
    else libpq finds it (PGPASSWORD, ~/.pgpass, a service file). ``where``: the campaign
    file's ``journal`` setting, which errors point at.
    """

    def __init__(
        self,
        settings: PostgresSettings,
        campaign: str,
        *,
        sender: bool = True,
        password: str | None = None,
        where: Location | None = None,
    ) -> None:
        self.settings = settings
        self.campaign = campaign
        self.sender = sender
        self.host = socket.gethostname()
        self.sender_id = f"{self.host}:{os.getpid()}:{secrets.token_hex(3)}"
        self._password = password
        self._location = where
        self._db: psycopg.Connection[Any] | None = None
        self._heartbeat: _Heartbeat | None = None
        self._run_id: int | None = None
        self._finished = False
        self._has_tables = False
        # Outcomes and unmarks not yet sent to the server: they go with the next mark, in
        # one round trip with it and its commit (psycopg's pipeline mode).
        self._pending: list[tuple[str, tuple[object, ...]]] = []

    def __repr__(self) -> str:
        return f"PostgresJournal({self.where!r}, campaign={self.campaign!r})"

    @property
    def where(self) -> str:
        """The database, as messages name it: its URL, which holds no password."""
        return self.settings.name

    # --- opening and closing -------------------------------------------------------------

    def open(self) -> None:
        """Connect, make the tables if missing, and (a sender) register and start beating."""
        password = self._resolve_password()
        try:
            self._db = self._connect(password)
            self._ensure_schema()
            if self.sender:
                self._register()
                self._heartbeat = _Heartbeat(self, password)
                self._heartbeat.start()
        except BaseException as exc:
            self._discard()
            if isinstance(exc, psycopg.Error):
                raise self._error(exc) from exc
            raise

    def _resolve_password(self) -> str | None:
        if self._password is not None:
            return self._password
        name = self.settings.password_env
        if not name:
            return None  # libpq's own ways: PGPASSWORD, ~/.pgpass, a service file
        value = os.environ.get(name)
        if not value:
            raise JournalError(
                f"the password of the journal database {self.where} is read from the "
                f"environment variable {name}, which is not set; set it (export {name}=...) "
                "and rerun",
                where=self._location,
            )
        return value

    def _connect(self, password: str | None) -> psycopg.Connection[Any]:
        """A connection whose every commit is durable on the server before it returns."""
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "bulkmail",
            # A server that vanished (its machine, or the network) is noticed in about a
            # minute rather than when the kernel gives up on the connection.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        if password is not None:
            options["password"] = password
        db = psycopg.connect(self.settings.url, **options)
        try:
            db.execute("SET synchronous_commit = on")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_schema(self) -> None:
        """Make the tables if they are missing (one sender at a time); refuse a newer schema.

        A reader (`status`, `inbox`) makes nothing: it may be a role that cannot create
        tables, and an empty database simply holds no campaign yet.
        """
        db = self._conn
        if self._schema_version() is None and self.sender:
            db.execute("SELECT pg_advisory_xact_lock(hashtext('bulkmail schema'))")
            if self._schema_version() is None:
                for statement in _TABLES:
                    db.execute(statement)
                db.execute("INSERT INTO bulkmail_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            db.commit()
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal database {self.where} was written by a newer bulkmail (schema "
                f"{version}, this one knows {SCHEMA_VERSION}); upgrade bulkmail",
                where=self._location,
            )
        if version is not None and self.sender:
            db.execute(
                "INSERT INTO bulkmail_meta (campaign, key, value) VALUES (%s, 'campaign', %s) "
                "ON CONFLICT DO NOTHING",
                (self.campaign, self.campaign),
            )
        db.commit()
        self._has_tables = version is not None

    def _schema_version(self) -> int | None:
        db = self._conn
        found = db.execute("SELECT to_regclass('bulkmail_schema') IS NOT NULL").fetchone()
        if found is None or not found[0]:
            return None
        row = db.execute("SELECT max(version) FROM bulkmail_schema").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _register(self) -> None:
        self._conn.execute(
            "INSERT INTO bulkmail_senders (id, campaign, host, pid, started, heartbeat, lease, "
            f"state) VALUES (%s, %s, %s, %s, {_NOW}, {_NOW}, %s, 'running')",
            (self.sender_id, self.campaign, self.host, os.getpid(), self.settings.lease),
        )
        self._conn.commit()

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None:
            raise RuntimeError("the journal is not open")
        return self._db

    def close(self) -> None:
        """Commit what is pending, give back the rows held and unsent, stop the heartbeat,
        disconnect. A sender whose run never finished is left ``interrupted``."""
        db = self._db
        if db is None:
            return
        try:
            if not db.broken and not db.closed:
                self._write_pending()
                db.commit()
                if self.sender:
                    self._leave()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._discard()

    def _leave(self) -> None:
        """Give back the rows held and note the sender's end: best effort, as the lease
        frees the rows anyway, and the sender's heartbeat stops (so it no longer counts
        as alive) whatever happens here."""
        db = self._conn
        try:
            self.release()
            if not self._finished:
                self._set_state("interrupted")
            db.commit()
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                db.rollback()

    def _discard(self) -> None:
        """Drop the connection, committing nothing more (which ends the locks it holds),
        and stop the heartbeat."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                db.close()
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.stop()

    def _set_state(self, state: str) -> None:
        self._conn.execute(
            "UPDATE bulkmail_senders SET state = %s WHERE id = %s", (state, self.sender_id)
        )

    # --- sharing the list between senders ------------------------------------------------

    def claim(
        self, from_line: int, limit: int, statuses: Collection[Status]
    ) -> list[tuple[str, int]]:
        """`claim_entries`, as (key, line) of each row taken, in list order."""
        return [(entry.key, entry.line) for entry in self.claim_entries(from_line, limit, statuses)]

    @_translated
    def claim_entries(
        self, from_line: int, limit: int, statuses: Collection[Status]
    ) -> list[Entry]:
        """Take up to ``limit`` rows from CSV line ``from_line`` on whose status is one of
        ``statuses`` and that no other sender holds; committed at once (with anything
        pending). Returns each row's entry, in list order: while the claim holds, no other
        sender can change the row, so the entry stands until this sender sends it."""
        db = self._conn
        db.commit()
        rows = db.execute(
            "WITH picked AS ("
            "  SELECT key FROM bulkmail_recipients"
            "  WHERE campaign = %(campaign)s AND status = ANY(%(statuses)s)"
            f"  AND line >= %(line)s AND {_FREE}"
            "  ORDER BY line LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
            ") UPDATE bulkmail_recipients AS r"
            f" SET claimed_by = %(me)s, lease_until = {_NOW} + %(lease)s"
            " FROM picked WHERE r.campaign = %(campaign)s AND r.key = picked.key"
            f" RETURNING {_R_COLUMNS}",
            {
                "campaign": self.campaign,
                "statuses": [Status(s).value for s in statuses],
                "line": from_line,
                "limit": limit,
                "me": self.sender_id,
                "lease": self.settings.lease,
            },
        ).fetchall()
        db.commit()
        return sorted(map(entry_from_row, rows), key=lambda entry: entry.line)

    @_translated
    def outstanding(self, statuses: Collection[Status]) -> tuple[int, int]:
        """Of this campaign's rows with one of ``statuses``: how many this sender could
        claim now, and how many other senders hold (alive, or dead less than a lease ago).

        Anything pending is committed first: a sender that waits for the others holds no
        row locked, and leaves no outcome in doubt, while it waits.
        """
        if not self._ready():
            return 0, 0
        self._conn.commit()
        row = self._conn.execute(
            f"SELECT count(*) FILTER (WHERE {_FREE}), count(*) FILTER (WHERE NOT {_FREE}) "
            "FROM bulkmail_recipients WHERE campaign = %(campaign)s "
            "AND status = ANY(%(statuses)s)",
            {
                "campaign": self.campaign,
                "statuses": [Status(s).value for s in statuses],
                "me": self.sender_id,
            },
        ).fetchone()
        self._end_read()
        assert row is not None
        return int(row[0]), int(row[1])

    @_translated
    def release(self) -> None:
        """Give back the rows this sender holds and has not sent (those in ``sending``
        stay its own: uncertain); the others may claim them at once."""
        db = self._conn
        db.execute(
            "UPDATE bulkmail_recipients SET claimed_by = NULL, lease_until = NULL "
            "WHERE campaign = %s AND claimed_by = %s AND lease_until IS NOT NULL "
            "AND status <> 'sending'",
            (self.campaign, self.sender_id),
        )
        db.commit()

    @_translated
    def senders(self) -> list[SenderInfo]:
        """Every sender that ran this campaign, oldest first, with how far each got."""
        if not self._ready():
            return []
        rows = self._conn.execute(
            "SELECT s.id, s.host, s.pid, s.started, s.heartbeat, s.state, "
            f"s.state = 'running' AND s.heartbeat + s.lease >= {_NOW}, "
            "count(r.key) FILTER (WHERE r.status = 'accepted'), "
            "count(r.key) FILTER (WHERE r.status = 'failed'), "
            "count(r.key) FILTER (WHERE r.status = 'sending'), "
            f"count(r.key) FILTER (WHERE r.status = 'pending' AND r.lease_until >= {_NOW}) "
            "FROM bulkmail_senders AS s LEFT JOIN bulkmail_recipients AS r "
            "ON r.campaign = s.campaign AND r.claimed_by = s.id "
            "WHERE s.campaign = %s GROUP BY s.id ORDER BY s.started, s.id",
            (self.campaign,),
        ).fetchall()
        self._end_read()
        return [_sender(row) for row in rows]

    @contextlib.contextmanager
    def preflight_lock(self) -> Iterator[None]:
        """Hold the campaign's preflight lock (waiting while another sender has it), so
        that one sender at a time checks the campaign and notes its list. Anything
        pending is committed first: no row stays locked while this waits."""
        key = f"bulkmail preflight {self.campaign}"
        try:
            self._write_pending()
            self._conn.commit()
            self._conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            self._conn.commit()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        try:
            yield
        finally:
            db = self._db
            if db is not None and not db.broken and not db.closed:
                try:
                    db.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
                    db.commit()
                except psycopg.Error:
                    # The session ends with the connection, and the lock with it.
                    with contextlib.suppress(psycopg.Error):
                        db.rollback()

    # --- campaign-wide facts -------------------------------------------------------------

    @_translated
    def get_meta(self, key: str) -> str | None:
        if not self._ready():
            return None
        row = self._conn.execute(
            "SELECT value FROM bulkmail_meta WHERE campaign = %s AND key = %s",
            (self.campaign, key),
        ).fetchone()
        self._end_read()
        return None if row is None else str(row[0])

    @_translated
    def set_meta(self, key: str, value: str) -> None:
        """Noted with the next commit."""
        self._conn.execute(
            "INSERT INTO bulkmail_meta (campaign, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (campaign, key) DO UPDATE SET value = excluded.value",
            (self.campaign, key, value),
        )

    @_translated
    def start_run(self) -> None:
        row = self._conn.execute(
            "INSERT INTO bulkmail_runs (campaign, sender, started) VALUES (%s, %s, %s) "
            "RETURNING id",
            (self.campaign, self.sender_id, time.time()),
        ).fetchone()
        assert row is not None
        self._run_id = int(row[0])

    @_translated
    def finish_run(self, outcome: str) -> None:
        """Note how the run ended, on the run and on this sender, and commit."""
        if self._run_id is not None:
            self._conn.execute(
                "UPDATE bulkmail_runs SET finished = %s, outcome = %s WHERE id = %s",
                (time.time(), outcome, self._run_id),
            )
        if self.sender:
            self._set_state(outcome)
            self._finished = True
        self._conn.commit()

    # --- recipients ----------------------------------------------------------------------

    @_translated
    def plan(self, recipient: Recipient, status: Status = Status.PENDING, reply: str = "") -> Entry:
        """Note a recipient of the list (pending, or skipped with why); keep a known outcome.
        Returns the row as it now stands (one round trip).

        Call between `begin_batch` and `flush`: planning a whole list is one transaction.
        """
        row = self._conn.execute(_PLAN, self._plan_values(recipient, status, reply)).fetchone()
        assert row is not None  # an upsert returns its row
        return entry_from_row(row)

    @_translated
    def plan_many(self, recipients: Sequence[Recipient]) -> list[Entry]:
        """`plan` for each of ``recipients`` (pending), their rows as they now stand: one
        round trip for them all (psycopg pipelines the statements), not one each, which
        over a WAN is most of a preflight's time."""
        entries: list[Entry] = []
        with self._conn.cursor() as cursor:
            params = [self._plan_values(recipient) for recipient in recipients]
            cursor.executemany(_PLAN, params, returning=True)
            for _ in cursor.results():
                row = cursor.fetchone()
                assert row is not None  # an upsert returns its row
                entries.append(entry_from_row(row))
        return entries

    def _plan_values(
        self, recipient: Recipient, status: Status = Status.PENDING, reply: str = ""
    ) -> tuple[object, ...]:
        fields = json.dumps(dict(recipient.fields), ensure_ascii=False)
        return (
            self.campaign,
            recipient.key,
            recipient.email,
            recipient.line,
            fields,
            Status(status).value,
            reply,
            time.time(),
        )

    def begin_batch(self) -> None:
        """Start a transaction that `flush` (or the next `sending`) commits: psycopg opens
        one with the first statement, so there is nothing to do."""

    @_translated
    def status_of(self, key: str) -> Entry | None:
        found = self._conn.execute(
            f"SELECT {_COLUMNS} FROM bulkmail_recipients WHERE campaign = %s AND key = %s",
            (self.campaign, key),
        ).fetchone()
        self._end_read()
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

        Only while this sender holds the row (and it was not sent or skipped since): False
        if another sender took it after this one's lease ran out; nothing changed then,
        and the mail must not go. The commit is durable before this returns, whatever
        ``durable`` says (the answer is needed at once).
        """
        db = self._conn
        # Between transactions (as a mark usually is), BEGIN goes in the pipeline with the
        # rest: psycopg sends its own BEGIN alone, a round trip of its own.
        begin = db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if begin:
            db.autocommit = True
        try:
            with db.pipeline():  # the outcomes before, the mark and the commit: one round trip
                if begin:
                    db.execute("BEGIN")
                self._execute_pending(db)
                cursor = self._mark(db, recipient, message_id, envelope_from)
                db.execute("COMMIT")  # (commit() would sync the pipeline again: a round trip)
        finally:
            if begin:
                self._leave_autocommit(db)
        return cursor.rowcount == 1

    def _mark(
        self,
        db: psycopg.Connection[Any],
        recipient: Recipient,
        message_id: str,
        envelope_from: str | None,
    ) -> psycopg.Cursor[Any]:
        return db.execute(
            "UPDATE bulkmail_recipients SET status = 'sending', attempts = attempts + 1, "
            "message_id = %(message_id)s, envelope_from = %(envelope_from)s, "
            "first_attempt = COALESCE(first_attempt, %(now)s), updated = %(now)s, "
            f"lease_until = {_NOW} + %(lease)s "
            "WHERE campaign = %(campaign)s AND key = %(key)s AND claimed_by = %(me)s "
            "AND status NOT IN ('accepted', 'skipped')",
            {
                "message_id": message_id,
                "envelope_from": envelope_from,
                "now": time.time(),
                "lease": self.settings.lease,
                "campaign": self.campaign,
                "key": recipient.key,
                "me": self.sender_id,
            },
        )

    @staticmethod
    def _leave_autocommit(db: psycopg.Connection[Any]) -> None:
        """Back to psycopg's own transactions after a mark; a transaction a failed mark
        left open (aborted) is rolled back first, since autocommit can't change in one."""
        if db.closed or db.broken:
            return
        if db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            db.execute("ROLLBACK")
        db.autocommit = False

    def settle(self) -> None:
        """Nothing to wait for: every mark is durable when `sending` returns."""

    def outcome(self, recipient: Recipient, status: Status, code: int | None, reply: str) -> None:
        """Record the server's answer; sent and committed with the next mail's mark (one
        round trip for both), or by `flush`, or before anything else this journal does.
        The row is then held by nobody, and remembers who sent it."""
        self._pending.append(
            (
                "UPDATE bulkmail_recipients SET status = %s, code = %s, reply = %s, "
                "updated = %s, lease_until = NULL WHERE campaign = %s AND key = %s",
                (Status(status).value, code, reply, time.time(), self.campaign, recipient.key),
            )
        )

    def unmark(self, recipient: Recipient, status: Status) -> None:
        """Undo `sending` (back to ``status``): the mail was not handed over after all.

        Committed with the next mark or by `flush`; the attempt stays counted, and the row
        stays this sender's until it sends it or `release`\\ s it.
        """
        self._pending.append(
            (
                "UPDATE bulkmail_recipients SET status = %s, updated = %s "
                "WHERE campaign = %s AND key = %s AND status = 'sending'",
                (Status(status).value, time.time(), self.campaign, recipient.key),
            )
        )

    @_translated
    def rollback(self) -> None:
        """Forget everything since the last commit."""
        self._pending.clear()
        self._conn.rollback()

    @_translated
    def anything_sent(self) -> bool:
        """Whether any recipient of this campaign was ever handed to the server."""
        if not self._ready():
            return False
        row = self._conn.execute(
            "SELECT 1 FROM bulkmail_recipients WHERE campaign = %s "
            "AND status IN ('sending', 'accepted', 'failed') LIMIT 1",
            (self.campaign,),
        ).fetchone()
        self._end_read()
        return row is not None

    @_translated
    def flush(self) -> None:
        """Commit every outcome recorded so far."""
        db = self._conn
        with db.pipeline():
            self._execute_pending(db)
            db.commit()

    @_translated
    def entry_at_line(self, line: int) -> Entry | None:
        """The row of CSV line ``line`` (as of the latest run)."""
        if not self._ready():
            return None
        found = self._conn.execute(
            f"SELECT {_COLUMNS} FROM bulkmail_recipients WHERE campaign = %s AND line = %s LIMIT 1",
            (self.campaign, line),
        ).fetchone()
        self._end_read()
        return None if found is None else entry_from_row(found)

    @_translated
    def entry_for_message(self, message_id: str) -> Entry | None:
        """The row whose mail had this Message-ID (``<...>``, compared as written)."""
        if not self._ready():
            return None
        found = self._conn.execute(
            f"SELECT {_COLUMNS} FROM bulkmail_recipients WHERE campaign = %s "
            "AND message_id = %s LIMIT 1",
            (self.campaign, message_id),
        ).fetchone()
        self._end_read()
        return None if found is None else entry_from_row(found)

    @_translated
    def note_feedback(self, key: str, feedback: str, detail: str) -> bool:
        """Record what came back for a row's mail (one of FEEDBACK), unless something
        stronger came back before; committed at once. False if there is no such row.

        The row is locked before it is read, so the row read is the row updated, even
        while a sender writes the journal.
        """
        if not self._ready():
            return False
        db = self._conn
        found = db.execute(
            "SELECT feedback FROM bulkmail_recipients WHERE campaign = %s AND key = %s FOR UPDATE",
            (self.campaign, key),
        ).fetchone()
        if found is not None and (
            found[0] is None or FEEDBACK.index(found[0]) <= FEEDBACK.index(feedback)
        ):
            db.execute(
                "UPDATE bulkmail_recipients SET feedback = %s, feedback_detail = %s, "
                "feedback_at = %s WHERE campaign = %s AND key = %s",
                (feedback, detail, time.time(), self.campaign, key),
            )
        db.commit()
        return found is not None

    def entries(self, *statuses: Status) -> Iterator[Entry]:
        """Recipients with one of ``statuses`` (all if none), in list order, read a page
        at a time."""
        try:
            if not self._ready():
                return
            after: tuple[int, str] | None = None
            while True:
                page = self._entries_page(statuses, after)
                yield from page
                if len(page) < _ENTRIES_PAGE:
                    return
                after = page[-1].line, page[-1].key
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _entries_page(
        self, statuses: tuple[Status, ...], after: tuple[int, str] | None
    ) -> list[Entry]:
        query = f"SELECT {_COLUMNS} FROM bulkmail_recipients WHERE campaign = %s"
        params: list[Any] = [self.campaign]
        if statuses:
            query += " AND status = ANY(%s)"
            params.append([Status(s).value for s in statuses])
        if after is not None:
            query += " AND (line, key) > (%s, %s)"
            params.extend(after)
        query += " ORDER BY line, key LIMIT %s"
        params.append(_ENTRIES_PAGE)
        rows = self._conn.execute(query, params).fetchall()
        self._end_read()
        return [entry_from_row(row) for row in rows]

    @_translated
    def summary(self) -> Summary:
        counts = dict.fromkeys(Status, 0)
        feedback = dict.fromkeys(FEEDBACK, 0)
        if not self._ready():
            return Summary(counts, 0, None, None, None, feedback)
        db = self._conn
        for status, count in db.execute(
            "SELECT status, count(*) FROM bulkmail_recipients WHERE campaign = %s GROUP BY 1",
            (self.campaign,),
        ):
            counts[Status(status)] = int(count)
        last = db.execute(
            "SELECT max(updated) FROM bulkmail_recipients "
            "WHERE campaign = %s AND status = 'accepted'",
            (self.campaign,),
        ).fetchone()
        # A run that never finished (killed) lasted until its sender's last journaled mail.
        runs = db.execute(
            "SELECT r.started, COALESCE(r.finished, (SELECT max(x.updated) "
            "  FROM bulkmail_recipients AS x WHERE x.campaign = r.campaign "
            "  AND x.claimed_by = r.sender AND x.updated >= r.started), r.started) "
            "FROM bulkmail_runs AS r WHERE r.campaign = %s ORDER BY r.started",
            (self.campaign,),
        ).fetchall()
        for kind, count in db.execute(
            "SELECT feedback, count(*) FROM bulkmail_recipients "
            "WHERE campaign = %s AND feedback IS NOT NULL GROUP BY 1",
            (self.campaign,),
        ):
            feedback[str(kind)] = int(count)
        self._end_read()
        busy = _busy([(float(start), float(end)) for start, end in runs])
        accepted = counts[Status.ACCEPTED]
        rate = accepted / busy if busy and accepted else None
        started = float(runs[0][0]) if runs else None
        last_sent = None if last is None or last[0] is None else float(last[0])
        return Summary(counts, len(runs), started, last_sent, rate, feedback)

    # --- helpers -------------------------------------------------------------------------

    def _write_pending(self) -> None:
        """Send the outcomes and unmarks waiting (not committed: that is the caller's)."""
        if self._pending:
            with self._conn.pipeline():
                self._execute_pending(self._conn)

    def _execute_pending(self, db: psycopg.Connection[Any]) -> None:
        """Queue the outcomes and unmarks waiting on ``db`` (in a pipeline: no wait)."""
        pending, self._pending = self._pending, []
        for statement, params in pending:
            db.execute(statement, params)

    def _ready(self) -> bool:
        """Whether the tables exist (a reader of an empty database finds none)."""
        return self._has_tables

    def _end_read(self) -> None:
        """End a transaction that only read, so a reader holds no snapshot or lock while
        idle; a sender's pending outcomes stay pending."""
        db = self._conn
        if self.sender:
            return
        db.commit()

    def _error(self, exc: psycopg.Error) -> JournalError:
        """A JournalError naming the database, saying what went wrong and what to do."""
        name = self.settings.password_env
        hint = f"the variable {name}" if name and self._password is None else None
        return JournalError(
            _scrub(_message(self.where, exc, hint), self._password_known()),
            where=self._location,
        )

    def _password_known(self) -> str | None:
        if self._password:
            return self._password
        name = self.settings.password_env
        return os.environ.get(name) if name else None


class _Heartbeat:
    """A daemon thread that, every ``lease / 3`` seconds, renews this sender's lease on
    the rows it holds and notes its heartbeat, on a connection of its own (the sender's
    may be busy, or inside a transaction). It never raises: a failed beat is tried again
    on a new connection at the next one, and a sender whose beats keep failing loses its
    rows, which its compare-and-set `sending` then sees."""

    def __init__(self, journal: PostgresJournal, password: str | None) -> None:
        self._journal = journal
        self._password = password
        self._stop = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="bulkmail-heartbeat", daemon=True)
        self.beats = 0
        self.failures = 0

    def start(self) -> None:
        self._db = self._journal._connect(self._password)
        self._db.autocommit = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # A beat never waits for a lock (SKIP LOCKED), only perhaps for the network.
            self._thread.join(CONNECT_TIMEOUT)
        self._close()

    def _run(self) -> None:
        interval = self._journal.settings.lease / 3
        while not self._stop.wait(interval):
            try:
                self.beat()
            except psycopg.Error:
                self.failures += 1
                self._close()

    def beat(self) -> None:
        journal = self._journal
        if self._db is None:
            self._db = journal._connect(self._password)
            self._db.autocommit = True
        params = {
            "campaign": journal.campaign,
            "me": journal.sender_id,
            "lease": journal.settings.lease,
        }
        # Rows the sender is writing right now (an outcome not yet committed) are skipped,
        # not waited for: they are sent already, and hold no lease any more.
        self._db.execute(
            f"UPDATE bulkmail_recipients SET lease_until = {_NOW} + %(lease)s "
            "WHERE campaign = %(campaign)s AND key IN ("
            "  SELECT key FROM bulkmail_recipients WHERE campaign = %(campaign)s"
            "  AND claimed_by = %(me)s AND lease_until IS NOT NULL FOR UPDATE SKIP LOCKED)",
            params,
        )
        self._db.execute(
            f"UPDATE bulkmail_senders SET heartbeat = {_NOW} WHERE id IN ("
            "  SELECT id FROM bulkmail_senders WHERE id = %(me)s FOR UPDATE SKIP LOCKED)",
            params,
        )
        self.beats += 1

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                db.close()


# --- errors --------------------------------------------------------------------------------------

_AUTH_HINT = "set PGPASSWORD, ~/.pgpass, or the variable password_env names"


def _message(where: str, exc: psycopg.Error, password_from: str | None = None) -> str:
    """What went wrong with the database ``where``, and what to do, in one line.
    ``password_from``: where the password came from (a variable), if bulkmail knows."""
    text = str(exc)
    lower = " ".join(text.split()).lower()
    state = exc.sqlstate or ""
    gist = _first(text)
    if state in ("28P01", "28000") or any(
        phrase in lower for phrase in ("password authentication failed", "no password supplied")
    ):
        check = (
            f"check the user, and the password in {password_from}"
            if password_from
            else f"check the user and the password: {_AUTH_HINT}"
        )
        return f"the journal database {where} refused the login ({gist}); {check}"
    if state == "3D000" or ("database" in lower and "does not exist" in lower):
        return (
            f"the journal database {where} does not exist; create it (createdb) or correct "
            "the journal setting"
        )
    if state == "42501" or "permission denied" in lower:
        return (
            f"permission denied in the journal database {where} ({gist}); grant the user "
            "the rights it needs (CREATE on the schema the first time, then SELECT, INSERT "
            "and UPDATE on the bulkmail_ tables)"
        )
    if "resolve host" in lower or "could not translate host name" in lower:
        return (
            f"cannot find the host of the journal database {where} ({gist}); check the "
            "host name in the journal setting"
        )
    if lower.startswith("connection failed") or "connection to server" in lower:
        return (
            f"cannot connect to the journal database {where} ({gist}); is the server "
            "running, and does it accept connections there?"
        )
    if (
        state.startswith("08")
        or state in ("57P01", "57P02", "57P03")
        or _lost(lower)
        or (isinstance(exc, psycopg.OperationalError) and not state)
    ):
        return (
            f"lost the connection to the journal database {where} ({gist}); rerun when it "
            "is back: rows left in 'sending' are uncertain and not resent unless asked"
        )
    if state == "40P01":
        return (
            f"the journal database {where} found two senders waiting for each other and "
            "stopped this one; rerun it"
        )
    return f"cannot use the journal database {where}: {gist}"


def _lost(lower: str) -> bool:
    return any(
        phrase in lower
        for phrase in (
            "server closed the connection",
            "connection is closed",
            "connection is lost",
            "consuming input failed",
            "terminating connection",
            "the connection is lost",
            "ssl syscall error",
            "could not receive data",
            "could not send data",
        )
    )


def _first(text: str) -> str:
    """The gist of a libpq message: its first line, without the 'connection to server
    at ... failed:' preamble and the severity, which the message says anyway."""
    gist = " ".join(text.strip().splitlines()[0].split()) if text.strip() else text
    marker = "failed: "
    if gist.startswith("connection") and marker in gist:
        gist = gist.rsplit(marker, 1)[1]
    for severity in ("FATAL: ", "ERROR: "):
        gist = gist.removeprefix(severity)
    return gist.strip().rstrip(".") or text


def _scrub(message: str, password: str | None) -> str:
    """Never show a password, should a server or libpq ever echo one."""
    if password:
        message = message.replace(password, "***")
    return message


def _busy(spans: list[tuple[float, float]]) -> float:
    """How long any run was going: the union of the runs' spans (senders run together)."""
    total = 0.0
    current: tuple[float, float] | None = None
    for start, end in sorted(spans):
        end = max(start, end)
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


def _sender(row: tuple[Any, ...]) -> SenderInfo:
    id_, host, pid, started, heartbeat, state, alive, accepted, failed, uncertain, held = row
    return SenderInfo(
        id=str(id_),
        host=str(host),
        pid=int(pid),
        started=float(started),
        last_seen=float(heartbeat),
        state=str(state),
        alive=bool(alive),
        accepted=int(accepted),
        failed=int(failed),
        uncertain=int(uncertain),
        held=int(held),
    )
