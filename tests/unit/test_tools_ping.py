"""``usage-consumer ping`` against the destination emulators and a schema registry emulator.

The Kafka broker is unreachable here (a closed port on 127.0.0.1), so these runs exit 1; the all-green
run against the real broker is in tests/integration/test_tools_ping.py.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from consumer.cli import _parser, main
from consumer.config import load_settings
from consumer.testing.emulators import Emulators
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator
from consumer.testing.testpki import TestPki, make_test_pki
from consumer.tools.ping import (
    PING_DISTINCT_ID,
    PING_EVENT,
    check_freshpaint,
    check_freshsuccess,
    check_registry,
    ping_insert_id,
    run_checks,
)

AUTH_KEY = "auth-4f1d-secret"
API_KEY = "api-77c2-secret"
TOKEN = "token-9a0e-secret"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def emulators() -> Iterator[Emulators]:
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryEmulator]:
    emulator = SchemaRegistryEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def clean(emulators: Emulators) -> Iterator[None]:
    emulators.freshsuccess.reset()
    emulators.freshpaint.reset()
    yield
    structlog.reset_defaults()


def write_config(tmp_path: Path, emulators: Emulators, registry_url: str, *,
                 fs_url: str | None = None, fp_url: str | None = None, ca_bundle: Path | None = None) -> Path:
    config = tmp_path / "config.yaml"
    trust = {} if ca_bundle is None else {"ca_bundle": str(ca_bundle)}
    config.write_text(json.dumps({
        "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port()}", "startup_timeout_s": 1},
        "decoding": {"framing": "confluent", "schema_registry_url": registry_url},
        "freshsuccess": {"base_url": fs_url or emulators.freshsuccess_url, "timeout_s": 5, **trust},
        "freshpaint": {"base_url": fp_url or emulators.freshpaint_url, "timeout_s": 5, **trust},
    }))
    return config


def table(out: str) -> tuple[list[str], dict[str, list[str]], str]:
    header, *lines, verdict = out.splitlines()
    return (re.split(r"\s{2,}", header),
            {cells[0]: cells[2:] for cells in (re.split(r"\s{2,}", line, maxsplit=3) for line in lines)}, verdict)


def env(auth: str = AUTH_KEY, api: str = API_KEY, token: str = TOKEN) -> dict[str, str]:
    return {"FRESHSUCCESS_AUTH_KEY": auth, "FRESHSUCCESS_API_KEY": api, "FRESHPAINT_TOKEN": token}


def test_by_default_destinations_and_registry_pass_create_nothing_and_the_unreachable_broker_fails_the_run(
    tmp_path: Path, emulators: Emulators, registry: SchemaRegistryEmulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    assert main(["ping", "--config", str(write_config(tmp_path, emulators, registry.url))]) == 1
    out = capsys.readouterr().out
    header, rows, verdict = table(out)
    assert header == ["CHECK", "TARGET", "RESULT", "DETAIL"]
    assert list(rows) == ["kafka", "schema registry", "freshsuccess ping", "freshsuccess keys", "freshpaint connect"]
    assert rows["kafka"][0] == "FAILED"
    assert "did not answer within 1s" in rows["kafka"][1]
    assert rows["schema registry"][0] == "ok"
    assert rows["freshsuccess ping"] == ["ok", "POST /v1/ping answered 200 (plain http, no TLS)"]
    assert rows["freshsuccess keys"] == ["ok", "POST /v1/***/*** with an empty body (no events) answered 200"]
    port = emulators.freshpaint_url.rsplit(":", 1)[1]
    assert rows["freshpaint connect"] == [
        "ok", f"DNS: 1 address(es); TCP: 127.0.0.1:{port} connected; plain http, no TLS to check; nothing sent: "
        "proves the route, not the token or the /track path (Freshpaint documents no request that creates "
        "nothing; --freshpaint-check event sends a test event)"]
    assert verdict == "1 of 5 checks failed"
    assert AUTH_KEY not in out
    assert API_KEY not in out
    assert TOKEN not in out
    # nothing was created: the key check carried no event, and Freshpaint received no request at all
    assert emulators.freshsuccess.events() == []
    assert emulators.freshsuccess.stats()["accepted"] == 0
    assert emulators.freshpaint.requests() == []
    assert emulators.freshpaint.stats()["accepted"] == 0


def test_the_option_defaults_to_connect_and_takes_only_connect_or_event(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    assert parser.parse_args(["ping"]).freshpaint_check == "connect"
    assert parser.parse_args(["ping", "--freshpaint-check", "connect"]).freshpaint_check == "connect"
    assert parser.parse_args(["ping", "--freshpaint-check", "event"]).freshpaint_check == "event"
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["ping", "--freshpaint-check", "track"])
    assert refused.value.code == 2
    assert "invalid choice: 'track'" in capsys.readouterr().err


def test_the_option_help_says_what_the_event_creates() -> None:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    ping = commands.choices["ping"]
    [option] = [a for a in ping._actions if a.dest == "freshpaint_check"]
    text = option.help or ""
    assert "connect (default)" in text
    assert "creates nothing" in text
    assert f"the event '{PING_EVENT}'" in text
    assert f"the user (distinct_id) '{PING_DISTINCT_ID}'" in text
    assert 'routed to no destination ($options.integrations {"All": false})' in text
    assert "$insert_id usage-consumer-ping-YYYYMMDD" in text
    assert "repeats that day are de-duplicated" in text
    assert "Nothing is created in either destination unless --freshpaint-check event" in (ping.description or "")


def test_the_event_option_creates_exactly_one_event_and_its_line_says_what(
    tmp_path: Path, emulators: Emulators, registry: SchemaRegistryEmulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    config = str(write_config(tmp_path, emulators, registry.url))
    assert main(["ping", "--config", config, "--freshpaint-check", "event"]) == 1  # the broker is unreachable
    out = capsys.readouterr().out
    _header, rows, verdict = table(out)
    assert "freshpaint connect" not in rows
    result, detail = rows["freshpaint event"]
    assert result == "ok"
    assert detail == (
        f"POST /track answered 200 (plain http, no TLS); this creates the event '{PING_EVENT}' for the user "
        f"(distinct_id) '{PING_DISTINCT_ID}', routed to no destination ($options.integrations {{\"All\": false}}), "
        f"$insert_id {ping_insert_id(time.time())} (one per UTC day: repeats that day are de-duplicated). "
        "Freshpaint checks the token after answering: the event shows in Live View only if the token is right")
    assert verdict == "1 of 5 checks failed"
    assert TOKEN not in out
    [sent] = emulators.freshpaint.events()
    assert sent["event"] == PING_EVENT
    assert sent["properties"]["distinct_id"] == PING_DISTINCT_ID
    assert sent["properties"]["$options"] == {"integrations": {"All": False}}
    assert sent["properties"]["$insert_id"] == ping_insert_id(time.time())
    assert emulators.freshpaint.stats()["accepted"] == 1
    # a second run the same day is a duplicate: still one event
    assert main(["ping", "--config", config, "--freshpaint-check", "event"]) == 1
    assert table(capsys.readouterr().out)[1]["freshpaint event"][0] == "ok"
    stats = emulators.freshpaint.stats()
    assert (stats["accepted"], stats["duplicates"]) == (1, 1)
    assert emulators.freshsuccess.stats()["accepted"] == 0


def test_wrong_keys_are_reported_per_destination(tmp_path: Path, emulators: Emulators,
                                                 registry: SchemaRegistryEmulator) -> None:
    settings = load_settings(write_config(tmp_path, emulators, registry.url),
                             environ=env(api="wrong-api-key", token="wrong-token"))
    ping, keys = check_freshsuccess(settings, None)
    assert ping.ok
    assert not keys.ok
    assert "answered 400: the auth key or the API key is wrong" in keys.detail
    assert "wrong-api-key" not in keys.detail
    fp = check_freshpaint(settings, None, "event")
    assert fp.check == "freshpaint event"
    assert not fp.ok
    assert "answered 401: the token was refused" in fp.detail
    assert "wrong-token" not in fp.detail
    # connect cannot tell: it sends nothing, and says so
    connect = check_freshpaint(settings, None, "connect")
    assert connect.ok
    assert "not the token" in connect.detail


def test_missing_keys_fail_without_sending(tmp_path: Path, emulators: Emulators,
                                           registry: SchemaRegistryEmulator) -> None:
    settings = load_settings(write_config(tmp_path, emulators, registry.url), environ={})
    results = {r.check: r for r in run_checks(settings)}
    assert not results["freshsuccess keys"].ok
    assert "FRESHSUCCESS_AUTH_KEY and FRESHSUCCESS_API_KEY must both be set" in results["freshsuccess keys"].detail
    assert not results["freshpaint connect"].ok
    assert results["freshpaint connect"].detail.startswith("FRESHPAINT_TOKEN is not set (DNS: 1 address(es)")
    event = check_freshpaint(settings, None, "event")
    assert (event.check, event.ok, event.detail) == ("freshpaint event", False,
                                                     "FRESHPAINT_TOKEN is not set; nothing sent")
    assert emulators.freshpaint.requests() == []


def test_unreachable_destinations_and_registry_fail_and_say_which_step(tmp_path: Path, emulators: Emulators) -> None:
    port = closed_port()
    dead = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, emulators, dead, fs_url=dead, fp_url=dead)
    settings = load_settings(config, environ=env())
    results = run_checks(settings, timeout_s=2)
    assert [r.check for r in results] == ["kafka", "schema registry", "freshsuccess ping", "freshsuccess keys",
                                          "freshpaint connect"]
    assert not any(r.ok for r in results)
    assert "unreachable" in results[1].detail
    assert results[2].detail.startswith("POST /v1/ping failed: ConnectError, TCP: connection refused; check")
    assert results[4].detail.startswith(f"DNS: 1 address(es); TCP: could not connect (127.0.0.1:{port} ")
    assert results[4].detail.endswith("; nothing sent")
    event = check_freshpaint(settings, 2, "event")
    assert "failed: ConnectError, TCP: connection refused" in event.detail
    assert all(AUTH_KEY not in r.detail and API_KEY not in r.detail for r in results)


def test_a_name_that_does_not_resolve_is_reported_as_dns(tmp_path: Path, emulators: Emulators,
                                                         registry: SchemaRegistryEmulator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(host: str, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    url = "https://fp.example.invalid"
    settings = load_settings(write_config(tmp_path, emulators, registry.url, fs_url=url, fp_url=url), environ=env())
    connect = check_freshpaint(settings, 2, "connect")
    assert not connect.ok
    assert connect.detail == "DNS: fp.example.invalid does not resolve (Name or service not known); nothing sent"
    ping = check_freshsuccess(settings, 2)[0]
    assert ping.detail.startswith("POST /v1/ping failed: ConnectError, DNS: fp.example.invalid does not resolve")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_emulators(pki: TestPki) -> Iterator[Emulators]:
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, ssl_certfile=pki.server.cert,
                   ssl_keyfile=pki.server.key) as running:
        yield running


def test_tls_is_verified_with_the_configured_trust_and_nothing_is_sent(
    tmp_path: Path, tls_emulators: Emulators, registry: SchemaRegistryEmulator, pki: TestPki
) -> None:
    tls_emulators.freshpaint.reset()
    tls_emulators.freshsuccess.reset()
    trusted = load_settings(write_config(tmp_path, tls_emulators, registry.url, ca_bundle=pki.ca.cert),
                            environ=env())
    connect = check_freshpaint(trusted, None, "connect")
    assert connect.ok, connect.detail
    assert re.search(r"; TLS: TLSv1\.[23], certificate verified for 127\.0\.0\.1; nothing sent: proves the route "
                     r"and TLS trust, not the token", connect.detail)
    ping, keys = check_freshsuccess(trusted, None)
    assert ping.ok
    assert keys.ok
    assert re.fullmatch(r"POST /v1/ping answered 200 \(TLS TLSv1\.[23], certificate verified\)", ping.detail)
    assert tls_emulators.freshpaint.requests() == []
    assert tls_emulators.freshsuccess.stats()["accepted"] == 0

    other_ca = tmp_path / "other"
    other_ca.mkdir()
    untrusted = load_settings(write_config(other_ca, tls_emulators, registry.url, ca_bundle=pki.untrusted_ca.cert),
                              environ=env())
    refused = check_freshpaint(untrusted, None, "connect")
    assert not refused.ok
    assert "; TLS: certificate verification failed (" in refused.detail
    assert refused.detail.endswith("; nothing sent")
    ping, _keys = check_freshsuccess(untrusted, None)
    assert not ping.ok
    assert ping.detail.startswith("POST /v1/ping failed: ConnectError, TLS: certificate verification failed (")
    assert tls_emulators.freshpaint.requests() == []


def test_json_output_lists_every_check(tmp_path: Path, emulators: Emulators, registry: SchemaRegistryEmulator,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, emulators, registry.url)
    assert main(["ping", "--config", str(config), "--json"]) == 1
    document = orjson.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert [(c["check"], c["ok"]) for c in document["checks"]] == [
        ("kafka", False), ("schema registry", True), ("freshsuccess ping", True), ("freshsuccess keys", True),
        ("freshpaint connect", True)]
    assert main(["ping", "--config", str(config), "--json", "--freshpaint-check", "event"]) == 1
    [*_, freshpaint] = orjson.loads(capsys.readouterr().out)["checks"]
    assert (freshpaint["check"], freshpaint["ok"]) == ("freshpaint event", True)
    assert f"this creates the event '{PING_EVENT}'" in freshpaint["detail"]


def test_ping_checks_each_streams_reader_schema_subject(tmp_path: Path, registry: SchemaRegistryEmulator) -> None:
    schema = {"type": "record", "name": "PageView", "namespace": "com.example",
              "fields": [{"name": "id", "type": "string"}]}
    schema_id = registry.register("web-value", schema)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "decoding": {"schema_registry_url": registry.url},
        "streams": [{"name": "usage", "topics": ["usage-events"]},
                    {"name": "web", "topics": ["web"], "reader_schema_subject": "web-value"},
                    {"name": "app", "topics": ["app"], "reader_schema_subject": "app-value"}]}))
    results = check_registry(load_settings(config, environ={}))
    assert [(r.check, r.target, r.ok) for r in results] == [
        ("schema registry", f"127.0.0.1:{registry.port}", True),
        ("reader schema", "stream 'web': subject 'web-value'", True),
        ("reader schema", "stream 'app': subject 'app-value'", False)]
    assert results[1].detail == f"version 1 (id {schema_id})"
    assert "subject 'app-value' is not in the schema registry" in results[2].detail
