"""Send a campaign: preflight, then one mail at a time through the transport, journaled.

The order of work for `send_campaign`:

1. the preflight renders and builds every mail; any problem stops everything (nothing sent);
2. the journal (locked: one run per campaign) learns the list; recipients accepted in an
   earlier run, failed ones (unless ``retry_failed``) and uncertain ones (unless
   ``resend_uncertain``) are skipped; a campaign whose content changed since its first run
   is refused unless ``allow_changes``;
3. ``confirm`` (the CLI's prompt) sees the plan and may cancel;
4. each mail is rendered again, marked ``sending``, handed to the server at the configured
   rate, and its outcome recorded. A stop request is honoured between two mails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkmail.compose.message import MessageBuilder
from bulkmail.compose.render import Renderer
from bulkmail.deliver.ratelimit import limiter_for
from bulkmail.deliver.smtp import (
    DeliveryUncertain,
    EventHandler,
    SendCancelled,
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
    RecipientError,
    RecipientRefused,
)
from bulkmail.journal.sqlite import Entry, Journal, journal_path
from bulkmail.load.recipients import Skipped, check_address, iter_recipients
from bulkmail.models import Campaign, OutgoingMail, Rate, Recipient, Status
from bulkmail.pipeline import (
    CheckReport,
    Event,
    OnEvent,
    ProblemLog,
    add_warnings,
    as_campaign,
    build_mails,
)

MAX_LISTED = 20


@dataclass
class SendPlan:
    """What a run is about to do, for the user to confirm."""

    campaign: Campaign
    check: CheckReport
    to_send: int
    already_accepted: int
    earlier_failed: int  # failed before and not retried in this run
    uncertain: int  # left "sending" by a crash, not resent in this run


@dataclass
class SendReport:
    """The outcome of a run."""

    plan: SendPlan
    journal: Path
    accepted: int = 0
    failed: int = 0
    uncertain: int = 0  # the connection died before the server answered
    failures: list[tuple[Recipient, str]] = field(default_factory=list)  # the first few
    interrupted: bool = False
    stopped: DeliveryError | None = None  # the error that stopped the batch
    elapsed: float = 0.0
    # Rows the send met that the preflight had not seen (added to the list since): they
    # are left for the next run, which checks them first.
    added: int = 0
    # Mails that could not be built again at their turn (a file changed or vanished since
    # the preflight): not sent, still pending in the journal for the next run.
    unbuilt: list[CampaignError] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.stopped is None


def _digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def content_fingerprint(campaign: Campaign, renderer: Renderer) -> dict[str, str]:
    """A digest of everything that makes up the mails' content, part by part."""
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
    for path in renderer.template_files:
        # Named relative to the campaign file: the same whatever folder bulkmail runs in.
        name = os.path.relpath(path, campaign.path.parent)
        fingerprint[f"template {name}"] = _digest(path.read_bytes())
    for index, spec in enumerate(campaign.attachments):
        content = spec.path if spec.templated else Path(spec.path).read_bytes()
        fingerprint[f"attachment {index + 1}"] = _digest(f"{spec.filename}|") + _digest(content)
    return fingerprint


def _check_unchanged(
    journal: Journal, fingerprint: dict[str, str], campaign: Campaign, allow: bool
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
    campaign: Campaign,
    journal: Journal,
    *,
    limit: int | None,
    retry_failed: bool,
    resend_uncertain: bool,
    on_event: OnEvent | None,
) -> SendPlan:
    """Build every mail, note the list in the journal and count what this run will send."""
    report = CheckReport(campaign)
    problems = ProblemLog()
    plan = SendPlan(campaign, report, 0, 0, 0, 0)

    def note(event: Event) -> None:
        # Every suppressed row, not only the first few that report.skipped keeps.
        skipped = event.skipped
        if skipped is not None and skipped.reason == "suppressed" and not problems.found:
            journal.plan(skipped.recipient, Status.SKIPPED, skipped.detail)
        if on_event is not None:
            on_event(event)

    journal.begin_batch()
    # content=False: the preflight needs each mail built, not its bytes shipped back
    mails = build_mails(campaign, report, problems, limit=limit, on_event=note, content=False)
    for mail in mails:
        if problems.found:
            continue
        journal.plan(mail.recipient)
        entry = journal.status_of(mail.recipient.key)
        if _should_send(entry, retry_failed=retry_failed, resend_uncertain=resend_uncertain):
            plan.to_send += 1
        elif entry is not None and entry.status is Status.ACCEPTED:
            plan.already_accepted += 1
        elif entry is not None and entry.status is Status.FAILED:
            plan.earlier_failed += 1
        elif entry is not None and entry.status is Status.SENDING:
            plan.uncertain += 1
    try:
        problems.raise_if_any()
    except BulkmailError:
        journal.rollback()
        raise
    journal.flush()
    add_warnings(report)
    return plan


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
    if transport is None and campaign.smtp is None:
        raise ConfigError("no 'smtp:' settings: add them to send", where=Location(campaign.path))
    path = journal_path(campaign.journal_dir, campaign.name)
    with Journal(path) as journal:
        plan = _preflight(
            campaign,
            journal,
            limit=limit,
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            on_event=on_event,
        )
        fingerprint = content_fingerprint(campaign, Renderer.load(campaign))
        _check_unchanged(journal, fingerprint, campaign, allow_changes)
        report = SendReport(plan, path)
        if plan.to_send == 0:
            return report
        if confirm is not None and not confirm(plan):
            raise CampaignError("cancelled")
        stop = stop or threading.Event()
        if transport is None:
            transport = _smtp_transport(
                campaign,
                password,
                prompt,
                on_event=_transport_events(campaign, report, on_event),
                sleep=stop.wait,  # a stop cuts a retry's wait short
            )
        # Rows already dealt with are not even rendered: a resume after 9,000 of 10,000
        # builds 1,000 mails. Rows new since the preflight (no entry) are let through, for
        # _deliver to count them.
        unbuilt = ProblemLog(limit=MAX_LISTED)
        wanted = _wanted(journal, retry_failed=retry_failed, resend_uncertain=resend_uncertain)
        mails = build_mails(campaign, CheckReport(campaign), unbuilt, limit=limit, select=wanted)
        _deliver(
            mails,
            unbuilt,
            journal,
            transport,
            report,
            fingerprint,
            rate=campaign.rate,
            retry_failed=retry_failed,
            resend_uncertain=resend_uncertain,
            stop=stop,
            on_event=on_event,
        )
    return report


def _wanted(
    journal: Journal, *, retry_failed: bool, resend_uncertain: bool
) -> Callable[[Recipient], bool]:
    """Which rows to build for sending: the ones this run may send, and rows the journal
    does not know (new since the preflight), which `_deliver` counts in ``report.added``."""

    def wanted(recipient: Recipient) -> bool:
        entry = journal.status_of(recipient.key)
        return entry is None or _should_send(
            entry, retry_failed=retry_failed, resend_uncertain=resend_uncertain
        )

    return wanted


def _deliver(
    mails: Iterable[OutgoingMail],
    unbuilt: ProblemLog,
    journal: Journal,
    transport: Transport,
    report: SendReport,
    fingerprint: dict[str, str],
    *,
    rate: Rate,
    retry_failed: bool,
    resend_uncertain: bool,
    stop: threading.Event,
    on_event: OnEvent | None,
) -> None:
    """Send ``mails`` (built as the loop consumes them; the problems of the ones that
    could not be built are collected in ``unbuilt`` meanwhile) and journal each outcome."""
    limiter = limiter_for(rate, sleep=stop.wait)  # a stop cuts the wait short
    total = report.plan.to_send
    started = time.monotonic()
    journal.start_run()
    recorded = False  # the fingerprint describes what was sent: stored with the first mail
    outcome = "completed"

    def emit(kind: str, mail: OutgoingMail, detail: str = "") -> None:
        if on_event:
            done = report.accepted + report.failed + report.uncertain
            on_event(Event(kind, done, total, mail=mail, detail=detail))

    problems = unbuilt
    try:
        with transport:
            for mail in mails:
                entry = journal.status_of(mail.recipient.key)
                if entry is None:
                    # Added to the list after the preflight: sending it now would leave
                    # no journal row for it (marks update existing rows only), so a
                    # later run would mail it again.
                    report.added += 1
                    continue
                if not _should_send(
                    entry, retry_failed=retry_failed, resend_uncertain=resend_uncertain
                ):
                    continue
                limiter.acquire()
                if stop.is_set():
                    report.interrupted = True
                    outcome = "interrupted"
                    break
                if not recorded:  # committed together with the first mark
                    journal.begin_batch()
                    journal.set_meta("fingerprint", json.dumps(fingerprint, sort_keys=True))
                    recorded = True
                journal.sending(mail.recipient, mail.message_id)
                try:
                    reply = transport.send(mail)
                except RecipientRefused as exc:
                    journal.outcome(mail.recipient, Status.FAILED, exc.code, exc.reply)
                    report.failed += 1
                    if len(report.failures) < MAX_LISTED:
                        report.failures.append((mail.recipient, str(exc)))
                    emit("failed", mail, str(exc))
                    continue
                except SendCancelled:
                    # Stopped while waiting to retry a 4xx: never handed over, so it is
                    # put back as it was, and the run ends as interrupted.
                    journal.unmark(mail.recipient, entry.status)
                    report.interrupted = True
                    outcome = "interrupted"
                    break
                except DeliveryUncertain as exc:
                    # Left as "sending": the next run reports it and does not resend it.
                    report.uncertain += 1
                    emit("uncertain", mail, str(exc))
                    continue
                except DeliveryError:
                    # Connect, TLS or login failed on a reconnect, or the connection kept
                    # dropping before the end of DATA: this mail was never handed over,
                    # so it is not in doubt. Put it back as it was for the next run.
                    journal.unmark(mail.recipient, entry.status)
                    raise
                journal.outcome(mail.recipient, Status.ACCEPTED, 250, reply)
                report.accepted += 1
                emit("sent", mail, reply)
    except DeliveryError as exc:
        report.stopped = exc
        outcome = f"stopped: {exc}"
    except KeyboardInterrupt:
        report.interrupted = True
        outcome = "interrupted"
        raise
    finally:
        for key, error in problems.found.items():
            error.more_rows = problems.rows[key] - 1
        report.unbuilt = list(problems.found.values())
        report.elapsed = time.monotonic() - started
        journal.flush()
        journal.finish_run(outcome)


def _smtp_transport(
    campaign: Campaign,
    password: str | None,
    prompt: Callable[[str], str] | None,
    *,
    on_event: EventHandler | None = None,
    sleep: Callable[[float], bool | None] = time.sleep,
) -> SMTPTransport:
    """The campaign's SMTP transport, with ``password`` or the one its settings point to."""
    if campaign.smtp is None:
        raise ConfigError("no 'smtp:' settings: add them to send", where=Location(campaign.path))
    if password is None:
        password = resolve_password(campaign.smtp, prompt=prompt)
    return SMTPTransport(campaign.smtp, password=password, on_event=on_event, sleep=sleep)


def _transport_events(
    campaign: Campaign, report: SendReport, on_event: OnEvent | None
) -> EventHandler | None:
    """Pass the transport's reconnects and 4xx retries on as run events ("reconnect",
    "retry"), ``detail`` saying what happened: a run that slows down says why."""
    if on_event is None or campaign.smtp is None:
        return None
    where = f"{campaign.smtp.host}:{campaign.smtp.port}"

    def relay(name: str, info: dict[str, Any]) -> None:
        detail = event_text(name, info, where=where)
        if detail is not None:
            done = report.accepted + report.failed + report.uncertain
            on_event(Event(name, done, report.plan.to_send, detail=detail))

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
    renderer = Renderer.load(campaign)
    builder = MessageBuilder.load(campaign)
    recipient = None
    count = 0
    rows = iter_recipients(
        campaign.recipients,
        delimiter=campaign.recipients_delimiter,
        allow_special_domains=campaign.allow_special_domains,
    )
    for item in rows:
        if isinstance(item, RecipientError):
            continue
        count += 1
        if count == row:
            recipient = item.recipient if isinstance(item, Skipped) else item
            break
    if recipient is None:
        raise ConfigError(
            f"the list has {count} recipients; there is no row {row}",
            where=Location(campaign.recipients),
        )
    rendered = renderer.render(recipient)
    # No List-Unsubscribe: the mail client's Unsubscribe button would unsubscribe the row's
    # subscriber, not the tester. The body keeps the row's link, to show the real layout.
    rendered = dataclasses.replace(
        rendered,
        subject=f"[TEST] {rendered.subject}",
        unsubscribe_url=None,
        unsubscribe_mailto=None,
    )
    test_recipient = dataclasses.replace(recipient, email=address, name="")
    mail = builder.build(1, test_recipient, rendered)
    if transport is None:
        transport = _smtp_transport(campaign, password, prompt)
    with transport:
        transport.send(mail)
    return mail
