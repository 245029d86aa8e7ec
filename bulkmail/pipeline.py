"""The library API: check a campaign, preview it. The CLI is a thin layer over this.

Both build every mail with one `Builder` (bulkmail/build.py); sending is in send.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from bulkmail.build import Builder, BuildResult
from bulkmail.load.campaign import as_campaign
from bulkmail.models import Campaign, OnEvent
from bulkmail.reports import CheckReport, PreviewReport

__all__ = ["OnEvent", "add_warnings", "check_campaign", "preview_campaign", "reported"]

# Gmail and Yahoo require one-click unsubscribe from bulk senders (2024); below this many
# recipients a campaign is probably not a newsletter, so a missing unsubscribe only warns above.
UNSUBSCRIBE_WARNING_AT = 100

Report = TypeVar("Report", bound=CheckReport)


def reported(report: Report, builder: Builder, result: BuildResult) -> Report:
    """``report`` with what a build found: its counts, the skipped rows to show, the
    attachments every mail carries, and the warnings they call for."""
    report.mails = result.mails
    report.total_bytes = result.total_bytes
    report.largest = result.largest
    report.duplicates = result.duplicates
    report.suppressed = result.suppressed
    report.skipped = list(result.skipped)
    report.attachments = builder.attachments
    add_warnings(report)
    if result.lint is not None:
        report.lint = result.lint.findings()
        report.warnings.extend(str(finding) for finding in report.lint)
    return report


def add_warnings(report: CheckReport) -> None:
    """Note what is not wrong but worth a second look before sending."""
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
    builder = Builder.load(campaign)
    result = builder.check(limit=limit, on_event=on_event, workers=workers)
    result.problems.raise_if_any()
    return reported(CheckReport(campaign), builder, result)


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
    builder = Builder.load(campaign)
    report = PreviewReport(campaign, out=(out or campaign.preview_out).resolve())
    from bulkmail.deliver.preview import PreviewTransport  # for previews only

    with PreviewTransport(
        report.out, name=campaign.name, return_path=campaign.return_path is not None
    ) as transport:
        mails = builder.mails(limit=limit, on_event=on_event, workers=workers, lint=True)
        for mail in mails:
            if mails.result.ok:  # once anything is wrong, only keep checking
                transport.send(mail)
        mails.result.problems.raise_if_any()
    return reported(report, builder, mails.result)
