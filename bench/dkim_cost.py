"""What DKIM signing costs per mail: rsa-2048 and ed25519, against the cost of building one.

(Not named dkim.py: run as a script, that would shadow the dkimpy package it measures.)

Run it from the repository (after ``pip install -e .``)::

    python bench/dkim_cost.py                # about half a minute on this project's machine
    python bench/dkim_cost.py --mails 200

It makes the example newsletter (templates/june.html, the articles of campaigns/june.yaml)
for ``--mails`` generated recipients, padded to about ``--size`` bytes a mail (the bench's
mails are ~15 KB; a newsletter with more articles is larger), and times, in this process
(no worker processes, so the figures are per core), ``--reps`` times each, interleaved:

- building the mails without a key (render, inline, text part, MIME);
- signing those same bytes with `Signer.sign` (dkimpy, relaxed/relaxed) for an RSA-2048
  and an ed25519 key made for the run.

It prints the median milliseconds per mail of each and the ratio of signing to building.
Signing runs in the build's worker processes, so on a machine with cores to spare it adds
to their work, not to the sending loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import generate as gen

from bulkmail.build import Builder
from bulkmail.compose.dkim import Signer, generate_key, private_pem
from bulkmail.errors import Location
from bulkmail.load.campaign import load_campaign
from bulkmail.models import DkimSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=100, help="mails per measurement")
    parser.add_argument("--reps", type=int, default=5, help="measurements of each")
    parser.add_argument("--size", type=int, default=18_000, help="bytes a mail, roughly")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bulkmail-dkim-bench-") as folder:
        root = Path(folder)
        builder = _builder(root, args.mails, args.size)
        mails = [mail.data for mail in builder.mails(workers=0)]
        size = statistics.median(len(data) for data in mails)
        signers = {kind: _signer(root, kind) for kind in ("rsa", "ed25519")}
        times: dict[str, list[float]] = {"build": [], "rsa": [], "ed25519": []}
        for _ in range(args.reps):
            times["build"].append(_per_mail(lambda: list(builder.mails(workers=0)), len(mails)))
            for kind, signer in signers.items():
                times[kind].append(_per_mail(_signing(signer, mails), len(mails)))
    build = statistics.median(times["build"])
    print(f"{len(mails)} mails of {size / 1000:.1f} KB, median of {args.reps}, one core:")
    print(f"  build (no signature)  {build:7.2f} ms a mail")
    for kind, label in (("rsa", "sign rsa-2048"), ("ed25519", "sign ed25519")):
        cost = statistics.median(times[kind])
        print(f"  {label:<20}  {cost:7.2f} ms a mail  ({cost / build:.2f} x the build)")
    return 0


def _builder(root: Path, mails: int, size: int) -> Builder:
    """The example newsletter for ``mails`` recipients, its text padded toward ``size``."""
    templates = gen.write_templates(root / "templates")
    (root / "unused-ca.pem").touch()  # the campaign names one; nothing is sent
    recipients = gen.write_list(root / "list.csv", mails)
    path = gen.write_campaign(
        root / "campaign",
        name="dkim-bench",
        recipients=recipients,
        templates=templates,
        port=465,
        ca_file=root / "unused-ca.pem",
        username="bench",
        attachment=None,
    )
    campaign = load_campaign(path)
    first = next(iter(Builder.load(campaign).mails(workers=0, limit=1)))
    padding = max(size - first.size, 0)
    if padding:
        # More article text: it is in both the HTML and the text part, so half of it each.
        article = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        extra = (article * (padding // 2 // len(article) + 1))[: padding // 2]
        page = templates / "june.html"
        head, _, tail = page.read_text(encoding="utf-8").rpartition("{% endblock %}")
        page.write_text(f"{head}<p>{extra}</p>{{% endblock %}}{tail}", encoding="utf-8")
    return Builder.load(load_campaign(path))


def _signer(root: Path, kind: str) -> Signer:
    key_file = root / f"{kind}.pem"
    key_file.write_bytes(private_pem(generate_key(kind, 2048)))
    settings = DkimSettings(
        domain="example.com",
        selector="bench",
        private_key_file=key_file,
        key_where=Location(key_file),
    )
    return Signer.load(settings)


def _signing(signer: Signer, mails: list[bytes]) -> Callable[[], object]:
    return lambda: [signer.sign(data) for data in mails]


def _per_mail(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000 / count


if __name__ == "__main__":
    sys.exit(main())
