"""Benchmark several senders on one campaign: 1, 2 and 4 `bulkmail run` sharing a journal.

Run it from the repository (after ``pip install -e '.[dev]'``: it borrows the tests' private
PostgreSQL, tests/postgres.py)::

    python bench/senders.py                      # 2,000 mails, a sink taking 100/s a connection
    python bench/senders.py --rows 4000 --per-connection 50 --repeat 3
    python bench/senders.py --senders 1 --per-connection 0 --journal-delay-ms 1

A relay throttles each connection (here the sink, bench/sink.py ``--per-connection``: at
most N mails a second on one connection, the others not held up), so one sender, on one
connection, is held to N/s whatever its speed; several senders, each with its own
connection, share the list through the journal and should go N times as fast, until the
machine runs out of cores. Each measurement starts from a new, empty PostgreSQL database
and times every sender from its start to the last one's exit (so the preflight, which the
first sender runs and the others wait for, is included); the rate at the sink is from its
first to its last arrival. Medians of ``--repeat`` runs; ratios against one sender.
``--journal-delay-ms`` puts the database behind a proxy holding every chunk that long in
each direction (bench/latency.py's), as a journal across a network is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import generate as gen
import trustme
import yaml
from latency import DelayingProxy
from run import PASSWORD, USER, Sink, log

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from postgres import PASSWORD as PG_PASSWORD  # noqa: E402  (the tests' folder, just added)
from postgres import PASSWORD_ENV as PG_PASSWORD_ENV  # noqa: E402
from postgres import Postgres, postgres_bin  # noqa: E402


def campaign(folder: Path, rows: int, sink: Sink, ca_file: Path, url: str) -> Path:
    """The example newsletter (no attachment) for ``rows`` recipients, journal in ``url``."""
    path = gen.newsletter(
        folder, name="bench-senders", rows=rows, port=sink.port, ca_file=ca_file, username=USER
    )
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["journal"] = {"url": url, "password_env": PG_PASSWORD_ENV, "lease": 10}
    path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True), "utf-8")
    return path


def one_run(
    senders: int,
    rows: int,
    folder: Path,
    sink: Sink,
    ca_file: Path,
    server: Postgres,
    journal_port: int | None = None,
) -> dict[str, Any]:
    """``senders`` runs of one new campaign at once; their wall time and the sink's rate.
    ``journal_port``: where the senders reach the database (by default, its own port)."""
    url = server.url(server.database(), port=journal_port)
    path = campaign(folder, rows, sink, ca_file, url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[gen.PASSWORD_ENV] = PASSWORD
    env[PG_PASSWORD_ENV] = PG_PASSWORD
    sink.reset()
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bulkmail", "run", str(path), "--yes", "--json"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(senders)
    ]
    accepted = []
    for process in processes:
        out, err = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise SystemExit(f"a sender failed (exit {process.returncode}): {err.decode()}")
        accepted.append(json.loads(out)["accepted"])
    wall = time.monotonic() - started
    stats = sink.stats()
    if stats["count"] != rows or sum(accepted) != rows:
        raise SystemExit(f"{stats['count']} mails at the sink, {sum(accepted)} accepted, of {rows}")
    times = stats["times"]
    return {
        "wall": wall,
        "end_to_end": rows / wall,
        "at_sink": (len(times) - 1) / (times[-1] - times[0]),
        "shares": accepted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--per-connection", type=float, default=100.0)
    parser.add_argument("--senders", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--journal-delay-ms", type=float, default=0, help="one way, to the database (0: none)"
    )
    args = parser.parse_args()
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    counts = [int(n) for n in args.senders.split(",")]
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="bulkmail-bench-") as tmp:
        folder = Path(tmp)
        ca = trustme.CA()
        ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        sink = Sink(folder, ca, "--per-connection", str(args.per_connection))
        server = Postgres(bin_dir)
        server.start()
        proxy = None
        try:
            if args.journal_delay_ms:
                proxy = DelayingProxy(server.port, args.journal_delay_ms / 1000)
            port = proxy.port if proxy is not None else None
            for round_ in range(args.repeat):
                for n in counts:  # interleaved, so that a noisy spell hits every row alike
                    log(f"round {round_ + 1}: {n} sender(s), {args.rows:,} mails")
                    run_folder = folder / f"r{round_}-{n}"
                    results[n].append(
                        one_run(n, args.rows, run_folder, sink, ca_file, server, port)
                    )
        finally:
            if proxy is not None:
                proxy.close()
            server.stop()
            sink.close()
    base = statistics.median(r["end_to_end"] for r in results[counts[0]])
    delay = f", the journal {args.journal_delay_ms:g} ms away" if args.journal_delay_ms else ""
    print(
        f"{args.rows:,} mails, sink at {args.per_connection:g}/s a connection{delay}, "
        f"medians of {args.repeat}"
    )
    print(
        "| senders | end to end | at the sink | ratio to 1 sender | ceiling (N x per connection) |"
    )
    print("|---|---|---|---|---|")
    for n in counts:
        e2e = statistics.median(r["end_to_end"] for r in results[n])
        sink_rate = statistics.median(r["at_sink"] for r in results[n])
        ceiling = n * args.per_connection
        print(f"| {n} | {e2e:,.1f}/s | {sink_rate:,.1f}/s | {e2e / base:.2f} | {ceiling:,.0f}/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
