"""Per-identity token buckets: bursts, refills, isolation, the window bound and bounded memory."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.core.errors import ConfigError, ResourceExhausted
from silobridge.security.ratelimit import RateLimiter

ALICE = "spiffe://t/client/alice"
BOB = "spiffe://t/client/bob"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allowed(limiter: RateLimiter, key: str) -> bool:
    try:
        limiter.check(key)
    except ResourceExhausted:
        return False
    return True


def test_a_burst_is_allowed_then_refused_with_a_retry_hint() -> None:
    limiter = RateLimiter(2.0, 5, clock=FakeClock())
    for _ in range(5):
        limiter.check(ALICE)
    with pytest.raises(ResourceExhausted) as caught:
        limiter.check(ALICE)
    assert caught.value.message == (
        f"rate limit of 2/s (burst 5) exceeded for {ALICE}; retry in 0.5 s"
    )


def test_tokens_refill_at_the_configured_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, 2, clock=clock)
    assert [allowed(limiter, ALICE) for _ in range(3)] == [True, True, False]
    clock.now += 0.2  # 0.8 of a token
    assert not allowed(limiter, ALICE)
    clock.now += 0.05  # a whole token
    assert allowed(limiter, ALICE)
    assert not allowed(limiter, ALICE)
    clock.now += 60  # a long pause refills to the burst, not beyond it
    assert [allowed(limiter, ALICE) for _ in range(3)] == [True, True, False]


def test_refused_calls_do_not_spend_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.check(ALICE)
    for _ in range(10):
        assert not allowed(limiter, ALICE)
    clock.now += 1.0
    assert allowed(limiter, ALICE)


def test_keys_have_separate_buckets() -> None:
    limiter = RateLimiter(1.0, 3, clock=FakeClock())
    for _ in range(3):
        limiter.check(ALICE)
    assert not allowed(limiter, ALICE)
    assert [allowed(limiter, BOB) for _ in range(4)] == [True, True, True, False]


def test_a_clock_stepping_back_mints_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.check(ALICE)
    clock.now -= 100
    assert not allowed(limiter, ALICE)
    clock.now += 100.5  # half a second after the first call
    assert not allowed(limiter, ALICE)


def test_memory_is_bounded_by_evicting_the_least_recently_used_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_keys=3)
    for name in ("a", "b", "c"):
        limiter.check(name)
    assert not allowed(limiter, "a")  # touches "a": "b" is now the least recently used
    limiter.check("d")
    assert len(limiter) == 3
    assert not allowed(limiter, "a")  # still tracked, still empty
    assert not allowed(limiter, "c")
    assert allowed(limiter, "b")  # forgotten, so it starts with a fresh bucket
    for index in range(1000):
        limiter.check(f"k{index}")
    assert len(limiter) == 3


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.0, 10), (-1.0, 10), (float("inf"), 10), (float("nan"), 10), (1.0, 0), (1.0, True)],
)
def test_a_limiter_cannot_be_configured_off(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError):
        RateLimiter(rate, burst)


def test_concurrent_callers_never_exceed_the_burst() -> None:
    limiter = RateLimiter(1.0, 50, clock=FakeClock())  # the clock stands still: no refill
    wins: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        mine = [allowed(limiter, ALICE) for _ in range(100)]
        with lock:
            wins.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(wins) == 50


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    calls=st.lists(
        # Gaps in units of one token's refill time: the regime where a bucket runs dry.
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=150,
    ),
)
def test_no_window_admits_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, calls: list[tuple[float, str]]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, burst, clock=clock)
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    for gap, key in calls:
        clock.now += gap / rate
        if allowed(limiter, key):
            admitted[key].append(clock.now)
    for times in admitted.values():
        # Every window that matters starts and ends on an admitted call.
        for first in range(len(times)):
            for last in range(first, len(times)):
                window = times[last] - times[first]
                assert last - first + 1 <= burst + rate * window + 1e-6


def test_a_call_of_many_queries_spends_one_token_each_or_none() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 10, clock=clock)
    limiter.check(ALICE, 6)
    with pytest.raises(ResourceExhausted, match=r"retry in 2\.0 s"):
        limiter.check(ALICE, 6)  # 4 left: refused whole, nothing spent
    limiter.check(ALICE, 4)
    assert not allowed(limiter, ALICE)
    clock.now += 3.0
    limiter.check(ALICE, 3)
    with pytest.raises(ResourceExhausted, match="exceed the rate limit's burst of 10"):
        limiter.check(BOB, 11)  # could never pass, however long it waited
    limiter.check(BOB, 10)
