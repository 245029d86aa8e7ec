"""Manage a campaign's suppression list by hand: list, add, remove, export.

The list is the store every campaign of the folder shares (`Campaign.store_path`), the
one `bulkmail inbox` fills and every send skips.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bulkmail.errors import BulkmailError, Location
from bulkmail.feedback.store import Suppression, SuppressionStore
from bulkmail.load.recipients import check_address
from bulkmail.models import Campaign
from bulkmail.owner_only import open_owner_only


@dataclass(frozen=True)
class SuppressionChange:
    """One address of an add or remove, and whether it changed the list."""

    address: str
    changed: bool
    before: Suppression | None = None  # the entry it had, if any


def list_suppressions(campaign: Campaign) -> list[Suppression]:
    """Every address on the campaign's suppression list, oldest first."""
    with SuppressionStore(campaign.store_path, create=False) as store:
        return list(store.entries())


def add_suppressions(
    campaign: Campaign, addresses: Iterable[str], note: str = ""
) -> list[SuppressionChange]:
    """Suppress ``addresses`` by hand (reason "manual"); each checked like a recipient's
    (a RecipientError naming the argument if one is not an address), all before any is
    written."""
    checked = [
        check_address(
            address,
            Location(campaign.store_path, field=f"address {address!r}"),
            allow_special_domains=campaign.allow_special_domains,
        )
        for address in addresses
    ]
    changes = []
    with SuppressionStore(campaign.store_path) as store, store.transaction():
        for address in checked:
            before = store.is_suppressed(address)
            added = store.add(address, "manual", detail=note or "added by hand")
            changes.append(SuppressionChange(address, added, before))
    return changes


def remove_suppressions(campaign: Campaign, addresses: Iterable[str]) -> list[SuppressionChange]:
    """Take ``addresses`` off the list (the next send mails them again)."""
    changes = []
    if not campaign.store_path.exists():  # nothing to take off, and no store to make
        return [SuppressionChange(address.strip(), False) for address in addresses]
    with SuppressionStore(campaign.store_path) as store:
        for address in addresses:
            before = store.is_suppressed(address.strip())
            removed = before is not None and store.remove(address.strip())
            changes.append(SuppressionChange(address.strip(), removed, before))
    return changes


def export_suppressions(campaign: Campaign, out: TextIO) -> int:
    """Write the list as CSV (email, reason, campaign, added, detail); rows written."""
    with SuppressionStore(campaign.store_path, create=False) as store:
        return store.export_csv(out)


def write_suppressions_csv(campaign: Campaign, out: Path) -> int:
    """`export_suppressions` into the file ``out``, owner-only (0600): it is part of the
    list. A place that cannot be written is a BulkmailError naming it."""
    try:
        with open_owner_only(out) as file:
            return export_suppressions(campaign, file)
    except OSError as exc:
        raise BulkmailError(
            f"cannot write the suppression list here: {exc.strerror or exc}",
            where=Location(out),
        ) from None
