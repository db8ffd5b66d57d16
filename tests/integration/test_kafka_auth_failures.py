"""A refused login or TLS handshake stops ``usage-consumer run`` at once, not after ``kafka.startup_timeout_s``
(issue 17).

librdkafka reports an authentication or certificate failure through the error callback as soon as it happens;
start-up stops at the first one. Each run below has ``kafka.startup_timeout_s`` at 40 and must end, with exit
code 3 and one line naming the keys to check (never a secret), in under 5 s. The broker is the secured local
broker of the test tools (``consumer/testing/testpki.py``): PLAINTEXT (topics only), SASL_SSL with
SCRAM-SHA-512, and SSL that requires a client certificate. A control shows that the right settings pass the same
broker check, so each failure is the one setting the test got wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.app.startup import check_kafka
from consumer.cli import main
from consumer.config import load_settings
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.testpki import (
    SCRAM_MECHANISM,
    TestPki,
)
from tests.integration.secured import KEY_PASSWORD, SCRAM_PASSWORD, SCRAM_USER, mtls_settings, scram_settings

WRONG_PASSWORD = "wrong-pw-3f9d2e"
STARTUP_TIMEOUT_S = 40
FAST_S = 5.0
DESTINATION_SECRETS = {"FRESHSUCCESS_AUTH_KEY": "auth-key-77a1", "FRESHSUCCESS_API_KEY": "api-key-5c2e",
                       "FRESHPAINT_TOKEN": "token-0b9f"}
SECRETS = (SCRAM_PASSWORD, WRONG_PASSWORD, KEY_PASSWORD, *DESTINATION_SECRETS.values())



@pytest.fixture(scope="module")
def topics(secured_broker: LocalKafka) -> tuple[str, str]:
    """A topic and a dead-letter topic, made over PLAINTEXT, so that the right settings pass start-up's check."""
    names = (f"auth-{uuid.uuid4().hex[:8]}", f"auth-dlq-{uuid.uuid4().hex[:8]}")
    admin = AdminClient({"bootstrap.servers": secured_broker.bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)
                                       for name in names]).values():
        future.result(timeout=30)
    return names


def config_file(directory: Path, topics: tuple[str, str], kafka: dict[str, Any]) -> Path:
    topic, dlq = topics
    config = {"kafka": {"topics": [topic], "dead_letter_topic": dlq, "group_id": f"auth-{uuid.uuid4().hex[:6]}",
                        "startup_timeout_s": STARTUP_TIMEOUT_S, **kafka},
              "health": {"enabled": False}, "freshsuccess": {"ping_at_start": False}}
    path = directory / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(json.dumps(config))
    return path


def refusal_at_once(path: Path, secrets: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> str:
    """``usage-consumer run`` with ``path`` and ``secrets``: it must exit 3 within ``FAST_S`` with one error
    line, which is returned."""
    for name, value in {**DESTINATION_SECRETS, **secrets}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = main(["run", "--config", str(path)])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 3, err
    line = the_error_line(err)
    assert elapsed < FAST_S, f"{elapsed:.1f}s: {line}"
    return line


def the_error_line(err: str) -> str:
    """The one ``usage-consumer: error:`` line (log lines before it are JSON)."""
    lines = [line for line in err.splitlines() if line.startswith("usage-consumer:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("usage-consumer: error: Kafka at 127.0.0.1:"), err
    assert all(secret not in err for secret in SECRETS), err
    print(lines[0])  # with pytest -s: the lines docs/security.md shows
    return lines[0]


@pytest.mark.parametrize("mode", ["scram", "mtls"])
def test_the_right_settings_pass_the_broker_check(secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str],
                                                  tmp_path: Path, mode: str) -> None:
    kafka, secrets = ((scram_settings(secured_broker, pki), {"KAFKA_SASL_PASSWORD": SCRAM_PASSWORD}) if mode == "scram"
                      else (mtls_settings(secured_broker, pki), {"KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}))
    started = time.monotonic()
    check_kafka(load_settings(config_file(tmp_path, topics, kafka), environ=secrets))
    assert time.monotonic() - started < FAST_S


@pytest.mark.usefixtures("cli_process_state")
def test_a_wrong_password_fails_run_at_once_naming_the_sasl_keys(
        secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, topics, scram_settings(secured_broker, pki))
    line = refusal_at_once(path, {"KAFKA_SASL_PASSWORD": WRONG_PASSWORD}, monkeypatch, capsys)
    assert "authentication failed" in line
    assert f"kafka.sasl_mechanism ({SCRAM_MECHANISM}), kafka.sasl_username ({SCRAM_USER}) and " \
           "KAFKA_SASL_PASSWORD" in line


@pytest.mark.usefixtures("cli_process_state")
def test_a_broker_certificate_from_another_ca_fails_run_at_once_naming_the_ca_key(
        secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = {**scram_settings(secured_broker, pki), "ssl_ca_location": str(pki.untrusted_ca.cert)}
    line = refusal_at_once(config_file(tmp_path, topics, kafka), {"KAFKA_SASL_PASSWORD": SCRAM_PASSWORD},
                           monkeypatch, capsys)
    assert "the broker's TLS certificate could not be verified" in line
    assert "check kafka.ssl_ca_location" in line
    assert "verify that ssl.ca.location" not in line  # librdkafka's advice, in its own property names


@pytest.mark.usefixtures("cli_process_state")
def test_no_client_certificate_on_an_mtls_listener_fails_run_at_once_saying_none_is_configured(
        secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = {key: value for key, value in mtls_settings(secured_broker, pki).items()
             if key not in ("ssl_certificate_location", "ssl_key_location")}
    line = refusal_at_once(config_file(tmp_path, topics, kafka), {}, monkeypatch, capsys)
    assert "the broker requires a TLS client certificate and none is configured" in line
    assert "set kafka.ssl_certificate_location and kafka.ssl_key_location" in line
    assert "refused our TLS client certificate" not in line


@pytest.mark.usefixtures("cli_process_state")
def test_an_untrusted_client_certificate_fails_run_at_once_naming_the_certificate_keys(
        secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = {**mtls_settings(secured_broker, pki), "ssl_certificate_location": str(pki.untrusted_client.cert),
             "ssl_key_location": str(pki.untrusted_client.key)}
    line = refusal_at_once(config_file(tmp_path, topics, kafka), {"KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD},
                           monkeypatch, capsys)
    assert "the broker refused our TLS client certificate" in line
    assert "kafka.ssl_certificate_location" in line


@pytest.mark.usefixtures("cli_process_state")
def test_ping_reports_a_wrong_password_at_once(
        secured_broker: LocalKafka, pki: TestPki, topics: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, topics, scram_settings(secured_broker, pki))
    for name, value in {**DESTINATION_SECRETS, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = main(["ping", "--config", str(path), "--timeout-s", str(STARTUP_TIMEOUT_S)])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 1
    assert elapsed < FAST_S, f"{elapsed:.1f}s"
    assert "authentication failed" in out
    assert WRONG_PASSWORD not in out
