"""The library API: check a campaign, preview it, send it. The CLI is a thin layer over this."""

from __future__ import annotations

import collections
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bulkmail.compose.workers import MailFactory, build_in_order, default_workers
from bulkmail.deliver.preview import PreviewTransport
from bulkmail.errors import CampaignError, PreflightError
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import Skipped, iter_recipients, load_suppressed
from bulkmail.models import Attachment, Campaign, OutgoingMail, Recipient

MAX_PROBLEMS = 20
# Gmail and Yahoo require one-click unsubscribe from bulk senders (2024); below this many
# recipients a campaign is probably not a newsletter, so a missing unsubscribe only warns above.
UNSUBSCRIBE_WARNING_AT = 100


@dataclass(frozen=True)
class Event:
    """Progress of a run, for a CLI or a log: ``kind`` is "built", "skipped", "sent", ..."""

    kind: str
    done: int = 0
    total: int | None = None
    mail: OutgoingMail | None = None
    skipped: Skipped | None = None
    detail: str = ""


OnEvent = Callable[[Event], None]


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


class ProblemLog:
    """Collects preflight problems, merging the same problem on many rows into one line."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.limit = limit
        self.found: dict[tuple[str, str], CampaignError] = {}
        self.rows: dict[tuple[str, str], int] = {}
        self.lines: dict[tuple[str, str], int] = {}  # the first CSV line with it
        self.truncated = False

    def add(self, error: CampaignError, line: int = 0) -> None:
        """Note a problem found on CSV ``line`` (0: not on a row)."""
        key = (str(error.where), error.message)
        if key in self.found:
            self.rows[key] += 1
        elif len(self.found) < self.limit:
            self.found[key] = error
            self.rows[key] = 1
            self.lines[key] = line
        else:
            self.truncated = True

    def raise_if_any(self) -> None:
        """Raise PreflightError with the problems in list order, if there are any."""
        if not self.found:
            return
        problems = []
        for key in sorted(self.found, key=self.lines.__getitem__):
            error = self.found[key]
            error.more_rows = self.rows[key] - 1
            problems.append(error)
        raise PreflightError(problems, truncated=self.truncated)


def count_rows(path: Path) -> int | None:
    """How many records the CSV has (for a progress bar), or None if it can't be read."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            return max(sum(1 for row in csv.reader(file) if row) - 1, 0)
    except (OSError, csv.Error):
        return None


def build_mails(
    campaign: Campaign,
    report: CheckReport,
    problems: ProblemLog,
    *,
    limit: int | None,
    on_event: OnEvent | None = None,
    workers: int | None = None,
    content: bool = True,
    select: Callable[[Recipient], bool] | None = None,
) -> Iterator[OutgoingMail]:
    """Render and build every recipient's mail in list order, noting problems and skipped
    rows. ``workers``: processes to build in (None: as many as pay off, 0: none);
    ``content=False``: the mails may come without their bytes (for counting only);
    ``select``: only the recipients it accepts are built (the others count toward
    ``limit`` all the same)."""
    factory = MailFactory(campaign)  # compiles and reads everything: fails early, here
    report.attachments = tuple(info for _, info in factory.builder.shared.values())
    suppressed = (
        load_suppressed(
            campaign.suppress,
            delimiter=campaign.suppress_delimiter,
            allow_special_domains=campaign.allow_special_domains,
        )
        if campaign.suppress
        else frozenset()
    )
    total = count_rows(campaign.recipients)
    if limit is not None and total is not None:
        total = min(total, limit)
    if workers is None:
        workers = default_workers(total)

    def recipients() -> Iterator[tuple[int, Recipient]]:
        index = 0
        rows = iter_recipients(
            campaign.recipients,
            suppressed=suppressed,
            delimiter=campaign.recipients_delimiter,
            allow_special_domains=campaign.allow_special_domains,
        )
        for row in rows:
            if limit is not None and index >= limit:
                return
            if isinstance(row, CampaignError):
                problems.add(row, (row.where.line or 0) if row.where else 0)
            elif isinstance(row, Skipped):
                if row.reason == "duplicate":
                    report.duplicates += 1
                else:
                    report.suppressed += 1
                if len(report.skipped) < MAX_PROBLEMS:
                    report.skipped.append(row)
                if on_event:
                    on_event(Event("skipped", index, total, skipped=row))
            else:
                index += 1
                if select is None or select(row):
                    yield index, row

    built_mails = build_in_order(campaign, factory, recipients(), workers=workers, content=content)
    for recipient, built in built_mails:
        if isinstance(built, CampaignError):
            problems.add(built, recipient.line)
            continue
        report.mails += 1
        report.total_bytes += built.size
        report.largest = max(report.largest, built.size)
        if on_event:
            on_event(Event("built", built.index, total, mail=built))
        yield built


def add_warnings(report: CheckReport) -> None:
    campaign = report.campaign
    if campaign.unsubscribe is None and report.mails >= UNSUBSCRIBE_WARNING_AT:
        report.warnings.append(
            f"{campaign.path.name}: no 'unsubscribe:' for {report.mails:,} recipients; Gmail "
            "and Yahoo require one-click unsubscribe (List-Unsubscribe) from bulk senders"
        )
    if report.duplicates:
        report.warnings.append(
            f"{report.duplicates:,} duplicate address{'es' if report.duplicates > 1 else ''} "
            "in the list: each address is mailed once"
        )


def as_campaign(campaign: Campaign | str | Path) -> Campaign:
    return campaign if isinstance(campaign, Campaign) else load_campaign(campaign)


def check_campaign(
    campaign: Campaign | str | Path,
    *,
    limit: int | None = None,
    on_event: OnEvent | None = None,
    workers: int | None = None,
) -> CheckReport:
    """Render and build every mail without sending; raise PreflightError listing all problems.

    Example::

        report = check_campaign("campaigns/june.yaml")
        print(report.mails, "mails,", report.total_bytes, "bytes")
    """
    campaign = as_campaign(campaign)
    report = CheckReport(campaign)
    problems = ProblemLog()
    mails = build_mails(
        campaign, report, problems, limit=limit, on_event=on_event, workers=workers, content=False
    )
    collections.deque(mails, maxlen=0)  # build them all; the report counts as they go
    problems.raise_if_any()
    add_warnings(report)
    return report


def preview_campaign(
    campaign: Campaign | str | Path,
    *,
    out: Path | None = None,
    limit: int | None = None,
    on_event: OnEvent | None = None,
    workers: int | None = None,
) -> PreviewReport:
    """Dry run: write every mail as .html and .eml plus an index.html; nothing is sent.

    The folder (``out``, else the campaign's ``preview.out``) is replaced only when every
    mail was built; if the preflight finds problems, PreflightError is raised and the
    previous previews stay as they were.

    Example::

        report = preview_campaign("campaigns/june.yaml", limit=10)
        print("open", report.out / "index.html")
    """
    campaign = as_campaign(campaign)
    report = PreviewReport(campaign, out=(out or campaign.preview_out).resolve())
    problems = ProblemLog()
    with PreviewTransport(report.out, name=campaign.name) as transport:
        mails = build_mails(
            campaign, report, problems, limit=limit, on_event=on_event, workers=workers
        )
        for mail in mails:
            if not problems.found:  # once anything is wrong, only keep checking
                transport.send(mail)
        problems.raise_if_any()
    add_warnings(report)
    return report
