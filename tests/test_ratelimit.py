"""TokenBucket: the window bound on a fake clock (hypothesis), then once on the real clock."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.deliver.ratelimit import NoLimit, TokenBucket, limiter_for
from bulkmail.models import Rate

# Float rounding in the fake-clock arithmetic (and the bucket's 1 ns slack times rates up to
# 1000/s), counted in mails: not scheduling jitter, there is none on a fake clock.
ROUNDING = 1e-5


def window_excess(starts: list[float], per_second: float, burst: int) -> float:
    """How far the busiest window [starts[i], starts[j]] goes over per_second * W + burst."""
    worst = -float("inf")
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            count = j - i + 1
            worst = max(worst, count - (per_second * (starts[j] - first) + burst))
    return worst


def run(bucket: TokenBucket, clock: FakeClock, gaps: list[float]) -> list[float]:
    """Ask for a token after each gap (of idle time); return when each was granted."""
    starts = []
    for gap in gaps:
        clock.advance(gap)
        bucket.acquire()
        starts.append(clock())
    return starts


def test_burst_goes_at_once_then_one_per_interval(fake_clock: FakeClock) -> None:
    bucket = TokenBucket(2, burst=3, clock=fake_clock, sleep=fake_clock.sleep)

    waits = [bucket.acquire() for _ in range(6)]

    assert waits == [0, 0, 0, 0.5, 0.5, 0.5]
    assert fake_clock.sleeps == [0.5, 0.5, 0.5]  # one sleep per wait: no spinning


def test_idle_time_refills_the_bucket_up_to_burst_only(fake_clock: FakeClock) -> None:
    bucket = TokenBucket(1, burst=2, clock=fake_clock, sleep=fake_clock.sleep)
    for _ in range(2):
        bucket.acquire()

    fake_clock.advance(3600)

    assert [bucket.acquire() for _ in range(3)] == [0, 0, 1]


class StoppableSleep:
    """Like ``threading.Event().wait`` on a fake clock: returns True at once once stopped."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.stopped = False
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.calls.append(seconds)
        if not self.stopped:
            self.clock.advance(seconds)
        return self.stopped


def test_an_interrupted_sleep_returns_without_taking_a_token(fake_clock: FakeClock) -> None:
    sleep = StoppableSleep(fake_clock)
    bucket = TokenBucket(1, clock=fake_clock, sleep=sleep)
    bucket.acquire()

    sleep.stopped = True
    assert bucket.acquire() == 0
    assert sleep.calls == [1]  # one interrupted sleep, then back to the caller: no spinning

    sleep.stopped = False
    assert bucket.acquire() == 1  # the interrupted call did not spend the token
    assert sleep.calls == [1, 1]


def test_event_wait_works_as_the_sleep() -> None:
    stop = threading.Event()
    bucket = TokenBucket(0.001, sleep=stop.wait)  # the next token is 1000 s away
    bucket.acquire()
    threading.Timer(0.05, stop.set).start()

    waited = bucket.acquire()

    assert 0.04 < waited < 1


@settings(max_examples=300, deadline=None)
@given(
    per_second=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=40),
)
def test_no_window_exceeds_rate_times_length_plus_burst(
    per_second: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_second, burst, clock=clock, sleep=clock.sleep)

    starts = run(bucket, clock, [gap / per_second for gap in gaps])

    assert window_excess(starts, per_second, burst) <= ROUNDING


@settings(max_examples=200, deadline=None)
@given(
    per_second=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=40),
)
def test_waits_only_as_long_as_the_bound_requires(
    per_second: float, burst: int, gaps: list[float]
) -> None:
    """Every acquire that slept ends a window that is exactly full: no over-throttling."""
    clock = FakeClock()
    bucket = TokenBucket(per_second, burst, clock=clock, sleep=clock.sleep)
    starts: list[float] = []
    for gap in gaps:
        clock.advance(gap / per_second)
        waited = bucket.acquire()
        starts.append(clock())
        if waited > 0:
            assert window_excess(starts, per_second, burst) >= -ROUNDING


def test_real_clock_over_25_acquires_never_exceeds_the_rate() -> None:
    per_second, burst = 50.0, 3
    bucket = TokenBucket(per_second, burst)
    jitter = 0.010  # the OS may wake a sleeper late; the tolerance is here, not in the bucket

    started = time.monotonic()
    starts = []
    for _ in range(25):
        bucket.acquire()
        starts.append(time.monotonic())
    elapsed = time.monotonic() - started

    assert window_excess(starts, per_second, burst) <= per_second * jitter
    assert elapsed >= (25 - burst) / per_second - 0.001  # it really held back


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0)])
def test_nonsense_parameters_are_refused(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(per_second, burst)


def test_no_limit_never_waits() -> None:
    limiter = NoLimit()
    assert [limiter.acquire() for _ in range(1000)] == [0.0] * 1000
    assert limiter.ready()


def test_ready_says_whether_acquire_would_wait_and_takes_nothing(fake_clock: FakeClock) -> None:
    bucket = TokenBucket(2, burst=2, clock=fake_clock, sleep=fake_clock.sleep)
    assert [bucket.ready() for _ in range(5)] == [True] * 5  # asking takes no token
    bucket.acquire()
    assert bucket.ready()  # the burst's second token
    bucket.acquire()
    assert not bucket.ready()
    fake_clock.advance(0.25)
    assert not bucket.ready()
    fake_clock.advance(0.25)
    assert bucket.ready()
    # Ready then, still ready at the acquire however late it comes: no wait, no sleep.
    fake_clock.advance(7)
    assert bucket.acquire() == 0
    assert fake_clock.sleeps == []


@given(
    per_second=st.floats(0.5, 200),
    burst=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 1.5), min_size=1, max_size=40),
)
@settings(max_examples=200, deadline=None)
def test_ready_is_true_exactly_when_acquire_returns_at_once(
    per_second: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_second, burst, clock=clock, sleep=clock.sleep)
    for gap in gaps:
        clock.advance(gap)
        ready = bucket.ready()
        assert (bucket.acquire() == 0) == ready


def test_limiter_for_a_campaign_rate(fake_clock: FakeClock) -> None:
    assert isinstance(limiter_for(Rate(per_second=None)), NoLimit)
    bucket = limiter_for(Rate(per_second=5, burst=2), clock=fake_clock, sleep=fake_clock.sleep)
    assert isinstance(bucket, TokenBucket)
    assert (bucket.per_second, bucket.burst) == (5, 2)
    assert repr(bucket) == "TokenBucket(per_second=5, burst=2)"
