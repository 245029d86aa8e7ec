"""The seam between building mails and delivering them: SMTP sends, preview writes files."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, cast, runtime_checkable

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


@runtime_checkable
class GatedTransport(Transport, Protocol):
    """A transport that waits for a go-ahead (``before_data``) just before it hands a mail
    over, after the commands that do not (SMTP's MAIL FROM, RCPT TO)."""

    def send(self, mail: OutgoingMail, *, before_data: Callable[[], None] | None = None) -> str:
        """Deliver one mail, calling ``before_data`` (once it may go) before its data."""
        ...

    def takes_before_data(self) -> bool:
        """Marks the transports that call ``before_data`` themselves."""
        ...


@runtime_checkable
class OverlappingTransport(GatedTransport, Protocol):
    """A gated transport that also calls ``after_data`` once a mail is handed over,
    while the server reads it: the caller's work there overlaps the server's."""

    def send(
        self,
        mail: OutgoingMail,
        *,
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> str:
        """Deliver one mail, calling ``before_data`` before its data and ``after_data``
        after it, before the server's reply."""
        ...

    def takes_after_data(self) -> bool:
        """Marks the transports that call ``after_data``."""
        ...


def send_through(
    transport: Transport,
    mail: OutgoingMail,
    before_data: Callable[[], None] | None = None,
    after_data: Callable[[], None] | None = None,
) -> str:
    """``transport.send(mail)``, with ``before_data`` returning before the mail is handed
    over: called by the transport just before DATA if it can, else before the send.
    ``after_data``, an optional head start on later work, is called only by a transport
    that can, while the server reads the mail."""
    if after_data is not None and _overlapping(type(transport)):
        return cast(OverlappingTransport, transport).send(
            mail, before_data=before_data, after_data=after_data
        )
    if before_data is None:
        return transport.send(mail)
    if _gated(type(transport)):
        return cast(GatedTransport, transport).send(mail, before_data=before_data)
    before_data()
    return transport.send(mail)


@functools.cache
def _gated(kind: type) -> bool:
    """Whether transports of this class are `GatedTransport`s: once per class, since a
    protocol check looks at every member (~15 µs, for every mail)."""
    return issubclass(kind, GatedTransport)


@functools.cache
def _overlapping(kind: type) -> bool:
    """Whether transports of this class are `OverlappingTransport`s (once per class)."""
    return issubclass(kind, OverlappingTransport)
