"""Write a starter campaign into a folder (`bulkmail init`): the files shipped with the
package under resources/starter/, so an installed bulkmail carries a working example."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from bulkmail.errors import BulkmailError, Location

# campaign.yaml first: the CLI's "next:" hint runs the first file written.
STARTER = (
    "campaign.yaml", "campaign-markdown.yaml", "newsletter.html", "newsletter.md",
    "newsletter.txt", "list.csv",
)  # fmt: skip


def _source(name: str) -> Traversable:
    return resources.files("bulkmail") / "resources" / "starter" / name


def write_starter(folder: str | Path) -> list[Path]:
    """Write the starter files into ``folder`` (made if missing) and return their paths.

    Nothing is overwritten: if any of the files exists, none is written, so a campaign
    someone has started editing is never replaced by the starter.

    Example::

        paths = write_starter("newsletter")  # then: bulkmail run newsletter/campaign.yaml
    """
    folder = Path(folder)
    targets = [folder / name for name in STARTER]
    for target in targets:
        if target.exists() or target.is_symlink():
            raise BulkmailError(
                "already exists; bulkmail init never overwrites a file: choose another folder",
                where=Location(target),
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, target in zip(STARTER, targets, strict=True):
            with target.open("xb") as out:  # "x": a file made meanwhile is not replaced
                out.write(_source(name).read_bytes())
    except FileExistsError as exc:
        raise BulkmailError(
            "already exists; bulkmail init never overwrites a file", where=Location(exc.filename)
        ) from None
    except OSError as exc:
        where = Location(exc.filename or folder)
        raise BulkmailError(f"cannot write: {exc.strerror or exc}", where=where) from None
    return targets
