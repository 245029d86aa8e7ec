"""What a journal holds, whatever keeps it: each row's `Entry`, the campaign's `Summary`,
each sender's `SenderInfo`, and `RunJournal`, the operations a send, `status` and
`inbox` use. journal/sqlite.py keeps a campaign in a file on this machine (the
default); journal/postgres.py keeps it in a PostgreSQL database that several senders
share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bulkmail.models import Recipient, Status

# What `bulkmail inbox` found came back for a row's mail, strongest last: a complaint
# outranks everything, and a soft bounce never hides a hard one.
FEEDBACK = ("soft-bounced", "bounced", "unsubscribed", "complained")


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
    envelope_from: str | None = None
    feedback: str | None = None  # one of FEEDBACK
    feedback_detail: str | None = None


def entry_from_row(row: tuple[Any, ...]) -> Entry:
    """An `Entry` from a row of the journal's columns, in `Entry`'s order (``fields`` as
    JSON text); a row of an old SQLite journal may stop before ``envelope_from``."""
    key, email, line, fields, status, attempts, code, reply, message_id, first, updated = row[:11]
    envelope_from, feedback, feedback_detail = row[11:14] if len(row) > 11 else (None,) * 3
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
        envelope_from=envelope_from,
        feedback=feedback,
        feedback_detail=feedback_detail,
    )


@dataclass(frozen=True)
class Summary:
    """Counts per status and the timing of the campaign's runs."""

    counts: dict[Status, int]
    runs: int
    started: float | None
    last_sent: float | None
    rate: float | None  # accepted mails per second while runs were going
    feedback: dict[str, int] = field(default_factory=dict)  # rows per FEEDBACK kind

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class SenderInfo:
    """One sender of a campaign kept in a shared journal: who it is, how far it got."""

    id: str  # host:pid:random, unique per run
    host: str
    pid: int
    started: float
    last_seen: float  # its last heartbeat
    state: str  # running | completed | interrupted | stopped: <why>
    alive: bool  # running, and its heartbeat is within its lease
    accepted: int = 0
    failed: int = 0
    uncertain: int = 0  # rows it left in 'sending'
    held: int = 0  # rows it holds a live claim on and has not sent yet


class RunJournal(Protocol):
    """A campaign's journal as a run, `status` and `inbox` use it.

    A row is marked ``sending``, and the mark committed durably, before its mail is handed
    over; its outcome is committed with the next mark or by `flush`.
    """

    @property
    def where(self) -> str:
        """Names the journal in messages: its file, or its database (never a password)."""
        ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def start_run(self) -> None: ...

    def finish_run(self, outcome: str) -> None: ...

    def plan(self, recipient: Recipient, status: Status = Status.PENDING, reply: str = "") -> Entry:
        """Note a row of the list; return it as it now stands."""
        ...

    def plan_many(self, recipients: Sequence[Recipient]) -> list[Entry]:
        """`plan` for each of ``recipients`` (pending), in one round trip."""
        ...

    def begin_batch(self) -> None: ...

    def status_of(self, key: str) -> Entry | None: ...

    def sending(
        self,
        recipient: Recipient,
        message_id: str,
        envelope_from: str | None = None,
        *,
        durable: bool = True,
    ) -> bool:
        """Mark and commit; False (nothing changed) if this sender may not send the row.
        ``durable=False`` may return before the mark is durable: `settle` waits for it."""
        ...

    def settle(self) -> None:
        """Wait until the last mark is durable; raise if it could not be made so."""
        ...

    def outcome(
        self, recipient: Recipient, status: Status, code: int | None, reply: str
    ) -> None: ...

    def unmark(self, recipient: Recipient, status: Status) -> None: ...

    def rollback(self) -> None: ...

    def anything_sent(self) -> bool: ...

    def flush(self) -> None: ...

    def entry_at_line(self, line: int) -> Entry | None: ...

    def entry_for_message(self, message_id: str) -> Entry | None: ...

    def note_feedback(self, key: str, feedback: str, detail: str) -> bool: ...

    def entries(self, *statuses: Status) -> Iterator[Entry]: ...

    def summary(self) -> Summary: ...
