"""Destination sinks: exact requests, error classification, retries, concurrency, cancellation, secrecy."""

from __future__ import annotations

import asyncio
import copy
import gzip
import itertools
import random
import string
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from email.utils import formatdate
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import BadCredentials, FatalError, Rejected, TransientError
from consumer.sinks import (
    FreshpaintSink,
    FreshsuccessSink,
    RetryPolicy,
    backoff_delays,
    compress,
    datacenter_url,
    parse_retry_after,
)
from consumer.sinks.freshpaint import Transport
from consumer.testing.fakes import events_batch, ndjson_batch

AUTH_KEY = "authKEY-9f3b2c71d0"
API_KEY = "apiKEY-77e1a0c4b5"
TOKEN = "tok-2ce2b45b-af44-4426-a3ef"
BASE = "https://events-test.example:8443"
NO_JITTER = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=30.0, multiplier=2.0, jitter=0.0,
                        credentials_backoff_s=60.0)

Handler = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


def run(coro: Awaitable[Any], timeout_s: float = 10.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


class FakeSleep:
    """Records requested delays and returns at once (after yielding, so cancellation can land)."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.delays: list[float] = []
        self._on_sleep = on_sleep

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        if self._on_sleep is not None:
            self._on_sleep(delay_s)
        await asyncio.sleep(0)


def scripted(answers: list[int | Exception | httpx.Response],
             seen: list[httpx.Request] | None = None) -> Handler:
    """A handler that plays ``answers`` in order (status, raised error, or full response), then 200s."""
    queue = iter(answers)

    async def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        answer = next(queue, 200)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer)

    return handler


def client_for(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def fs_sink(handler: Handler, **kwargs: Any) -> FreshsuccessSink:
    kwargs.setdefault("retry", NO_JITTER)
    kwargs.setdefault("sleep", FakeSleep())
    return FreshsuccessSink(base_url=BASE, auth_key=AUTH_KEY, api_key=API_KEY, client=client_for(handler),
                            **kwargs)


def fp_sink(handler: Handler, **kwargs: Any) -> FreshpaintSink:
    kwargs.setdefault("retry", NO_JITTER)
    kwargs.setdefault("sleep", FakeSleep())
    return FreshpaintSink(base_url="https://fp.example", token=TOKEN, client=client_for(handler), **kwargs)


def ndjson(n: int) -> bytes:
    return b"".join(orjson.dumps({"accountId": f"a{i}", "userId": f"u{i}", "createdAt": 1_700_000_000_000 + i,
                                  "action": "feature", "sessionId": "s", "feature": "export", "total": 1})
                    + b"\n" for i in range(n))


def decode(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)  # zlib-wrapped, as HTTP's "deflate" means
    assert encoding is None
    return body


def event(i: int = 0) -> dict[str, Any]:
    return {"event": "feature_used", "properties": {"distinct_id": f"user-{i}", "time": 1_700_000_000.5 + i,
                                                    "$insert_id": f"id-{i}", "nested": {"a": [1, 2]}}}


# --- compression and retry timing -----------------------------------------------------------------


@given(body=st.binary(max_size=4096), level=st.integers(0, 9))
def test_compress_round_trips_for_every_encoding(body: bytes, level: int) -> None:
    assert gzip.decompress(compress(body, "gzip", level)) == body
    assert zlib.decompress(compress(body, "deflate", level)) == body
    assert compress(body, "none", level) == body


def test_compress_rejects_bad_level_and_encoding() -> None:
    with pytest.raises(ValueError, match="level"):
        compress(b"x", "gzip", 10)
    with pytest.raises(ValueError, match="encoding"):
        compress(b"x", "br", 1)  # type: ignore[arg-type]


def test_backoff_without_jitter_doubles_then_caps() -> None:
    delays = list(itertools.islice(backoff_delays(NO_JITTER, random.Random(0)), 9))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@given(seed=st.integers(0, 2**32), jitter=st.floats(0, 0.99), multiplier=st.floats(1, 4),
       initial=st.floats(0.01, 5), extra=st.floats(0, 60))
def test_backoff_stays_within_jitter_band_and_cap(seed: int, jitter: float, multiplier: float,
                                                  initial: float, extra: float) -> None:
    policy = RetryPolicy(initial_backoff_s=initial, max_backoff_s=initial + extra, multiplier=multiplier,
                         jitter=jitter)
    base = initial
    for delay in itertools.islice(backoff_delays(policy, random.Random(seed)), 40):
        assert 0 <= delay <= policy.max_backoff_s
        assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9
        base = min(base * multiplier, policy.max_backoff_s)


def test_parse_retry_after_forms() -> None:
    now = time.time()
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("100000", now, max_s=30.0) == 30.0
    date = formatdate(now + 12, usegmt=True)
    hinted = parse_retry_after(date, now, max_s=60.0)
    assert hinted is not None
    assert 10.5 <= hinted <= 12.5
    assert parse_retry_after(formatdate(now - 100, usegmt=True), now) == 0.0


# --- Freshsuccess ------------------------------------------------------------------------------------


def test_datacenter_urls() -> None:
    assert datacenter_url("us") == "https://events-us.freshsuccess.com"
    assert datacenter_url("eu") == "https://events-eu.freshsuccess.com"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "none"])
@pytest.mark.parametrize("events", [3, 2000])  # small batches compress inline, large ones in the executor
def test_freshsuccess_sends_exact_request(encoding: Any, events: int) -> None:
    seen: list[httpx.Request] = []
    body = ndjson(events)

    async def scenario() -> None:
        sink = fs_sink(scripted([], seen), encoding=encoding)
        await sink.write(ndjson_batch(body, events))
        await sink.aclose()
        assert sink.state == "ok"

    run(scenario())
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1/{AUTH_KEY}/{API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.content))
    expected_encoding = None if encoding == "none" else encoding
    assert request.headers.get("content-encoding") == expected_encoding
    assert decode(request.content, expected_encoding) == body
    if encoding != "none":
        assert len(request.content) < len(body)


def test_freshsuccess_keys_are_url_quoted_in_the_path() -> None:
    seen: list[httpx.Request] = []

    async def scenario() -> None:
        sink = FreshsuccessSink(base_url="http://h.example/prefix/", auth_key="a/b", api_key="c d",
                                client=client_for(scripted([], seen)))
        await sink.write(ndjson_batch(b"{}\n", 1))

    run(scenario())
    assert seen[0].url.raw_path == b"/prefix/v1/a%2Fb/c%20d"


def test_freshsuccess_400_is_fatal_and_names_host_not_keys() -> None:
    sink = fs_sink(scripted([400]))
    with structlog.testing.capture_logs() as logs, pytest.raises(FatalError) as info:
        run(sink.write(ndjson_batch(ndjson(2), 2)))
    message = str(info.value)
    assert sink.host in message
    assert "events-test.example:8443" in message
    assert "keys" in message
    for secret in (AUTH_KEY, API_KEY, "/v1/"):
        assert secret not in message
        assert secret not in repr(logs)
        assert secret not in repr(sink)


def test_freshsuccess_other_4xx_is_fatal_naming_status() -> None:
    sink = fs_sink(scripted([404]))
    with pytest.raises(FatalError, match="404") as info:
        run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert sink.host in str(info.value)
    assert AUTH_KEY not in str(info.value)


def test_freshsuccess_retries_5xx_with_backoff_and_retry_after() -> None:
    seen: list[httpx.Request] = []
    sleep = FakeSleep()
    reasons: list[tuple[str, float]] = []
    answers: list[int | Exception | httpx.Response] = [
        503, httpx.Response(503, headers={"Retry-After": "7"}), 502, httpx.Response(429, headers={"Retry-After":
                                                                                                    "garbage"}),
        500,
    ]
    sink = fs_sink(scripted(answers, seen), sleep=sleep, on_retry=lambda r, d: reasons.append((r, d)))
    with structlog.testing.capture_logs() as logs:
        run(sink.write(ndjson_batch(ndjson(5), 5)))
    assert len(seen) == 6
    assert sleep.delays == [0.5, 7.0, 2.0, 4.0, 8.0]  # the hint replaces one step; the backoff goes on
    assert reasons == [("http_503", 0.5), ("http_503", 7.0), ("http_502", 2.0), ("http_429", 4.0),
                       ("http_500", 8.0)]
    retried = [e for e in logs if e["event"] == "delivery_retried"]
    assert [e["attempt"] for e in retried] == [1, 2, 3, 4, 5]
    assert all(e["destination"] == "freshsuccess" and e["host"] == BASE for e in retried)
    assert retried[0]["status"] == 503
    assert AUTH_KEY not in repr(logs)
    assert len({r.content for r in seen}) == 1  # compressed once, resent as is
    assert sink.state == "ok"


def test_freshsuccess_jittered_delays_follow_backoff_sequence() -> None:
    policy = RetryPolicy()
    sleep = FakeSleep()
    sink = fs_sink(scripted([500] * 6), retry=policy, sleep=sleep, rng=random.Random(42))
    run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert sleep.delays == list(itertools.islice(backoff_delays(policy, random.Random(42)), 6))


def test_freshsuccess_retry_after_http_date_is_honoured() -> None:
    sleep = FakeSleep()
    when = formatdate(time.time() + 20, usegmt=True)
    sink = fs_sink(scripted([httpx.Response(503, headers={"Retry-After": when})]), sleep=sleep)
    run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert 18 <= sleep.delays[0] <= 20


def test_freshsuccess_bad_credentials_keep_retrying_until_fixed() -> None:
    states: list[str] = []
    sink: FreshsuccessSink
    sleep = FakeSleep(on_sleep=lambda _d: states.append(sink.state))
    sink = fs_sink(scripted([401, 403, 401, 401]), sleep=sleep)
    with structlog.testing.capture_logs() as logs:
        run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert states == ["bad_credentials"] * 4
    assert sleep.delays == [60.0] * 4
    assert sink.state == "ok"
    events = [e["event"] for e in logs]
    assert events.count("destination_credentials_rejected") == 1  # reported once, not per attempt
    assert events.count("delivery_retried") == 4
    assert "destination_credentials_accepted" in events


@pytest.mark.parametrize("error", [
    httpx.ReadTimeout("timed out"), httpx.ConnectTimeout("timed out"), httpx.ConnectError("refused"),
    httpx.RemoteProtocolError("server disconnected"), httpx.ReadError("reset"), httpx.WriteError("pipe"),
    httpx.PoolTimeout("pool"),
])
def test_freshsuccess_retries_timeouts_and_connection_errors(error: Exception) -> None:
    sleep = FakeSleep()
    reasons: list[str] = []
    sink = fs_sink(scripted([error, error]), sleep=sleep, on_retry=lambda r, _d: reasons.append(r))
    with structlog.testing.capture_logs() as logs:
        run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert sleep.delays == [0.5, 1.0]
    assert reasons == [type(error).__name__] * 2
    assert [e.get("error") for e in logs if e["event"] == "delivery_retried"] == [type(error).__name__] * 2


def test_freshsuccess_state_is_retrying_during_outage() -> None:
    states: list[str] = []
    sink: FreshsuccessSink
    sink = fs_sink(scripted([503, httpx.ConnectError("x")]),
                   sleep=FakeSleep(on_sleep=lambda _d: states.append(sink.state)))
    run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert states == ["retrying", "retrying"]
    assert sink.state == "ok"


def test_freshsuccess_ping() -> None:
    seen: list[httpx.Request] = []
    answers: list[int | Exception | httpx.Response] = [
        200, httpx.Response(503, headers={"Retry-After": "3"}), httpx.ConnectError("no route"), 400, 401,
    ]
    sink = fs_sink(scripted(answers, seen))

    async def scenario() -> None:
        await sink.ping()
        with pytest.raises(TransientError) as transient:
            await sink.ping()
        assert transient.value.retry_after_s == 3.0
        with pytest.raises(TransientError, match="ConnectError"):
            await sink.ping()
        with pytest.raises(FatalError, match="400"):
            await sink.ping()
        with pytest.raises(BadCredentials):
            await sink.ping()

    run(scenario())
    assert seen[0].method == "POST"
    assert str(seen[0].url) == f"{BASE}/v1/ping"


def test_freshsuccess_cancellation_propagates_from_backoff_and_from_request() -> None:
    async def scenario() -> None:
        started = asyncio.Event()
        forever = asyncio.Event()

        async def stuck_sleep(_delay_s: float) -> None:
            started.set()
            await forever.wait()

        sink = fs_sink(scripted([503]), sleep=stuck_sleep)
        task = asyncio.create_task(sink.write(ndjson_batch(b"{}\n", 1)))
        await asyncio.wait_for(started.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)

        in_request = asyncio.Event()

        async def hang(_request: httpx.Request) -> httpx.Response:
            in_request.set()
            await forever.wait()
            raise AssertionError("unreachable")

        sink = fs_sink(hang)
        task = asyncio.create_task(sink.write(ndjson_batch(b"{}\n", 1)))
        await asyncio.wait_for(in_request.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)

    run(scenario())


# --- Freshpaint ----------------------------------------------------------------------------------------


def test_freshpaint_adds_token_without_mutating_caller() -> None:
    seen: list[httpx.Request] = []
    events = [event(i) for i in range(3)]
    original = copy.deepcopy(events)
    sink = fp_sink(scripted([], seen))
    assert run(sink.write(events_batch(events))) == []
    assert events == original
    assert len(seen) == 3  # one event per request
    bodies = sorted((orjson.loads(r.content) for r in seen), key=lambda b: b["properties"]["distinct_id"])
    for sent, source in zip(bodies, original, strict=True):
        assert sent["event"] == source["event"]
        assert sent["properties"] == {**source["properties"], "token": TOKEN}
    for request in seen:
        assert request.method == "POST"
        assert str(request.url) == "https://fp.example/track"
        assert request.headers["content-type"] == "application/json"
    assert TOKEN not in repr(sink)


def test_freshpaint_4xx_is_rejected_with_status_and_redacted_truncated_body() -> None:
    long_body = f"bad event for token {TOKEN}: " + "x" * 3000

    async def handler(request: httpx.Request) -> httpx.Response:
        distinct_id = orjson.loads(request.content)["properties"]["distinct_id"]
        if distinct_id in ("user-1", "user-3"):
            return httpx.Response(400, text=long_body)
        if distinct_id == "user-4":
            return httpx.Response(422, text="nope")
        return httpx.Response(200)

    sink = fp_sink(handler)
    rejected = run(sink.write(events_batch([event(i) for i in range(6)])))
    assert [i for i, _ in rejected] == [1, 3, 4]
    first = rejected[0][1]
    assert isinstance(first, Rejected)
    assert first.status == 400
    assert first.reason == "rejected"
    assert "400" in str(first)
    assert "fp.example" in str(first)
    assert len(first.body.encode()) <= 1024
    assert first.body.startswith("bad event for token ***")
    assert TOKEN not in first.body
    assert rejected[2][1].status == 422
    assert rejected[2][1].body == "nope"


def test_freshpaint_rejection_is_reported_for_that_event() -> None:
    sink = fp_sink(scripted([413]))
    [(index, error)] = run(sink.write(events_batch([event()])))
    assert (index, error.status) == (0, 413)


def test_freshpaint_unserializable_event_is_rejected_not_fatal() -> None:
    sink = fp_sink(scripted([]))
    bad = {"event": "x", "properties": {"distinct_id": "u", "value": {1, 2}}}
    missing = {"event": "y"}
    rejected = run(sink.write(events_batch([event(0), bad, missing])))
    assert [(i, e.status) for i, e in rejected] == [(1, None), (2, None)]


def test_freshpaint_redirect_is_fatal() -> None:
    sink = fp_sink(scripted([httpx.Response(301, headers={"Location": "https://elsewhere/track"})]))
    with pytest.raises(FatalError, match="301"):
        run(sink.write(events_batch([event(0)])))


def test_freshpaint_429_retried_honouring_retry_after() -> None:
    seen: list[httpx.Request] = []
    sleep = FakeSleep()
    answers: list[int | Exception | httpx.Response] = [
        httpx.Response(429, headers={"Retry-After": "2"}), 503, httpx.ReadTimeout("t"),
    ]
    sink = fp_sink(scripted(answers, seen), sleep=sleep)
    assert run(sink.write(events_batch([event()]))) == []
    assert sleep.delays == [2.0, 1.0, 2.0]
    assert len(seen) == 4
    assert sink.state == "ok"


def test_freshpaint_bad_credentials_never_rejects() -> None:
    states: list[str] = []
    sink: FreshpaintSink
    sleep = FakeSleep(on_sleep=lambda _d: states.append(sink.state))
    sink = fp_sink(scripted([401, 403]), sleep=sleep)
    with structlog.testing.capture_logs() as logs:
        assert run(sink.write(events_batch([event()]))) == []
    assert states == ["bad_credentials", "bad_credentials"]
    assert sleep.delays == [60.0, 60.0]
    assert sink.state == "ok"
    assert TOKEN not in repr(logs)


class Gate:
    """An async handler that counts requests inside the transport and can hold them there."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.total = 0
        self.release = asyncio.Event()

    async def __call__(self, _request: httpx.Request) -> httpx.Response:
        self.inside += 1
        self.total += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.release.wait()
            return httpx.Response(200)
        finally:
            self.inside -= 1


async def wait_until(condition: Callable[[], bool], deadline_s: float = 2.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.001)


def test_freshpaint_concurrency_bounded_across_concurrent_deliveries() -> None:
    async def scenario() -> None:
        gate = Gate()
        sink = fp_sink(gate, max_in_flight=5)
        first = asyncio.create_task(sink.write(events_batch([event(i) for i in range(40)])))
        second = asyncio.create_task(sink.write(events_batch([event(i) for i in range(40, 60)])))
        await wait_until(lambda: gate.inside == 5)
        for _ in range(20):  # give extra tasks every chance to over-subscribe
            await asyncio.sleep(0)
        assert gate.inside == 5
        gate.release.set()
        assert await first == []
        assert await second == []
        assert gate.peak == 5
        assert gate.total == 60

    run(scenario())


def test_freshpaint_cancellation_propagates_promptly() -> None:
    async def scenario() -> None:
        gate = Gate()
        sink = fp_sink(gate, max_in_flight=8)
        task = asyncio.create_task(sink.write(events_batch([event(i) for i in range(100)])))
        await wait_until(lambda: gate.inside == 8)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)
        assert time.monotonic() - started < 0.5
        assert gate.inside == 0  # every in-flight request was cancelled too
        assert gate.total == 8

    run(scenario())


def test_freshpaint_cancellation_during_backoff() -> None:
    async def scenario() -> None:
        sleeping = asyncio.Event()

        async def stuck_sleep(_delay_s: float) -> None:
            sleeping.set()
            await asyncio.Event().wait()

        sink = fp_sink(scripted([503] * 10), sleep=stuck_sleep, max_in_flight=2)
        task = asyncio.create_task(sink.write(events_batch([event(i) for i in range(4)])))
        await asyncio.wait_for(sleeping.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)

    run(scenario())


# --- secrets never leak -------------------------------------------------------------------------------

# The marker keeps a random secret from coinciding with words the sink legitimately logs.
SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=12, max_size=40).map(
    lambda s: f"Zq9{s}")
OUTCOME = st.sampled_from([200, 400, 401, 403, 404, 408, 418, 429, 500, 502, 503, "connect", "timeout",
                           "dropped", "retry_after"])


def leak_answer(outcome: int | str, request: httpx.Request, secrets: list[str]) -> httpx.Response:
    """Answers that echo the URL and the secrets back, as a careless server or error message might."""
    echo = f"{request.url} {' '.join(secrets)}"
    if outcome == "connect":
        raise httpx.ConnectError(f"could not connect for {echo}", request=request)
    if outcome == "timeout":
        raise httpx.ReadTimeout(f"read timed out on {echo}", request=request)
    if outcome == "dropped":
        raise httpx.RemoteProtocolError(f"peer closed connection on {echo}", request=request)
    if outcome == "retry_after":
        return httpx.Response(503, headers={"Retry-After": "1"}, text=echo)
    assert isinstance(outcome, int)
    return httpx.Response(outcome, text=echo)


def assert_no_secret(secrets: list[str], logs: list[Any], errors: list[BaseException], sink: object) -> None:
    texts = [repr(logs), repr(sink)]
    for error in errors:
        texts.append("".join(traceback.format_exception(error)))
        texts.append(repr(error))
        if isinstance(error, Rejected):
            texts.append(error.body)
    for secret in secrets:
        for text in texts:
            assert secret not in text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(auth_key=SECRET, api_key=SECRET, outcomes=st.lists(OUTCOME, max_size=8))
def test_freshsuccess_never_leaks_keys(auth_key: str, api_key: str, outcomes: list[int | str]) -> None:
    plan = iter(outcomes)
    secrets = [auth_key, api_key]

    async def handler(request: httpx.Request) -> httpx.Response:
        return leak_answer(next(plan, 200), request, secrets)

    sink = FreshsuccessSink(base_url=BASE, auth_key=auth_key, api_key=api_key, client=client_for(handler),
                            retry=NO_JITTER, sleep=FakeSleep())
    errors: list[BaseException] = []

    async def scenario() -> None:
        for call in (sink.write(ndjson_batch(b"{}\n", 1)), sink.ping(), sink.ping()):
            try:
                await call
            except (FatalError, TransientError) as exc:
                errors.append(exc)

    with structlog.testing.capture_logs() as logs:
        run(scenario())
    assert_no_secret(secrets, logs, errors, sink)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=SECRET, outcomes=st.lists(OUTCOME, max_size=8), events=st.integers(1, 4))
def test_freshpaint_never_leaks_token(token: str, outcomes: list[int | str], events: int) -> None:
    plan = iter(outcomes)

    async def handler(request: httpx.Request) -> httpx.Response:
        return leak_answer(next(plan, 200), request, [token])

    sink = FreshpaintSink(base_url="https://fp.example", token=token, client=client_for(handler),
                          retry=NO_JITTER, sleep=FakeSleep(), max_in_flight=2)
    errors: list[BaseException] = []

    async def scenario() -> None:
        try:  # 404/405 (a wrong base URL) stop the lane: FatalError
            errors.extend(error for _, error in await sink.write(events_batch([event(i) for i in range(events)])))
        except FatalError as exc:
            errors.append(exc)
        bad = {"event": "x", "properties": {"distinct_id": token, "v": {token}}}
        errors.extend(error for _, error in await sink.write(events_batch([bad])))

    with structlog.testing.capture_logs() as logs:
        run(scenario())
    assert_no_secret([token], logs, errors, sink)


# --- Freshpaint over aiohttp's exceptions against a real local server (the lean client and aiohttp) ---------


async def start_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[
        web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/track", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_freshpaint_aiohttp_transport_end_to_end(transport: Transport) -> None:
    received: list[dict[str, Any]] = []
    plan: Iterator[int | str] = iter([503, "drop", 429, 200, 400, 200, 200])

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        assert request.headers["Content-Type"] == "application/json"
        answer = next(plan, 200)
        if answer == "drop":
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-request
            return web.Response(status=200)
        assert isinstance(answer, int)
        if answer == 200:
            received.append(orjson.loads(body))
        headers = {"Retry-After": "0"} if answer == 429 else {}
        return web.Response(status=answer, text=f"status {answer} for {TOKEN}", headers=headers)

    async def scenario() -> None:
        runner, base = await start_server(handler)
        sleep = FakeSleep()
        sink = FreshpaintSink(base_url=base, token=TOKEN, retry=NO_JITTER, sleep=sleep, max_in_flight=1,
                              transport=transport)
        try:
            assert await sink.write(events_batch([event(0)])) == []
            assert sleep.delays == [0.5, 1.0, 0.0]
            rejected = await sink.write(events_batch([event(1), event(2), event(3)]))
            assert [(i, e.status, e.body) for i, e in rejected] == [(0, 400, "status 400 for ***")]
        finally:
            await sink.aclose()
            await runner.cleanup()
        assert [r["properties"]["distinct_id"] for r in received] == ["user-0", "user-2", "user-3"]
        assert all(r["properties"]["token"] == TOKEN for r in received)

    run(scenario())


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_freshpaint_aiohttp_retries_refused_connections(transport: Transport) -> None:
    async def ok(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def scenario() -> None:
        runner, base = await start_server(ok)
        await runner.cleanup()  # nothing listens on the port any more
        reasons: list[str] = []

        async def sleep(_delay_s: float) -> None:
            if len(reasons) == 3:
                raise asyncio.CancelledError  # what shutdown does to a retrying delivery
            await asyncio.sleep(0)

        sink = FreshpaintSink(base_url=base, token=TOKEN, retry=NO_JITTER, sleep=sleep,
                              on_retry=lambda r, _d: reasons.append(r), transport=transport)
        try:
            with pytest.raises(asyncio.CancelledError):
                await sink.write(events_batch([event()]))
        finally:
            await sink.aclose()
        assert len(reasons) == 3
        assert all(issubclass(getattr(aiohttp, r), aiohttp.ClientConnectionError) for r in reasons)
        assert sink.state == "retrying"

    run(scenario())
