"""Waiting for the broker's first answer (``consumer.kafka.failures.metadata_or_refusal``), with a fake client.

The first refusal the error callback reports (authentication, TLS) ends the wait at once; anything else (a broker
not up yet) is waited for until ``kafka.startup_timeout_s``; a slow broker is still heard. The secured broker
itself is in tests/integration/test_kafka_auth_failures.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.config import load_settings
from consumer.errors import FatalError
from consumer.kafka.failures import metadata_or_refusal

REFUSED = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://b:9093/bootstrap: SASL authentication error: "
                     "Authentication failed during authentication due to invalid credentials with SASL mechanism "
                     "SCRAM-SHA-512 (after 20ms in state AUTH_REQ)")
DOWN = KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection "
                  "refused (after 0ms in state CONNECT)")


class FakeClient:
    """``list_topics`` fails (waiting its timeout) until ``answers_after_s``; ``poll`` delivers ``errors`` to
    the error callback once ``errors_after_s`` has passed."""

    def __init__(self, seen: list[KafkaError], *, errors: list[KafkaError], errors_after_s: float = 0.0,
                 answers_after_s: float | None = None, answer_takes_s: float = 0.0) -> None:
        self.seen = seen
        self.errors = errors
        self.started = time.monotonic()
        self.errors_after_s = errors_after_s
        self.answers_after_s = answers_after_s
        self.answer_takes_s = answer_takes_s
        self.requests: list[float] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.requests.append(timeout)
        elapsed = time.monotonic() - self.started
        if self.answers_after_s is not None and elapsed >= self.answers_after_s and timeout >= self.answer_takes_s:
            time.sleep(self.answer_takes_s)
            return "metadata"
        time.sleep(timeout)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport "
                                                               "failure"))

    def poll(self, _timeout: float) -> None:
        if self.errors and time.monotonic() - self.started >= self.errors_after_s:
            self.seen.extend(self.errors)
            self.errors = []


def test_the_first_refusal_ends_the_wait() -> None:
    seen: list[KafkaError] = []
    client = FakeClient(seen, errors=[DOWN, REFUSED], errors_after_s=0.1)
    started = time.monotonic()
    with pytest.raises(FatalError, match="authentication failed") as info:
        metadata_or_refusal(client, load_settings(None, environ={}), seen, timeout_s=40)
    assert time.monotonic() - started < 1.5
    assert "did not answer" not in str(info.value)


def test_a_broker_that_is_not_up_is_waited_for_until_the_timeout() -> None:
    seen: list[KafkaError] = []
    client = FakeClient(seen, errors=[DOWN])
    started = time.monotonic()
    with pytest.raises(FatalError, match=r"did not answer within 1\.2s") as info:
        metadata_or_refusal(client, load_settings(None, environ={}), seen, timeout_s=1.2)
    assert 1.2 <= time.monotonic() - started < 2.0
    assert "check kafka.bootstrap_servers" in str(info.value)


def test_a_broker_that_comes_up_and_answers_slowly_is_heard() -> None:
    """Answers taking 0.8 s: longer than the first waits, which grow until one is long enough."""
    seen: list[KafkaError] = []
    client = FakeClient(seen, errors=[DOWN], answers_after_s=0.3, answer_takes_s=0.8)
    assert metadata_or_refusal(client, load_settings(None, environ={}), seen, timeout_s=10) == "metadata"
    assert client.requests[0] < 0.8 <= client.requests[-1]
