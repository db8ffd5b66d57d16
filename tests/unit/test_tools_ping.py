"""``usage-consumer ping`` against the destination emulators and a schema registry emulator.

The Kafka broker is unreachable here (a closed port on 127.0.0.1), so these runs exit 1; the all-green
run against the real broker is in tests/integration/test_tools_ping.py.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from consumer.cli import main
from consumer.config import load_settings
from consumer.testing.emulators import Emulators
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator
from consumer.tools.ping import PING_EVENT, check_freshpaint, check_freshsuccess, check_registry, run_checks

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
                 fs_url: str | None = None, fp_url: str | None = None) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port()}", "startup_timeout_s": 1},
        "decoding": {"framing": "confluent", "schema_registry_url": registry_url},
        "freshsuccess": {"base_url": fs_url or emulators.freshsuccess_url, "timeout_s": 5},
        "freshpaint": {"base_url": fp_url or emulators.freshpaint_url, "timeout_s": 5},
    }))
    return config


def env(auth: str = AUTH_KEY, api: str = API_KEY, token: str = TOKEN) -> dict[str, str]:
    return {"FRESHSUCCESS_AUTH_KEY": auth, "FRESHSUCCESS_API_KEY": api, "FRESHPAINT_TOKEN": token}


def test_destinations_and_registry_pass_and_the_unreachable_broker_fails_the_run(
    tmp_path: Path, emulators: Emulators, registry: SchemaRegistryEmulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    assert main(["ping", "--config", str(write_config(tmp_path, emulators, registry.url))]) == 1
    out = capsys.readouterr().out
    header, *lines, verdict = out.splitlines()
    assert re.split(r"\s{2,}", header) == ["CHECK", "TARGET", "RESULT", "DETAIL"]
    rows = {cells[0]: cells[2:] for cells in (re.split(r"\s{2,}", line, maxsplit=3) for line in lines)}
    assert rows["kafka"][0] == "FAILED"
    assert "no answer within 1s" in rows["kafka"][1]
    assert rows["schema registry"][0] == "ok"
    assert rows["freshsuccess"] == ["ok", "POST /v1/ping answered 200"]
    assert rows["freshsuccess keys"] == ["ok", "POST /v1/***/*** with an empty body (no events) answered 200"]
    assert rows["freshpaint"][0] == "ok"
    assert verdict == "1 of 5 checks failed"
    assert AUTH_KEY not in out
    assert API_KEY not in out
    assert TOKEN not in out
    # the key check carried no event, and the Freshpaint test event is routed to no destination
    assert emulators.freshsuccess.events() == []
    [sent] = emulators.freshpaint.events()
    assert sent["event"] == PING_EVENT
    assert sent["properties"]["$options"] == {"integrations": {"All": False}}


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
    assert not fp.ok
    assert "answered 401: the token was refused" in fp.detail
    assert "wrong-token" not in fp.detail


def test_missing_keys_fail_without_sending(tmp_path: Path, emulators: Emulators,
                                           registry: SchemaRegistryEmulator) -> None:
    settings = load_settings(write_config(tmp_path, emulators, registry.url), environ={})
    results = {r.check: r for r in run_checks(settings)}
    assert not results["freshsuccess keys"].ok
    assert "FRESHSUCCESS_AUTH_KEY and FRESHSUCCESS_API_KEY must both be set" in results["freshsuccess keys"].detail
    assert not results["freshpaint"].ok
    assert results["freshpaint"].detail == "FRESHPAINT_TOKEN is not set"
    assert emulators.freshpaint.requests() == []


def test_unreachable_destinations_and_registry_fail(tmp_path: Path, emulators: Emulators,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, emulators, dead, fs_url=dead, fp_url=dead)
    settings = load_settings(config, environ=env())
    results = run_checks(settings, timeout_s=2)
    assert [r.check for r in results] == ["kafka", "schema registry", "freshsuccess", "freshsuccess keys",
                                          "freshpaint"]
    assert not any(r.ok for r in results)
    assert "unreachable" in results[1].detail
    assert "POST /v1/ping failed: ConnectError" in results[2].detail
    assert "ConnectError" in results[4].detail
    assert all(AUTH_KEY not in r.detail and API_KEY not in r.detail for r in results)


def test_connect_mode_sends_nothing_to_freshpaint(tmp_path: Path, emulators: Emulators,
                                                  registry: SchemaRegistryEmulator) -> None:
    settings = load_settings(write_config(tmp_path, emulators, registry.url), environ=env())
    result = check_freshpaint(settings, None, "connect")
    assert result.ok
    assert result.detail == "connected; nothing sent"
    assert emulators.freshpaint.requests() == []


def test_json_output_lists_every_check(tmp_path: Path, emulators: Emulators, registry: SchemaRegistryEmulator,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, emulators, registry.url)
    assert main(["ping", "--config", str(config), "--json", "--freshpaint-check", "connect"]) == 1
    document = orjson.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert [(c["check"], c["ok"]) for c in document["checks"]] == [
        ("kafka", False), ("schema registry", True), ("freshsuccess", True), ("freshsuccess keys", True),
        ("freshpaint", True)]


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
