"""Mails built by a send's preflight, kept on disk for the send: each mail built once.

A send checks every mail before the first one leaves (the preflight), then sends. The
mails the preflight builds for the first part of the list are written here, in list order,
and the send takes them from here instead of building them again; the rest of the list
is built while it is sent, as before. So the spool is bounded, whatever the list's size:

- ``max_bytes`` of mails (64 MB, or ``BULKMAIL_SPOOL_MB``), in a file in the journal's
  folder, unlinked as soon as it is made: nobody else can open it, and nothing is left
  behind when the run ends, however it ends;
- ``max_mails``: no more than the run can send before the mails grow old (the rate
  times ``max_age``);
- ``max_age``: a mail older than this (its ``Date:`` header was written when it was
  built) is not sent from the spool; it and those after it are built again, so a run
  that waited at its prompt sends mails dated when they leave, as without a spool.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

from bulkmail.errors import ConfigError
from bulkmail.journal.records import Entry
from bulkmail.models import OutgoingMail

MAX_BYTES = 64_000_000
SIZE_VARIABLE = "BULKMAIL_SPOOL_MB"
MAX_AGE = 600.0  # seconds: a Date header at most ten minutes old


class Spool:
    """Built mails and their journal entries, written once and read once, in order.

    Example::

        with Spool(folder, max_mails=5_000) as spool:
            for mail, entry in preflight:
                if spool.room:
                    spool.add(mail, entry)
            for mail, entry in spool.fresh():
                ...
            spool.taken  # the keys of the mails handed out
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = MAX_BYTES,
        max_mails: int | None = None,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_mails = max_mails
        self.max_age = max_age
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._folder = folder
        self._bytes = 0
        self._count = 0
        self._full = max_bytes <= 0 or max_mails == 0
        self._left_out = False  # a mail to send did not fit
        self._handed = 0
        # The rows handed out by `fresh`: the send must not build them again.
        self.taken: set[str] = set()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._count

    @property
    def room(self) -> bool:
        """Whether more mails may be added (once full, it stays full)."""
        return not self._full

    def add(self, mail: OutgoingMail, entry: Entry | None) -> bool:
        """Keep ``mail`` (its ``html`` dropped: only previews show it) and the journal
        ``entry`` it was planned with; False, and the spool full from now on, when it
        does not fit (or came without its bytes: built when there was no room)."""
        if self._full or not mail.data:
            self._full = self._left_out = True
            return False
        record = pickle.dumps(
            (self._clock(), replace(mail, html="") if mail.html else mail, entry),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        if self._bytes + len(record) > self.max_bytes:
            self._full = self._left_out = True
            return False
        try:
            if self._file is None:
                self._file = _private_file(self._folder)
            self._file.write(record)
        except OSError:  # a full disk: the mails not kept are built again as they are sent
            self._full = self._left_out = True
            self._count = 0  # what was written may be cut short: none of it is used
            self.close()
            return False
        self._bytes += len(record)
        self._count += 1
        if self.max_mails is not None and self._count >= self.max_mails:
            self._full = True
        return True

    def fresh(self) -> Iterator[tuple[OutgoingMail, Entry | None]]:
        """The mails kept, in the order they were added, until the first one older than
        ``max_age``: that one and the rest are left for the send to build again. Each
        mail handed out is in ``taken`` before the caller sees it."""
        self._full = True  # nothing is added once reading has begun
        if self._file is None:
            return
        try:
            self._file.flush()
            self._file.seek(0)
        except OSError:
            return  # a disk error: every mail is built again
        for _ in range(self._count):
            try:
                built, mail, entry = pickle.load(self._file)
            except (OSError, EOFError, pickle.UnpicklingError):
                return  # a disk error: this mail and the rest are built again
            if self._clock() - built > self.max_age:
                return
            self.taken.add(mail.recipient.key)
            self._handed += 1
            yield mail, entry

    @property
    def complete(self) -> bool:
        """Whether every mail offered was kept and every one kept was handed out: the
        preflight's whole list came from here."""
        return not self._left_out and self._handed == self._count

    def close(self) -> None:
        """Free the disk space (the file has no name: closing it is all there is)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._bytes


def spool_bytes() -> int:
    """The spool's size: ``BULKMAIL_SPOOL_MB`` megabytes (0: none), else ``MAX_BYTES``."""
    value = os.environ.get(SIZE_VARIABLE, "").strip()
    if not value:
        return MAX_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        raise ConfigError(
            f"{SIZE_VARIABLE}={value!r}: expected a number of megabytes (0: no spool)"
        ) from None
    if not megabytes >= 0 or megabytes == float("inf"):
        raise ConfigError(f"{SIZE_VARIABLE}={value!r}: expected 0 or more megabytes")
    return int(megabytes * 1_000_000)


def _private_file(folder: Path) -> IO[bytes]:
    """A file only this process can reach: created 0600 in ``folder`` and unlinked at
    once (O_TMPFILE where the system has it, else a random name removed right away)."""
    file = tempfile.TemporaryFile(dir=folder, prefix=".spool-")  # noqa: SIM115
    os.fchmod(file.fileno(), 0o600)
    return file
