"""TLS to the destinations: certificates are verified by default, ``<destination>.ca_bundle`` trusts a CA.

The emulators serve HTTPS with a certificate from a throw-away test CA (consumer/testing/testpki.py). Without the
CA configured the sinks refuse the server (each delivery is retried, never dead-lettered; the start-up
ping says why); with ``ca_bundle`` pointing at the CA, delivery works. A certificate from another CA,
or for another host name, is refused even with the bundle configured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from consumer.app.startup import tls_context
from consumer.errors import ConfigError, TransientError
from consumer.sinks.freshpaint import FreshpaintSink, Transport
from consumer.sinks.freshsuccess import FreshsuccessSink
from consumer.sinks.retry import RetryPolicy
from consumer.testing.devstack import API_KEY, AUTH_KEY, TOKEN, DevStack, RunningService
from consumer.testing.emulators import Emulators
from consumer.testing.eventgen import one_of_each
from consumer.testing.fakes import events_batch, ndjson_batch
from consumer.testing.testpki import TestPki
from tests.helpers import wait_for

FAST_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, credentials_backoff_s=0.05)
RETRIES_TO_SEE = 3


def https_emulators(cert: Path, key: Path) -> Emulators:
    return Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, ssl_certfile=cert, ssl_keyfile=key)


@pytest.fixture(scope="module")
def tls_emulators(pki: TestPki) -> Iterator[Emulators]:
    """Both emulators over HTTPS with a certificate for 127.0.0.1 signed by the test CA."""
    with https_emulators(pki.server.cert, pki.server.key) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(tls_emulators: Emulators) -> None:
    for emulator in (tls_emulators.freshsuccess, tls_emulators.freshpaint):
        emulator.reset()


def feature_action() -> bytes:
    return orjson.dumps({"accountId": "a-1", "userId": "u-1", "createdAt": 1_700_000_000_000, "action": "feature",
                         "sessionId": "s-1", "feature": "export", "module": "reports", "total": 1}) + b"\n"


def track_event() -> dict[str, Any]:
    return {"event": "Feature Used", "properties": {"distinct_id": "u-1", "time": 1_700_000_000.0,
                                                    "$insert_id": str(uuid.uuid4())}}


def freshsuccess_sink(url: str, context: ssl.SSLContext | None, retries: list[str]) -> FreshsuccessSink:
    return FreshsuccessSink(base_url=url, auth_key=AUTH_KEY, api_key=API_KEY, retry=FAST_RETRY, timeout_s=10,
                            on_retry=lambda reason, _delay: retries.append(reason), ssl_context=context)


def freshpaint_sink(url: str, context: ssl.SSLContext | None, retries: list[str],
                    transport: Transport) -> FreshpaintSink:
    return FreshpaintSink(base_url=url, token=TOKEN, retry=FAST_RETRY, timeout_s=10, transport=transport,
                          on_retry=lambda reason, _delay: retries.append(reason), ssl_context=context)


async def retried_not_delivered(deliver: Any, retries: list[str]) -> None:
    """``deliver`` keeps retrying (no error escapes: nothing is rejected or dead-lettered) until cancelled."""
    task = asyncio.ensure_future(deliver)
    deadline = asyncio.get_running_loop().time() + 30
    while len(retries) < RETRIES_TO_SEE and not task.done():
        assert asyncio.get_running_loop().time() < deadline, "no retry seen within 30 s"
        await asyncio.sleep(0.01)
    assert not task.done(), "the delivery ended instead of retrying"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------------------- sinks


def test_verification_is_on_by_default_freshsuccess_retries_and_the_ping_says_why(tls_emulators: Emulators) -> None:
    retries: list[str] = []

    async def scenario() -> None:
        sink = freshsuccess_sink(tls_emulators.freshsuccess_url, None, retries)
        try:
            with pytest.raises(TransientError) as ping:
                await sink.ping()
            message = str(ping.value)
            assert "TLS verification" in message
            assert "certificate" in message  # e.g. "unable to get local issuer certificate"
            assert "freshsuccess.ca_bundle" in message
            assert AUTH_KEY not in message
            assert API_KEY not in message
            await retried_not_delivered(sink.write(ndjson_batch(feature_action(), 1)), retries)
            assert sink.state == "retrying"
        finally:
            await sink.aclose()

    asyncio.run(scenario())
    assert set(retries) == {"ConnectError"}
    assert tls_emulators.freshsuccess.stats()["requests"] == 0  # not one request got through


@pytest.mark.parametrize("transport", ["http1", "aiohttp", "httpx"])
def test_verification_is_on_by_default_freshpaint_retries_not_rejects(tls_emulators: Emulators,
                                                                      transport: Transport) -> None:
    retries: list[str] = []

    async def scenario() -> None:
        sink = freshpaint_sink(tls_emulators.freshpaint_url, None, retries, transport)
        try:
            await retried_not_delivered(sink.write(events_batch([track_event()])), retries)
        finally:
            await sink.aclose()

    asyncio.run(scenario())
    assert retries
    assert all("Certificate" in reason or reason == "ConnectError" for reason in retries), retries
    assert tls_emulators.freshpaint.stats()["requests"] == 0


@pytest.mark.parametrize("transport", ["http1", "aiohttp", "httpx"])
def test_with_the_ca_bundle_both_sinks_deliver(tls_emulators: Emulators, pki: TestPki, transport: Transport) -> None:
    retries: list[str] = []
    context = tls_context(pki.ca.cert, key="freshsuccess.ca_bundle")

    async def scenario() -> None:
        fs = freshsuccess_sink(tls_emulators.freshsuccess_url, context, retries)
        fp = freshpaint_sink(tls_emulators.freshpaint_url, tls_context(pki.ca.cert, key="freshpaint.ca_bundle"),
                             retries, transport)
        try:
            await fs.ping()
            await fs.write(ndjson_batch(feature_action(), 1))
            assert await fp.write(events_batch([track_event(), track_event()])) == []
        finally:
            await fs.aclose()
            await fp.aclose()

    asyncio.run(scenario())
    assert retries == []
    assert tls_emulators.freshsuccess.stats()["accepted"] == 1
    assert tls_emulators.freshpaint.stats()["accepted"] == 2


def test_the_bundle_replaces_the_default_trust_store_and_host_names_are_checked(pki: TestPki, tmp_path: Path) -> None:
    """A server certificate from another CA, or issued for another host, is refused with the bundle set."""
    wrong_host = pki.ca.issue("other-host", hosts=["service.example"])
    for cert, key in ((pki.untrusted_server.cert, pki.untrusted_server.key), (wrong_host.cert, wrong_host.key)):
        retries: list[str] = []
        with https_emulators(cert, key) as emulators:

            async def scenario(emulators: Emulators = emulators, retries: list[str] = retries) -> None:
                fs = freshsuccess_sink(emulators.freshsuccess_url, tls_context(pki.ca.cert, key="k"), retries)
                fps = [freshpaint_sink(emulators.freshpaint_url, tls_context(pki.ca.cert, key="k"), retries,
                                       transport) for transport in ("http1", "aiohttp")]
                try:
                    with pytest.raises(TransientError, match="TLS verification"):
                        await fs.ping()
                    await retried_not_delivered(fs.write(ndjson_batch(feature_action(), 1)), retries)
                    for fp in fps:
                        retries.clear()
                        await retried_not_delivered(fp.write(events_batch([track_event()])), retries)
                        assert all("Certificate" in reason for reason in retries), retries
                finally:
                    await fs.aclose()
                    for fp in fps:
                        await fp.aclose()

            asyncio.run(scenario())
            assert emulators.freshsuccess.stats()["requests"] == 0
            assert emulators.freshpaint.stats()["requests"] == 0


def test_an_unreadable_ca_bundle_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"freshpaint\.ca_bundle: cannot load .*nope\.pem"):
        tls_context(missing, key="freshpaint.ca_bundle")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"freshsuccess\.ca_bundle: cannot load .*garbage\.pem"):
        tls_context(garbage, key="freshsuccess.ca_bundle")
    assert tls_context(None, key="freshsuccess.ca_bundle") is None


def test_usage_consumer_emulate_serves_https_with_the_given_certificate(pki: TestPki, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "FRESHSUCCESS_AUTH_KEY": AUTH_KEY, "FRESHSUCCESS_API_KEY": API_KEY, "FRESHPAINT_TOKEN": TOKEN}
    command = [sys.executable, "-m", "consumer.cli", "emulate", "--ssl-certfile", str(pki.server.cert),
               "--ssl-keyfile", str(pki.server.key), "--ready-file", str(ready)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or process.poll() is not None, timeout_s=60, what="the emulators to listen")
        assert process.poll() is None, process.communicate()[1]
        urls = orjson.loads(ready.read_bytes())
        assert urls["freshsuccess_url"].startswith("https://127.0.0.1:")
        assert urls["freshpaint_url"].startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(pki.ca.cert))
        for url in (urls["freshsuccess_url"], urls["freshpaint_url"]):
            assert httpx.get(f"{url}/_emulator/stats", verify=trusted, timeout=10).status_code == 200
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{url}/_emulator/stats", timeout=10)  # the default trust store does not know the CA
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)  # waits, and closes the stderr pipe

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    refused = subprocess.run([*command[:4], "--ssl-certfile", str(garbage)], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 2
    assert f"cannot serve HTTPS with {garbage}" in refused.stderr


# ------------------------------------------------------------------------------------- the service


def committed_to(stack: DevStack, group: str, topic: str, end: dict[int, int]) -> bool:
    return stack.committed(group, topic) == end


def test_service_without_the_ca_retries_and_commits_nothing_then_delivers_with_it(
        stack: DevStack, tls_emulators: Emulators, pki: TestPki) -> None:
    topic, dlq = stack.topics(partitions=1, prefix="tls")
    schema_id = stack.register(topic)
    events = one_of_each()
    stack.produce_events(topic, schema_id, events)
    group = f"tls-{uuid.uuid4().hex[:8]}"
    urls = {"freshsuccess": {"base_url": tls_emulators.freshsuccess_url},
            "freshpaint": {"base_url": tls_emulators.freshpaint_url}}

    # No ping at start-up here (it would wait out its own backoff); the sink tests above cover its message.
    refused = stack.settings(topic, dlq, group=group, freshsuccess={**urls["freshsuccess"], "ping_at_start": False},
                             freshpaint=urls["freshpaint"])
    with RunningService(refused) as running:
        wait_for(lambda: all(running.lane(name).sink.state == "retrying"
                             for name in ("freshsuccess", "freshpaint")),
                 timeout_s=60, what="both lanes to retry the refused TLS connections")
        wait_for(lambda: running.service.metrics.exposition().count(b'usage_consumer_retries_total{') >= 2,
                 timeout_s=30, what="retries to be counted per destination")
        for name in ("freshsuccess", "freshpaint"):
            stats = running.lane(name).stats
            assert stats.delivered_events == 0
            assert not stats.dead_lettered  # a refused certificate is never the event's fault
        running.stop()
    assert running.exit_code == 0
    for name in ("freshsuccess", "freshpaint"):
        assert stack.committed(stack.settings(topic, dlq, group=group).group_for(name), topic) == {}
    assert stack.read_all(dlq) == []

    ca = str(pki.ca.cert)
    trusted = stack.settings(topic, dlq, group=group,
                             freshsuccess={**urls["freshsuccess"], "ca_bundle": ca},
                             freshpaint={**urls["freshpaint"], "ca_bundle": ca})
    with RunningService(trusted) as running:
        tls_emulators.freshsuccess.wait_for_events(5, timeout_s=60)
        tls_emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
        end = stack.end_offsets(topic)
        for group in (trusted.group_for("freshsuccess"), trusted.group_for("freshpaint")):
            wait_for(partial(committed_to, stack, group, topic, end), timeout_s=60, what=f"{group} to commit")
    assert running.exit_code == 0
    assert tls_emulators.freshsuccess.dropped() == []
    assert tls_emulators.freshpaint.dropped() == []
