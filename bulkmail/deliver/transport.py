"""The seam between building mails and delivering them: SMTP sends, preview writes files."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from bulkmail.models import OutgoingMail


class Transport(Protocol):
    """Delivers built mails one at a time; a context manager that opens and closes itself."""

    def open(self) -> None:
        """Get ready to deliver (connect and log in, create the folder...)."""

    def send(self, mail: OutgoingMail) -> str:
        """Deliver one mail; return the server's reply. Raises DeliveryError subclasses."""
        ...

    def close(self) -> None:
        """Finish cleanly (QUIT, write the index...)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
