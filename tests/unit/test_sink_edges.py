"""Sink edges from issue 11: a wrong Freshpaint base URL stops the lane (10); Retry-After has its own cap,
well above the backoff cap (11)."""

from __future__ import annotations

import json
import time
import traceback
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from aiohttp import web

from consumer.app.build import retry_policy
from consumer.config import load_settings
from consumer.decoding.registry import REGISTRY_CONTENT_TYPE, SchemaRegistryClient
from consumer.errors import ConfigError, FatalError, Rejected, TransientError
from consumer.sinks import FreshpaintSink, RetryPolicy, parse_retry_after
from consumer.sinks.freshpaint import Transport
from consumer.testing.fakes import events_batch, ndjson_batch
from tests.unit.test_sinks import (
    API_KEY,
    AUTH_KEY,
    BASE,
    NO_JITTER,
    TOKEN,
    FakeSleep,
    Handler,
    client_for,
    fs_sink,
    run,
    scripted,
)

__all__ = ["API_KEY", "AUTH_KEY", "BASE", "fs_sink", "run", "scripted"]  # shared with test_sinks


def fp_sink(handler: Handler, **kwargs: Any) -> FreshpaintSink:
    kwargs.setdefault("retry", NO_JITTER)
    kwargs.setdefault("sleep", FakeSleep())
    return FreshpaintSink(base_url="https://fp.example/wrong", token=TOKEN, client=client_for(handler), **kwargs)


def event(i: int = 0) -> dict[str, Any]:
    return {"event": "Feature Used", "properties": {"distinct_id": f"user-{i}", "time": 1_700_000_000.5 + i}}


def full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


# ---------------------------------------------------------------------------------------------------------
# 10. A wrong Freshpaint base URL stops the lane instead of dead-lettering every event


@pytest.mark.parametrize("status", [404, 405, 301, 302, 303, 307, 308])
def test_freshpaint_wrong_base_url_answers_are_fatal_naming_the_host(status: int) -> None:
    headers = {"Location": f"https://elsewhere.example/track?token={TOKEN}"} if 300 <= status < 400 else {}
    sink = fp_sink(scripted([httpx.Response(status, headers=headers, text=f"no /track here for {TOKEN}")]))
    with pytest.raises(FatalError) as info:
        run(sink.write(events_batch([event(0), event(1), event(2)])))
    text = full_text(info.value)
    assert str(status) in str(info.value)
    assert "https://fp.example" in str(info.value)
    assert "base_url" in str(info.value)
    assert TOKEN not in text
    assert "/wrong" not in str(info.value)  # the host, not the URL


@pytest.mark.parametrize("status", [404, 405])
def test_freshpaint_deliver_one_wrong_path_is_fatal(status: int) -> None:
    sink = fp_sink(scripted([status]))
    with pytest.raises(FatalError, match=str(status)):
        run(sink.write(events_batch([event()])))


@pytest.mark.parametrize("status", [400, 413, 422])
def test_freshpaint_event_level_4xx_stay_per_event_dead_letters(status: int) -> None:
    sink = fp_sink(scripted([200, status]))
    rejected = run(sink.write(events_batch([event(0), event(1), event(2)])))
    assert [(i, e.status) for i, e in rejected] == [(1, status)]
    assert isinstance(rejected[0][1], Rejected)


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
def test_freshpaint_over_aiohttp_without_a_track_route_is_fatal(transport: Transport) -> None:
    """A real server at the wrong base URL: aiohttp answers 404 for the unknown path."""

    async def scenario() -> None:
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(status=200)

        app.router.add_post("/track", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        sink = FreshpaintSink(base_url=f"http://127.0.0.1:{port}/v1", token=TOKEN, retry=NO_JITTER,
                              sleep=FakeSleep(), transport=transport)
        try:
            with pytest.raises(FatalError, match="404") as info:
                await sink.write(events_batch([event(0), event(1)]))
            assert TOKEN not in full_text(info.value)
            assert f"http://127.0.0.1:{port}" in str(info.value)
        finally:
            await sink.aclose()
            await runner.cleanup()

    run(scenario())


# ---------------------------------------------------------------------------------------------------------
# 11. Retry-After has its own cap (retry.max_retry_after_s, default 300 s)


def test_retry_policy_has_a_separate_retry_after_cap() -> None:
    assert RetryPolicy().max_retry_after_s == 300.0
    assert RetryPolicy().max_retry_after_s >= 300.0
    assert RetryPolicy(max_retry_after_s=900.0).max_retry_after_s == 900.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"retry\.max_retry_after_s"):
            RetryPolicy(max_retry_after_s=bad)


def test_parse_retry_after_default_cap_is_300_s() -> None:
    now = time.time()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("100000", now) == 300.0
    assert parse_retry_after(formatdate(now + 200, usegmt=True), now) == pytest.approx(200.0, abs=1.5)


def test_freshpaint_429_asking_for_120_s_waits_120_s() -> None:
    sleep = FakeSleep()
    sink = fp_sink(scripted([httpx.Response(429, headers={"Retry-After": "120"})]), sleep=sleep)
    assert run(sink.write(events_batch([event()]))) == []
    assert sleep.delays == [120.0]


def test_freshsuccess_503_asking_for_120_s_waits_120_s() -> None:
    sleep = FakeSleep()
    sink = fs_sink(scripted([httpx.Response(503, headers={"Retry-After": "120"})]), sleep=sleep)
    run(sink.write(ndjson_batch(b"{}\n", 1)))
    assert sleep.delays == [120.0]


def test_retry_after_is_capped_by_max_retry_after_s_not_max_backoff_s() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=30.0, jitter=0.0, max_retry_after_s=600.0)
    answers: list[int | Exception | httpx.Response] = [httpx.Response(429, headers={"Retry-After": "100000"}),
                                           httpx.Response(503, headers={"Retry-After": "450"})]
    sink = fp_sink(scripted(answers), sleep=sleep, retry=policy)
    assert run(sink.write(events_batch([event()]))) == []
    assert sleep.delays == [600.0, 450.0]
    default_sleep = FakeSleep()
    sink = fp_sink(scripted([httpx.Response(429, headers={"Retry-After": "100000"})]), sleep=default_sleep)
    run(sink.write(events_batch([event()])))
    assert default_sleep.delays == [300.0]


def test_freshsuccess_ping_reports_the_full_retry_after() -> None:
    sink = fs_sink(scripted([httpx.Response(503, headers={"Retry-After": "240"})]))
    with pytest.raises(TransientError) as info:
        run(sink.ping())
    assert info.value.retry_after_s == 240.0


ENV = {"FRESHSUCCESS_AUTH_KEY": "auth-secret-123", "FRESHSUCCESS_API_KEY": "api-secret-456",
       "FRESHPAINT_TOKEN": "token-secret-789"}


def test_config_retry_max_retry_after_s_reaches_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  topics: [a]\n")
    settings = load_settings(path, environ=ENV)
    assert settings.retry.max_retry_after_s == 300.0
    assert retry_policy(settings).max_retry_after_s == 300.0
    path.write_text("kafka:\n  topics: [a]\nretry:\n  max_retry_after_s: 900\n")
    assert retry_policy(load_settings(path, environ=ENV)).max_retry_after_s == 900.0
    path.write_text("kafka:\n  topics: [a]\nretry:\n  max_retry_after_s: 0\n")
    with pytest.raises(ConfigError, match="max_retry_after_s"):
        load_settings(path, environ=ENV)


def test_registry_retry_after_uses_the_same_parser() -> None:
    when = formatdate(time.time() + 60, usegmt=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=json.dumps({"error_code": 50003, "message": "busy"}).encode(),
                              headers={"Content-Type": REGISTRY_CONTENT_TYPE, "Retry-After": when})

    client = SchemaRegistryClient("http://registry.test:8081", transport=httpx.MockTransport(handler))
    with structlog.testing.capture_logs(), pytest.raises(TransientError) as info:
        client.get_schema(7)
    assert info.value.retry_after_s == pytest.approx(60.0, abs=2.0)
