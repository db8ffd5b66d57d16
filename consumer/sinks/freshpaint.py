"""Freshpaint HTTP API sink: one event per ``POST /track``, many in flight on kept-alive connections.

Every event is a request, so the per-request CPU cost is this sink's whole budget: the URL, headers and
timeout are built once, the success path does no logging, and the token is spliced into a shallow copy
of ``properties`` at serialization time (it never appears in logs, errors or reprs).

Three HTTP clients are supported. The default, ``transport="http1"``, is :class:`~consumer.sinks.http1.Http1Client`:
HTTP/1.1 on kept-alive asyncio connections with the request head built once, ~35-45 CPU-µs per request on
loopback where aiohttp's request path costs ~120-140 µs and ``httpx.AsyncClient`` ~500 µs with 4 requests in
flight and ~2 ms with 64 (its connection pool scans every waiting request); see docs/performance.md,
"Freshpaint per request". It sends the bytes aiohttp sends and raises aiohttp's exceptions for the same
failures, so ``transport="aiohttp"`` remains a drop-in alternative. httpx is used when a client is injected
(tests use ``httpx.MockTransport``) or when ``transport="httpx"`` is asked for.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import httpx
import orjson
import yarl

from consumer.errors import ConfigError, FatalError, Rejected
from consumer.sinks.base import HttpSink, tls_verify
from consumer.sinks.http1 import Http1Client
from consumer.sinks.preview import MASK, Preview
from consumer.sinks.ratelimit import TokenBucket
from consumer.sinks.retry import DEFAULT_RETRY, RETRYABLE_ERRORS, Answer, OnRetry, RetryPolicy, Sleep

if TYPE_CHECKING:
    from consumer.pipeline.batcher import Batch

DESTINATION = "freshpaint"
MAX_REJECTED_BODY_BYTES = 1024
# No /track at the base URL (a wrong base_url or proxy path): every event would get the same answer, so
# the lane stops like Freshsuccess on 400 instead of dead-lettering the whole stream.
WRONG_URL_STATUSES = frozenset({404, 405})
Transport = Literal["http1", "aiohttp", "httpx"]

# aiohttp's timeouts, refused/reset/dropped connections and malformed responses (redirects are not
# followed and raise_for_status is off, so ClientResponseError only means a garbled answer). Http1Client
# raises the same exceptions for the same failures.
_AIOHTTP_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError, TimeoutError,
)


TRACK_PATH = "/track"


def with_token(event: dict[str, Any], token: str) -> bytes:
    """The request body for ``event``: its JSON with ``token`` placed last in ``properties``, on a shallow copy
    (the event itself never holds the token). Raises ``KeyError``/``TypeError`` for an event that is not one."""
    properties = dict(event["properties"])
    properties["token"] = token
    return orjson.dumps({**event, "properties": properties})


class FreshpaintSink(HttpSink):
    """Delivers events to Freshpaint with at most ``max_in_flight`` requests outstanding across all callers."""

    name = DESTINATION
    ndjson = False
    """Batches keep the output objects: every event is its own request, the token added at send time."""

    def __init__(self, *, base_url: str = "https://api.perfalytics.com", token: str, max_in_flight: int = 64,
                 timeout_s: float = 10.0, retry: RetryPolicy = DEFAULT_RETRY,
                 client: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, on_retry: OnRetry | None = None,
                 transport: Transport = "http1", ssl_context: ssl.SSLContext | None = None,
                 ordered: bool = False, max_requests_per_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``ssl_context`` verifies the server's certificate (default: the standard trust store); it is
        ignored when ``client`` is given. ``ordered``: see :meth:`write`. ``max_requests_per_s``: this sink's
        cap on requests (retries included), waited for on ``clock`` with ``sleep``."""
        if not token:
            raise ConfigError("must be set", key="freshpaint.token")
        if max_in_flight < 1:
            raise ConfigError(f"must be >= 1, got {max_in_flight}", key="freshpaint.max_in_flight")
        if transport not in ("http1", "aiohttp", "httpx"):
            raise ConfigError(f"must be 'http1', 'aiohttp' or 'httpx', got {transport!r}",
                              key="freshpaint.transport")
        base = self._setup(base_url, timeout_s=timeout_s, retry=retry, sleep=sleep, rng=rng, on_retry=on_retry,
                           secrets=(token,))
        url = self._url = base + TRACK_PATH
        self.ordered = ordered
        self.transport: Transport = "httpx" if client is not None else transport
        """The HTTP client in use."""
        self._token = token
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._owns_client = client is None
        self._client: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._http1: Http1Client | None = None
        self._ssl = tls_verify(url, ssl_context)
        self._post: Callable[[bytes], Awaitable[Answer]]
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
        elif transport == "http1":
            self._http1 = Http1Client(url, headers=self._headers, max_connections=max_in_flight, timeout_s=timeout_s,
                                      ssl_context=ssl_context)
            self._post = self._http1.post
            self._retryable = _AIOHTTP_RETRYABLE_ERRORS
        else:
            self._yarl_url = yarl.URL(url)
            self._post = self._post_aiohttp
            self._retryable = _AIOHTTP_RETRYABLE_ERRORS
        self._bucket: TokenBucket | None = None
        if max_requests_per_s is not None:
            self._bucket = TokenBucket(max_requests_per_s, clock=clock, sleep=sleep)
            self._post = self._paced(self._post, self._bucket)

    @property
    def throttled_s(self) -> float:
        """Time requests waited for ``max_requests_per_s`` so far (summed over concurrent requests)."""
        return self._bucket.waited_s if self._bucket is not None else 0.0

    @staticmethod
    def _paced(post: Callable[[bytes], Awaitable[Answer]], bucket: TokenBucket) -> Callable[[bytes], Awaitable[Answer]]:
        async def paced(body: bytes) -> Answer:
            await bucket.take()
            return await post(body)
        return paced

    def __repr__(self) -> str:
        return f"FreshpaintSink(host={self.host!r}, max_in_flight={self._max_in_flight}, state={self.state!r})"

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        """Send each of the batch's outputs; returns ``(index, error)`` for each event Freshpaint rejected.

        Returns only when every other event was delivered. Unordered, up to ``max_in_flight`` requests run at
        once; ``ordered``, each partition's events leave one after another in offset order (partitions still
        run concurrently). Cancelling it cancels every request it started.
        """
        outputs = batch.outputs
        if not self.ordered:
            return await self._send_all(outputs, range(len(outputs)), workers=self._max_in_flight)
        runs: dict[tuple[str, int], list[int]] = {}
        for index, source in enumerate(batch.sources):
            runs.setdefault((source.topic(), source.partition()), []).append(index)
        results = await asyncio.gather(*(self._send_all(outputs, indexes, workers=1) for indexes in runs.values()))
        return sorted((r for result in results for r in result), key=lambda r: r[0])

    def preview(self, batch: Batch) -> list[Preview]:
        """The requests :meth:`write` would send for ``batch``, the token masked."""
        previews = []
        for output in batch.outputs:
            length = len(with_token(output, self._token))  # what is sent
            headers = {**self._headers, "Content-Length": str(length)}
            previews.append(Preview("POST", self._url, headers, with_token(output, MASK).decode()))
        return previews

    async def _send_all(self, events: Sequence[dict[str, Any]], indexes: Iterable[int], *,
                        workers: int) -> list[tuple[int, Rejected]]:
        """Send ``events[i]`` for each index with up to ``workers`` at once; the rejected ones, by index."""
        rejected: list[tuple[int, Rejected]] = []
        pending = iter(indexes)

        async def worker() -> None:
            # A worker keeps its in-flight slot while its batch has events: taking one per event would hand it
            # to another batch's waiting worker after every request (a wake-up each, ~2.5 µs), and concurrent
            # batches would finish interleaved rather than the oldest first.
            async with self._in_flight:
                for index in pending:
                    try:
                        await self._send(events[index])
                    except Rejected as exc:
                        rejected.append((index, exc))

        workers = min(workers, len(events))
        if workers <= 1:  # one at a time needs no task (the common ordered case, and single-event batches)
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

    async def _send(self, event: dict[str, Any]) -> None:
        """One ``POST /track``, retried by :meth:`Retrier.send` while the calling worker holds its in-flight slot
        (so an outage throttles new sends). 404/405 and 1xx/3xx raise FatalError (the base URL is wrong: no event
        would get through); other 4xx such as 400 or 413 raise Rejected, as does an event that cannot be
        serialized."""
        body = self._encode(event)
        await self._retrier.send(lambda: self._post(body), retryable=self._retryable, refuse=self._refusal)

    def _refusal(self, status: int, content: bytes) -> Exception:
        if status in WRONG_URL_STATUSES:
            return FatalError(f"Freshpaint at {self.host} answered HTTP {status}: there is no /track endpoint "
                              "under the configured path; check freshpaint.base_url")
        if 400 <= status < 500:
            return self._rejected(status, content)
        if 300 <= status < 400:
            return FatalError(f"Freshpaint at {self.host} answered HTTP {status} (a redirect, which is not "
                              "followed); check freshpaint.base_url")
        return FatalError(f"Freshpaint at {self.host} answered HTTP {status}; check freshpaint.base_url")

    async def aclose(self) -> None:
        """Close the HTTP client or session if this sink created it."""
        if self._http1 is not None:
            await self._http1.aclose()
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

    async def _post_httpx(self, body: bytes) -> Answer:
        assert self._client is not None
        response = await self._client.post(self._httpx_url, content=body, headers=self._headers,
                                           timeout=self._httpx_timeout)
        return response.status_code, response.headers, response.content

    async def _post_aiohttp(self, body: bytes) -> Answer:
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
