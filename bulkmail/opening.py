"""A base for things that are opened, used and closed: each is its own context manager."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Opened:
    """``with thing:`` opens it and closes it, however the block ends."""

    def open(self) -> None:
        """Get ready (connect, lock, create files...)."""

    def close(self) -> None:
        """Finish cleanly; safe to call twice."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
