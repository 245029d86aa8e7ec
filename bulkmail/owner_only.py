"""Files written for the user that hold part of their list: readable by them only."""

from __future__ import annotations

import os
import pwd
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


def tighten(path: Path) -> None:
    """Take group and other access away from a file or folder of ours: they hold the list."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)


def database_files(path: Path) -> list[Path]:
    """An SQLite database in WAL mode: the file, its WAL and its shared-memory index."""
    return [path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))]


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def user_name(uid: int) -> str:
    """The name of the user ``uid`` (for saying whose a file is), else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
