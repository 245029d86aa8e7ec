"""Send a campaign: preflight, then one mail at a time through the transport, journaled.

The order of work for `send_campaign`:

1. the preflight renders and builds every mail; any problem stops everything (nothing sent);
2. the journal (locked: one run per campaign) learns the list; recipients accepted in an
   earlier run, failed ones (unless ``retry_failed``) and uncertain ones (unless
   ``resend_uncertain``) are skipped; a campaign whose content changed since its first run
   is refused unless ``allow_changes``;
3. ``confirm`` (the CLI's prompt) sees the plan and may cancel;
4. each mail is marked ``sending``, handed to the server at the configured rate, and its
   outcome recorded. A stop request is honoured between two mails. The mails of the first
   part of the list come from the preflight's spool (`bulkmail.spool`: built once); the
   rest are built again as they are sent.

Step 4 is `_send_each`: `deliver.outcome.send_one` says what became of a mail, and the
`record.Recorder` turns that into the journal, the report and the events.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bulkmail.build import Build, Builder
from bulkmail.deliver.outcome import send_one
from bulkmail.deliver.ratelimit import RateLimiter, limiter_for
from bulkmail.deliver.relays import relay_event_text, relay_passwords, relay_pool
from bulkmail.deliver.smtp import (
    EventHandler,
    SMTPTransport,
    event_text,
    resolve_password,
)
from bulkmail.deliver.transport import Transport
from bulkmail.errors import (
    BulkmailError,
    CampaignError,
    ConfigError,
    DeliveryError,
    Location,
)
from bulkmail.journal.records import Entry, RunJournal
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.load.campaign import as_campaign
from bulkmail.load.recipients import check_address, list_digest
from bulkmail.models import (
    Campaign,
    Event,
    EventKind,
    OnEvent,
    OutgoingMail,
    Rate,
    Recipient,
    Status,
)
from bulkmail.pipeline import reported
from bulkmail.record import Recorder, RunEvents
from bulkmail.reports import CheckReport, SendPlan, SendReport
from bulkmail.spool import MAX_AGE, Spool, spool_bytes

MAX_LISTED = 20
# Rows the preflight notes in the journal at once: one round trip to a PostgreSQL journal
# for them all. Their mails wait meanwhile (at most this many: memory stays flat).
PLAN_BATCH = 64


def _digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def content_fingerprint(builder: Builder) -> dict[str, str]:
    """A digest of everything that makes up the mails' content, part by part."""
    campaign = builder.campaign
    parts = {
        "from": campaign.sender,
        "reply_to": campaign.reply_to or "",
        "subject": campaign.subject,
        "data": json.dumps(campaign.data, sort_keys=True, default=str),
        "headers": json.dumps(dict(campaign.headers), sort_keys=True),
        "unsubscribe": repr(campaign.unsubscribe),
        "base_url": campaign.base_url or "",
    }
    fingerprint = {key: _digest(value) for key, value in parts.items()}
    for path in builder.template_files:
        # Named relative to the campaign file: the same whatever folder bulkmail runs in.
        name = os.path.relpath(path, campaign.path.parent)
        fingerprint[f"template {name}"] = _digest(path.read_bytes())
    for index, spec in enumerate(campaign.attachments):
        content = spec.path if spec.templated else Path(spec.path).read_bytes()
        fingerprint[f"attachment {index + 1}"] = _digest(f"{spec.filename}|") + _digest(content)
    return fingerprint


def _check_unchanged(
    journal: RunJournal, fingerprint: dict[str, str], campaign: Campaign, allow: bool
) -> None:
    """Refuse to go on with content other than what earlier recipients were sent."""
    stored = journal.get_meta("fingerprint")
    if stored is not None and not allow and journal.anything_sent():
        before = json.loads(stored)
        changed = sorted(
            k for k in before.keys() | fingerprint.keys() if before.get(k) != fingerprint.get(k)
        )
        if changed:
            raise ConfigError(
                f"the campaign changed since its first run ({', '.join(changed)}); earlier "
                "recipients got the old version. Rerun with --allow-changes to send the new "
                "one to the rest",
                where=Location(campaign.path),
            )


def _should_send(entry: Entry | None, *, retry_failed: bool, resend_uncertain: bool) -> bool:
    if entry is None or entry.status is Status.PENDING:
        return True
    if entry.status is Status.FAILED:
        return retry_failed
    if entry.status is Status.SENDING:
        return resend_uncertain
    return False


def _preflight(
    builder: Builder,
    journal: RunJournal,
    *,
    limit: int | None,
    retry_failed: bool,
    resend_uncertain: bool,
    on_event: OnEvent | None,
    spool: Spool | None = None,
) -> SendPlan:
    """Build every mail, note the list in the journal and count what this run will send;
    keep the mails to send in ``spool`` while it has room."""
    campaign = builder.campaign
    plan = SendPlan(campaign, CheckReport(campaign), 0, 0, 0, 0)

    def note(event: Event) -> None:
        # Every suppressed row, not only the first few that the result keeps.
        skipped = event.skipped
        if skipped is not None and skipped.reason == "suppressed" and mails.result.ok:
            journal.plan(skipped.recipient, Status.SKIPPED, skipped.detail)
        if on_event is not None:
            on_event(event)

    journal.begin_batch()
    # The bytes are shipped back from the workers only while the spool has room.
    content = (lambda: spool.room) if spool is not None else False
    mails = builder.mails(limit=limit, on_event=note, content=content, html=False, lint=True)
    waiting: list[OutgoingMail] = []  # planned in the journal PLAN_BATCH at a time

    def plan_waiting() -> None:
        entries = journal.plan_many([mail.recipient for mail in waiting])  # as they now stand
        for mail, entry in zip(waiting, entries, strict=True):
            sends = _count(
                plan, entry, retry_failed=retry_failed, resend_uncertain=resend_uncertain
            )
            if sends and spool is not None:
                spool.add(mail, entry)
        waiting.clear()

    for mail in mails:
        if mails.result.ok:  # once anything is wrong, only keep checking
            waiting.append(mail)
            if len(waiting) >= PLAN_BATCH:
                plan_waiting()
    if mails.result.ok:
        plan_waiting()
    try:
        mails.result.problems.raise_if_any()
    except BulkmailError:
        journal.rollback()
        raise
    journal.flush()
    reported(plan.check, builder, mails.result)
    return plan


def checked(
    builder: Builder,
    journal: RunJournal,
    fingerprint: dict[str, str],
    *,
    limit: int | None,
    retry_failed: bool,
    resend_uncertain: bool,
    allow_changes: bool,
    on_event: OnEvent | None,
    spool: Spool | None = None,
) -> SendPlan:
    """The preflight (every mail built, the list noted in the journal, the first ones
    kept in ``spool``), then the check that the content is what earlier recipients got:
    the plan of the run."""
    plan = _preflight(
        builder,
        journal,
        limit=limit,
        retry_failed=retry_failed,
        resend_uncertain=resend_uncertain,
        on_event=on_event,
        spool=spool,
    )
    _check_unchanged(journal, fingerprint, builder.campaign, allow_changes)
    return plan


def _count(
    plan: SendPlan, entry: Entry | None, *, retry_failed: bool, resend_uncertain: bool
) -> bool:
    """Count a recipient in the plan: to send in this run (True), or why not."""
    if _should_send(entry, retry_failed=retry_failed, resend_uncertain=resend_uncertain):
        plan.to_send += 1
        return True
    if entry is not None and entry.status is Status.ACCEPTED:
        plan.already_accepted += 1
    elif entry is not None and entry.status is Status.FAILED:
        plan.earlier_failed += 1
    elif entry is not None and entry.status is Status.SENDING:
        plan.uncertain += 1
    return False


def send_campaign(
    campaign: Campaign | str | Path,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    resend_uncertain: bool = False,
    allow_changes: bool = False,
    transport: Transport | None = None,
    password: str | None = None,
    prompt: Callable[[str], str] | None = None,
    confirm: Callable[[SendPlan], bool] | None = None,
    stop: threading.Event | None = None,
    on_event: OnEvent | None = None,
) -> SendReport:
    """Check, then send every mail of a campaign that the journal has not seen accepted.

    ``transport`` defaults to an SMTPTransport for the campaign's ``smtp:`` settings, with
    ``password`` (else the ``password_env`` variable, else ``prompt``). Returns a report;
    raises PreflightError (nothing sent), ConfigError or JournalError before sending, and
    never raises once mails are going out: a DeliveryError that stops the batch is in
    ``report.stopped``. Setting ``stop`` ends the run between two mails (the CLI sets it
    on Ctrl-C and SIGTERM), with ``report.interrupted`` set.

    Example::

        report = send_campaign("campaigns/june.yaml", confirm=lambda plan: True)
        print(report.accepted, "accepted,", report.failed, "failed")
    """
    campaign = as_campaign(campaign)
    if transport is None and not campaign.all_relays:
        raise ConfigError("no 'smtp:' settings: add them to send", where=Location(campaign.path))
    builder = Builder.load(campaign)  # compiled and read once, for the preflight and the send
    stop = stop or threading.Event()

    def make_transport(report: SendReport, stop: threading.Event) -> Transport:
        if transport is not None:
            return transport
        return _smtp_transport(
            campaign,
            password,
            prompt,
            on_event=_transport_events(campaign, report, on_event),
            sleep=stop.wait,  # a stop cuts a retry's or a relay's wait short
            stop=stop,
        )

    if campaign.journal is not None:
        from bulkmail.send_shared import send_shared  # psycopg only where it is used

        return send_shared(
            builder,
            limit=limit,
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            allow_changes=allow_changes,
            make_transport=make_transport,
            confirm=confirm,
            stop=stop,
            on_event=on_event,
        )
    path = journal_path(campaign.journal_dir, campaign.name)
    with Journal(path) as journal, _spool(campaign) as spool:
        fingerprint = content_fingerprint(builder)
        listed = list_digest(campaign.recipients)  # the list as the preflight reads it
        plan = checked(
            builder,
            journal,
            fingerprint,
            limit=limit,
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            allow_changes=allow_changes,
            on_event=on_event,
            spool=spool,
        )
        report = SendReport(plan, path)
        if plan.to_send == 0:
            return report
        if confirm is not None and not confirm(plan):
            raise CampaignError("cancelled")
        live = make_transport(report, stop)
        # The spool's mails first; then the rest, built as they are sent. Rows already
        # dealt with are not even rendered: a resume after 9,000 of 10,000 builds 1,000
        # mails. Rows new since the preflight (no entry) are let through, for _deliver to
        # count them.
        wanted = _Wanted(
            journal,
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            taken=spool.taken,
        )
        mails = _SpooledThenBuilt(
            spool,
            wanted,
            lambda: builder.mails(limit=limit, select=wanted, max_problems=MAX_LISTED, html=False),
            unchanged=lambda: listed is not None and list_digest(campaign.recipients) == listed,
        )
        _deliver(
            mails,
            mails.problems,
            journal,
            live,
            report,
            fingerprint,
            rate=overall_rate(campaign),
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            stop=stop,
            on_event=on_event,
            entry_of=wanted.entry_of,
        )
    return report


def _spool(campaign: Campaign) -> Spool:
    """The preflight's spool for this run: in the journal's folder (the system's
    temporary folder when there is none: a PostgreSQL journal), no more mails than the run
    sends before they are ``MAX_AGE`` old, and ``BULKMAIL_SPOOL_MB`` megabytes (default 64;
    0: no spool, every mail is built again as it is sent)."""
    per_second = _pace(campaign)
    most = None if per_second is None else max(1, int(per_second * MAX_AGE))
    folder = campaign.journal_dir
    if not folder.is_dir():
        folder = Path(tempfile.gettempdir())
    return Spool(folder, max_bytes=spool_bytes(), max_mails=most)


def _pace(campaign: Campaign) -> float | None:
    """Mails a second the run sends at most (None: as fast as the server takes them)."""
    relays = campaign.all_relays
    if len(relays) <= 1:
        return campaign.rate.per_second
    rates = [(relay.rate or campaign.rate).per_second for relay in relays]
    return None if None in rates else sum(rate or 0.0 for rate in rates)


class _SpooledThenBuilt:
    """The mails of a send, in list order: the spool's, while they are fresh; then the
    rest, built as they are sent (``build`` starts that pass once the spool is done).

    When the spool held every mail the preflight found to send and the list is byte for
    byte the one the preflight read (``unchanged``), there is no rest: the pass is not
    made. Otherwise it reads the whole list again, so rows added since the preflight are
    counted (`_Wanted`), not passed over in silence.
    """

    def __init__(
        self,
        spool: Spool,
        wanted: _Wanted,
        build: Callable[[], Build],
        *,
        unchanged: Callable[[], bool],
    ) -> None:
        self._spool = spool
        self._wanted = wanted
        self._build = build
        self._unchanged = unchanged
        self._rest: Build | None = None

    def __iter__(self) -> Iterator[OutgoingMail]:
        for mail, entry in self._spool.fresh():
            self._wanted.keep(mail.recipient.key, entry)
            yield mail
        self._spool.close()  # its disk space is not needed any more
        if self._spool.complete and self._unchanged():
            return
        self._rest = self._build()
        yield from self._rest

    def problems(self) -> list[CampaignError]:
        """The rows of the rest that could not be built (changed since the preflight)."""
        return [] if self._rest is None else self._rest.result.problems.errors()


class _Wanted:
    """Which rows to build for sending: the ones this run may send, but not those the
    spool already handed out (``taken``), and rows the journal does not know (new since
    the preflight), which `_deliver` counts in ``report.added``.

    Each row's entry, read to decide, is kept until its mail comes to be sent
    (`entry_of`): one run holds the journal, so it has not changed meanwhile, and the
    journal is read once per mail, not twice.
    """

    def __init__(
        self,
        journal: RunJournal,
        *,
        retry_failed: bool,
        resend_uncertain: bool,
        taken: set[str] | None = None,
    ) -> None:
        self._journal = journal
        self._retry_failed = retry_failed
        self._resend_uncertain = resend_uncertain
        self._taken = taken if taken is not None else set()
        self._entries: dict[str, Entry | None] = {}  # rows on their way to be sent

    def keep(self, key: str, entry: Entry | None) -> None:
        """Note a row's entry, read elsewhere (the preflight), for `entry_of`."""
        self._entries[key] = entry

    def __call__(self, recipient: Recipient) -> bool:
        if recipient.key in self._taken:
            return False  # sent from the spool in this run (or tried: its outcome stands)
        entry = self._journal.status_of(recipient.key)
        if entry is None or _should_send(
            entry, retry_failed=self._retry_failed, resend_uncertain=self._resend_uncertain
        ):
            self._entries[recipient.key] = entry
            return True
        return False

    def entry_of(self, key: str) -> Entry | None:
        """The entry of a row let through, as it was read (once)."""
        if key in self._entries:
            return self._entries.pop(key)
        return self._journal.status_of(key)


def _deliver(
    mails: Iterable[OutgoingMail],
    unbuilt: Callable[[], list[CampaignError]],
    journal: RunJournal,
    transport: Transport,
    report: SendReport,
    fingerprint: dict[str, str],
    *,
    rate: Rate,
    retry_failed: bool,
    resend_uncertain: bool,
    stop: threading.Event,
    on_event: OnEvent | None,
    entry_of: Callable[[str], Entry | None] | None = None,
) -> None:
    """Send ``mails`` (built as the loop consumes them; ``unbuilt`` says, at the end,
    which rows could not be built) and record each outcome.

    Never raises a DeliveryError: one that stops the batch ends up in ``report.stopped``.
    """
    recorder = Recorder(journal, report, fingerprint, on_event)
    recorder.start()
    try:
        with transport:
            _send_each(
                mails,
                journal,
                transport,
                recorder,
                limiter=limiter_for(rate, sleep=stop.wait),  # a stop cuts the wait short
                stop=stop,
                should_send=functools.partial(
                    _should_send, retry_failed=retry_failed, resend_uncertain=resend_uncertain
                ),
                entry_of=entry_of,
            )
    except DeliveryError as exc:  # connecting, TLS or login failed: nothing was handed over
        recorder.stopped(exc)
    except KeyboardInterrupt:  # the mail in flight, if any, stays in doubt ("sending")
        recorder.interrupted()
        raise
    finally:
        recorder.finish(unbuilt())


def _send_each(
    mails: Iterable[OutgoingMail],
    journal: RunJournal,
    transport: Transport,
    recorder: Recorder,
    *,
    limiter: RateLimiter,
    stop: threading.Event,
    should_send: Callable[[Entry], bool],
    entry_of: Callable[[str], Entry | None] | None = None,
) -> None:
    """The path of each mail: skip it, or wait for its turn, mark it, send it, record it;
    until the last mail, a stop, or an outcome that ends the run. ``entry_of``: where
    each row's journal entry comes from (by default, read from the journal now).

    While the server reads a mail, the next one is taken and, if it may start at once,
    marked (see `_Upcoming`): its commit waits for the disk while the server works.
    """
    upcoming = _Upcoming(
        mails, entry_of or journal.status_of, should_send, recorder, limiter=limiter, stop=stop
    )
    try:
        while (taken := upcoming.take()) is not None:
            mail, entry, marked = taken
            limiter.acquire()  # at once for a mail marked ahead: it could start then
            if stop.is_set():
                if marked:
                    journal.unmark(mail.recipient, entry.status)
                recorder.interrupted()
                return
            # Else the mark's commit goes to disk while the transport says MAIL FROM and
            # RCPT TO; the transport waits for it (settle) before DATA: only then may it go.
            if not marked and not recorder.mark(mail, durable=False):
                continue  # another sender of a shared journal has the row now
            outcome = send_one(
                transport,
                mail,
                before_data=None if marked else journal.settle,
                after_data=upcoming.mark_next,
            )
            recorder.record(mail, outcome, was=entry.status)
            upcoming.raise_failure()
            if outcome.ends_run:
                return
    finally:
        upcoming.unmark_next()  # marked ahead, but the run ends before it goes


class _Upcoming:
    """The mails still to send, each with its journal entry, taken one at a time; the
    next one can be taken and marked ahead (`mark_next`), while the server reads the
    one before.

    A mark is committed and synced before its mail's DATA, wherever it is made. Made
    ahead, the wait for the disk (and, with a shared journal, for the database) overlaps
    the server's work on the mail before, the longest wait of a transaction, instead of
    the new mail's MAIL FROM and RCPT TO, and no thread hands it over.

    The price, only if the process dies at that moment (a kill, a power cut): the mail
    marked ahead was not handed over, yet the journal has it in doubt, with the one in
    flight; and the outcome of the mail before that is committed with the mark after,
    so it too is in doubt until then. Neither is mailed again without the user's word.
    Every way a run ends that bulkmail sees (the end of the list, a stop, Ctrl-C, an
    error) undoes a mark made ahead for a mail that did not go.
    """

    def __init__(
        self,
        mails: Iterable[OutgoingMail],
        entry_of: Callable[[str], Entry | None],
        should_send: Callable[[Entry], bool],
        recorder: Recorder,
        *,
        limiter: RateLimiter,
        stop: threading.Event,
    ) -> None:
        self._mails = iter(mails)
        self._entry_of = entry_of
        self._should_send = should_send
        self._recorder = recorder
        self._limiter = limiter
        self._stop = stop
        self._next: tuple[OutgoingMail, Entry] | None = None
        self._marked = False  # the mark of `_next` may be in the journal
        self._failure: Exception | None = None

    def take(self) -> tuple[OutgoingMail, Entry, bool] | None:
        """The next mail to send, its entry, and whether it is marked already; None at
        the end of the list."""
        found = self._next or self._pull()
        marked = self._marked
        self._next, self._marked = None, False
        return None if found is None else (*found, marked)

    def mark_next(self) -> None:
        """Take the next mail and mark it, if it may start now (no stop, and a rate that
        lets it); once (a retry of the mail before calls this again)."""
        if self._next is not None or self._stop.is_set() or not self._limiter.ready():
            return
        try:
            self._next = self._pull()
            if self._next is None:
                return
            self._marked = True  # from here on, whatever happens, the mark may be there
            if not self._recorder.mark(self._next[0], durable=True):
                # another sender of a shared journal has the row now: not this run's
                self._next, self._marked = None, False
        except Exception as exc:  # raised once the mail before has its outcome
            self._failure = exc

    def raise_failure(self) -> None:
        """What went wrong taking or marking the next mail, now that the mail before it
        has its outcome recorded."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def unmark_next(self) -> None:
        """Undo the mark of a mail marked ahead that will not go now."""
        if self._next is not None and self._marked:
            mail, entry = self._next
            self._marked = False
            self._recorder.journal.unmark(mail.recipient, entry.status)

    def _pull(self) -> tuple[OutgoingMail, Entry] | None:
        for mail in self._mails:
            entry = self._entry_of(mail.recipient.key)
            if entry is None:
                self._recorder.added()  # new since the preflight: left for the next run
                continue
            if self._should_send(entry):  # else accepted, skipped, or failed or in
                return mail, entry  # doubt and not to be resent
        return None


def overall_rate(campaign: Campaign) -> Rate:
    """The pace of the run as a whole: the campaign's `rate:`; with several relays, none
    (each relay keeps its own pace, by default the campaign's `rate:`)."""
    if len(campaign.all_relays) > 1:
        return Rate(per_second=None)
    return campaign.rate


def _smtp_transport(
    campaign: Campaign,
    password: str | None,
    prompt: Callable[[str], str] | None,
    *,
    on_event: EventHandler | None = None,
    sleep: Callable[[float], bool | None] = time.sleep,
    stop: threading.Event | None = None,
) -> Transport:
    """The campaign's SMTP transport, with ``password`` or the one its settings point to;
    with several relays, a `RelayPool` of them, each with its own password."""
    relays = campaign.all_relays
    if not relays:
        raise ConfigError("no 'smtp:' settings: add them to send", where=Location(campaign.path))
    if len(relays) > 1:
        # Each relay is paced by its own rate, else by the campaign's `rate:`.
        paced = [replace(relay, rate=relay.rate or campaign.rate) for relay in relays]
        passwords = relay_passwords(paced, prompt=prompt)
        return relay_pool(paced, passwords, sleep=sleep, stop=stop, on_event=on_event)
    if password is None:
        password = resolve_password(relays[0], prompt=prompt)
    return SMTPTransport(relays[0], password=password, on_event=on_event, sleep=sleep)


# The transport's events a user sees (event_text says the others are routine).
_TRANSPORT_EVENTS: dict[str, EventKind] = {
    "reconnect": "reconnect",
    "retry": "retry",
    "relay-down": "relay-down",
}


def _transport_events(
    campaign: Campaign, report: SendReport, on_event: OnEvent | None
) -> EventHandler:
    """Pass the transport's reconnects, 4xx retries and relays set aside on as run events
    ("reconnect", "retry", "relay-down"), ``detail`` saying what happened: a run that
    slows down says why. A relay set aside is noted in the report too."""
    several = len(campaign.all_relays) > 1
    smtp = campaign.smtp
    where = f"{smtp.host}:{smtp.port}" if smtp is not None else "?"
    events = RunEvents(report, on_event)  # the stream the Recorder speaks into

    def relay(name: str, info: dict[str, Any]) -> None:
        if name == "relay-down":
            report.relays_down.append((str(info["relay"]), str(info["why"])))
        detail = relay_event_text(name, info) if several else event_text(name, info, where=where)
        kind = _TRANSPORT_EVENTS.get(name)
        if detail is not None and kind is not None:
            events.emit(kind, detail=detail)

    return relay


def send_test(
    campaign: Campaign | str | Path,
    *,
    to: str,
    row: int = 1,
    transport: Transport | None = None,
    password: str | None = None,
    prompt: Callable[[str], str] | None = None,
) -> OutgoingMail:
    """Send the mail rendered for the ``row``-th recipient to ``to`` only, marked as a test.

    Nothing is journaled. The test mail has no List-Unsubscribe headers, but its body is
    the row's own, unsubscribe link included: following that link unsubscribes the row's
    subscriber. Example::

        send_test("campaigns/june.yaml", to="me@example.com", row=3)
    """
    campaign = as_campaign(campaign)
    address = check_address(
        to, Location("--to"), allow_special_domains=campaign.allow_special_domains
    )
    mail = Builder.load(campaign).test_mail(row, address)
    if transport is None:
        transport = _smtp_transport(campaign, password, prompt)
    with transport:
        transport.send(mail)
    return mail
