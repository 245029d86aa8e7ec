"""Send through several SMTP relays (`smtp:` a list): mails shared by weight, each relay at
its own pace, a relay that stops working set aside while the others carry the run.

A :class:`RelayPool` is a :class:`~bulkmail.deliver.transport.Transport`, so a run uses it
as it uses one SMTPTransport. Per mail it picks a relay by smooth weighted round-robin (the
nginx algorithm: over any stretch of mails each live relay's share is its weight over the
total, interleaved rather than in runs), waits for that relay's own ``rate``, and hands the
mail over.

What happens to a relay that fails decides what happens to the mail:

- a refusal for this recipient, a mail whose answer never came (maybe delivered) and a
  stop during a wait pass through as they are: the row is failed, in doubt or left
  unsent as with one relay, and the relay stays in use;
- any other DeliveryError (connecting, TLS, login, a connection that kept dropping before
  the end of DATA) means the mail was not handed over: the relay is set aside ("relay-down"
  event) and the same mail goes to the next live relay. Only when none is left does the
  error reach the run, which then stops as it does with one relay.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bulkmail.deliver.ratelimit import NoLimit, RateLimiter, limiter_for
from bulkmail.deliver.smtp import SendCancelled, SMTPTransport, event_text, resolve_password
from bulkmail.deliver.transport import Transport, send_through
from bulkmail.errors import DeliveryError, DeliveryUncertain, RecipientRefused
from bulkmail.models import OutgoingMail, SmtpSettings
from bulkmail.opening import Opened

EventHandler = Callable[[str, dict[str, Any]], None]

# What a relay may raise that says something about this mail, not about the relay: passed
# on to the run unchanged, and the relay stays in use.
_ABOUT_THE_MAIL = (RecipientRefused, DeliveryUncertain)


@dataclass
class Relay:
    """One relay of a pool: its settings (``settings.name`` names it), the transport that
    talks to it, the limiter that paces it; how many mails it took and, once set aside,
    why (``down``)."""

    settings: SmtpSettings
    transport: Transport
    limiter: RateLimiter = field(default_factory=NoLimit)
    sent: int = 0
    down: DeliveryError | None = None
    # Smooth weighted round-robin's running score (see RelayPool._choose).
    current: float = field(default=0.0, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def live(self) -> bool:
        return self.down is None


class RelayPool(Opened):
    """A Transport over several relays: each mail through one, chosen by weight.

    ``on_event(name, info)`` hears "relay-down" (``info``: ``relay``, the relay's name;
    ``why``, the error in one line; ``left``, the names of the relays still in use) when a
    relay is set aside and the others carry on. ``stop``, once set, gives the mail up
    unsent with SendCancelled after the wait for its relay's rate (each limiter should
    sleep with ``stop.wait``, so that the wait ends at once). Not thread-safe: one sender
    uses one pool. relay_pool builds one from a campaign's relays::

        relays = [Relay(a, SMTPTransport(a, password=pa), limiter_for(a.rate)), ...]
        with RelayPool(relays, stop=stop) as pool:
            reply = pool.send(mail)
    """

    def __init__(
        self,
        relays: Sequence[Relay],
        *,
        stop: threading.Event | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        if not relays:
            raise ValueError("a relay pool needs at least one relay")
        names = [relay.name for relay in relays]
        if len(set(names)) != len(names):
            raise ValueError(f"each relay once, please: {names}")
        self.relays = list(relays)
        self._stop = stop
        self._on_event = on_event
        self._down_order: list[Relay] = []  # the relays set aside, as they failed

    def __repr__(self) -> str:
        return f"RelayPool({', '.join(relay.name for relay in self.relays)})"

    # -- what a report says --------------------------------------------------------------

    @property
    def down(self) -> list[tuple[str, str]]:
        """The relays set aside, in the order they failed: (name, why)."""
        return [(relay.name, str(relay.down)) for relay in self._down_order]

    @property
    def shares(self) -> dict[str, int]:
        """How many mails each relay took (accepted by its server), by name."""
        return {relay.name: relay.sent for relay in self.relays}

    @property
    def live(self) -> list[Relay]:
        """The relays still in use."""
        return [relay for relay in self.relays if relay.live]

    # -- the Transport protocol -------------------------------------------------------

    def open(self) -> None:
        """Open every relay; set aside the ones that cannot be reached or logged into.

        Raises the first relay's error if none of them could be opened.
        """
        if not self.live:  # opened again after every relay failed
            raise self._last_error()
        failed: list[tuple[Relay, DeliveryError]] = []
        for relay in self.live:
            try:
                relay.transport.open()
            except DeliveryError as exc:
                failed.append((relay, exc))
        announce = len(failed) < len(self.live)  # else the run stops with the first error
        for relay, error in failed:
            self._set_aside(relay, error, announce=announce)
        if not announce:
            raise failed[0][1]

    def takes_before_data(self) -> bool:
        """`send` passes its ``before_data`` on to the relay's transport."""
        return True

    def takes_after_data(self) -> bool:
        """`send` passes its ``after_data`` on, when the next mail could start at once."""
        return True

    def send(
        self,
        mail: OutgoingMail,
        *,
        before_data: Callable[[], None] | None = None,
        after_data: Callable[[], None] | None = None,
    ) -> str:
        """Send ``mail`` through the next relay by weight, after that relay's own wait;
        return the reply of the relay that took it. ``before_data``: as for one relay.
        ``after_data``: called while the relay's server reads the mail, if every live
        relay's rate would let the next mail start then (whichever relay it goes to):
        the caller uses it to get the next mail ready, which must not then wait.

        A relay that fails without having taken the mail is set aside and the mail goes
        to the next one. Raises RecipientRefused, DeliveryUncertain and SendCancelled as
        a single relay would; the last relay's error when no relay is left.
        """
        while True:
            relay = self._choose()
            relay.limiter.acquire()
            if self._stop is not None and self._stop.is_set():
                raise SendCancelled(
                    f"{mail.recipient.email}: not sent: the run was stopped while waiting"
                    f" for {relay.name}'s rate"
                )
            try:
                reply = send_through(
                    relay.transport,
                    mail,
                    before_data,
                    None if after_data is None else functools.partial(self._if_ready, after_data),
                )
            except _ABOUT_THE_MAIL:
                raise
            except DeliveryError as exc:  # never handed over: the relay itself is the trouble
                self._set_aside(relay, exc, announce=len(self.live) > 1)
                if not self.live:
                    raise
                continue
            relay.sent += 1
            return reply

    def close(self) -> None:
        """Close every relay; errors from the ones set aside are not worth a word."""
        for relay in self.relays:
            if relay.live:
                relay.transport.close()
            else:
                _close_quietly(relay.transport)

    def _if_ready(self, after_data: Callable[[], None]) -> None:
        if all(relay.limiter.ready() for relay in self.live):
            after_data()

    # -- choosing and setting aside -------------------------------------------------------

    def _choose(self) -> Relay:
        """Smooth weighted round-robin: every live relay gains its weight, the one with the
        most goes and loses the total. With weights 2:1 the order is A B A, A B A..."""
        live = self.live
        if not live:  # send() after every relay failed: say why, as the last failure did
            raise self._last_error()
        total = sum(relay.settings.weight for relay in live)
        for relay in live:
            relay.current += relay.settings.weight
        chosen = max(live, key=lambda relay: relay.current)
        chosen.current -= total
        return chosen

    def _last_error(self) -> DeliveryError:
        """Why the last relay was set aside."""
        return self._down_order[-1].down or DeliveryError("no relay left")

    def _set_aside(self, relay: Relay, error: DeliveryError, *, announce: bool) -> None:
        """Stop using ``relay``; with ``announce``, tell the run (the others carry on: when
        none is left, the run stops with the error and says so itself)."""
        relay.down = error
        self._down_order.append(relay)
        _close_quietly(relay.transport)
        for other in self.relays:  # the shares start afresh among the relays left
            other.current = 0.0
        if announce and self._on_event is not None:
            left = [other.name for other in self.live]
            self._on_event("relay-down", {"relay": relay.name, "why": str(error), "left": left})


def _close_quietly(transport: Transport) -> None:
    """Close a transport that already failed: the server may be gone, nothing to tell it."""
    with contextlib.suppress(DeliveryError, OSError):
        transport.close()


def relay_passwords(
    relays: Sequence[SmtpSettings],
    *,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] | None = None,
) -> list[str | None]:
    """Each relay's password, as resolve_password finds it (its own ``password_env``, else
    ``prompt``, else an AuthError naming the relay): asked for before anything is sent, so
    a missing one stops the run before the first relay is even opened. A prompt names the
    relay in full (user@host:port), since two relays may share a user or a host."""

    def asking(settings: SmtpSettings) -> Callable[[str], str] | None:
        if prompt is None:
            return None
        ask = prompt
        return lambda _text: ask(f"SMTP password for relay {settings.name}: ")

    return [
        resolve_password(settings, environ=environ, prompt=asking(settings)) for settings in relays
    ]


def relay_pool(
    relays: Sequence[SmtpSettings],
    passwords: Sequence[str | None],
    *,
    sleep: Callable[[float], bool | None] = time.sleep,
    stop: threading.Event | None = None,
    on_event: EventHandler | None = None,
    **transport_options: Any,
) -> RelayPool:
    """A pool of SMTPTransports for ``relays`` (one password each, as resolve_password
    found it), each paced by its own ``rate`` with ``sleep`` (``stop.wait`` in a run).

    ``on_event`` hears the pool's "relay-down" and each transport's own events ("connect",
    "reconnect", "retry"...), with ``info["relay"]`` naming the relay; relay_event_text
    says them in words. ``transport_options`` go to every SMTPTransport (ssl_context...).
    """
    if len(passwords) != len(relays):
        raise ValueError(f"{len(relays)} relays but {len(passwords)} passwords")
    pool = [
        Relay(
            settings,
            SMTPTransport(
                settings,
                password=password,
                sleep=sleep,
                on_event=_naming(settings.name, on_event),
                **transport_options,
            ),
            limiter_for(settings.rate, sleep=sleep) if settings.rate else NoLimit(),
        )
        for settings, password in zip(relays, passwords, strict=True)
    ]
    return RelayPool(pool, stop=stop, on_event=on_event)


def _naming(name: str, on_event: EventHandler | None) -> EventHandler | None:
    """``on_event`` with the relay's name added to each event's info."""
    if on_event is None:
        return None
    handler = on_event

    def named(event: str, info: dict[str, Any]) -> None:
        handler(event, {**info, "relay": name})

    return named


def relay_event_text(name: str, info: dict[str, Any]) -> str | None:
    """A pool's event in one line for a person (None for routine ones): a relay set aside,
    or a relay's own reconnect or retry, which event_text words, named by the relay."""
    if name == "relay-down":
        left = ", ".join(info["left"])
        return f"relay {info['relay']} set aside: {info['why']}; carrying on with {left}"
    return event_text(name, info, where=info.get("relay", "?"))
