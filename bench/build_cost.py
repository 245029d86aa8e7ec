"""The CPU cost of building one mail, in this process: where rows 1, 3b and 4 spend it.

    python bench/build_cost.py                 # every variant, 2,000 mails, medians of 5
    python bench/build_cost.py -n 500 --reps 3 --variants base_url,links,markdown
    python bench/build_cost.py --profile links # cProfile one pass (sorted by cumtime)

Each variant is the example newsletter (bench/generate.py) built by ``Builder.mails``
with ``content=False`` and no worker process, as ``bulkmail check`` builds on one core:

- ``example``: the newsletter as it is (its footer links to ``{{ unsubscribe_url }}``);
- ``base_url``: the same with ``base_url`` set, so premailer makes every link absolute;
- ``links``: plus per-recipient links, absolute and relative, with ``base_url`` set;
- ``markdown``: the same newsletter written in Markdown, in the package's default layout.

The skeleton cache's counters are printed with each variant: a variant that misses on
every mail runs premailer twice a mail (the cliff of issue 13).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as gen

import bulkmail
from bulkmail.build import Builder


def variant(folder: Path, name: str, rows: int) -> Path:
    """A campaign for one variant (see the module doc), with ``rows`` recipients."""
    (folder / "none.pem").touch()  # never read: nothing is sent
    write = {"links": gen.write_link_templates, "markdown": gen.write_markdown_templates}.get(
        name, gen.write_templates
    )
    return gen.write_campaign(
        folder / name,
        name=f"cost-{name}",
        recipients=gen.write_list(folder / f"{rows}.csv", rows),
        templates=write(folder / name / "templates"),
        port=2525,
        ca_file=folder / "none.pem",
        username="bench",
        attachment=None,
        base_url=gen.BASE_URL if name in ("base_url", "links") else None,
        markdown=name == "markdown",
    )


def one_pass(campaign: Path) -> tuple[float, Builder]:
    """Seconds to load the campaign and build every mail once, and the builder used."""
    started = time.perf_counter()
    builder = Builder.load(bulkmail.load_campaign(campaign))
    count = sum(1 for _ in builder.mails(content=False, workers=0))
    assert count > 0
    return time.perf_counter() - started, builder


def stats(builder: Builder) -> str:
    skeletons = builder.factory.renderer.skeletons
    if skeletons is None:
        return "no skeleton cache"
    s = skeletons.stats
    return f"hits {s.hits}, misses {s.misses}, slow {s.slow}, text slow {s.text_slow}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="recipients (2000)")
    parser.add_argument("--reps", type=int, default=5, help="passes per variant (5)")
    parser.add_argument("--variants", default="example,base_url,links,markdown")
    parser.add_argument("--profile", metavar="VARIANT", help="cProfile one pass of VARIANT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bulkmail-cost-") as tmp:
        folder = Path(tmp)
        names = [args.profile] if args.profile else args.variants.split(",")
        campaigns = {name: variant(folder, name, args.n) for name in names}
        if args.profile:
            profile(lambda: one_pass(campaigns[args.profile]))
            return 0
        times: dict[str, list[float]] = {name: [] for name in names}
        last: dict[str, Builder] = {}
        for _ in range(args.reps):  # interleaved: a change in the machine's load hits all
            for name in names:
                seconds, last[name] = one_pass(campaigns[name])
                times[name].append(seconds)
        base = statistics.median(times[names[0]])
        for name in names:
            med = statistics.median(times[name])
            print(
                f"{name:10} {med / args.n * 1e3:7.3f} ms/mail  {args.n / med:7.0f} mails/s  "
                f"x{med / base:.2f} of {names[0]}  ({stats(last[name])})"
            )
    return 0


def profile(run: Callable[[], object]) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    sys.exit(main())
