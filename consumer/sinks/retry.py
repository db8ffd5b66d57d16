"""The one retry loop of the destination sinks, their status ladder, and their base-URL check.

Both sinks send through :meth:`Retrier.send`; the schema registry client reads answers with the same
:func:`status_kind` and ``Retry-After`` parser, so the three cannot disagree on what is worth retrying.

Deliveries are retried for as long as it takes (offsets are committed only after delivery), so the
only ways out of a retry loop are success, a non-retryable answer, or cancellation at shutdown. Every
wait goes through an injected ``sleep`` so tests run without real waiting and cancellation lands at
an ``await``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import structlog

from consumer.errors import ConfigError

SinkState = Literal["ok", "retrying", "bad_credentials"]
StatusKind = Literal["ok", "retry", "credentials", "final"]
Answer = tuple[int, Mapping[str, str], bytes]
"""An HTTP answer as the retry loop reads it: status, headers, body."""
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[str, float], None]

CREDENTIAL_STATUSES = frozenset({401, 403})
RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)})
# Timeouts, refused/reset/dropped connections and proxy failures; not our own protocol misuse.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError,
)

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts; jitter is a ± fraction of each delay."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    credentials_backoff_s: float = 60.0  # while a destination answers 401/403
    max_retry_after_s: float = 300.0
    """Cap on a destination's own ``Retry-After``: honoured up to this, independently of ``max_backoff_s``
    (a 429 asking for 120 s is retried after 120 s, not after the backoff cap)."""

    def __post_init__(self) -> None:
        checks = (
            ("initial_backoff_s", self.initial_backoff_s >= 0, "must be >= 0"),
            ("max_backoff_s", self.max_backoff_s >= self.initial_backoff_s, "must be >= initial_backoff_s"),
            ("multiplier", self.multiplier >= 1, "must be >= 1"),
            ("jitter", 0 <= self.jitter < 1, "must be in [0, 1)"),
            ("credentials_backoff_s", self.credentials_backoff_s >= 0, "must be >= 0"),
            ("max_retry_after_s", self.max_retry_after_s > 0, "must be > 0"),
        )
        for key, ok, why in checks:
            value = getattr(self, key)
            if not ok or not math.isfinite(value):
                raise ConfigError(f"{why} and finite, got {value!r}", key=f"retry.{key}")


def status_kind(status: int) -> StatusKind:
    """What an HTTP status means for a request: delivered, worth retrying, bad credentials (retried slowly
    by the sinks), or a final answer the caller turns into its own error."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRYABLE_STATUSES:
        return "retry"
    if status in CREDENTIAL_STATUSES:
        return "credentials"
    return "final"


DEFAULT_RETRY = RetryPolicy()
DEFAULT_MAX_RETRY_AFTER_S = DEFAULT_RETRY.max_retry_after_s


def jittered(delay_s: float, policy: RetryPolicy, rng: random.Random, cap_s: float | None = None) -> float:
    """``delay_s`` spread by ± ``policy.jitter`` so that many consumers do not retry in lockstep."""
    if policy.jitter:
        delay_s *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    if cap_s is not None and delay_s > cap_s:
        delay_s = cap_s
    return max(0.0, delay_s)


def backoff_delays(policy: RetryPolicy, rng: random.Random) -> Iterator[float]:
    """Endless exponential delays with jitter, each capped at ``policy.max_backoff_s``."""
    base = policy.initial_backoff_s
    while True:
        yield jittered(base, policy, rng, cap_s=policy.max_backoff_s)
        base = min(base * policy.multiplier, policy.max_backoff_s)


def parse_retry_after(value: str | None, now: float, *, max_s: float = DEFAULT_MAX_RETRY_AFTER_S) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), clamped to [0, max_s].

    ``now`` is the current Unix time, used for the HTTP-date form. Unparseable values give ``None``
    so that the caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means no zone was given
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), max_s)


def split_base_url(base_url: str, *, key: str) -> tuple[str, str]:
    """``(base without trailing slash, scheme://host[:port])``; the second is what logs may show."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"not a valid URL ({type(exc).__name__})", key=key) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("must be an http:// or https:// URL with a host", key=key)
    if url.query or url.fragment or url.userinfo:
        raise ConfigError("must not carry a query, fragment or user info", key=key)
    host = f"{url.scheme}://{url.netloc.decode('ascii')}"
    path = url.raw_path.decode("ascii").rstrip("/")
    return host + path, host


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that blanks every secret (and its URL-quoted form) out of text bound for logs/errors."""
    from urllib.parse import quote

    forms = sorted({f for s in secrets if s for f in (s, quote(s, safe=""), quote(s))}, key=len, reverse=True)

    def redact(text: str) -> str:
        for form in forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    return redact


class Retrier:
    """Per-destination retry bookkeeping: health state, logs, the metrics hook, and the waiting itself.

    One instance is shared by every concurrent delivery to the destination, so ``state`` reflects the
    latest outcome seen by any of them.
    """

    def __init__(self, *, destination: str, host: str, policy: RetryPolicy, sleep: Sleep,
                 rng: random.Random, on_retry: OnRetry | None, now: Callable[[], float],
                 redact: Callable[[str], str]) -> None:
        self.destination = destination
        self.host = host
        self.policy = policy
        self.state: SinkState = "ok"
        self._sleep = sleep
        self._rng = rng
        self._on_retry = on_retry
        self._now = now
        self._redact = redact

    def delays(self) -> Iterator[float]:
        """A fresh backoff sequence for one delivery."""
        return backoff_delays(self.policy, self._rng)

    def succeeded(self) -> None:
        """Record a delivered request; logs once when bad credentials start working again."""
        if self.state == "bad_credentials":
            _log.info("destination_credentials_accepted", destination=self.destination, host=self.host)
        self.state = "ok"

    async def send(self, post: Callable[[], Awaitable[Answer]], *, retryable: tuple[type[Exception], ...],
                   refuse: Callable[[int, bytes], BaseException], **context: Any) -> None:
        """Call ``post`` until it answers 2xx: the one retry loop of every sink.

        Errors in ``retryable`` and 408/429/5xx (honouring Retry-After) are retried with backoff, 401/403
        slowly, all without limit (offsets wait); any other status raises ``refuse(status, body)``. Cancel
        the task to give up.
        """
        delays: Iterator[float] | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                status, headers, content = await post()
            except retryable as exc:
                delays = delays or self.delays()
                await self.after_error(exc, attempt, delays, **context)
                continue
            kind = status_kind(status)
            if kind == "ok":
                if self.state != "ok":
                    self.succeeded()
                return
            if kind == "credentials":
                await self.after_bad_credentials(status, attempt, **context)
            elif kind == "retry":
                delays = delays or self.delays()
                await self.after_status(status, headers.get("retry-after"), attempt, delays, **context)
            else:
                raise refuse(status, content)

    async def after_status(self, status: int, retry_after: str | None, attempt: int,
                           delays: Iterator[float], **context: Any) -> None:
        """Wait before retrying a 408/429/5xx; a ``Retry-After`` header overrides the backoff delay (capped
        at ``max_retry_after_s``, not at ``max_backoff_s``: the server knows better than our backoff)."""
        self.state = "retrying"
        delay_s = next(delays)
        hinted = parse_retry_after(retry_after, self._now(), max_s=self.policy.max_retry_after_s)
        if hinted is not None:
            delay_s = hinted
        await self._wait(f"http_{status}", delay_s, attempt, status=status, **context)

    async def after_error(self, exc: BaseException, attempt: int, delays: Iterator[float],
                          **context: Any) -> None:
        """Wait before retrying a timeout, refused connection or dropped connection."""
        self.state = "retrying"
        name = type(exc).__name__
        await self._wait(name, next(delays), attempt, error=name, detail=self._redact(str(exc)), **context)

    async def after_bad_credentials(self, status: int, attempt: int, **context: Any) -> None:
        """401/403: report once, then keep retrying slowly until someone fixes the credentials."""
        if self.state != "bad_credentials":
            _log.error("destination_credentials_rejected", destination=self.destination, host=self.host,
                       status=status, **context)
        self.state = "bad_credentials"
        delay_s = jittered(self.policy.credentials_backoff_s, self.policy, self._rng)
        await self._wait("bad_credentials", delay_s, attempt, status=status, **context)

    async def _wait(self, reason: str, delay_s: float, attempt: int, **fields: Any) -> None:
        _log.warning("delivery_retried", destination=self.destination, host=self.host, attempt=attempt,
                     delay_s=round(delay_s, 3), **fields)
        if self._on_retry is not None:
            self._on_retry(reason, delay_s)
        await self._sleep(delay_s)
