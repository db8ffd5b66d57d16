"""A request-rate cap for a sink: a token bucket on the delivery event loop.

Freshpaint's burst limit is account-wide (5,000 requests/s, third-party figure) and every event is a request,
so a consumer group that scales out must share it: each pod caps its own rate at
``freshpaint.max_requests_per_s`` (the chart checks replicas x rate against the account limit). Under the rate,
taking a token is a few float operations and no await. Over it, each caller reserves the next free slot and
sleeps until then: concurrent senders queue in arrival order and the rate holds whatever their number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """At most ``rate_per_s`` takes per second on average, with bursts of at most ``burst`` (default: a tenth
    of a second's worth, at least 1). ``waited_s`` sums the time callers were held back."""

    def __init__(self, rate_per_s: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s / 10) if burst is None else burst
        self.waited_s = 0.0
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()

    async def take(self) -> None:
        """Wait, if need be, until one more request fits the rate."""
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s) - 1
        self._tokens, self._updated = tokens, now
        if tokens < 0:  # the slot is reserved: sleep until the bucket would have refilled it
            delay_s = -tokens / self.rate_per_s
            self.waited_s += delay_s
            await self._sleep(delay_s)
