"""Secrets never leak: one full run with known secret values, failures included, and a search of everything
the consumer says for them.

The secrets are canaries: the Freshsuccess auth and API keys, the Freshpaint token, the Kafka SASL password,
the client key's password and the schema registry password, each set only in the environment, as in
production. The run goes through start-up failures (a wrong SASL password, a wrong key password, a secret
put in the config file, the registry and Freshsuccess refusing us at start-up), then a delivery over
SASL_SSL during which both destinations answer 401, 400, 503 and time out, a malformed record is
dead-lettered, and finally Freshsuccess answers 400 and the consumer stops.

Searched: every byte written to stdout and stderr (structlog's JSON lines as ``usage-consumer run``
configures them, librdkafka's own log lines, the CLI's error lines), every error message, ``/metrics``,
``/readyz`` and ``/livez``, the dead-letter records' headers, and ``repr``/``str`` of the settings and of
every service, lane, destination, sink, decoder and client object. Each secret is looked for as is,
URL-quoted and base64-encoded (the registry's basic-auth header carries ``user:password`` in base64).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from consumer.app.service import Service
from consumer.cli import main
from consumer.config import load_settings
from consumer.observability.logs import configure_logging
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators import Emulators, Fault
from consumer.testing.eventgen import one_of_each
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.testpki import SASL_SSL_LISTENER, SCRAM_MECHANISM, TestPki, make_test_pki, secured_local_kafka
from tests.helpers import wait_for

FRESHSUCCESS_AUTH_KEY = "fsAuthCanary-7Qk2"
FRESHSUCCESS_API_KEY = "fsApiCanary-9Wz4"
FRESHPAINT_TOKEN = "fpTokenCanary-3Hx8"
SASL_USER = "leak-test"
SASL_PASSWORD = "saslCanary-5Rv1"
KEY_PASSWORD = "keyCanary-2Lm6"
REGISTRY_USER = "registry-user"
REGISTRY_PASSWORD = "registryCanary-8Dp0"
WRONG_SASL_PASSWORD = "wrongSaslCanary-1Ga9"
WRONG_KEY_PASSWORD = "wrongKeyCanary-4Tn3"

SECRETS = (FRESHSUCCESS_AUTH_KEY, FRESHSUCCESS_API_KEY, FRESHPAINT_TOKEN, SASL_PASSWORD, KEY_PASSWORD,
           REGISTRY_PASSWORD, WRONG_SASL_PASSWORD, WRONG_KEY_PASSWORD)
ENVIRONMENT = {
    "FRESHSUCCESS_AUTH_KEY": FRESHSUCCESS_AUTH_KEY, "FRESHSUCCESS_API_KEY": FRESHSUCCESS_API_KEY,
    "FRESHPAINT_TOKEN": FRESHPAINT_TOKEN, "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD, "SCHEMA_REGISTRY_PASSWORD": REGISTRY_PASSWORD,
}


def forms(secret: str) -> set[str]:
    """The ways a secret could show up in text: as is, URL-quoted, base64."""
    return {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}


FORBIDDEN = {form: secret for secret in SECRETS for form in forms(secret)}
FORBIDDEN[base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()] = REGISTRY_PASSWORD


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("leak-pki"), client_key_password=KEY_PASSWORD)


@pytest.fixture(scope="module")
def broker(pki: TestPki) -> Iterator[LocalKafka]:
    kafka = secured_local_kafka(pki, {SASL_USER: SASL_PASSWORD})
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def stack(broker: LocalKafka) -> Iterator[DevStack]:
    """The schema registry, topics and offsets (over PLAINTEXT); the emulators are our own, below."""
    with DevStack(broker.bootstrap, emulators=False) as running:
        yield running


@pytest.fixture
def emulators() -> Iterator[Emulators]:
    with Emulators(auth_key=FRESHSUCCESS_AUTH_KEY, api_key=FRESHSUCCESS_API_KEY, token=FRESHPAINT_TOKEN) as running:
        yield running


def write_config(directory: Path, broker: LocalKafka, pki: TestPki, stack: DevStack, emulators: Emulators,
                 topic: str, dlq: str, **extra: dict[str, Any]) -> Path:
    config: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": broker.listener_bootstrap(SASL_SSL_LISTENER), "security_protocol": "SASL_SSL",
                  "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": SASL_USER,
                  "ssl_ca_location": str(pki.ca.cert), "ssl_certificate_location": str(pki.client.cert),
                  "ssl_key_location": str(pki.client.key), "topics": [topic], "dead_letter_topic": dlq,
                  "group_id": f"leak-{uuid.uuid4().hex[:8]}", "consume_timeout_s": 0.05, "startup_timeout_s": 8},
        "decoding": {"framing": "confluent", "schema_registry_url": stack.registry.url,
                     "schema_registry_user": REGISTRY_USER},
        "batching": {"max_wait_s": 0.2},
        "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.3, "credentials_backoff_s": 0.3},
        "freshsuccess": {"base_url": emulators.freshsuccess_url, "timeout_s": 1.0},
        "freshpaint": {"base_url": emulators.freshpaint_url, "timeout_s": 1.0, "max_in_flight_requests": 4},
        "health": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "debug", "format": "json"},
    }
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    path = directory / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(orjson.dumps(config).decode())
    return path


def cli_run(path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> int:
    for name, value in {**ENVIRONMENT, **overrides}.items():
        monkeypatch.setenv(name, value)
    return main(["run", "--config", str(path)])


def describe(obj: Any) -> str:
    return f"{obj!r}\n{obj!s}"


def service_texts(service: Service) -> list[str]:
    """repr/str of the settings and of every object the service is made of."""
    settings = service.settings
    texts = [describe(settings), settings.model_dump_json(), str(settings.model_dump()),
             *(describe(getattr(settings, section)) for section in type(settings).model_fields),
             describe(service), describe(service.delivery), describe(service.metrics)]
    for lane in service.lanes:
        decoder = getattr(lane.judge, "decoder", None)
        texts += [describe(lane), describe(lane.sink), describe(lane.judge), describe(decoder),
                  describe(getattr(decoder, "_registry", None)), describe(lane.source),
                  describe(lane.dead_letters), describe(lane.batcher), describe(lane.tracker), describe(lane.stats),
                  str(lane.fatal)]
    return texts


@pytest.mark.usefixtures("cli_process_state")
def test_no_secret_in_any_log_line_error_metric_dead_letter_or_repr(
        broker: LocalKafka, pki: TestPki, stack: DevStack, emulators: Emulators, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    topic, dlq = stack.topics(partitions=2, prefix="leak")
    schema_id = stack.register(topic)
    texts: list[str] = []

    def config(**extra: dict[str, Any]) -> Path:
        return write_config(tmp_path, broker, pki, stack, emulators, topic, dlq, **extra)

    # ---- start-up failures, through `usage-consumer run`
    assert cli_run(config(), monkeypatch, KAFKA_SASL_PASSWORD=WRONG_SASL_PASSWORD) == 3
    assert cli_run(config(), monkeypatch, KAFKA_SSL_KEY_PASSWORD=WRONG_KEY_PASSWORD) == 2
    assert cli_run(config(freshpaint={"token": FRESHPAINT_TOKEN}), monkeypatch) == 2  # secrets: env only
    emulators.freshsuccess.inject(Fault(status=400, include_ping=True, count=1))
    assert cli_run(config(), monkeypatch) == 3
    emulators.freshsuccess.inject(Fault(status=401, include_ping=True, count=1))
    assert cli_run(config(), monkeypatch) == 3
    stack.registry.fail_with(401)
    try:
        assert cli_run(config(), monkeypatch) == 3
    finally:
        stack.registry.fail_with(None)
    startup = capfd.readouterr()
    assert "authentication failed" in startup.err
    assert "secrets are read from the environment only" in startup.err
    texts += [startup.out, startup.err]

    # ---- a delivery over SASL_SSL through 401s, 400s, 503s, timeouts and a malformed record
    events = [event for seed in range(5) for event in one_of_each(seed=seed)]
    stack.produce_events(topic, schema_id, events)
    stack.produce(topic, [(b"k", b"\x00\x00\x00\x00\x63 not avro")])
    fs, fp = emulators.freshsuccess, emulators.freshpaint
    for fault in (Fault(status=401, count=2), Fault(latency_s=1.5, count=1), Fault(status=503, count=1)):
        fs.inject(fault)
    for fault in (Fault(status=401, count=3), Fault(status=400, count=2), Fault(latency_s=1.5, count=1)):
        fp.inject(fault)
    settings = load_settings(config(), environ=ENVIRONMENT)
    configure_logging(level="debug", fmt="json", secrets=())  # no scrubber: nothing may rely on it here
    with RunningService(settings) as running:
        service = running.service
        assert service.health is not None
        health = f"http://127.0.0.1:{service.health.port}"
        fs.wait_for_events(len(events) // 6 * 5, timeout_s=90)
        fp.wait_for_events(len(events) - 2, timeout_s=90)
        wait_for(lambda: len(stack.read_all(dlq)) == 4, timeout_s=60,
                 what="4 dead letters: the malformed record twice and 2 Freshpaint rejections")
        for path in ("/metrics", "/readyz", "/livez"):
            texts.append(httpx.get(health + path, timeout=10).text)
        texts += service_texts(service)
        # Freshsuccess now answers 400: the lane stops and says why.
        fs.inject(Fault(status=400))
        stack.produce_events(topic, schema_id, one_of_each(seed=99)[:1])
        wait_for(lambda: running.lane("freshsuccess").fatal is not None, timeout_s=60, what="the fatal 400")
        # What /readyz answers now (the service is already shutting down, so its server may be gone).
        texts.append(str(service.ready()))
        texts.append(service.metrics.exposition().decode())
    assert running.exit_code == 3
    texts += service_texts(service)
    assert "HTTP 400" in str(running.lane("freshsuccess").fatal)
    for letter in stack.read_all(dlq):
        texts += [f"{name}={value!r}" for name, value in letter.headers() or []]
    run = capfd.readouterr()
    texts += [run.out, run.err]

    # ---- the run really used every secret and went through every failure
    assert fs.stats()["accepted"] >= len(events) // 6 * 5
    assert fp.stats()["accepted"] >= len(events) - 2
    logged = run.out + run.err
    for expected in ('"status":401', '"status":503', "HTTP 400", "ReadTimeout", "TimeoutError",
                     "destination_credentials_rejected", "event_dead_lettered", "lane_stopped", "schema_fetched"):
        assert expected in logged, f"the run never logged {expected}"

    leaks = [(form, index, text) for index, text in enumerate(texts) for form in FORBIDDEN if form in text]
    assert not leaks, "\n".join(f"secret {FORBIDDEN[form]!r} found (as {form!r}) in text #{index}: "
                                f"{text[max(0, text.find(form) - 300):text.find(form) + 100]!r}"
                                for form, index, text in leaks[:5])
