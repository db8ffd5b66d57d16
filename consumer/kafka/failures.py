"""What a Kafka client's failure means for the operator: the client's own text, and the cause behind a broker
that does not answer (authentication, TLS), never with a secret in it.

The start-up check, the tools' reader and ``usage-consumer ping`` all explain failures with these.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from consumer.config import Settings
from consumer.errors import FatalError


def kafka_error_text(exc: BaseException) -> str:
    """A KafkaException's own message, without the ``KafkaError{code=...}`` wrapping."""
    error = exc.args[0] if exc.args else exc
    return str(error.str()) if isinstance(error, KafkaError) else str(error)


def unreachable(settings: Settings, seen: list[KafkaError], exc: BaseException, timeout_s: float) -> FatalError:
    """The error for brokers that did not answer: the cause the error callbacks ``seen`` name, else the wait."""
    servers = settings.kafka.bootstrap_servers
    cause = kafka_failure_cause(settings, seen)
    if cause is not None:
        return FatalError(f"Kafka at {servers}: {cause}")
    return FatalError(f"Kafka at {servers} did not answer within {timeout_s:g}s ({kafka_error_text(exc)}); check "
                      "kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS), the network and the security settings")


# librdkafka error texts that name a TLS problem, and what the operator should check for each.
_TLS_CAUSES = (
    ("certificate verify failed", "the broker's TLS certificate could not be verified",
     "check kafka.ssl_ca_location (the CA that signed the broker's certificate) and the broker's host name"),
    ("alert bad certificate", "the broker refused our TLS client certificate",
     "check kafka.ssl_certificate_location and kafka.ssl_key_location (a certificate signed by a CA the broker "
     "trusts)"),
    ("alert certificate required", "the broker requires a TLS client certificate",
     "set kafka.ssl_certificate_location and kafka.ssl_key_location"),
    ("alert unknown ca", "the broker does not trust the CA of our TLS client certificate",
     "check kafka.ssl_certificate_location and kafka.ssl_key_location"),
    ("connecting to a PLAINTEXT broker listener", "the broker's listener does not speak TLS",
     "check kafka.security_protocol and the port in kafka.bootstrap_servers"),
    ("wrong version number", "the broker's listener does not speak TLS",
     "check kafka.security_protocol and the port in kafka.bootstrap_servers"),
)


def kafka_failure_cause(settings: Settings, errors: list[KafkaError]) -> str | None:
    """Why the broker did not answer, from the client's error callbacks: authentication or TLS; None if
    neither (then the address or the network is the likely cause). Never contains a secret."""
    texts = [error.str() for error in errors]
    cause = None
    for error, text in zip(errors, texts, strict=True):
        if error.code() == KafkaError._AUTHENTICATION:
            kafka = settings.kafka
            cause = (f"authentication failed ({_without_timing(text)}); check kafka.sasl_mechanism "
                     f"({kafka.sasl_mechanism}), kafka.sasl_username ({kafka.sasl_username}) and "
                     "KAFKA_SASL_PASSWORD")
            break
    if cause is None:
        for needle, what, hint in _TLS_CAUSES:
            found = next((text for text in texts if needle in text), None)
            if found is not None:
                cause = f"{what} ({_without_timing(found)}); {hint}"
                break
    if cause is None:
        return None
    for secret in settings.secret_values():  # librdkafka never echoes them; belt and braces
        cause = cause.replace(secret, "***")
    return cause


def _without_timing(text: str) -> str:
    """librdkafka's text without the trailing ``(after 3ms in state X)`` and the endpoint prefix."""
    text = text.split(" (after ", 1)[0]
    _, sep, rest = text.partition("/bootstrap: ")
    return rest if sep else text
