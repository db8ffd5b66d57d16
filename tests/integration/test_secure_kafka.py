"""Kafka over TLS: SASL_SSL with SCRAM-SHA-512, and SSL with client certificates (mTLS), on a real broker.

This module starts its own broker with three listeners (consumer/testing/local_kafka.py): PLAINTEXT (used here only
to create topics, produce test records and read offsets back), SASL_SSL with SCRAM-SHA-512, and SSL that
requires a client certificate. The certificates come from a throw-away CA (consumer/testing/testpki.py) and the
SCRAM credentials are created when the broker's storage is formatted.

The consumer is configured only through the documented keys (``kafka.security_protocol``,
``kafka.sasl_mechanism``, ``kafka.sasl_username``, ``kafka.ssl_*_location``) and the secret environment
variables (``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_KEY_PASSWORD``). A wrong password or an untrusted
certificate stops ``usage-consumer run`` at start-up with a non-zero exit and one line that names the cause.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.config import Settings, load_settings
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.eventgen import one_of_each
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.testpki import (
    SCRAM_MECHANISM,
    TestPki,
)
from tests.helpers import wait_for
from tests.integration.secured import KEY_PASSWORD, SCRAM_PASSWORD, SCRAM_USER, mtls_settings, scram_settings

WRONG_PASSWORD = "not-the-pw-90aa"
STARTUP_TIMEOUT_S = 8  # how long a refused start-up waits for the broker before saying why



@pytest.fixture(scope="module")
def stack(secured_broker: LocalKafka) -> Iterator[DevStack]:
    """Schema registry and emulators; the broker's PLAINTEXT listener for topics, producing and offsets."""
    with DevStack(secured_broker.bootstrap) as running:
        yield running


@pytest.fixture
def fresh_emulators(stack: DevStack) -> None:
    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.reset()


def scram_kafka(broker: LocalKafka, pki: TestPki) -> dict[str, Any]:
    return {**scram_settings(broker, pki), "startup_timeout_s": STARTUP_TIMEOUT_S}


def mtls_kafka(broker: LocalKafka, pki: TestPki, *, client: str = "trusted") -> dict[str, Any]:
    return {**mtls_settings(broker, pki, client=client), "startup_timeout_s": STARTUP_TIMEOUT_S}


MODES = {
    "sasl_ssl-scram-sha-512": (scram_kafka, {"KAFKA_SASL_PASSWORD": SCRAM_PASSWORD}),
    "ssl-client-certificate": (mtls_kafka, {"KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}),
}


def config(stack: DevStack, topic: str, dlq: str, kafka: dict[str, Any], group: str | None = None) -> Path:
    return stack.config_file(topic, dlq, group=group, kafka=kafka)


def environment(secrets: dict[str, str]) -> dict[str, str]:
    return {**DevStack.secrets_env(), **secrets}


@pytest.mark.usefixtures("fresh_emulators")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_consumer_and_dead_letter_producer_deliver_over_the_secured_listener(
        stack: DevStack, secured_broker: LocalKafka, pki: TestPki, mode: str) -> None:
    kafka_for, secrets = MODES[mode]
    topic, dlq = stack.topics(partitions=2, prefix="secure")
    schema_id = stack.register(topic)
    events = one_of_each()
    stack.produce_events(topic, schema_id, events)
    stack.produce(topic, [(b"bad", b"not avro at all")])
    path = config(stack, topic, dlq, kafka_for(secured_broker, pki))
    settings: Settings = load_settings(path, environ=environment(secrets))
    assert settings.kafka_client_config()["bootstrap.servers"] != secured_broker.bootstrap  # not PLAINTEXT

    with RunningService(settings) as running:
        stack.emulators.freshsuccess.wait_for_events(5, timeout_s=90)
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=90)
        end = stack.end_offsets(topic)
        for group in (settings.group_for("freshsuccess"), settings.group_for("freshpaint")):
            wait_for(partial(committed_to, stack, group, topic, end), timeout_s=90,
                     what=f"{group} to commit to the end over {mode}")
        # The malformed record was parked by each lane's dead-letter producer, over the same listener.
        wait_for(lambda: len(stack.read_all(dlq)) == 2, timeout_s=60, what="two dead letters")
    assert running.exit_code == 0
    letters = stack.read_all(dlq)
    reasons = sorted((dict(m.headers())["dlq.destination"], dict(m.headers())["dlq.reason"]) for m in letters)
    assert reasons == [(b"freshpaint", b"undecodable"), (b"freshsuccess", b"undecodable")]


def committed_to(stack: DevStack, group: str, topic: str, end: dict[int, int]) -> bool:
    return stack.committed(group, topic) == end


def refused_start(stack: DevStack, kafka: dict[str, Any], secrets: dict[str, str],
                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    topic, dlq = stack.topics(partitions=1, prefix="refused")
    path = config(stack, topic, dlq, kafka, group=f"refused-{uuid.uuid4().hex[:6]}")
    for name, value in environment(secrets).items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("cli_process_state")
def test_a_wrong_sasl_password_stops_start_up_naming_authentication(
        stack: DevStack, secured_broker: LocalKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = refused_start(stack, scram_kafka(secured_broker, pki), {"KAFKA_SASL_PASSWORD": WRONG_PASSWORD},
                              monkeypatch, capsys)
    assert code == 3
    line = err.strip().splitlines()[-1]
    assert line.startswith("usage-consumer: error: Kafka at 127.0.0.1:"), err
    assert "authentication failed" in line
    assert "invalid credentials" in line
    assert SCRAM_MECHANISM in line
    assert "KAFKA_SASL_PASSWORD" in line
    assert f"kafka.sasl_username ({SCRAM_USER})" in line
    assert WRONG_PASSWORD not in err
    assert SCRAM_PASSWORD not in err


@pytest.mark.usefixtures("cli_process_state")
def test_an_untrusted_client_certificate_stops_start_up_naming_the_certificate(
        stack: DevStack, secured_broker: LocalKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = refused_start(stack, mtls_kafka(secured_broker, pki, client="untrusted"),
                              {"KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}, monkeypatch, capsys)
    assert code == 3
    line = err.strip().splitlines()[-1]
    assert "the broker refused our TLS client certificate" in line, err
    assert "kafka.ssl_certificate_location" in line
    assert KEY_PASSWORD not in err


@pytest.mark.usefixtures("cli_process_state")
def test_a_broker_certificate_from_an_untrusted_ca_stops_start_up(
        stack: DevStack, secured_broker: LocalKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    kafka = {**scram_kafka(secured_broker, pki), "ssl_ca_location": str(pki.untrusted_ca.cert)}
    code, err = refused_start(stack, kafka, {"KAFKA_SASL_PASSWORD": SCRAM_PASSWORD}, monkeypatch, capsys)
    assert code == 3
    line = err.strip().splitlines()[-1]
    assert "the broker's TLS certificate could not be verified" in line, err
    assert "certificate verify failed" in line
    assert "kafka.ssl_ca_location" in line
    assert SCRAM_PASSWORD not in err


@pytest.mark.usefixtures("cli_process_state")
def test_a_wrong_client_key_password_stops_start_up_without_showing_it(
        stack: DevStack, secured_broker: LocalKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = refused_start(stack, mtls_kafka(secured_broker, pki), {"KAFKA_SSL_KEY_PASSWORD": WRONG_PASSWORD},
                              monkeypatch, capsys)
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert "ssl.key.location" in line or "private key" in line, err
    assert WRONG_PASSWORD not in err
    assert KEY_PASSWORD not in err


@pytest.mark.parametrize(("code", "text", "expected"), [
    ("_AUTHENTICATION", "sasl_ssl://b:9093/bootstrap: SASL SCRAM-SHA-256 mechanism handshake failed: Broker: "
     "Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-512 (after 3ms in state AUTH_HANDSHAKE)",
     "authentication failed (SASL SCRAM-SHA-256 mechanism handshake failed"),
    ("_SSL", "ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
     "broker certificate could not be verified (after 2ms in state SSL_HANDSHAKE)",
     "the broker's TLS certificate could not be verified"),
    ("_TRANSPORT", "ssl://b:9092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: "
     "connecting to a PLAINTEXT broker listener? (after 0ms in state SSL_HANDSHAKE)",
     "the broker's listener does not speak TLS"),
    ("_TRANSPORT", "ssl://b:9094/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad "
     "certificate: SSL alert number 42 (after 1ms in state APIVERSION_QUERY)",
     "the broker requires a TLS client certificate and none is configured"),  # these settings configure none
    ("_TRANSPORT", "b:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused", None),
])
def test_start_up_failure_causes_name_the_setting_and_never_a_secret(code: str, text: str,
                                                                     expected: str | None) -> None:
    """The client's error callbacks, turned into the start-up message (no broker needed)."""
    from confluent_kafka import KafkaError

    from consumer.kafka.failures import kafka_failure_cause

    settings = load_settings(None, environ={"KAFKA_SASL_PASSWORD": "hunter2-pw"})
    error = KafkaError(getattr(KafkaError, code), f"{text} hunter2-pw")  # as if the client echoed it
    cause = kafka_failure_cause(settings, [KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), error])
    if expected is None:
        assert cause is None
        return
    assert cause is not None
    assert cause.startswith(expected)
    assert "check kafka." in cause or "set kafka." in cause
    assert "(after" not in cause
    assert "hunter2-pw" not in cause
