"""Parts built by hand for tests: Kafka messages (the client's own ``Message`` type, so a test cannot rely on a
method the real one lacks) and batches for the sinks (the lane builds its own with
:class:`~consumer.pipeline.batcher.Batcher`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from consumer.pipeline.batcher import Batch
from consumer.pipeline.offsets import Work


def ndjson_batch(body: bytes, events: int) -> Batch:
    """A Freshsuccess batch: ``body`` is the NDJSON request body holding ``events`` lines."""
    return Batch("freshsuccess", Work(), 0.0, events=events, body=bytearray(body))


def events_batch(outputs: Sequence[dict[str, Any]], sources: Sequence[Any] = ()) -> Batch:
    """A Freshpaint batch of ``outputs`` (one request each); ``sources`` are the messages they came from."""
    return Batch("freshpaint", Work(), 0.0, events=len(outputs), outputs=list(outputs), sources=list(sources))


def kafka_message(topic: str, partition: int, offset: int, value: bytes | None, *, key: bytes | None = None,
                  headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> Any:
    """A consumed record as librdkafka hands it over (``confluent_kafka.Message``), without a broker;
    ``timestamp_ms``: its CreateTime (none by default, as for a record without one)."""
    if timestamp_ms is None:
        return Message(topic=topic, partition=partition, offset=offset, key=key, value=value, headers=headers)
    return Message(topic=topic, partition=partition, offset=offset, key=key, value=value, headers=headers,
                   timestamp=(TIMESTAMP_CREATE_TIME, timestamp_ms))
