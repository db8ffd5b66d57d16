"""The token bucket behind ``freshpaint.max_requests_per_s``: the rate holds, bursts stay small, waits are counted."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.sinks.ratelimit import TokenBucket


class Clock:
    """Simulated time: ``sleep`` advances it, as the event loop would after the delay."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.taken_at: list[float] = []

    def time(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.now_s += delay_s


def take_all(bucket: TokenBucket, clock: Clock, count: int, *, gap_s: float = 0.0) -> list[float]:
    """``count`` sequential takes, ``gap_s`` apart when the caller is not held back; when each one left."""

    async def run() -> list[float]:
        left = []
        for _ in range(count):
            await bucket.take()
            left.append(clock.now_s)
            clock.now_s += gap_s
        return left

    return asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(1, 10_000), count=st.integers(1, 3000), gap_s=st.floats(0, 0.01))
def test_no_window_carries_more_than_the_rate_plus_one_burst(rate: float, count: int, gap_s: float) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, clock=clock.time, sleep=clock.sleep)
    left = take_all(bucket, clock, count, gap_s=gap_s)
    for window_s in (0.1, 1.0):
        start = 0
        for end, at in enumerate(left):
            while left[start] < at - window_s:
                start += 1
            assert end - start + 1 <= rate * window_s + bucket.burst + 1e-6


def test_a_flood_leaves_at_the_rate_and_the_wait_is_counted() -> None:
    clock = Clock()
    bucket = TokenBucket(2000, clock=clock.time, sleep=clock.sleep)
    left = take_all(bucket, clock, 120_000)  # a minute's worth, all at once
    assert left[-1] == pytest.approx((120_000 - bucket.burst) / 2000, rel=1e-6)
    assert bucket.waited_s == pytest.approx(left[-1], rel=1e-6)  # one sender: held back the whole time


def test_under_the_rate_nobody_waits() -> None:
    clock = Clock()
    bucket = TokenBucket(100, clock=clock.time, sleep=clock.sleep)
    take_all(bucket, clock, 500, gap_s=0.02)  # 50/s
    assert bucket.waited_s == 0


def test_concurrent_senders_share_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock=clock.time, sleep=clock.sleep)

    async def sender(left: list[float]) -> None:
        for _ in range(250):
            await bucket.take()
            left.append(clock.now_s)

    async def run() -> list[float]:
        left: list[float] = []
        await asyncio.gather(*(sender(left) for _ in range(8)))
        return left

    left = asyncio.run(run())
    assert len(left) == 2000
    assert max(left) == pytest.approx((2000 - bucket.burst) / 1000, rel=1e-6)


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(0)
