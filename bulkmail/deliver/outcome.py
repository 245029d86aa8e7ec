"""What became of one mail handed to a transport, as a value: `send_one` returns it.

The transport speaks in exceptions (a refusal, a lost connection, a stop, a failed login);
`send_one` turns each into one of five outcomes, so that what a run does about each is
decided in one place (`bulkmail.record.Recorder`), and sending itself knows nothing of
the journal or the report:

- `Accepted`: the server took the mail (its 2xx reply);
- `Refused`: the server refused this recipient, for good (5xx) or after every retry (4xx);
  the batch goes on;
- `Uncertain`: the connection was lost after the whole mail was sent and before the
  server's answer: it may have been delivered, so it must not be resent blindly;
- `Cancelled`: a stop was asked while the transport waited to try the mail again: it was
  never handed over;
- `Stopped`: connecting, TLS or login failed (on a reconnect), or the connection kept
  dropping before the end of DATA: never handed over, and the batch cannot go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from bulkmail.deliver.smtp import Delivered, SendCancelled
from bulkmail.deliver.transport import Transport, send_through
from bulkmail.errors import DeliveryError, DeliveryUncertain, RecipientRefused
from bulkmail.models import OutgoingMail


@dataclass(frozen=True)
class Accepted:
    """The server accepted the mail; ``reply`` is its answer to the end of DATA;
    ``refused_copies``: the Cc/Bcc copies it refused, one line each (the row is not failed)."""

    reply: str
    refused_copies: tuple[str, ...] = ()
    ends_run: ClassVar[bool] = False


@dataclass(frozen=True)
class Refused:
    """The server refused the recipient: ``code`` and ``reply`` as it said them (code 0 when
    bulkmail refused to send, e.g. SMTPUTF8 missing), ``why`` in one line for a person."""

    code: int
    reply: str
    permanent: bool
    why: str
    ends_run: ClassVar[bool] = False


@dataclass(frozen=True)
class Uncertain:
    """The mail was sent whole but its answer never came: ``why`` says what happened."""

    why: str
    ends_run: ClassVar[bool] = False


@dataclass(frozen=True)
class Cancelled:
    """A stop cut short a wait before trying the mail again: it was not handed over."""

    why: str
    ends_run: ClassVar[bool] = True


@dataclass(frozen=True)
class Stopped:
    """The batch cannot go on (``error``: connect, TLS, login, repeated drops); this mail
    was not handed over."""

    error: DeliveryError
    ends_run: ClassVar[bool] = True


Outcome = Accepted | Refused | Uncertain | Cancelled | Stopped


def send_one(
    transport: Transport,
    mail: OutgoingMail,
    *,
    before_data: Callable[[], None] | None = None,
    after_data: Callable[[], None] | None = None,
) -> Outcome:
    """Hand ``mail`` to ``transport`` and say what became of it.

    ``before_data`` must return before the mail is handed over (the journal's mark made
    durable): a transport that can (`takes_before_data`) calls it just before DATA, so
    the wait overlaps the commands before; any other is given the mail only after it.
    ``after_data``: called, by a transport that can, once the mail is handed over and
    before the server's reply to it is read (see `send_through`).
    Only the transport is touched. KeyboardInterrupt goes through: the mail's fate is then
    unknown, and the caller leaves it in doubt.
    """
    try:
        reply = send_through(transport, mail, before_data, after_data)
    except RecipientRefused as exc:
        return Refused(exc.code, exc.reply, exc.permanent, str(exc))
    except SendCancelled as exc:
        return Cancelled(str(exc))
    except DeliveryUncertain as exc:  # a DeliveryError too: caught before the general case
        return Uncertain(str(exc))
    except DeliveryError as exc:
        return Stopped(exc)
    return Accepted(reply, reply.refused_copies if isinstance(reply, Delivered) else ())
