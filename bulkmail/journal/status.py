"""Read a campaign's journal: counts per status, failures, uncertain recipients, timing."""

from __future__ import annotations

import csv
from pathlib import Path

from bulkmail.errors import BulkmailError, Location
from bulkmail.journal.sqlite import Journal, journal_exists, journal_path
from bulkmail.load.campaign import as_campaign
from bulkmail.models import Campaign, Status
from bulkmail.owner_only import open_owner_only
from bulkmail.reports import CampaignStatus


def campaign_status(campaign: Campaign | str | Path) -> CampaignStatus:
    """Read the journal (without locking it: a run may be going on).

    Example::

        status = campaign_status("campaigns/june.yaml")
        print(status.summary.counts if status.summary else "never run")
    """
    campaign = as_campaign(campaign)
    if campaign.journal is not None:
        return _shared_status(campaign)
    path = journal_path(campaign.journal_dir, campaign.name)
    if not journal_exists(path):
        return CampaignStatus(campaign, path, None, [], [])
    with Journal(path, lock=False) as journal:
        return CampaignStatus(
            campaign,
            path,
            journal.summary(),
            list(journal.entries(Status.FAILED)),
            list(journal.entries(Status.SENDING)),
        )


def _shared_status(campaign: Campaign) -> CampaignStatus:
    """Where a campaign kept in a shared (PostgreSQL) journal stands, sender by sender."""
    from bulkmail.journal.postgres import PostgresJournal  # psycopg only where it is used

    settings = campaign.journal
    assert settings is not None
    with PostgresJournal(
        settings, campaign.name, sender=False, where=campaign.location("journal")
    ) as journal:
        summary = journal.summary()
        return CampaignStatus(
            campaign,
            settings.name,
            summary if summary.total or summary.runs else None,
            list(journal.entries(Status.FAILED)),
            list(journal.entries(Status.SENDING)),
            journal.senders(),
        )


def write_failed_csv(status: CampaignStatus, out: Path) -> int:
    """Write the failed recipients' CSV rows (plus the server's reply) to ``out``.

    The file is owner-only (0600), an existing one too: it holds part of the list. A
    place that cannot be written is a BulkmailError naming it.
    """
    columns: list[str] = []
    for entry in status.failed:
        columns.extend(key for key in entry.fields if key not in columns)
    try:
        with open_owner_only(out) as file:
            writer = csv.writer(file)
            writer.writerow([*columns, "bulkmail_reply"])
            for entry in status.failed:
                writer.writerow([*(entry.fields.get(c, "") for c in columns), entry.reply or ""])
    except OSError as exc:
        raise BulkmailError(
            f"cannot write the failed rows here: {exc.strerror or exc}", where=Location(out)
        ) from None
    return len(status.failed)
