"""What a Kafka client's failure means for the operator: the client's own text, and the cause behind a broker
that does not answer (authentication, TLS), never with a secret in it.

The start-up check, the tools' reader and ``usage-consumer ping`` all explain failures with these.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer.config import Settings
from consumer.errors import FatalError

METADATA_SLICES_S = (0.25, 0.5, 1.0, 2.0)
"""How long each metadata request of :func:`metadata_or_refusal` may take before it looks at the error callbacks
again (the last repeats): short first, since refusals come at once; longer later, so that a broker whose answers
take a while (far away, busy) is still heard."""


def kafka_error_text(exc: BaseException) -> str:
    """A KafkaException's own message, without the ``KafkaError{code=...}`` wrapping."""
    error = exc.args[0] if exc.args else exc
    return str(error.str()) if isinstance(error, KafkaError) else str(error)


def metadata_or_refusal(client: Any, settings: Settings, seen: list[KafkaError], timeout_s: float,
                        topic: str | None = None) -> Any:
    """``client.list_topics(topic)`` within ``timeout_s``, stopping at the first authentication or TLS failure.

    librdkafka reports a refused login or certificate through the error callback at once (``seen`` must be the
    list that ``error_cb`` appends to), while a metadata request would only time out: so ask in short slices and
    read the callbacks between them. Raises :func:`unreachable`'s error.
    """
    deadline = time.monotonic() + timeout_s
    for attempt in itertools.count():
        now = time.monotonic()
        wait_s = max(min(METADATA_SLICES_S[min(attempt, len(METADATA_SLICES_S) - 1)], deadline - now), 0.001)
        try:
            return client.list_topics(topic, timeout=wait_s)
        except KafkaException as exc:
            client.poll(0)  # serves error_cb
            if time.monotonic() >= deadline or kafka_failure_cause(settings, seen) is not None:
                raise unreachable(settings, seen, exc, timeout_s) from None
            time.sleep(max(0.0, now + wait_s - time.monotonic()))  # a failure at once is not a reason to spin
    raise AssertionError("unreachable")


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


_CERTIFICATE_WANTED = ("alert bad certificate", "alert certificate required")
"""What a broker that requires a client certificate answers when it got none (or one it refuses)."""
_NO_CLIENT_CERTIFICATE = (
    "the broker requires a TLS client certificate and none is configured",
    "set kafka.ssl_certificate_location and kafka.ssl_key_location (the key's password, if any, in "
    "KAFKA_SSL_KEY_PASSWORD)")
CLIENT_CERTIFICATE_PROPERTIES = ("ssl.certificate.location", "ssl.certificate.pem", "ssl.keystore.location")
"""librdkafka properties that give the client a certificate, besides ``kafka.ssl_certificate_location``."""


def has_client_certificate(settings: Settings) -> bool:
    """A TLS client certificate is configured (``kafka.ssl_certificate_location``, or ``client_properties``)."""
    kafka = settings.kafka
    return kafka.ssl_certificate_location is not None or any(
        name in kafka.client_properties for name in CLIENT_CERTIFICATE_PROPERTIES)


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
                if needle in _CERTIFICATE_WANTED and not has_client_certificate(settings):
                    what, hint = _NO_CLIENT_CERTIFICATE
                cause = f"{what} ({_without_timing(found)}); {hint}"
                break
    if cause is None:
        return None
    for secret in settings.secret_values():  # librdkafka never echoes them; belt and braces
        cause = cause.replace(secret, "***")
    return cause


_LIBRDKAFKA_CA_ADVICE = re.compile(r", verify that ssl\.ca\.location is correctly configured.*$")
"""librdkafka's own advice after a failed verification, in its property names (the hint names ours)."""


def _without_timing(text: str) -> str:
    """librdkafka's text without the trailing ``(after 3ms in state X)``, the endpoint prefix and its advice."""
    text = _LIBRDKAFKA_CA_ADVICE.sub("", text.split(" (after ", 1)[0])
    _, sep, rest = text.partition("/bootstrap: ")
    return rest if sep else text
