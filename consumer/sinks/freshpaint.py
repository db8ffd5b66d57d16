"""Freshpaint HTTP API sink: one event per ``POST /track``, many in flight on kept-alive connections.

Every event is a request, so the per-request CPU cost is this sink's whole budget: the URL, headers and
timeout are built once, the success path does no logging, and the token is spliced into a shallow copy
of ``properties`` at serialization time (it never appears in logs, errors or reprs).

Two HTTP clients are supported. aiohttp is the default because it costs ~85 µs of CPU per request on
loopback where ``httpx.AsyncClient`` costs ~500 µs with 4 requests in flight and ~2 ms with 64 (its
connection pool scans every waiting request). httpx is used when a client is injected (tests use
``httpx.MockTransport``) or when ``transport="httpx"`` is asked for.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import aiohttp
import httpx
import orjson
import yarl

from consumer.errors import ConfigError, FatalError, Rejected
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
    redactor,
    split_base_url,
)

DESTINATION = "freshpaint"
MAX_REJECTED_BODY_BYTES = 1024
# No /track at the base URL (a wrong base_url or proxy path): every event would get the same answer, so
# the lane stops like Freshsuccess on 400 instead of dead-lettering the whole stream.
WRONG_URL_STATUSES = frozenset({404, 405})
Transport = Literal["aiohttp", "httpx"]

# aiohttp's timeouts, refused/reset/dropped connections and malformed responses (redirects are not
# followed and raise_for_status is off, so ClientResponseError only means a garbled answer).
_AIOHTTP_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError, TimeoutError,
)

_Answer = tuple[int, Mapping[str, str], bytes]


TRACK_PATH = "/track"


def with_token(event: dict[str, Any], token: str) -> bytes:
    """The request body for ``event``: its JSON with ``token`` placed last in ``properties``, on a shallow copy
    (the event itself never holds the token). Raises ``KeyError``/``TypeError`` for an event that is not one."""
    properties = dict(event["properties"])
    properties["token"] = token
    return orjson.dumps({**event, "properties": properties})


class FreshpaintSink:
    """Delivers events to Freshpaint with at most ``max_in_flight`` requests outstanding across all callers."""

    def __init__(self, *, base_url: str = "https://api.perfalytics.com", token: str, max_in_flight: int = 64,
                 timeout_s: float = 10.0, retry: RetryPolicy = DEFAULT_RETRY,
                 client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, on_retry: OnRetry | None = None,
                 transport: Transport = "aiohttp", ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context`` verifies the server's certificate (default: the standard trust store); it is
        ignored when ``client`` is given."""
        if not token:
            raise ConfigError("must be set", key="freshpaint.token")
        if max_in_flight < 1:
            raise ConfigError(f"must be >= 1, got {max_in_flight}", key="freshpaint.max_in_flight")
        if not timeout_s > 0:
            raise ConfigError(f"must be > 0, got {timeout_s}", key="freshpaint.timeout_s")
        if transport not in ("aiohttp", "httpx"):
            raise ConfigError(f"must be 'aiohttp' or 'httpx', got {transport!r}", key="freshpaint.transport")
        base, self.host = split_base_url(base_url, key="freshpaint.base_url")
        url = base + TRACK_PATH
        self._token = token
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._redact = redactor((token,))
        self._retrier = Retrier(destination=DESTINATION, host=self.host, policy=retry, sleep=sleep,
                                rng=rng if rng is not None else random.Random(), on_retry=on_retry,
                                now=time.time, redact=self._redact)
        self._owns_client = client is None
        self._client: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._post: Callable[[bytes], Awaitable[_Answer]]
        self._retryable: tuple[type[Exception], ...]
        if client is not None or transport == "httpx":
            self._httpx_url = httpx.URL(url)
            self._httpx_timeout = httpx.Timeout(timeout_s)
            if client is None:
                limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
                client = httpx.AsyncClient(timeout=self._httpx_timeout, limits=limits, verify=self._ssl)
            self._client = client
            self._post = self._post_httpx
            self._retryable = RETRYABLE_ERRORS
        else:
            self._yarl_url = yarl.URL(url)
            self._post = self._post_aiohttp
            self._retryable = _AIOHTTP_RETRYABLE_ERRORS

    def __repr__(self) -> str:
        return f"FreshpaintSink(host={self.host!r}, max_in_flight={self._max_in_flight}, state={self.state!r})"

    @property
    def state(self) -> SinkState:
        """``ok``, ``retrying`` (timeouts/5xx/429) or ``bad_credentials`` (401/403), for health and metrics."""
        return self._retrier.state

    async def deliver_one(self, event: dict[str, Any]) -> None:
        """Send one ``{"event": ..., "properties": {...}}``; returns once Freshpaint answered 2xx.

        Retries timeouts, dropped connections, 408/429/5xx (honouring Retry-After) and 401/403 (slowly)
        without limit, holding its in-flight slot meanwhile so an outage throttles new sends. Raises
        FatalError for 404/405 and 1xx/3xx (the base URL is wrong: no event would get through), Rejected
        for other 4xx such as 400 or 413 (and for an event that cannot be serialized). Cancel the task to
        give up.
        """
        body = self._encode(event)
        retrier = self._retrier
        async with self._in_flight:
            delays: Iterator[float] | None = None
            attempt = 0
            while True:
                attempt += 1
                try:
                    status, headers, content = await self._post(body)
                except self._retryable as exc:
                    delays = delays or retrier.delays()
                    await retrier.after_error(exc, attempt, delays)
                    continue
                if 200 <= status < 300:
                    if retrier.state != "ok":
                        retrier.succeeded()
                    return
                if status in CREDENTIAL_STATUSES:
                    await retrier.after_bad_credentials(status, attempt)
                elif status in RETRYABLE_STATUSES:
                    delays = delays or retrier.delays()
                    await retrier.after_status(status, headers.get("retry-after"), attempt, delays)
                elif status in WRONG_URL_STATUSES:
                    raise FatalError(f"Freshpaint at {self.host} answered HTTP {status}: there is no /track "
                                     "endpoint under the configured path; check freshpaint.base_url")
                elif 400 <= status < 500:
                    raise self._rejected(status, content)
                elif 300 <= status < 400:
                    raise FatalError(f"Freshpaint at {self.host} answered HTTP {status} (a redirect, which is "
                                     "not followed); check freshpaint.base_url")
                else:
                    raise FatalError(f"Freshpaint at {self.host} answered HTTP {status}; check freshpaint.base_url")

    async def deliver(self, events: Sequence[dict[str, Any]]) -> list[tuple[int, Rejected]]:
        """Send ``events`` concurrently; returns ``(index, error)`` for each event Freshpaint rejected.

        Returns only when every other event was delivered. Cancelling it cancels every request it started.
        """
        rejected: list[tuple[int, Rejected]] = []
        total = len(events)
        if total == 0:
            return rejected
        next_index = iter(range(total))

        async def worker() -> None:
            for index in next_index:
                try:
                    await self.deliver_one(events[index])
                except Rejected as exc:
                    rejected.append((index, exc))

        workers = min(total, self._max_in_flight)
        if workers == 1:
            await worker()
            return rejected
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        rejected.sort(key=lambda pair: pair[0])
        return rejected

    async def aclose(self) -> None:
        """Close the HTTP client or session if this sink created it."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._client is not None and self._owns_client:
            await self._client.aclose()

    def _encode(self, event: dict[str, Any]) -> bytes:
        try:
            return with_token(event, self._token)
        except (KeyError, TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            raise Rejected(f"event for Freshpaint cannot be serialized: {type(exc).__name__}: "
                           f"{self._redact(str(exc))}") from None

    def _rejected(self, status: int, content: bytes) -> Rejected:
        text = self._redact(content.decode("utf-8", "replace"))
        body = text.encode("utf-8")[:MAX_REJECTED_BODY_BYTES].decode("utf-8", "ignore")
        return Rejected(f"Freshpaint at {self.host} rejected the event with HTTP {status}",
                        status=status, body=body)

    async def _post_httpx(self, body: bytes) -> _Answer:
        assert self._client is not None
        response = await self._client.post(self._httpx_url, content=body, headers=self._headers,
                                           timeout=self._httpx_timeout)
        return response.status_code, response.headers, response.content

    async def _post_aiohttp(self, body: bytes) -> _Answer:
        session = self._session
        if session is None:
            session = self._open_session()
        async with session.post(self._yarl_url, data=body, headers=self._headers,
                                allow_redirects=False) as response:
            content = await response.read()
            return response.status, response.headers, content

    def _open_session(self) -> aiohttp.ClientSession:
        """Created on first use so that it binds to the delivery loop, not the thread that built the sink."""
        connector = aiohttp.TCPConnector(limit=self._max_in_flight, limit_per_host=self._max_in_flight,
                                         ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False,
        )
        return self._session
