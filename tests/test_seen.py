"""The addresses a pass has met (bulkmail/load/seen.py): exact, in memory then on disk."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from builders import csv_text

import bulkmail.load.seen as seen_module
from bulkmail.load.recipients import iter_recipients
from bulkmail.load.seen import SeenAddresses
from bulkmail.models import Skipped


def test_keys_past_the_memory_limit_are_found_on_disk_with_their_line() -> None:
    with SeenAddresses(in_memory=3) as seen:
        for line in range(10):
            assert seen.line_of(f"a{line}@example.com") is None
            seen.add(f"a{line}@example.com", line + 2)
        assert [seen.line_of(f"a{n}@example.com") for n in range(10)] == list(range(2, 12))
        assert seen.line_of("a10@example.com") is None
        assert len(seen._lines) == 3  # the rest are in the temporary database
        assert seen._db is not None


def test_a_list_finds_the_same_duplicates_whatever_the_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list with duplicates on both sides of the limit: every duplicate found, naming
    the line of the first occurrence, exactly as with everything in memory."""
    chance = random.Random(5)
    addresses = [f"reader{chance.randrange(300)}@example.com" for _ in range(1000)]
    path = tmp_path / "list.csv"
    path.write_text(csv_text([{"email": a} for a in addresses]), encoding="utf-8")

    def read() -> list[tuple[str, str]]:
        return [
            (row.recipient.email, row.detail) if isinstance(row, Skipped) else (row.email, "")
            for row in iter_recipients(path)
            if not isinstance(row, Exception)
        ]

    everything_in_memory = read()
    monkeypatch.setattr(seen_module, "IN_MEMORY", 50)
    opened = []
    make = seen_module._temporary_database

    def spied() -> sqlite3.Connection:
        opened.append(1)
        return make()

    monkeypatch.setattr(seen_module, "_temporary_database", spied)
    assert read() == everything_in_memory
    assert opened == [1]  # the keys past the 50th went to disk
    duplicates = [detail for _, detail in everything_in_memory if detail]
    assert len(duplicates) == 1000 - len(set(addresses))
