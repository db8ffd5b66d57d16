"""Secrets have one way in, the environment (issue 17), and the secrets table in consumer/config.py says which.

* A librdkafka property that carries a secret, written in ``kafka.client_properties`` (the properties of the
  consumers *and* of the dead-letter producer, which share them), stops ``check`` and ``run`` with exit code 2,
  naming the key and the environment variable to use instead.
* A secret-looking key anywhere in the file is answered with the variable its value comes from, not "unknown key".
* ``check`` names a missing ``KAFKA_SASL_PASSWORD`` when the Kafka settings need one.
* With no client certificate configured, a broker that wants one is reported as such.

No broker is needed: everything here fails (or is decided) before a client connects.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from consumer.cli import main
from consumer.config import load_settings

SECRET_VALUE = "s3cr3t-value-7d1a"

LIBRDKAFKA_SECRET_PROPERTIES = {
    # librdkafka's properties flagged _RK_SENSITIVE (src/rdkafka_conf.c; CONFIGURATION.md) whose value *is* a
    # secret; ssl.key.location and sasl.oauthbearer.assertion.private.key.file (paths), ssl.ca.pem (a public CA
    # certificate) and sasl.username (an identity) are flagged too but are not secrets.
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "ssl.key.password": "KAFKA_SSL_KEY_PASSWORD",
    "ssl.key.pem": "KAFKA_SSL_KEY_PEM",
    "ssl_key": "KAFKA_SSL_KEY_PEM",
    "ssl.keystore.password": "KAFKA_SSL_KEYSTORE_PASSWORD",
    "sasl.oauthbearer.client.secret": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "sasl.oauthbearer.client.credentials.client.secret": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "sasl.oauthbearer.config": "KAFKA_SASL_OAUTHBEARER_CONFIG",
    "sasl.oauthbearer.assertion.private.key.passphrase": "KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PASSPHRASE",
    "sasl.oauthbearer.assertion.private.key.pem": "KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PEM",
}
"""Each secret-carrying librdkafka property and the environment variable that sets it instead."""

DESTINATION_SECRETS = {"FRESHSUCCESS_AUTH_KEY": "auth-key-1", "FRESHSUCCESS_API_KEY": "api-key-1",
                       "FRESHPAINT_TOKEN": "token-1"}


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the secrets a test sets; logging back to the defaults afterwards (the CLI configures it)."""
    from consumer.config import SECRETS

    for secret in SECRETS:
        monkeypatch.delenv(secret.variable, raising=False)
    for variable in (*LIBRDKAFKA_SECRET_PROPERTIES.values(), "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    for name, value in DESTINATION_SECRETS.items():
        monkeypatch.setenv(name, value)
    yield
    structlog.reset_defaults()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ 1. client_properties

@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("prop", sorted(LIBRDKAFKA_SECRET_PROPERTIES))
def test_a_secret_librdkafka_property_in_client_properties_fails_check_and_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], prop: str, command: str) -> None:
    # (a broker nobody listens on: today's code would otherwise wait for it)
    path = write(tmp_path, "health:\n  enabled: false\nkafka:\n  client_properties:\n"
                           f"    fetch.max.bytes: '1048576'\n    {prop}: {SECRET_VALUE}\n"
                           "  bootstrap_servers: 127.0.0.1:1\n  startup_timeout_s: 1\n")
    code = main([command, "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    variable = LIBRDKAFKA_SECRET_PROPERTIES[prop]
    assert f"configuration error: {path}:6: kafka.client_properties.{prop}: " in err
    assert f"environment variable {variable}" in err
    assert SECRET_VALUE not in err
    assert len(err.strip().splitlines()) == 1, err


def test_the_secrets_table_refuses_exactly_librdkafkas_secret_properties() -> None:
    from consumer.config import SECRETS

    refused = {prop: secret.variable for secret in SECRETS for prop in secret.client_properties}
    assert refused == LIBRDKAFKA_SECRET_PROPERTIES


@pytest.mark.parametrize("prop", sorted(set(LIBRDKAFKA_SECRET_PROPERTIES) - {"ssl_key"}))
def test_each_secret_property_comes_from_its_variable_into_every_kafka_client(
        monkeypatch: pytest.MonkeyPatch, prop: str) -> None:
    """The environment variable sets the property for the consumers and the dead-letter producer alike, and the
    log scrubber knows the value."""
    from consumer.kafka import deadletter
    from consumer.kafka.source import consumer_config

    variable = LIBRDKAFKA_SECRET_PROPERTIES[prop]
    settings = load_settings(None, environ={variable: SECRET_VALUE})
    base = settings.kafka_client_config()
    canonical = "sasl.oauthbearer.client.secret" if prop.endswith("client.credentials.client.secret") else prop
    assert base[canonical] == SECRET_VALUE
    assert consumer_config(base, settings.kafka, group_id="g")[canonical] == SECRET_VALUE
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(deadletter, "Producer", lambda config: built.append(config))
    deadletter.DeadLetterProducer("dlq", base)
    assert built[0][canonical] == SECRET_VALUE
    assert SECRET_VALUE in settings.secret_values()
    assert SECRET_VALUE not in repr(settings)


def test_the_log_scrubber_redacts_every_secret_of_the_table() -> None:
    from consumer.config import SECRETS
    from consumer.observability.logs import configure_logging

    environ = {secret.variable: f"{secret.variable.lower()}-v4lue" for secret in SECRETS}
    settings = load_settings(None, environ=environ)
    out = io.StringIO()
    configure_logging(level="info", fmt="json", secrets=settings.secret_values(), stream=out)
    structlog.get_logger("t").info("leak", **{name.lower(): f"x {value} y" for name, value in environ.items()})
    assert all(value not in out.getvalue() for value in environ.values()), out.getvalue()
    assert out.getvalue().count("***") == len(environ)


# ------------------------------------------------------------------------------ 3. KAFKA_SASL_PASSWORD missing

SASL = ("health:\n  enabled: false\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n  startup_timeout_s: 1\n"
        "  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: usage-consumer\n")


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_missing_kafka_sasl_password_is_named_by_check_and_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    path = write(tmp_path, SASL)
    code = main([command, "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "KAFKA_SASL_PASSWORD" in err
    assert "missing secret environment variable" in err
    assert "client_properties" not in err
    assert "kafka.security_protocol SASL_SSL" in err
    assert len(err.strip().splitlines()) == 1, err


def test_check_passes_with_the_password_set_and_without_sasl(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET_VALUE)
    assert main(["check", "--config", str(write(tmp_path, SASL))]) == 0
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    # No SASL, or SASL with a mechanism that has no password (GSSAPI, OAUTHBEARER): nothing is missing.
    assert main(["check", "--config", str(write(tmp_path, "kafka:\n  security_protocol: SSL\n"))]) == 0
    oauth = "kafka:\n  security_protocol: SASL_SSL\n  client_properties:\n    sasl.mechanism: OAUTHBEARER\n"
    assert main(["check", "--config", str(write(tmp_path, oauth))]) == 0
    assert SECRET_VALUE not in capsys.readouterr().err


def test_a_missing_sasl_username_is_named_at_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET_VALUE)
    path = write(tmp_path, "kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: PLAIN\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: kafka.sasl_username: must be set" in err, err
    assert "client_properties" not in err


# ------------------------------------------------------------------------------ 4. secret-looking keys

@pytest.mark.parametrize(("yaml", "line", "key", "variable"), [
    ("kafka:\n  sasl_password: {v}\n", 2, "kafka.sasl_password", "KAFKA_SASL_PASSWORD"),
    ("kafka:\n  password: {v}\n", 2, "kafka.password", "KAFKA_SASL_PASSWORD"),
    ("kafka:\n  sasl.password: {v}\n", 2, "kafka.sasl.password", "KAFKA_SASL_PASSWORD"),
    ("kafka:\n  topics: [a]\n  ssl_key_password: {v}\n", 3, "kafka.ssl_key_password", "KAFKA_SSL_KEY_PASSWORD"),
    ("kafka:\n  ssl_keystore_password: {v}\n", 2, "kafka.ssl_keystore_password", "KAFKA_SSL_KEYSTORE_PASSWORD"),
    ("kafka:\n  ssl_key_pem: {v}\n", 2, "kafka.ssl_key_pem", "KAFKA_SSL_KEY_PEM"),
    ("freshpaint:\n  token: {v}\n", 2, "freshpaint.token", "FRESHPAINT_TOKEN"),
    ("freshpaint:\n  api_key: {v}\n", 2, "freshpaint.api_key", "FRESHPAINT_TOKEN"),
    ("freshsuccess:\n  auth_key: {v}\n", 2, "freshsuccess.auth_key", "FRESHSUCCESS_AUTH_KEY"),
    ("freshsuccess:\n  apikey: {v}\n", 2, "freshsuccess.apikey", "FRESHSUCCESS_API_KEY"),
    ("decoding:\n  schema_registry_password: {v}\n", 2, "decoding.schema_registry_password",
     "SCHEMA_REGISTRY_PASSWORD"),
    ("decoding:\n  schema_registry_pass: {v}\n", 2, "decoding.schema_registry_pass", "SCHEMA_REGISTRY_PASSWORD"),
    ("logging:\n  level: info\nkafka_sasl_password: {v}\n", 3, "kafka_sasl_password", "KAFKA_SASL_PASSWORD"),
    ("freshpaint_token: {v}\n", 1, "freshpaint_token", "FRESHPAINT_TOKEN"),
])
def test_a_secret_looking_key_says_which_environment_variable_the_value_comes_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, line: int, key: str, variable: str) -> None:
    path = write(tmp_path, yaml.format(v=SECRET_VALUE))
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"configuration error: {path}:{line}: {key}: " in err, err
    assert f"comes from the environment variable {variable}" in err, err
    assert "unknown key" not in err
    assert SECRET_VALUE not in err


def test_an_ordinary_unknown_key_is_still_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "kafka:\n  topic: [a]\n")
    assert main(["check", "--config", str(path)]) == 2
    assert f"{path}:2: kafka.topic: unknown key (did you mean 'topics'?)" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 5. no client certificate

@pytest.mark.parametrize("alert", [
    "ssl/tls alert bad certificate: SSL alert number 42",
    "tlsv13 alert certificate required: SSL alert number 116",
])
def test_a_broker_wanting_a_client_certificate_when_none_is_configured_says_so(alert: str) -> None:
    from confluent_kafka import KafkaError

    from consumer.kafka.failures import kafka_failure_cause

    text = f"ssl://127.0.0.1:9094/bootstrap: Receive failed: error:0A000412:SSL routines::{alert} (after 1ms in " \
           "state APIVERSION_QUERY)"
    none = load_settings(None, environ={})
    cause = kafka_failure_cause(none, [KafkaError(KafkaError._TRANSPORT, text)])
    assert cause is not None
    assert cause.startswith("the broker requires a TLS client certificate and none is configured"), cause
    assert "set kafka.ssl_certificate_location and kafka.ssl_key_location" in cause
    assert "refused our TLS client certificate" not in cause
    configured = Path(__file__)  # any file: only whether one is configured matters here
    ours = none.model_copy(update={"kafka": none.kafka.model_copy(
        update={"ssl_certificate_location": configured, "ssl_key_location": configured})})
    cause = kafka_failure_cause(ours, [KafkaError(KafkaError._TRANSPORT, text)])
    assert cause is not None
    assert "none is configured" not in cause
    assert "kafka.ssl_certificate_location" in cause


# ------------------------------------------------------------------------------ the documentation

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("page", ["security.md", "configuration.md"])
def test_the_docs_name_every_secret_its_variable_and_every_refused_property(page: str) -> None:
    from consumer.config import SECRETS

    text = (DOCS / page).read_text()
    for secret in SECRETS:
        assert f"`{secret.variable}`" in text, (page, secret.variable)
        for prop in secret.client_properties:
            assert f"`{prop}`" in text, (page, prop)


def test_the_ca_mismatch_example_in_the_docs_is_the_line_the_product_prints() -> None:
    """The librdkafka text below is what the secured test broker's client reported
    (tests/integration/test_kafka_auth_failures.py prints the whole line with ``pytest -s``)."""
    from confluent_kafka import KafkaError

    from consumer.kafka.failures import unreachable

    servers = "127.0.0.1:56791"
    settings = load_settings(None, environ={"KAFKA_BOOTSTRAP_SERVERS": servers})
    seen = [KafkaError(KafkaError._SSL, f"sasl_ssl://{servers}/bootstrap: SSL handshake failed: error:0A000086:SSL "
                       "routines::certificate verify failed: broker certificate could not be verified, verify that "
                       "ssl.ca.location is correctly configured or root CA certificates are installed (install "
                       "ca-certificates package) (after 5ms in state SSL_HANDSHAKE)")]
    line = f"usage-consumer: error: {unreachable(settings, seen, Exception('timed out'), 40)}"
    assert line in (DOCS / "security.md").read_text().splitlines()
