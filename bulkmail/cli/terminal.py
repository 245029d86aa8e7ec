"""What the ``bulkmail`` command's process does when a signal comes or its output goes.

- stdout and stderr never raise: a closed pipe (``| head``) or a terminal that hung up
  must not stop a run half-way, nor change what its exit code says (`Stream`);
- SIGINT, SIGTERM and SIGHUP stop a command with one line and exit 130; while mails go
  out, the first one lets the mail in flight finish and be journaled (`Signals`).

No typer or rich here: the CLI uses these, and tests can too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO, cast


class Stream:
    """stdout or stderr, whose writes never fail: a closed pipe (``| head``) or a terminal
    that hung up must not stop a run half-way, nor change what its exit code says.

    The first failure points the file descriptor at /dev/null (so that Python's own flush
    at exit is quiet too) and is kept in ``lost``.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lost: OSError | None = None

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self.lost = exc
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            self.stream.flush()  # what it still holds goes to /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def guard_output() -> Stream:
    """Put sys.stdout and sys.stderr behind `Stream`; return stdout's."""
    streams = []
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        guarded = Stream(stream if stream is not None else closed_output(fd))
        if stream is None:  # started with the descriptor closed (`>&-`)
            guarded.lost = OSError(errno.EBADF, os.strerror(errno.EBADF))
        streams.append(guarded)
    sys.stdout, sys.stderr = cast(TextIO, streams[0]), cast(TextIO, streams[1])
    return streams[0]


def closed_output(fd: int) -> TextIO:
    """/dev/null on descriptor ``fd``, which was closed: else the next file opened (the
    journal) would get that number, and whatever writes to stdout would write into it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)
    return open(fd, "w", encoding="utf-8", closefd=False)


def say(line: str) -> None:
    """One line on stderr from a signal handler: a single write, and never an exception
    (the main thread may be inside a write to stderr, or the terminal may be gone)."""
    try:
        os.write(sys.stderr.fileno(), f"{line}\n".encode(errors="replace"))
    except (OSError, ValueError):  # not a file (in-process tests): the stream, if it can
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{line}\n")


class Signals:
    """What SIGINT, SIGTERM and SIGHUP do to a bulkmail command.

    Each stops the command at once: one line on stderr, then exit 130 (as a
    KeyboardInterrupt, so that the journal is closed and worker processes are ended on the
    way out). While a run is sending (``stop`` given), the first one asks it to stop after
    the mail in flight, whose outcome is journaled, so nobody is left in doubt; a second
    Ctrl-C stops at once. SIGHUP (the terminal closed, an SSH session dropped) is treated
    as SIGTERM. A signal ignored when bulkmail started (nohup, a script's background job)
    stays ignored.

    While worker processes may be starting (``deferred``), the KeyboardInterrupt waits for
    the next `checkpoint` (the next mail built): raised inside multiprocessing or an
    at-fork hook, Python would print it as "Exception ignored", lose it, and leave the
    pool's and filelock's state half-changed. A second Ctrl-C does not wait.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    BEFORE_SENDING = "interrupted; nothing was sent."

    def __init__(self) -> None:
        self.message = "interrupted."  # what a signal that stops at once says
        self.stop: threading.Event | None = None  # set while mails go out
        self.deferred = False
        self.prompting = False  # a question waits on its line: answer on a new one
        self.interrupted = False  # a signal stopped the command at once (and said so)
        self._pid = os.getpid()
        self._depth = 0

    def install(self) -> None:
        """Handle them from now on, in this process (the ``bulkmail`` command's)."""
        self._pid = os.getpid()
        for sig in self.HANDLED:
            if signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, self._handle)

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        """Handle them in this block, whose handlers before are back after it (the
        command's process has them already; a test calling the app has not)."""
        if self._depth == 0:
            self._pid = os.getpid()
            self.now("interrupted.")
            self.interrupted = False
        previous = {}
        for sig in self.HANDLED:
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, self._handle)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def ignore(self) -> None:
        """From now on ignore them: bulkmail is exiting with everything said, and a
        KeyboardInterrupt at that point would only be a traceback."""
        for sig in self.HANDLED:
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, signal.SIG_IGN)

    def now(
        self, message: str, *, stop: threading.Event | None = None, deferred: bool = False
    ) -> None:
        """From now on a signal says ``message`` and stops at once (at the next
        checkpoint if ``deferred``), or, with ``stop``, asks the run to stop after the
        current mail."""
        self.message, self.stop, self.deferred = message, stop, deferred

    @contextlib.contextmanager
    def at_once(self, message: str, *, deferred: bool = False) -> Iterator[None]:
        """In this block a signal stops at once, saying ``message``."""
        saved = self.message, self.stop, self.deferred
        self.now(message, deferred=deferred)
        try:
            yield
        finally:
            self.message, self.stop, self.deferred = saved

    def checkpoint(self) -> None:
        """Raise the KeyboardInterrupt that a signal asked for, if it is still to come."""
        if self.interrupted and self.stop is None:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:
            return  # a worker, forked before it set its own: the main process decides
        stop = self.stop
        if stop is not None and not (stop.is_set() and signum == signal.SIGINT):
            if not stop.is_set():
                stop.set()
                name = "" if signum == signal.SIGINT else f"{signal.Signals(signum).name}: "
                say(f"{name}stopping after the current mail (Ctrl-C again to stop at once)...")
            return
        if not self.interrupted:
            self.interrupted = True
            say(("\n" if self.prompting else "") + self.message)
            if self.deferred:
                return
        raise KeyboardInterrupt
