"""Byte counts for people, in one convention wherever bulkmail shows one (CLI, preview index).

SI units: 1 kB = 1,000 bytes, 1 MB = 1,000,000 bytes, as mail providers state their
message size limits and as most file managers show sizes.
"""

from __future__ import annotations

STEP = 1000
UNITS = ("kB", "MB", "GB", "TB")


def format_size(size: int) -> str:
    """``size`` bytes as "999 B", "12.3 kB", "4.0 MB", ... (SI: 1 kB = 1000 B).

    The unit is chosen by the rounded figure, so 999,950 bytes is "1.0 MB", not "1000.0 kB".
    """
    if size < STEP:
        return f"{size:,} B"
    value = float(size)
    for unit in UNITS:
        value /= STEP
        if round(value, 1) < STEP or unit == UNITS[-1]:
            return f"{value:,.1f} {unit}"
    raise AssertionError("unreachable: the last unit always returns")
