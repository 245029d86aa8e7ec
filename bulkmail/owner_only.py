"""Files written for the user that hold part of their list: readable by them only."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TextIO


def open_owner_only(path: Path) -> TextIO:
    """``path`` emptied for writing, readable by its owner only.

    An existing file is made 0600 before it is emptied (so a refusal leaves it as it
    was); something that is not a regular file (``/dev/stdout``) is written as it is.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
        return open(fd, "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(fd)
        raise


def place_once(new: Path, path: Path) -> None:
    """Give the finished file ``new`` the name ``path``, unless another process gave its
    own first: a hard link never replaces a file, so when two make it at once, both end
    with the first one's. Where hard links are not supported, a rename, only while there
    is none (it could replace a rival's made in the same instant). ``new`` stays; the
    caller removes it."""
    try:
        os.link(new, path)
    except FileExistsError:
        return  # a rival's came first: everyone uses that one
    except OSError:
        if not path.exists():
            os.replace(new, path)
