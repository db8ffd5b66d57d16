"""The dead-letter path: park an event that cannot be delivered, with the reason, and confirm it.

A dead-letter record keeps the original key, value and headers, and adds ``dlq.*`` headers that say why
(reason code, error class, message), where it came from (source topic, partition, offset), which
destination gave up on it, and which consumer version did. It is produced with ``acks=all`` and
idempotence; the source offset is only committable once the broker has confirmed the record (the work
item it holds is released in the delivery callback). If the record cannot be written at all, the work
fails: the consumer stops committing past that event and reports it, rather than losing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer

from consumer import __version__
from consumer.errors import EventError
from consumer.pipeline.offsets import Work

log = structlog.get_logger(__name__)

MAX_MESSAGE_HEADER_BYTES = 1024


@dataclass(frozen=True)
class DeadLetter:
    """What the dead-letter topic received, as reported to callbacks and tests."""

    reason: str
    topic: str
    partition: int
    offset: int
    destination: str


def dead_letter_headers(message: Any, error: EventError, destination: str) -> list[tuple[str, bytes]]:
    """The original headers followed by the ``dlq.*`` headers describing why and from where."""
    original = list(message.headers() or [])
    text = str(error).encode("utf-8", "replace")[:MAX_MESSAGE_HEADER_BYTES]
    added = [
        ("dlq.reason", error.reason.encode()),
        ("dlq.error_class", type(error).__name__.encode()),
        ("dlq.error_message", text),
        ("dlq.source_topic", str(message.topic()).encode()),
        ("dlq.source_partition", str(message.partition()).encode()),
        ("dlq.source_offset", str(message.offset()).encode()),
        ("dlq.destination", destination.encode()),
        ("dlq.consumer_version", __version__.encode()),
        ("dlq.failed_at_ms", str(int(time.time() * 1000)).encode()),
    ]
    status = getattr(error, "status", None)
    if status is not None:
        added.append(("dlq.response_status", str(status).encode()))
        body = getattr(error, "body", "")
        if body:
            added.append(("dlq.response_body", str(body).encode("utf-8", "replace")[:MAX_MESSAGE_HEADER_BYTES]))
    return [(k, v if isinstance(v, bytes) else (v or b"")) for k, v in original] + added


class DeadLetterProducer:
    """Produces dead letters for one lane and releases their work when the broker confirms them."""

    def __init__(self, topic: str, kafka_config: dict[str, Any], *,
                 on_parked: Callable[[DeadLetter], None] | None = None) -> None:
        self.topic = topic
        self._producer: Producer | None = Producer({
            **kafka_config,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
        })
        self._on_parked = on_parked
        self.in_flight = 0
        self.failure: str | None = None
        """Set when a dead letter could not be written: the lane stops rather than lose the event."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        """Send ``message`` to the dead-letter topic; ``work`` is held until the broker confirms."""
        work.hold()
        letter = DeadLetter(error.reason, message.topic(), message.partition(), message.offset(), destination)
        log.warning("event_dead_lettered", reason=error.reason, error=str(error)[:300], destination=destination,
                    topic=letter.topic, partition=letter.partition, offset=letter.offset)

        def delivered(err: KafkaError | None, _record: Any) -> None:
            self.in_flight -= 1
            if err is not None:
                work.fail()
                detail = f"dead-letter topic {self.topic!r} could not take the event from " \
                         f"{letter.topic}[{letter.partition}]@{letter.offset}: {err}"
                log.error("dead_letter_failed", topic=letter.topic, partition=letter.partition,
                          offset=letter.offset, error=str(err))
                self.failure = self.failure or detail
                return
            work.release()
            if self._on_parked is not None:
                self._on_parked(letter)

        self.in_flight += 1
        if self._producer is None:
            raise RuntimeError("dead letters parked after close()")
        self._producer.produce(self.topic, value=message.value(), key=message.key(),
                               headers=dead_letter_headers(message, error, destination), on_delivery=delivered)

    def poll(self) -> None:
        """Serve delivery callbacks (on the poll thread, where the tracker lives)."""
        if self.in_flight and self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding dead letters; returns how many are still unconfirmed."""
        if self._producer is None:
            return self.in_flight
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for outstanding dead letters, drop the rest (their events stay uncommitted,
        so they are read again), and release the producer."""
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        if producer.flush(timeout_s):
            producer.purge()
            producer.flush(0)
        producer.close()
