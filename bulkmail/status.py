"""Read a campaign's journal: counts per status, failures, uncertain recipients, timing."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bulkmail.journal import Entry, Journal, Summary, journal_path
from bulkmail.models import Campaign, Status
from bulkmail.pipeline import as_campaign


@dataclass(frozen=True)
class CampaignStatus:
    """Where a campaign stands, from its journal."""

    campaign: Campaign
    journal: Path
    summary: Summary | None  # None: never run
    failed: list[Entry]
    uncertain: list[Entry]


def campaign_status(campaign: Campaign | str | Path) -> CampaignStatus:
    """Read the journal (without locking it: a run may be going on).

    Example::

        status = campaign_status("campaigns/june.yaml")
        print(status.summary.counts if status.summary else "never run")
    """
    campaign = as_campaign(campaign)
    path = journal_path(campaign.journal_dir, campaign.name)
    if not path.exists():
        return CampaignStatus(campaign, path, None, [], [])
    with Journal(path, lock=False) as journal:
        return CampaignStatus(
            campaign,
            path,
            journal.summary(),
            list(journal.entries(Status.FAILED)),
            list(journal.entries(Status.SENDING)),
        )


def write_failed_csv(status: CampaignStatus, out: Path) -> int:
    """Write the failed recipients' CSV rows (plus the server's reply) to ``out``."""
    columns: list[str] = []
    for entry in status.failed:
        columns.extend(key for key in entry.fields if key not in columns)
    with out.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*columns, "bulkmail_reply"])
        for entry in status.failed:
            writer.writerow([*(entry.fields.get(c, "") for c in columns), entry.reply or ""])
    return len(status.failed)
