"""What the journal costs per mail: synchronous=NORMAL versus FULL, and quick_check at open.

Run it from the repository (after ``pip install -e .``)::

    python bench/journal.py                  # about a minute on this project's machine
    python bench/journal.py --dir /mnt/data  # on the disk where your campaigns live

bulkmail commits once per mail: the ``sending`` mark of a mail together with the outcome
of the one before. With ``synchronous=FULL`` (what bulkmail uses) each of those commits
waits for the WAL to reach the disk, so a power cut loses no mark; with ``NORMAL`` (what it
used before) a commit is only written to the OS, which syncs at checkpoints, and a power
cut may lose the last ones. This script drives the real `Journal` through the calls a send
makes per mail (`sending`, then `outcome`) for ``--mails`` mails, in a fresh journal each
time, NORMAL and FULL interleaved, ``--reps`` times each, and prints medians and ratios.
Then it times opening a journal of ``--rows`` recipients (the ``PRAGMA quick_check`` that
looks for damaged pages, and the whole open), with the file in the page cache.

The figures depend on the disk (and on what else the machine is doing): a laptop SSD, a
virtual disk and a network file system differ by orders of magnitude, which is why the
journal is made in ``--dir`` (default: bench/out, on the disk of this repository).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.models import Recipient, Status

BENCH = Path(__file__).resolve().parent


def recipients(n: int) -> list[Recipient]:
    """``n`` recipients with fields of a realistic size (a CSV row of five columns)."""
    people = []
    for i in range(n):
        email = f"reader{i}@example.com"
        fields = {
            "email": email,
            "name": f"Reader Number {i}",
            "first_name": "Reader",
            "city": "Portland, Oregon",
            "plan": "annual",
        }
        people.append(Recipient(i + 2, email, fields["name"], fields))
    return people


def planned(folder: Path, people: list[Recipient]) -> Path:
    """A new journal that knows ``people`` (all pending), as after a send's preflight."""
    path = journal_path(Path(tempfile.mkdtemp(dir=folder)), "bench")
    with Journal(path) as journal:
        journal.begin_batch()
        for person in people:
            journal.plan(person)
        journal.flush()
    return path


def send_through(path: Path, people: list[Recipient], synchronous: str) -> float:
    """Seconds the journal takes for the per-mail calls of a send of ``people``."""
    with Journal(path) as journal:
        # The pragma is per connection: set it on the journal's own, before any commit.
        journal._conn.execute(f"PRAGMA synchronous={synchronous}")
        started = time.perf_counter()
        for n, person in enumerate(people):
            journal.sending(person, f"<{n}@example.com>")
            journal.outcome(person, Status.ACCEPTED, 250, "2.0.0 queued")
        journal.flush()
        return time.perf_counter() - started


def median_of(reps: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    runs = [measure() for _ in range(reps)]
    return statistics.median(runs), runs


def measure_sync(folder: Path, mails: int, reps: int) -> dict[str, list[float]]:
    people = recipients(mails)
    times: dict[str, list[float]] = {"NORMAL": [], "FULL": []}
    for rep in range(reps):
        for mode in times:  # interleaved, so a change in the machine's load hits both
            path = planned(folder, people)
            times[mode].append(send_through(path, people, mode))
            shutil.rmtree(path.parent)
        print(f"  rep {rep + 1}/{reps} done", file=sys.stderr, flush=True)
    return times


def measure_open(folder: Path, rows: int, reps: int) -> tuple[int, list[float], list[float]]:
    """File size, seconds of quick_check alone, and of the whole open, on a warm cache."""
    path = planned(folder, recipients(rows))
    try:
        checks, opens = [], []
        for _ in range(reps):
            with Journal(path) as journal:
                started = time.perf_counter()
                journal._conn.execute("PRAGMA quick_check(1)").fetchone()
                checks.append(time.perf_counter() - started)
            started = time.perf_counter()
            with Journal(path):
                pass
            opens.append(time.perf_counter() - started)
        return path.stat().st_size, checks, opens
    finally:
        shutil.rmtree(path.parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=BENCH / "out", help="where to make journals")
    parser.add_argument("--mails", type=int, default=1000, help="mails per send (default 1000)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for quick_check")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir))
    try:
        print(f"per-mail journal cost, {args.mails:,} mails x {args.reps} reps", file=sys.stderr)
        times = measure_sync(folder, args.mails, args.reps)
        print(f"opening a journal of {args.rows:,} recipients x {args.reps}", file=sys.stderr)
        size, checks, opens = measure_open(folder, args.rows, args.reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    device = os.stat(args.dir).st_dev
    print(f"journal in {args.dir} (device {os.major(device)}:{os.minor(device)}); medians of "
          f"{args.reps}, one commit per mail")  # fmt: skip
    print(f"{'synchronous':<12} {'commits/s':>10} {'ms per mail':>12}   each run (s)")
    per_mail = {}
    for mode, runs in times.items():
        median = statistics.median(runs)
        per_mail[mode] = median / args.mails
        each = " ".join(f"{t:.3f}" for t in runs)
        print(f"{mode:<12} {args.mails / median:>10,.0f} {per_mail[mode] * 1000:>12.3f}   {each}")
    extra = per_mail["FULL"] - per_mail["NORMAL"]
    print(
        f"FULL / NORMAL: {per_mail['FULL'] / per_mail['NORMAL']:.1f}x the time per mail, "
        f"+{extra * 1000:.2f} ms a mail; the journal alone allows "
        f"{1 / per_mail['FULL']:,.0f} mails/s with FULL"
    )
    print(
        f"open of a {args.rows:,}-row journal ({size / 2**20:.1f} MiB, in the page cache): "
        f"quick_check {statistics.median(checks) * 1000:.0f} ms, whole open "
        f"{statistics.median(opens) * 1000:.0f} ms (medians)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
