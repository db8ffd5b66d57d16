"""Freshsuccess Event REST API sink: one compressed NDJSON batch per POST, retried until delivered.

Both keys live in the URL path (``/v1/{authKey}/{apiKey}``), so nothing here ever logs or raises with
the URL: messages name ``host`` (scheme://host[:port]) only.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Iterator
from typing import Literal
from urllib.parse import quote

import httpx

from consumer.errors import BadCredentials, ConfigError, FatalError, TransientError
from consumer.sinks.compress import ENCODINGS, Encoding, compress
from consumer.sinks.retry import (
    CREDENTIAL_STATUSES,
    DEFAULT_RETRY,
    RETRYABLE_ERRORS,
    RETRYABLE_STATUSES,
    OnRetry,
    Retrier,
    RetryPolicy,
    SinkState,
    Sleep,
    parse_retry_after,
    redactor,
    split_base_url,
)

DESTINATION = "freshsuccess"
_DATACENTER_URLS = {
    "us": "https://events-us.freshsuccess.com",
    "eu": "https://events-eu.freshsuccess.com",
}
# Below this size a thread hop costs more than compressing on the loop.
_INLINE_COMPRESS_MAX_BYTES = 16 * 1024


def tls_failure(exc: BaseException) -> str | None:
    """The certificate problem behind a connection error (e.g. ``certificate verify failed: unable to get
    local issuer certificate``), or None when it was not a TLS verification failure."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> ssl: a short chain
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or "certificate verify failed")
        seen = seen.__cause__ or seen.__context__
    return None


def datacenter_url(datacenter: Literal["us", "eu"]) -> str:
    """The event endpoint's base URL for a Freshsuccess datacenter."""
    try:
        return _DATACENTER_URLS[datacenter]
    except KeyError:
        raise ConfigError(f"unknown datacenter {datacenter!r}; expected 'us' or 'eu'",
                          key="freshsuccess.datacenter") from None


PING_PATH = "/v1/ping"
MASKED_EVENT_PATH = "/v1/***/***"
"""The Event API path as dry runs and tools show it: the keys never appear."""


def event_path(auth_key: str, api_key: str) -> str:
    """``/v1/{authKey}/{apiKey}``, each key URL-quoted: the one place the Event API's path is written."""
    return f"/v1/{quote(auth_key, safe='')}/{quote(api_key, safe='')}"


class FreshsuccessSink:
    """Delivers NDJSON batches to Freshsuccess; ``state`` says whether it is healthy, retrying, or locked out."""

    def __init__(self, *, base_url: str, auth_key: str, api_key: str, encoding: Encoding = "gzip",
                 compress_level: int = 1, timeout_s: float = 30.0, retry: RetryPolicy = DEFAULT_RETRY,
                 client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, on_retry: OnRetry | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context`` verifies the server's certificate (default: the standard trust store); it is
        ignored when ``client`` is given."""
        if not auth_key or not api_key:
            raise ConfigError("auth_key and api_key must both be set", key="freshsuccess")
        if encoding not in ENCODINGS:
            raise ConfigError(f"must be one of {', '.join(ENCODINGS)}, got {encoding!r}",
                              key="freshsuccess.encoding")
        if not 0 <= compress_level <= 9:
            raise ConfigError(f"must be 0-9, got {compress_level}", key="freshsuccess.compress_level")
        if not timeout_s > 0:
            raise ConfigError(f"must be > 0, got {timeout_s}", key="freshsuccess.timeout_s")
        base, self.host = split_base_url(base_url, key="freshsuccess.base_url")
        self._url = base + event_path(auth_key, api_key)
        self._ping_url = base + PING_PATH
        self._encoding: Encoding = encoding
        self._level = compress_level
        self._timeout = httpx.Timeout(timeout_s)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            timeout=self._timeout, verify=ssl_context if ssl_context is not None else True)
        self._headers = {"Content-Type": "application/json"}
        if encoding != "none":
            self._headers["Content-Encoding"] = encoding
        self._retrier = Retrier(destination=DESTINATION, host=self.host, policy=retry, sleep=sleep,
                                rng=rng if rng is not None else random.Random(), on_retry=on_retry,
                                now=time.time, redact=redactor((auth_key, api_key)))

    def __repr__(self) -> str:
        return f"FreshsuccessSink(host={self.host!r}, encoding={self._encoding!r}, state={self.state!r})"

    @property
    def state(self) -> SinkState:
        """``ok``, ``retrying`` (timeouts/5xx/429) or ``bad_credentials`` (401/403), for health and metrics."""
        return self._retrier.state

    async def ping(self) -> None:
        """One POST to ``/v1/ping``; raises TransientError/FatalError instead of retrying."""
        try:
            response = await self._client.post(self._ping_url, content=b"", timeout=self._timeout)
        except RETRYABLE_ERRORS as exc:
            tls = tls_failure(exc)
            if tls is not None:
                raise TransientError(f"Freshsuccess at {self.host} failed TLS verification ({tls}); check "
                                     "freshsuccess.ca_bundle and freshsuccess.base_url") from None
            raise TransientError(f"Freshsuccess at {self.host} did not answer the ping "
                                 f"({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUSES:
            hint = parse_retry_after(response.headers.get("retry-after"), time.time(),
                                     max_s=self._retrier.policy.max_retry_after_s)
            raise TransientError(f"Freshsuccess at {self.host} answered the ping with HTTP {status}",
                                 retry_after_s=hint)
        if status in CREDENTIAL_STATUSES:
            raise BadCredentials(f"Freshsuccess at {self.host} refused the ping with HTTP {status}")
        raise FatalError(f"Freshsuccess at {self.host} answered the ping with HTTP {status}; "
                         "check the base URL")

    async def deliver(self, body: bytes, count: int) -> None:
        """POST one NDJSON batch of ``count`` events; returns once Freshsuccess answered 2xx.

        Retries timeouts, dropped connections, 408/429/5xx (honouring Retry-After) and 401/403 (slowly)
        without limit; raises FatalError for 400 and other 4xx. Cancel the task to give up.
        """
        payload = await self._encode(body)
        headers = dict(self._headers)
        headers["Content-Length"] = str(len(payload))
        retrier = self._retrier
        delays: Iterator[float] | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.post(self._url, content=payload, headers=headers,
                                                   timeout=self._timeout)
            except RETRYABLE_ERRORS as exc:
                delays = delays or retrier.delays()
                await retrier.after_error(exc, attempt, delays, events=count)
                continue
            status = response.status_code
            if 200 <= status < 300:
                retrier.succeeded()
                return
            if status in CREDENTIAL_STATUSES:
                await retrier.after_bad_credentials(status, attempt, events=count)
            elif status in RETRYABLE_STATUSES:
                delays = delays or retrier.delays()
                await retrier.after_status(status, response.headers.get("retry-after"), attempt, delays,
                                           events=count)
            elif status == 400:
                raise FatalError(f"Freshsuccess at {self.host} answered HTTP 400: the URL path or the "
                                 "auth/api keys are wrong (or the request is not a POST)")
            else:
                raise FatalError(f"Freshsuccess at {self.host} answered HTTP {status}, which is not retryable")

    async def aclose(self) -> None:
        """Close the HTTP client if this sink created it."""
        if self._owns_client:
            await self._client.aclose()

    async def _encode(self, body: bytes) -> bytes:
        if self._encoding == "none":
            return body
        if len(body) <= _INLINE_COMPRESS_MAX_BYTES:
            return compress(body, self._encoding, self._level)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, compress, body, self._encoding, self._level)
