"""The sliding-window rate limit, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from streamplat.auth.ratelimit import RateLimiter


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    return FakeClock()


def test_allows_up_to_limit_then_refuses(clock: FakeClock) -> None:
    limiter = RateLimiter(3, window_seconds=60, clock=clock)
    assert [limiter.hit("1.2.3.4") for _ in range(3)] == [None, None, None]
    retry = limiter.hit("1.2.3.4")
    assert retry == pytest.approx(60)
    assert limiter.hit("5.6.7.8") is None  # other clients are not affected


def test_window_slides(clock: FakeClock) -> None:
    limiter = RateLimiter(2, window_seconds=60, clock=clock)
    assert limiter.hit("a") is None
    clock.now += 40
    assert limiter.hit("a") is None
    clock.now += 10
    assert limiter.hit("a") == pytest.approx(10)  # the first request leaves the window in 10 s
    clock.now += 10
    assert limiter.hit("a") is None  # ...and now it has
    assert limiter.hit("a") == pytest.approx(40)  # the second one (at +40 s) stays in it 40 s more


def test_retry_after_is_positive_and_rounds_up_to_at_least_one(clock: FakeClock) -> None:
    limiter = RateLimiter(1, window_seconds=60, clock=clock)
    assert limiter.hit("a") is None
    clock.now += 59.999
    retry = limiter.hit("a")
    assert retry is not None
    assert retry > 0
    assert math.ceil(retry) == 1


def test_refused_requests_do_not_extend_the_lockout(clock: FakeClock) -> None:
    limiter = RateLimiter(1, window_seconds=60, clock=clock)
    assert limiter.hit("a") is None
    for _ in range(30):
        clock.now += 1
        assert limiter.hit("a") is not None
    clock.now += 30
    assert limiter.hit("a") is None


def test_zero_or_negative_limit_is_unlimited(clock: FakeClock) -> None:
    for limit in (0, -1):
        limiter = RateLimiter(limit, clock=clock)
        assert all(limiter.hit("a") is None for _ in range(1000))
        assert limiter._hits == {}


def test_memory_stays_bounded_under_many_keys(clock: FakeClock) -> None:
    limiter = RateLimiter(5, window_seconds=60, clock=clock)
    for i in range(10_000):
        limiter.hit(f"10.0.{i // 256}.{i % 256}")
    clock.now += 61
    limiter.hit("fresh")
    assert set(limiter._hits) == {"fresh"}  # the limiter's only storage


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(5, window_seconds=0)
