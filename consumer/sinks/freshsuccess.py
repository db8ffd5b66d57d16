"""Freshsuccess Event REST API sink: one compressed NDJSON batch per POST, retried until delivered.

Both keys live in the URL path (``/v1/{authKey}/{apiKey}``), so nothing here ever logs or raises with
the URL: messages name ``host`` (scheme://host[:port]) only.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import httpx

from consumer.errors import BadCredentials, ConfigError, FatalError, Rejected, TransientError
from consumer.sinks.base import HttpSink, tls_verify
from consumer.sinks.compress import ENCODINGS, Encoding, compress
from consumer.sinks.preview import Preview
from consumer.sinks.retry import (
    DEFAULT_RETRY,
    RETRYABLE_ERRORS,
    Answer,
    OnRetry,
    RetryPolicy,
    Sleep,
    parse_retry_after,
    status_kind,
)

if TYPE_CHECKING:
    from consumer.pipeline.batcher import Batch

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


class FreshsuccessSink(HttpSink):
    """Delivers NDJSON batches to Freshsuccess; ``state`` says whether it is healthy, retrying, or locked out."""

    name = DESTINATION
    ndjson = True
    """Batches are built as the NDJSON request body (one compressed POST per batch)."""

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
        base = self._base = self._setup(base_url, timeout_s=timeout_s, retry=retry, sleep=sleep, rng=rng,
                                        on_retry=on_retry, secrets=(auth_key, api_key))
        self._url = base + event_path(auth_key, api_key)
        self._ping_url = base + PING_PATH
        self._encoding: Encoding = encoding
        self._level = compress_level
        self._timeout = httpx.Timeout(timeout_s)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            timeout=self._timeout, verify=tls_verify(base, ssl_context))
        self._headers = {"Content-Type": "application/json"}
        if encoding != "none":
            self._headers["Content-Encoding"] = encoding

    def __repr__(self) -> str:
        return f"FreshsuccessSink(host={self.host!r}, encoding={self._encoding!r}, state={self.state!r})"

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
        kind = status_kind(status)
        if kind == "ok":
            return
        if kind == "retry":
            hint = parse_retry_after(response.headers.get("retry-after"), time.time(),
                                     max_s=self._retrier.policy.max_retry_after_s)
            raise TransientError(f"Freshsuccess at {self.host} answered the ping with HTTP {status}",
                                 retry_after_s=hint)
        if kind == "credentials":
            raise BadCredentials(f"Freshsuccess at {self.host} refused the ping with HTTP {status}")
        raise FatalError(f"Freshsuccess at {self.host} answered the ping with HTTP {status}; "
                         "check the base URL")

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        """POST the batch's NDJSON body; returns (nothing rejected) once Freshsuccess answered 2xx.

        Retried without limit by :meth:`Retrier.send`; 400 and other 4xx raise FatalError (the URL path or
        the keys are wrong: no event would get through). Cancel the task to give up.
        """
        payload = await self._encode(bytes(batch.body))
        headers = self._headers_for(payload)

        async def post() -> Answer:
            response = await self._client.post(self._url, content=payload, headers=headers, timeout=self._timeout)
            return response.status_code, response.headers, response.content

        await self._retrier.send(post, retryable=RETRYABLE_ERRORS, refuse=self._refusal, events=batch.events)
        return []

    def preview(self, batch: Batch) -> list[Preview]:
        """The request :meth:`write` would send for ``batch``, keys masked, body before compression."""
        body = bytes(batch.body)
        headers = self._headers_for(compress(body, self._encoding, self._level))
        return [Preview("POST", self._base + MASKED_EVENT_PATH, headers, body.decode())]

    def _headers_for(self, payload: bytes) -> dict[str, str]:
        headers = dict(self._headers)
        headers["Content-Length"] = str(len(payload))
        return headers

    def _refusal(self, status: int, content: bytes) -> FatalError:
        if status == 400:
            return FatalError(f"Freshsuccess at {self.host} answered HTTP 400: the URL path or the auth/api keys "
                              "are wrong (or the request is not a POST)")
        return FatalError(f"Freshsuccess at {self.host} answered HTTP {status}, which is not retryable")

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
