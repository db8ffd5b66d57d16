"""The Kafka source: the only module that imports the consumer, and the one place that commits.

A plain confluent-kafka loop: ``consume(num_messages=...)`` in batches, auto-commit and offset
auto-store off, explicit commits of the offsets the tracker says are safe, cooperative-sticky
rebalancing with callbacks, and pause/resume for backpressure (the member keeps polling, so it stays in
the group while paused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.config import KafkaConfig
from consumer.offsets import TopicPartitionKey

log = structlog.get_logger(__name__)

RebalanceCallback = Callable[[list[TopicPartitionKey]], None]


class MessageSource(Protocol):
    """What a lane needs from Kafka; tests may supply their own."""

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]: ...
    def commit(self, offsets: dict[TopicPartitionKey, int], *, asynchronous: bool) -> bool: ...
    def pause(self, keys: Iterable[TopicPartitionKey]) -> None: ...
    def resume(self, keys: Iterable[TopicPartitionKey]) -> None: ...
    def assignment(self) -> list[TopicPartitionKey]: ...
    def high_watermark(self, key: TopicPartitionKey) -> int | None: ...
    def close(self) -> None: ...


def consumer_config(base: dict[str, Any], kafka: KafkaConfig, *, group_id: str) -> dict[str, Any]:
    """librdkafka settings for a lane's consumer: manual commits, manual offset store, bounded prefetch.

    ``classic`` groups use cooperative-sticky assignment (incremental rebalances: retained partitions keep
    flowing); ``consumer`` is KIP-848's protocol, where the broker assigns and the client must not set the
    assignment strategy or session timeout.
    """
    config = {
        **base,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "enable.partition.eof": False,
        "queued.max.messages.kbytes": kafka.prefetch_max_kbytes,
    }
    if kafka.group_protocol == "consumer":
        config["group.protocol"] = "consumer"
    else:
        config["partition.assignment.strategy"] = "cooperative-sticky"
        config["session.timeout.ms"] = kafka.session_timeout_ms
    return config


class KafkaSource:
    """A subscribed consumer with rebalance callbacks that report (topic, partition) keys."""

    def __init__(self, config: dict[str, Any], topics: Sequence[str], *, on_assign: RebalanceCallback,
                 on_revoke: RebalanceCallback, on_lost: RebalanceCallback) -> None:
        self._consumer = Consumer(config)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._lost)

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions_assigned", partitions=_describe(keys))
        self._on_assign(keys)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions_revoked", partitions=_describe(keys))
        self._on_revoke(keys)

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.warning("partitions_lost", partitions=_describe(keys))
        self._on_lost(keys)

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        messages: list[Any] = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        return messages

    def commit(self, offsets: dict[TopicPartitionKey, int], *, asynchronous: bool) -> bool:
        """The one function that commits offsets (``next_offset`` values, as Kafka expects).

        Returns False when the commit failed (broker unreachable, rebalance in progress): nothing is
        lost, the same or a later offset is committed next time, and at-least-once still holds.
        """
        if not offsets:
            return True
        partitions = [TopicPartition(topic, partition, next_offset)
                      for (topic, partition), next_offset in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=asynchronous)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code == KafkaError._NO_OFFSET:
                return True
            log.warning("commit_failed", error=str(exc), asynchronous=asynchronous,
                        partitions=_describe(list(offsets)))
            return False
        log.debug("offsets_committed", offsets={f"{t}[{p}]": o for (t, p), o in offsets.items()},
                  asynchronous=asynchronous)
        return True

    def pause(self, keys: Iterable[TopicPartitionKey]) -> None:
        partitions = [TopicPartition(t, p) for t, p in keys]
        if partitions:
            self._consumer.pause(partitions)

    def resume(self, keys: Iterable[TopicPartitionKey]) -> None:
        partitions = [TopicPartition(t, p) for t, p in keys]
        if partitions:
            self._consumer.resume(partitions)

    def assignment(self) -> list[TopicPartitionKey]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        """The partition's end offset as last seen in fetch responses (no broker round trip)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
        except KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    def close(self) -> None:
        """Leave the group (a prompt rebalance for the others) and release the client."""
        self._consumer.close()


def _describe(keys: list[TopicPartitionKey]) -> str:
    return ",".join(f"{t}[{p}]" for t, p in sorted(keys))
