"""Pace the start of each mail: a token bucket on a monotonic clock that sleeps, never spins.

The bucket holds at most ``burst`` tokens and gains ``per_second`` tokens a second;
each mail takes one. Over any window of length ``W`` seconds at most
``per_second * W + burst`` mails start, whatever the pattern of calls.

It is written in the "virtual scheduling" form of the token bucket (the generic cell rate
algorithm, GCRA): it keeps one number, when the next mail is due, instead of a fractional
token count that must be refilled on every call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from bulkmail.models import Rate

Clock = Callable[[], float]
# A sleep may return True to say it was interrupted, as threading.Event().wait does when
# the event is set; time.sleep returns None.
Sleep = Callable[[float], object]

# Float rounding: ``now + (t - now)`` is not always exactly ``t``, so a fake clock could
# otherwise make us sleep for 1e-17 s forever. One nanosecond of slack is far below
# anything a clock or a mail server can observe.
_TOLERANCE = 1e-9


class RateLimiter(Protocol):
    """Anything with ``acquire()``: blocks until the next mail may start."""

    def acquire(self) -> float:
        """Wait for permission to start one mail; return the seconds waited."""
        ...

    def ready(self) -> bool:
        """Whether `acquire` would return at once if called now. Taking nothing, it lets
        a caller get the next mail ready ahead of its start without moving the start."""
        ...


class TokenBucket:
    """At most ``per_second`` acquisitions a second on average, ``burst`` back to back.

    ``clock`` and ``sleep`` are injectable so tests can run on a fake clock; ``sleep``
    must advance that clock. Passing ``sleep=stop_event.wait`` makes a wait end early when
    the event is set: ``acquire()`` then returns without a token, and the caller checks
    its event before starting a mail. Not thread-safe: one sender uses one bucket.

    >>> bucket = TokenBucket(5, burst=2)
    >>> bucket.acquire()  # the first ``burst`` calls return at once
    0.0
    """

    def __init__(
        self,
        per_second: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not (per_second > 0 and math.isfinite(per_second)):
            raise ValueError(f"per_second must be a positive number, not {per_second!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.per_second = per_second
        self.burst = burst
        self._interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        # When the bucket would be exactly empty if nobody waited: the next mail is due
        # ``burst - 1`` intervals before this. -inf means "full".
        self._next_due = -math.inf

    def __repr__(self) -> str:
        return f"TokenBucket(per_second={self.per_second!r}, burst={self.burst!r})"

    def acquire(self) -> float:
        """Block (sleeping) until a token is available, take it, return the seconds waited.

        If ``sleep`` returns True (interrupted), return at once without taking a token.
        """
        start = now = self._clock()
        while (wait := self._earliest_start() - now) > _TOLERANCE:
            if self._sleep(wait) is True:
                return self._clock() - start
            now = self._clock()
        self._next_due = max(self._next_due, now) + self._interval
        return now - start

    def ready(self) -> bool:
        """Whether a token is there now. One sender uses the bucket, so one that is there
        is still there at its `acquire`, however much later that comes."""
        return self._earliest_start() - self._clock() <= _TOLERANCE

    def _earliest_start(self) -> float:
        return self._next_due - (self.burst - 1) * self._interval


class NoLimit:
    """A limiter that never waits, for ``rate: unlimited``."""

    def __repr__(self) -> str:
        return "NoLimit()"

    def acquire(self) -> float:
        """Return at once: no limit."""
        return 0.0

    def ready(self) -> bool:
        """Always: no limit."""
        return True


def limiter_for(
    rate: Rate, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
) -> RateLimiter:
    """The limiter a campaign's ``rate:`` asks for: a TokenBucket, or NoLimit when unset."""
    if rate.per_second is None:
        return NoLimit()
    return TokenBucket(rate.per_second, rate.burst, clock=clock, sleep=sleep)
