"""Build a campaign's mails: the one step between a loaded campaign and the mails that are
counted (check), written (preview) or sent.

`Builder.load` does everything that can fail before the first row: it compiles every
template, reads and encodes the shared attachments and reads the suppression lists (the
campaign's CSV and the store `bulkmail inbox` fills), once per run. Then each pass over
the list (`Builder.mails`) reads the CSV afresh (it may have changed since the preflight)
and yields the mails in list order, built in this process or in worker processes (see
compose/workers.py); what the pass met (counts, skipped rows, problems) is in its
`BuildResult`, filled as the mails go by.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bulkmail.compose.workers import (
    Built,
    Content,
    MailFactory,
    build_in_order,
    default_workers,
)
from bulkmail.deliverability import Linter, sampled
from bulkmail.errors import CampaignError, ConfigError, Location, PreflightError, RecipientError
from bulkmail.feedback import verp
from bulkmail.feedback.store import Suppression, SuppressionStore
from bulkmail.load.recipients import iter_recipients, load_suppressed
from bulkmail.models import (
    Attachment,
    Campaign,
    Event,
    OnEvent,
    OutgoingMail,
    Recipient,
    Skipped,
    address_key,
)

MAX_PROBLEMS = 20

Select = Callable[[Recipient], bool]


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

    def errors(self) -> list[CampaignError]:
        """The problems in list order, each saying on how many more rows it was found."""
        problems = []
        for key in sorted(self.found, key=self.lines.__getitem__):
            error = self.found[key]
            error.more_rows = self.rows[key] - 1
            problems.append(error)
        return problems

    def raise_if_any(self) -> None:
        """Raise PreflightError with the problems in list order, if there are any."""
        if self.found:
            raise PreflightError(self.errors(), truncated=self.truncated)


@dataclass
class BuildResult:
    """What one pass over the list met: the mails built and their size, the rows skipped
    (duplicates, suppressed: the first few kept to show) and the problems."""

    mails: int = 0
    total_bytes: int = 0
    largest: int = 0
    duplicates: int = 0
    suppressed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    problems: ProblemLog = field(default_factory=ProblemLog)
    lint: Linter | None = None  # the deliverability checks, when the pass runs them

    @property
    def ok(self) -> bool:
        """No problem so far: every mail up to here could be built."""
        return not self.problems.found

    def count_skipped(self, row: Skipped) -> None:
        if row.reason == "duplicate":
            self.duplicates += 1
        else:
            self.suppressed += 1
        if len(self.skipped) < MAX_PROBLEMS:
            self.skipped.append(row)

    def count_built(self, mail: OutgoingMail) -> None:
        self.mails += 1
        self.total_bytes += mail.size
        self.largest = max(self.largest, mail.size)


class Build(Iterator[OutgoingMail]):
    """One pass over the list: the mails in list order, as the caller takes them;
    ``result`` counts what the pass met so far (all of it once the mails are exhausted)."""

    def __init__(self, mails: Iterator[OutgoingMail], result: BuildResult) -> None:
        self._mails = mails
        self.result = result

    def __next__(self) -> OutgoingMail:
        return next(self._mails)


@dataclass(frozen=True)
class Builder:
    """A campaign ready to build: templates compiled, shared files and suppressions read.

    Example::

        builder = Builder.load(campaign)
        result = builder.check()  # every mail built and counted, no bytes kept
        result.problems.raise_if_any()
        for mail in builder.mails(limit=10):
            ...
    """

    campaign: Campaign
    factory: MailFactory
    # Address keys not to mail, and why (shown with each row skipped).
    suppressed: dict[str, str]
    return_paths: ReturnPaths | None = None

    @classmethod
    def load(cls, campaign: Campaign) -> Builder:
        """Compile and read everything the mails are made of; raise what is wrong."""
        factory = MailFactory.load(campaign)
        suppressed: dict[str, str] = {}
        if campaign.suppress:
            keys = load_suppressed(
                campaign.suppress,
                delimiter=campaign.suppress_delimiter,
                allow_special_domains=campaign.allow_special_domains,
            )
            suppressed = dict.fromkeys(keys, "")
        with SuppressionStore(campaign.store_path, create=False) as store:
            for entry in store.entries():
                suppressed.setdefault(address_key(entry.email), _why(entry))
        return cls(campaign, factory, suppressed, ReturnPaths.load(campaign))

    @property
    def template_files(self) -> list[Path]:
        """Every template file the campaign uses (extended and included ones too)."""
        return self.factory.renderer.template_files

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        """The attachments every mail carries."""
        return self.factory.builder.attachments.every_mail

    def mails(
        self,
        *,
        limit: int | None = None,
        select: Select | None = None,
        content: Content = True,
        html: bool = True,
        on_event: OnEvent | None = None,
        workers: int | None = None,
        max_problems: int = MAX_PROBLEMS,
        lint: bool = False,
    ) -> Build:
        """Build the mails of the first ``limit`` recipients, in list order.

        ``select``: only the recipients it accepts are built (the others count toward
        ``limit`` all the same). ``content=False``: the mails come without ``data`` and
        ``html`` (``size`` stays), in worker processes not even shipped back: for
        counting; a callable is asked as the mails are handed to the workers (a batch at
        a time), for a pass that wants the bytes of only some. ``html=False``: without
        ``html`` (only previews show it: a send needs the bytes). ``on_event`` hears each
        row skipped and each mail built. ``workers``: processes to build in (None: as
        many as pay off, 0: none). ``max_problems``: how many different problems to keep
        (each says on how many rows it was found).
        ``lint``: run the deliverability checks (bulkmail/deliverability.py) on the way.
        """
        total = _count_rows(self.campaign.recipients)
        if limit is not None and total is not None:
            total = min(total, limit)
        if workers is None:
            workers = default_workers(total)
        result = BuildResult(problems=ProblemLog(max_problems))
        if lint:
            result.lint = Linter(self.factory)
        rows = self._rows(result, limit, total, select, on_event)
        built = build_in_order(
            self.factory,
            rows,
            workers=workers,
            content=content,
            html=html,
            whole=sampled if lint else None,  # the mails the checks read come whole
        )
        return Build(_counted(built, result, total, on_event, self.return_paths), result)

    def check(
        self,
        *,
        limit: int | None = None,
        on_event: OnEvent | None = None,
        workers: int | None = None,
    ) -> BuildResult:
        """Build every mail without keeping it; the result says what was found."""
        build = self.mails(
            limit=limit, on_event=on_event, workers=workers, content=False, lint=True
        )
        collections.deque(build, maxlen=0)
        return build.result

    def test_mail(self, row: int, to: str) -> OutgoingMail:
        """The ``row``-th recipient's mail (counting valid rows, skipped ones too) addressed
        to ``to`` instead, marked as a test and without List-Unsubscribe: the mail client's
        Unsubscribe button would unsubscribe the row's subscriber, not the tester. The body
        keeps the row's link, to show the real layout."""
        recipient = self._nth_recipient(row)
        rendered = self.factory.renderer.render(recipient)
        rendered = dataclasses.replace(
            rendered,
            subject=f"[TEST] {rendered.subject}",
            unsubscribe_url=None,
            unsubscribe_mailto=None,
        )
        tester = dataclasses.replace(recipient, email=to, name="")
        mail = self.factory.builder.build(1, tester, rendered)
        # Its Cc header shows who the copies go to, but a test goes to the tester only;
        # its bounce is nobody's on the list (no VERP token).
        return dataclasses.replace(mail, copies=(), sender=self.campaign.return_path or mail.sender)

    def _nth_recipient(self, row: int) -> Recipient:
        campaign = self.campaign
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
                return item.recipient if isinstance(item, Skipped) else item
        raise ConfigError(
            f"the list has {count} recipients; there is no row {row}",
            where=Location(campaign.recipients),
        )

    def _rows(
        self,
        result: BuildResult,
        limit: int | None,
        total: int | None,
        select: Select | None,
        on_event: OnEvent | None,
    ) -> Iterator[tuple[int, Recipient]]:
        """The recipients to build, numbered in list order; skipped rows and invalid ones
        go to ``result`` as they are read."""
        index = 0
        rows = iter_recipients(
            self.campaign.recipients,
            suppressed=self.suppressed,
            delimiter=self.campaign.recipients_delimiter,
            allow_special_domains=self.campaign.allow_special_domains,
        )
        for row in rows:
            if limit is not None and index >= limit:
                return
            if isinstance(row, CampaignError):
                result.problems.add(row, (row.where.line or 0) if row.where else 0)
            elif isinstance(row, Skipped):
                result.count_skipped(row)
                if on_event:
                    on_event(Event("skipped", index, total, skipped=row))
            else:
                index += 1
                if select is None or select(row):
                    yield index, row


@dataclass(frozen=True)
class ReturnPaths:
    """Each mail's own envelope sender (VERP): ``bounces+<token>@example.com``, where the
    token names the campaign and the row and carries a MAC, so a bounce to it says whose
    mail bounced and can't be forged (feedback/verp.py)."""

    address: str
    campaign: str
    secret: bytes = field(repr=False)

    @classmethod
    def load(cls, campaign: Campaign) -> ReturnPaths | None:
        """The campaign's return path with its key (made on first use), or None."""
        if campaign.return_path is None:
            return None
        if campaign.return_path_secret_env is not None:
            secret = verp.secret_from_env(campaign.return_path_secret_env)
        else:
            secret = verp.load_secret(campaign.journal_dir / verp.SECRET_FILE)
        return cls(campaign.return_path, campaign.name, secret)

    def of(self, recipient: Recipient) -> str:
        return verp.make_address(
            self.address, self.secret, campaign=self.campaign, line=recipient.line,
            key=recipient.key,
        )  # fmt: skip


def _why(entry: Suppression) -> str:
    """A store entry as the skipped row shows it: "complaint, 2026-06-02, june"."""
    day = time.strftime("%Y-%m-%d", time.gmtime(entry.added))
    return ", ".join(filter(None, [entry.reason.replace("_", " "), day, entry.campaign]))


def _counted(
    built: Iterator[tuple[Recipient, Built]],
    result: BuildResult,
    total: int | None,
    on_event: OnEvent | None,
    return_paths: ReturnPaths | None = None,
) -> Iterator[OutgoingMail]:
    """The mails built, counted in ``result``; the problems of the others noted there."""
    for recipient, mail in built:
        if isinstance(mail, CampaignError):
            result.problems.add(mail, recipient.line)
            continue
        if return_paths is not None:
            mail = dataclasses.replace(mail, sender=return_paths.of(recipient))
        result.count_built(mail)
        if result.lint is not None:
            result.lint.note(recipient, mail)
        if on_event:
            on_event(Event("built", mail.index, total, mail=mail))
        yield mail


def _count_rows(path: Path) -> int | None:
    """How many records the CSV has (for a progress bar), or None if it can't be read."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            return max(sum(1 for row in csv.reader(file) if row) - 1, 0)
    except (OSError, csv.Error):
        return None
