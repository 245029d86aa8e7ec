"""What the library API returns: the outcome of a check, a preview, a send, a status read.

Plain data with no build or delivery code behind it, so that reading a report (the CLI's
tables, a script's JSON) never loads the templates or the SMTP stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bulkmail.errors import CampaignError, DeliveryError
from bulkmail.journal.sqlite import Entry, Summary
from bulkmail.models import Attachment, Campaign, Recipient, Skipped


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


@dataclass
class PreviewReport(CheckReport):
    """A dry run's outcome: the check's figures and where the previews are."""

    out: Path = Path()


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


@dataclass(frozen=True)
class CampaignStatus:
    """Where a campaign stands, from its journal."""

    campaign: Campaign
    journal: Path
    summary: Summary | None  # None: never run
    failed: list[Entry]
    uncertain: list[Entry]
