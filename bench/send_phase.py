"""Where the sending phase's time goes: bulkmail's send against the bare loop, taken apart.

    python bench/send_phase.py               # 2,000 mails of 15 KB, medians of 3
    python bench/send_phase.py --rows 1000 --repeat 5

Row 1b of bench/run.py compares `bulkmail run`'s sending phase with a bare smtplib loop
sending prebuilt bytes. This measures, in this process and against the same sink (its own,
as bench/run.py starts it), the steps between the two, interleaved so that drift in the
load hits them all:

- ``bare loop``: smtplib sending one prebuilt mail to every recipient (the transfer limit);
- ``transport``: bulkmail's SMTP transport sending the campaign's mails, built beforehand,
  with no journal (what the transport itself costs);
- ``send``: `send_campaign`, the library call behind `bulkmail run` (its sending phase:
  the report's ``elapsed``), each mail's mark synced to disk before its DATA, made while
  the server reads the mail before;
- ``send, no mark ahead``: the same with each mark made as its mail starts, its commit
  handed to a thread while MAIL FROM and RCPT TO go (what marking ahead saves);
- ``send, journal in memory``: the same with the journal's folder on a tmpfs
  (``/dev/shm``), where a sync costs nothing: NOT a way to run (a power cut would lose the
  marks), only a way to see what the synced commits cost on this disk;
- ``send, no spool``: the same with ``BULKMAIL_SPOOL_MB=0``: each mail built again as it is
  sent (what the spool saves).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import generate as gen
import peers
import trustme
from run import PASSWORD, USER, Sink, log

from bulkmail import send as send_module
from bulkmail.build import Builder
from bulkmail.deliver.smtp import SMTPTransport
from bulkmail.load.campaign import load_campaign
from bulkmail.models import Campaign
from bulkmail.send import send_campaign

TMPFS = Path("/dev/shm")


@contextmanager
def no_marks_ahead() -> Iterator[None]:
    """No mail marked while the server reads the one before: each as it starts."""
    mark_next = send_module._Upcoming.mark_next
    send_module._Upcoming.mark_next = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        send_module._Upcoming.mark_next = mark_next  # type: ignore[method-assign]


@contextmanager
def no_spool() -> Iterator[None]:
    os.environ["BULKMAIL_SPOOL_MB"] = "0"
    try:
        yield
    finally:
        del os.environ["BULKMAIL_SPOOL_MB"]


@contextmanager
def nothing() -> Iterator[None]:
    yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("BULKMAIL_SPOOL_MB", None)
    rows = args.rows
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bulkmail-bench-") as tmp:
        folder = Path(tmp)
        ca = trustme.CA()
        ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        os.environ["SSL_CERT_FILE"] = str(ca_file)  # (the bare loop is given it directly)
        os.environ[gen.PASSWORD_ENV] = PASSWORD
        sink = Sink(folder, ca)
        try:
            path = gen.newsletter(
                folder / "campaign",
                name="bench-send-phase",
                rows=rows,
                port=sink.port,
                ca_file=ca_file,
                username=USER,
            )
            campaign = load_campaign(path)
            mails = list(Builder.load(campaign).mails(workers=0))
            first = mails[0]
            addresses = [mail.recipient.email for mail in mails]
            in_memory = None
            if TMPFS.is_dir():
                in_memory = Path(tempfile.mkdtemp(prefix="bulkmail-bench-", dir=TMPFS))

            def bare() -> float:
                options = ("SMTPUTF8",) if first.smtputf8 else ()
                return peers.transfer_limit(
                    port=sink.port, ca_file=ca_file, username=USER, password=PASSWORD,
                    sender=first.sender, recipients=addresses, data=first.data,
                    mail_options=options,
                )  # fmt: skip

            def transport() -> float:
                assert campaign.smtp is not None
                started = time.perf_counter()
                with SMTPTransport(campaign.smtp, password=PASSWORD) as smtp:
                    for mail in mails:
                        smtp.send(mail)
                return time.perf_counter() - started

            def send(
                where: Campaign, around: Callable[[], AbstractContextManager[None]]
            ) -> Callable[[], float]:
                def step() -> float:
                    shutil.rmtree(where.journal_dir, ignore_errors=True)
                    with around():
                        report = send_campaign(where, confirm=lambda plan: True)
                    if report.accepted != rows:
                        raise SystemExit(f"{report.accepted} of {rows} accepted")
                    return report.elapsed

                return step

            steps: dict[str, Callable[[], float]] = {
                "bare loop": bare,
                "transport": transport,
                "send": send(campaign, nothing),
                "send, no mark ahead": send(campaign, no_marks_ahead),
                "send, no spool": send(campaign, no_spool),
            }
            if in_memory is not None:
                on_tmpfs = dataclasses.replace(campaign, journal_dir=in_memory)
                steps["send, journal in memory"] = send(on_tmpfs, nothing)
            try:
                for round_ in range(args.repeat):
                    for name, step in steps.items():
                        sink.reset()
                        seconds = step()
                        arrived = sink.stats()["count"]
                        if arrived != rows:
                            raise SystemExit(f"{name}: {arrived} of {rows} mails arrived")
                        rates.setdefault(name, []).append(rows / seconds)
                        log(f"round {round_ + 1}: {name}: {rows / seconds:.0f} mails/s")
            finally:
                if in_memory is not None:
                    shutil.rmtree(in_memory, ignore_errors=True)
        finally:
            sink.close()
    limit = statistics.median(rates["bare loop"])
    print(f"{rows:,} mails of {len(first.data) / 1024:.1f} KB, medians of {args.repeat}")
    print("| step | sending phase | vs the bare loop |")
    print("|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:,.0f}/s | {rate / limit:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
