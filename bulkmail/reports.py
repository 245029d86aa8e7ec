"""What the library API returns: the outcome of a check, a preview, a send, a status read.

Plain data with no build or delivery code behind it, so that reading a report (the CLI's
tables, a script's JSON) never loads the templates or the SMTP stack.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from bulkmail.errors import CampaignError, DeliveryError, Location
from bulkmail.journal.records import Entry, SenderInfo, Summary
from bulkmail.models import Attachment, Campaign, FeedbackKind, Recipient, Skipped


@dataclass(frozen=True)
class Finding:
    """One deliverability warning: which rule, what, where, and for which rows."""

    rule: str
    message: str
    where: Location
    row: Location | None = None
    more_rows: int = 0

    def __str__(self) -> str:
        rows = ""
        if self.row is not None:
            more = self.more_rows
            also = f" and {more:,} more row{'s' if more > 1 else ''}" if more else ""
            rows = f" (for {self.row}{also})"
        return f"{self.where}: {self.message} [{self.rule}]{rows}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the rule id, the message, the place and the rows it was found on."""
        return {
            "rule": self.rule,
            "message": self.message,
            "where": str(self.where),
            "row": str(self.row) if self.row else None,
            "rows": self.more_rows + 1 if self.row else 0,
            "text": str(self),
        }

    def as_error(self) -> CampaignError:
        """The finding as a problem, for ``--strict``."""
        error = CampaignError(f"{self.message} [{self.rule}]", where=self.where, row=self.row)
        error.more_rows = self.more_rows
        return error


@dataclass
class CheckReport:
    """What the preflight found: how many mails, which rows are skipped, and warnings."""

    campaign: Campaign
    mails: int = 0
    total_bytes: int = 0
    largest: int = 0
    duplicates: int = 0
    suppressed: int = 0
    attachments: tuple[Attachment, ...] = ()  # the ones every mail carries
    skipped: list[Skipped] = field(default_factory=list)  # the first few, to show
    warnings: list[str] = field(default_factory=list)
    # The deliverability checks' findings (bulkmail/deliverability.py), also in ``warnings``.
    lint: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """The figures as JSON-ready data (``bulkmail check --json`` prints it)."""
        return {
            "campaign": self.campaign.name,
            "mails": self.mails,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "total_bytes": self.total_bytes,
            "warnings": list(self.warnings),
            "lint": [finding.to_dict() for finding in self.lint],
        }


@dataclass
class PreviewReport(CheckReport):
    """A dry run's outcome: the check's figures and where the previews are."""

    out: Path = Path()

    def to_dict(self) -> dict[str, object]:
        """The check's figures and the previews' folder (``bulkmail preview --json``)."""
        return {**super().to_dict(), "out": str(self.out)}


@dataclass
class SendPlan:
    """What a run is about to do, for the user to confirm."""

    campaign: Campaign
    check: CheckReport
    to_send: int
    already_accepted: int
    earlier_failed: int  # failed before and not retried in this run
    uncertain: int  # left "sending" by a crash, not resent in this run

    @property
    def estimated_seconds(self) -> float | None:
        """How long sending ``to_send`` mails takes at the campaign's rate (None: no limit):
        the first ``burst`` go at once."""
        rate = self.campaign.rate
        if len(self.campaign.relays) > 1:  # each relay at its own pace, together
            paces = [(relay.rate or rate).per_second for relay in self.campaign.relays]
            total = sum(pace or 0.0 for pace in paces)
            return None if None in paces or not total else self.to_send / total
        if not rate.per_second:
            return None
        return max(self.to_send - rate.burst, 0) / rate.per_second


@dataclass
class SendReport:
    """The outcome of a run."""

    plan: SendPlan
    journal: Path | str  # the file, or the shared database's URL
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
    # Relays set aside during the run (several relays): (relay, why); the others went on.
    relays_down: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.stopped is None

    @property
    def exit_code(self) -> int:
        """The documented exit code of the run: 0 only when every recipient was accepted.

        4 (the error's code) when delivery stopped, 130 when interrupted, 3 while some
        recipient failed or is in doubt, in this run or in an earlier one that this run did
        not retry (or a mail could not be built again at its turn).
        """
        if self.stopped is not None:
            return self.stopped.exit_code
        if self.interrupted:
            return 130
        plan = self.plan
        refused = self.failed or self.uncertain or self.unbuilt
        return 3 if refused or plan.uncertain or plan.earlier_failed else 0

    def to_dict(self) -> dict[str, object]:
        """The outcome as JSON-ready data (``bulkmail run --json`` prints it)."""
        plan = self.plan
        return {
            "campaign": plan.campaign.name,
            "accepted": self.accepted,
            "failed": self.failed,
            "uncertain": self.uncertain,
            "already_accepted": plan.already_accepted,
            "earlier_failed": plan.earlier_failed,
            "earlier_uncertain": plan.uncertain,
            "suppressed": plan.check.suppressed,
            "duplicates": plan.check.duplicates,
            "interrupted": self.interrupted,
            "stopped": str(self.stopped) if self.stopped else None,
            "failures": [
                {"email": r.email, "line": r.line, "reply": why} for r, why in self.failures
            ],
            "not_sent": [str(problem) for problem in self.unbuilt],
            "added_during_run": self.added,
            "elapsed_seconds": round(self.elapsed, 3),
            "journal": str(self.journal),
            "relays_down": [{"relay": relay, "why": why} for relay, why in self.relays_down],
        }


@dataclass(frozen=True)
class CampaignStatus:
    """Where a campaign stands, from its journal."""

    campaign: Campaign
    journal: Path | str  # the file, or the shared database's URL
    summary: Summary | None  # None: never run
    failed: list[Entry]
    uncertain: list[Entry]
    # A shared journal's senders, each with its progress (empty for a journal file).
    senders: list[SenderInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Where the campaign stands as JSON-ready data (``bulkmail status --json``); times
        in ISO 8601 with this machine's offset."""
        summary = self.summary
        return {
            "campaign": self.campaign.name,
            "journal": str(self.journal),
            "counts": {s.value: n for s, n in summary.counts.items()} if summary else {},
            "runs": summary.runs if summary else 0,
            "started": iso_time(summary.started) if summary else None,
            "last_sent": iso_time(summary.last_sent) if summary else None,
            "rate_per_second": round(summary.rate, 3) if summary and summary.rate else None,
            "feedback": dict(summary.feedback) if summary else {},
            "failed": [_entry_dict(e) for e in self.failed],
            "uncertain": [_entry_dict(e) for e in self.uncertain],
            "senders": [_sender_dict(s) for s in self.senders],
        }


@dataclass(frozen=True)
class Handled:
    """One message read from the mailbox, and what bulkmail did with it."""

    uid: str
    kind: FeedbackKind
    reason: str  # what the message is, e.g. "hard bounce 5.1.1 (user unknown)"
    action: str  # what was done: "suppressed", "counted", "not ours: ...", ...
    address: str | None = None  # whom it concerns, when known
    campaign: str | None = None  # whose mail it answers, when known
    # False: left as it came (not tied to a mail sent from here, or naming nobody), so
    # never deleted.
    acted: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "uid": self.uid,
            "kind": self.kind,
            "reason": self.reason,
            "action": self.action,
            "address": self.address,
            "campaign": self.campaign,
        }


@dataclass
class InboxReport:
    """What `bulkmail inbox` found in the mailbox and did (or, dry, would do)."""

    campaign: Campaign
    mailbox: str  # InboxSettings.identity
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # messages per FeedbackKind
    suppressed: int = 0  # addresses newly put on the suppression list
    unmatched: int = 0  # bounces and complaints about no mail sent from this folder
    already: int = 0  # messages handled by an earlier run, passed over
    deleted: int = 0
    handled: list[Handled] = field(default_factory=list)  # the first MAX_SHOWN of them

    MAX_SHOWN = 200

    @property
    def messages(self) -> int:
        """New messages read in this run."""
        return sum(self.counts.values())

    def note(self, handled: Handled) -> None:
        self.counts[handled.kind] = self.counts.get(handled.kind, 0) + 1
        if len(self.handled) < self.MAX_SHOWN:
            self.handled.append(handled)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``bulkmail inbox --json``)."""
        return {
            "campaign": self.campaign.name,
            "mailbox": self.mailbox,
            "dry_run": self.dry_run,
            "messages": self.messages,
            "counts": dict(self.counts),
            "suppressed": self.suppressed,
            "unmatched": self.unmatched,
            "already_processed": self.already,
            "deleted": self.deleted,
            "handled": [h.to_dict() for h in self.handled],
        }


def iso_time(timestamp: float | None) -> str | None:
    """A journal's timestamp in ISO 8601, to the second, in this machine's time zone."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _sender_dict(sender: SenderInfo) -> dict[str, object]:
    return {
        "id": sender.id,
        "host": sender.host,
        "pid": sender.pid,
        "started": iso_time(sender.started),
        "last_seen": iso_time(sender.last_seen),
        "state": sender.state,
        "alive": sender.alive,
        "accepted": sender.accepted,
        "failed": sender.failed,
        "uncertain": sender.uncertain,
        "held": sender.held,
    }


def _entry_dict(entry: Entry) -> dict[str, object]:
    return {
        "email": entry.email,
        "line": entry.line,
        "attempts": entry.attempts,
        "code": entry.code,
        "reply": entry.reply,
    }
