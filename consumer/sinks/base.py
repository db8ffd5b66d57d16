"""What both sinks share: the checked base URL, the host that logs may show, and the retrier behind ``state``."""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Iterable

import httpx

from consumer.errors import ConfigError
from consumer.sinks.retry import OnRetry, Retrier, RetryPolicy, SinkState, Sleep, redactor, split_base_url


def tls_verify(url: str, context: ssl.SSLContext | None = None) -> ssl.SSLContext | bool:
    """What an httpx client for ``url`` verifies servers with: ``context``, else the standard trust store when
    the URL is https. A plain-http URL never does TLS, so no trust store is loaded for it: that load costs
    about 50 ms of CPU per client at start-up."""
    if context is not None:
        return context
    return httpx.URL(url).scheme == "https"


class HttpSink:
    """Base of the destination sinks; ``name`` is the destination's (and its configuration section's) name."""

    name: str
    host: str
    """``scheme://host[:port]``: all that logs and errors ever show of the URL."""

    def _setup(self, base_url: str, *, timeout_s: float, retry: RetryPolicy, sleep: Sleep,
               rng: random.Random | None, on_retry: OnRetry | None, secrets: Iterable[str]) -> str:
        """Check the shared settings, build the retrier; returns the base URL without a trailing slash."""
        if not timeout_s > 0:
            raise ConfigError(f"must be > 0, got {timeout_s}", key=f"{self.name}.timeout_s")
        base, self.host = split_base_url(base_url, key=f"{self.name}.base_url")
        self._redact = redactor(secrets)
        self._retrier = Retrier(destination=self.name, host=self.host, policy=retry, sleep=sleep,
                                rng=rng if rng is not None else random.Random(), on_retry=on_retry, now=time.time,
                                redact=self._redact)
        return base

    @property
    def throttled_s(self) -> float:
        """Time requests waited for a rate cap so far; a sink without one never waits."""
        return 0.0

    @property
    def state(self) -> SinkState:
        """``ok``, ``retrying`` (timeouts/5xx/429) or ``bad_credentials`` (401/403), for health and metrics."""
        return self._retrier.state
