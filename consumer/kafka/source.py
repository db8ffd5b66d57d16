"""The Kafka source: the module that imports the consumer, and where commit requests meet the broker.

A plain confluent-kafka loop: ``consume(num_messages=...)`` in batches, auto-commit and offset
auto-store off, cooperative-sticky rebalancing with callbacks, and pause/resume for backpressure (the member
keeps polling, so it stays in the group while paused). What to commit and when is the
:class:`~consumer.pipeline.committer.Committer`'s decision; this module sends the requests and reads every
partition's answer (:func:`commit_checked` for synchronous commits, the ``on_commit`` callback for the rest).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.config import KafkaConfig
from consumer.pipeline.committer import CommitResult, describe
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.ports import SourceCallbacks

log = structlog.get_logger(__name__)

FETCH_QUEUE_BACKOFF_MS = 10

def consumer_config(base: dict[str, Any], kafka: KafkaConfig, *, group_id: str) -> dict[str, Any]:
    """librdkafka settings for a lane's consumer: manual commits, manual offset store, bounded prefetch.

    ``classic`` groups use cooperative-sticky assignment (incremental rebalances: retained partitions keep
    flowing); ``consumer`` is KIP-848's protocol, where the broker assigns and the client must not set the
    assignment strategy or session timeout.
    """
    config = {
        # When the bounded prefetch is full, look again after 10 ms rather than librdkafka's 1 s: with large
        # events the queue fills in a fraction of a second and the default idled the lane (client_properties
        # may still set it).
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        # Names the member in the group's description (`usage-consumer status`, kafka-consumer-groups): the pod's
        # hostname, where librdkafka's default is "rdkafka" for everyone.
        "client.id": f"usage-consumer@{socket.gethostname()}",
        **base,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "enable.partition.eof": False,
        "queued.max.messages.kbytes": kafka.prefetch_max_kbytes,
        "topic.metadata.refresh.interval.ms": int(kafka.metadata_refresh_interval_s * 1000),
    }
    if kafka.group_protocol == "consumer":
        config["group.protocol"] = "consumer"
    else:
        config["partition.assignment.strategy"] = "cooperative-sticky"
        config["session.timeout.ms"] = kafka.session_timeout_ms
    return config


class KafkaSource:
    """A subscribed consumer whose rebalance and commit callbacks report (topic, partition) keys.

    ``destination`` names the lane in every log line, since each lane has a consumer of its own.
    """

    def __init__(self, config: dict[str, Any], topics: Sequence[str], callbacks: SourceCallbacks, *,
                 destination: str = "") -> None:
        self._callbacks = callbacks
        self.destination = destination
        self._consumer = Consumer({**config, "on_commit": self._committed})
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._lost)

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions_assigned", destination=self.destination, partitions=describe(keys))
        self._callbacks.on_assign(keys)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions_revoked", destination=self.destination, partitions=describe(keys))
        self._callbacks.on_revoke(keys)

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.warning("partitions_lost", destination=self.destination, partitions=describe(keys))
        self._callbacks.on_lost(keys)

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._callbacks.on_commit(commit_result(error, partitions))

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        messages: list[Any] = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        return messages

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None:
        """Ask for a commit; the broker's answer arrives in ``on_commit`` during a later ``consume``."""
        try:
            self._consumer.commit(offsets=_partitions(offsets), asynchronous=True)
        except KafkaException as exc:  # refused before it was sent (e.g. no longer in the group)
            self._callbacks.on_commit({key: (offset, _text(exc)) for key, offset in offsets.items()})

    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
        return commit_checked(self._consumer, offsets)

    def committed(self, keys: list[TopicPartitionKey], timeout_s: float) -> dict[TopicPartitionKey, int]:
        """The group's committed ``next_offset`` of ``keys`` (those with none, or on a failure, left out)."""
        if not keys:
            return {}
        try:
            found = self._consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=timeout_s)
        except KafkaException as exc:
            log.warning("committed_offsets_unknown", destination=self.destination, error=_text(exc))
            return {}
        return {(tp.topic, tp.partition): int(tp.offset) for tp in found if tp.error is None and tp.offset >= 0}

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


def commit_checked(consumer: Any, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
    """The one function that commits synchronously: ``consumer.commit`` with each partition's answer read.

    librdkafka can accept a commit request and still refuse single partitions in it, so an exception is not
    the only failure: every returned partition's own error is checked.
    """
    if not offsets:
        return {}
    try:
        answered = consumer.commit(offsets=_partitions(offsets), asynchronous=False)
    except KafkaException as exc:
        return {key: (offset, _text(exc)) for key, offset in offsets.items()}
    return commit_result(None, answered or [])


def commit_result(error: KafkaError | None, partitions: list[TopicPartition]) -> CommitResult:
    """``{(topic, partition): (next_offset, error text or None)}`` from a commit answer."""
    result: dict[TopicPartitionKey, tuple[int, str | None]] = {}
    for tp in partitions:
        failure = tp.error or error
        if failure is not None and failure.code() == KafkaError._NO_OFFSET:
            failure = None
        result[(tp.topic, tp.partition)] = (int(tp.offset), None if failure is None else failure.str())
    return result


def _partitions(offsets: dict[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, next_offset) for (topic, partition), next_offset in offsets.items()]


def _text(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
