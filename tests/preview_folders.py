"""Read what a preview left on disk: the files, their names, the index's rows, and any
staging or old folder beside it."""

from __future__ import annotations

from pathlib import Path

import lxml.html


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path: to compare two runs byte for byte."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def names(folder: Path, suffix: str) -> list[str]:
    """The preview files ending in ``suffix`` (the index aside), sorted."""
    return sorted(path.name for path in folder.glob(f"*{suffix}") if path.name != "index.html")


def index_rows(out: Path) -> list[lxml.html.HtmlElement]:
    """The rows of the preview's index.html table, one per recipient."""
    document = lxml.html.fromstring((out / "index.html").read_text(encoding="utf-8"))
    return list(document.xpath("//tbody/tr"))


def leftovers(out: Path) -> list[str]:
    """Staging or old folders a run left beside the preview folder."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))
