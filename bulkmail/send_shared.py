"""Send a campaign whose journal is a PostgreSQL database that several senders share.

`bulkmail run campaigns/june.yaml` started on several machines (or several times on one)
against one `journal: postgresql://...` divides the list between them:

1. the preflight runs once per version of the campaign: the first sender (holding the
   campaign's preflight lock) builds every mail, notes the list in the journal and keeps
   the first mails in its spool, to send those of the rows it claims (the others' are
   dropped); a later one finds that version noted (the content's fingerprint, the list's
   and the suppressions' digests) and goes straight to sending;
2. each sender reads the list in order and claims rows a batch at a time (``FOR UPDATE
   SKIP LOCKED``: no two senders hold a row), with a lease its heartbeat keeps alive;
3. each claimed row is marked ``sending`` only if the claim is still its own (a
   compare-and-set, committed before the mail goes), so a row is never handed over
   twice, even by a sender that stalled past its lease;
4. when its pass over the list ends, a sender looks again: rows another sender held and
   lost (it died: its heartbeat stopped) are claimed and sent; while others still hold
   unsent rows it waits, so the run ends when the list is done, not when the first
   sender runs dry. A dead sender's row in flight stays ``sending``: uncertain, reported,
   not resent unless asked, as with one sender.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator

from bulkmail.build import Build, Builder
from bulkmail.deliver.ratelimit import limiter_for
from bulkmail.deliver.transport import Transport
from bulkmail.errors import CampaignError, DeliveryError
from bulkmail.journal.postgres import PostgresJournal
from bulkmail.journal.records import Entry
from bulkmail.load.recipients import list_digest
from bulkmail.models import Campaign, OnEvent, OutgoingMail, Recipient, Status
from bulkmail.record import Recorder
from bulkmail.reports import CheckReport, SendPlan, SendReport
from bulkmail.send import (
    MAX_LISTED,
    _send_each,
    _should_send,
    _spool,
    checked,
    content_fingerprint,
    overall_rate,
)
from bulkmail.spool import Spool

# Rows a sender claims at a time: few enough that a sender that dies strands little for
# a lease, enough that claiming costs little next to sending.
CLAIM_BATCH = 20
# The longest a sender that has nothing left to claim sleeps before looking again.
MAX_POLL = 2.0


class Claims:
    """Which rows of the list this sender sends: a `Builder.mails` ``select`` that claims
    the next batch of rows from the journal when the list reaches past the last claim,
    and keeps each row's entry as claimed for the send (`entry_of`)."""

    def __init__(
        self, journal: PostgresJournal, statuses: Collection[Status], batch: int = CLAIM_BATCH
    ) -> None:
        self._journal = journal
        self._statuses = tuple(statuses)
        self._batch = batch
        self._held: dict[str, Entry] = {}  # claimed, not yet reached by the list
        self._selected: dict[str, Entry] = {}  # reached, on their way to be sent
        self._horizon: float = 0  # the last line claimed ahead; inf: nothing left ahead

    def rewind(self) -> None:
        """Start a new pass over the list: rows behind may have become free."""
        self._horizon = 0

    def __call__(self, recipient: Recipient) -> bool:
        if recipient.line > self._horizon:
            got = self._journal.claim_entries(recipient.line, self._batch, self._statuses)
            self._held.update((entry.key, entry) for entry in got)
            self._horizon = got[-1].line if got else math.inf
        entry = self._held.pop(recipient.key, None)
        if entry is None:
            return False
        self._selected[recipient.key] = entry
        return True

    def entry_of(self, key: str) -> Entry | None:
        """A selected row's entry as it was claimed (no other sender may change a row this
        one holds: no query a mail); another row's, read from the journal."""
        entry = self._selected.pop(key, None)
        return entry if entry is not None else self._journal.status_of(key)


def _wanted_statuses(*, retry_failed: bool, resend_uncertain: bool) -> list[Status]:
    statuses = [Status.PENDING]
    if retry_failed:
        statuses.append(Status.FAILED)
    if resend_uncertain:
        statuses.append(Status.SENDING)
    return statuses


def campaign_version(builder: Builder, fingerprint: dict[str, str], limit: int | None) -> str:
    """What the preflight checked: the content, the list and the suppressions, byte for
    byte. A sender that finds this version noted in the journal need not check again."""
    suppressed = hashlib.sha256("\n".join(sorted(builder.suppressed)).encode()).hexdigest()
    version = {
        **fingerprint,
        "list": str(list_digest(builder.campaign.recipients)),
        "suppressed": suppressed[:16],
        "limit": str(limit),
    }
    return json.dumps(version, sort_keys=True)


def _plan_from_journal(
    campaign: Campaign, journal: PostgresJournal, *, retry_failed: bool, resend_uncertain: bool
) -> SendPlan:
    """The plan of a sender that joins a campaign already checked: the journal's counts."""
    counts = journal.summary().counts
    plan = SendPlan(
        campaign,
        CheckReport(campaign),
        to_send=counts[Status.PENDING],
        already_accepted=counts[Status.ACCEPTED],
        earlier_failed=0 if retry_failed else counts[Status.FAILED],
        uncertain=0 if resend_uncertain else counts[Status.SENDING],
    )
    if retry_failed:
        plan.to_send += counts[Status.FAILED]
    if resend_uncertain:
        plan.to_send += counts[Status.SENDING]
    plan.check.mails = plan.to_send + plan.already_accepted
    return plan


def send_shared(
    builder: Builder,
    *,
    limit: int | None,
    retry_failed: bool,
    resend_uncertain: bool,
    allow_changes: bool,
    make_transport: Callable[[SendReport, threading.Event], Transport],
    confirm: Callable[[SendPlan], bool] | None,
    stop: threading.Event,
    on_event: OnEvent | None,
) -> SendReport:
    """`send_campaign` for a campaign with a PostgreSQL journal (see the module's notes)."""
    campaign = builder.campaign
    settings = campaign.journal
    assert settings is not None
    fingerprint = content_fingerprint(builder)
    version = campaign_version(builder, fingerprint, limit)
    with (
        PostgresJournal(
            settings, campaign.name, sender=True, where=campaign.location("journal")
        ) as journal,
        _spool(campaign) as spool,
    ):
        with journal.preflight_lock():
            if journal.get_meta("preflight") == version:
                plan = _plan_from_journal(
                    campaign, journal, retry_failed=retry_failed, resend_uncertain=resend_uncertain
                )
            else:
                plan = checked(
                    builder,
                    journal,
                    fingerprint,
                    limit=limit,
                    retry_failed=retry_failed,
                    resend_uncertain=resend_uncertain,
                    allow_changes=allow_changes,
                    on_event=on_event,
                    spool=spool,  # this sender's rows come from it, the others' are dropped
                )
                journal.set_meta("preflight", version)
                journal.flush()
        report = SendReport(plan, settings.name)
        if plan.to_send == 0:
            journal.finish_run("completed")  # this sender's part: nothing left to send
            return report
        if confirm is not None and not confirm(plan):
            raise CampaignError("cancelled")
        transport = make_transport(report, stop)
        statuses = _wanted_statuses(retry_failed=retry_failed, resend_uncertain=resend_uncertain)
        recorder = Recorder(journal, report, fingerprint, on_event)
        recorder.start()
        unbuilt: list[CampaignError] = []
        try:
            with transport:
                _passes(
                    builder,
                    journal,
                    transport,
                    recorder,
                    statuses,
                    unbuilt,
                    limit=limit,
                    stop=stop,
                    spool=spool,
                )
        except DeliveryError as exc:  # connecting, TLS or login failed: nothing handed over
            recorder.stopped(exc)
        except KeyboardInterrupt:
            recorder.interrupted()
            raise
        finally:
            recorder.finish(unbuilt)
    return report


def _passes(
    builder: Builder,
    journal: PostgresJournal,
    transport: Transport,
    recorder: Recorder,
    statuses: list[Status],
    unbuilt: list[CampaignError],
    *,
    limit: int | None,
    stop: threading.Event,
    spool: Spool | None = None,
) -> None:
    """Pass over the list, sending the rows this sender claims, until no row is left to
    send by anyone, or the run ends (a stop, an outcome that ends it). The first pass
    takes the mails of its rows from ``spool`` (the preflight's, if this sender made it)."""
    report = recorder.report
    claims = Claims(journal, statuses)
    # The run's start: that of the earliest sender still going, which may have retried
    # rows already.
    started = min((s.started for s in journal.senders() if s.alive), default=time.time())

    def should_send(entry: Entry) -> bool:
        if entry.status is Status.FAILED and entry.updated >= started:
            return False  # refused in this run (by another sender): one retry a run
        return _should_send(
            entry,
            retry_failed=Status.FAILED in statuses,
            resend_uncertain=Status.SENDING in statuses,
        )

    limiter = limiter_for(overall_rate(builder.campaign), sleep=stop.wait)
    lease = journal.settings.lease
    idle = 0  # passes in a row that found free rows in the journal but sent none of them

    def build(select: Callable[[Recipient], bool]) -> Build:
        return builder.mails(limit=limit, select=select, max_problems=MAX_LISTED, html=False)

    while not stop.is_set():
        handed = _handed_over(report)
        mails = _ClaimedPass(claims, build, spool)
        spool = None  # (read once: the passes after the first build every mail)
        _send_each(
            mails,
            journal,
            transport,
            recorder,
            limiter=limiter,
            stop=stop,
            should_send=should_send,
            entry_of=claims.entry_of,
        )
        unbuilt.extend(mails.problems())
        if not report.complete or unbuilt:
            return
        if not _more_to_claim(journal, statuses, recorder, stop, lease):
            if stop.is_set():
                recorder.interrupted()
            return
        # Free rows that whole passes did not send are not this run's to send: not in the
        # list as this sender reads it (past --limit, gone from the file since), or
        # refused once already in this run.
        idle = idle + 1 if _handed_over(report) == handed else 0
        if idle >= 2:
            return
        claims.rewind()
    recorder.interrupted()


class _ClaimedPass:
    """The mails of the rows this sender claims in one pass over the list, in list order:
    first those the preflight kept in ``spool`` (the others are other senders' rows, left
    alone), then the rest, built as they are sent."""

    def __init__(
        self,
        claims: Claims,
        build: Callable[[Callable[[Recipient], bool]], Build],
        spool: Spool | None,
    ) -> None:
        self._claims = claims
        self._build = build
        self._spool = spool
        self._rest: Build | None = None

    def __iter__(self) -> Iterator[OutgoingMail]:
        select: Callable[[Recipient], bool] = self._claims
        if self._spool is not None:
            for mail, _ in self._spool.fresh():
                if self._claims(mail.recipient):
                    yield mail
            self._spool.close()  # its disk space is not needed any more
            taken = self._spool.taken  # (their rows are this sender's, sent, or others')

            def select(recipient: Recipient) -> bool:
                return recipient.key not in taken and self._claims(recipient)

        self._rest = self._build(select)
        yield from self._rest

    def problems(self) -> list[CampaignError]:
        """The rows of the rest that could not be built (changed since the preflight)."""
        return [] if self._rest is None else self._rest.result.problems.errors()


def _handed_over(report: SendReport) -> int:
    return report.accepted + report.failed + report.uncertain


def _more_to_claim(
    journal: PostgresJournal,
    statuses: list[Status],
    recorder: Recorder,
    stop: threading.Event,
    lease: float,
) -> bool:
    """Whether rows are free to claim now, after waiting while other senders hold the
    rest (one of them may die and leave its rows); False when nobody has any left, or
    on a stop."""
    waited = False
    while True:
        claimable, held = journal.outstanding(statuses)
        if claimable:
            return True
        if not held:
            return False
        if not waited:
            recorder.events.emit(
                "waiting",
                detail=f"waiting: other senders hold the last {held:,} rows (should one stop, "
                "its rows come back here)",
            )
            waited = True
        if stop.wait(min(lease / 3, MAX_POLL)):
            return False
