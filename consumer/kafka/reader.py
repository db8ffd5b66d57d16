"""Reading bounded ranges of a topic for the operator tools, without joining a group or committing.

The tools read "from here to the end as it was when we started": the end offsets are taken once, so a
topic that keeps growing (a dead-letter topic the consumer is writing to) never keeps a tool running.
Records are copied into plain :class:`Record` objects, so nothing downstream depends on the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.config import Settings
from consumer.errors import ConfigError, FatalError
from consumer.kafka.failures import kafka_error_text, metadata_or_refusal
from consumer.kafka.source import commit_checked
from consumer.pipeline.offsets import TopicPartitionKey

OffsetRange = tuple[int, int]
"""``(first offset, end offset)``: the records ``first <= offset < end``."""


@dataclass(frozen=True)
class Record:
    """One Kafka record, copied out of the client."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (None when absent)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass
class Reader:
    """A non-committing consumer for bounded reads; close it when done (or use it as a context manager)."""

    settings: Settings
    group_id: str
    timeout_s: float = 0.0
    _consumer: Any = field(init=False, repr=False)
    _errors: list[KafkaError] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if not self.timeout_s:
            self.timeout_s = self.settings.kafka.startup_timeout_s
        # authentication and TLS failures only reach the error callback: keep them to say which it was
        self._consumer = Consumer({**client_config(self.settings, self.group_id), "error_cb": self._errors.append})

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def consumer(self) -> Any:
        return self._consumer

    def close(self) -> None:
        self._consumer.close()

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; one clear error when the broker is unreachable or the topic is missing."""
        metadata = metadata_or_refusal(self._consumer, self.settings, self._errors, self.timeout_s, topic)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise ConfigError(f"topic {topic!r} does not exist on {self.settings.kafka.bootstrap_servers}",
                              file=self.settings.source)
        return sorted(described.partitions)

    def watermarks(self, topic: str, partition: int) -> OffsetRange:
        """``(low, high)``: the first offset still held and the offset the next record will get."""
        try:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                             timeout=self.timeout_s)
        except KafkaException as exc:
            raise FatalError(f"could not read the end offsets of {topic}[{partition}]: "
                             f"{kafka_error_text(exc)}") from None
        return int(low), int(high)

    def offset_at(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is at or after ``timestamp_ms`` (None: none is)."""
        try:
            found = self._consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)],
                                                     timeout=self.timeout_s)
        except KafkaException as exc:
            raise FatalError(f"could not look up offsets by time in {topic}[{partition}]: "
                             f"{kafka_error_text(exc)}") from None
        offset = int(found[0].offset)
        return offset if offset >= 0 else None

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """This reader's group's committed next offsets (partitions with nothing committed are left out)."""
        wanted = [TopicPartition(topic, p) for p in partitions]
        try:
            result = self._consumer.committed(wanted, timeout=self.timeout_s)
        except KafkaException as exc:
            raise FatalError(f"could not read the committed offsets of group {self.group_id!r}: "
                             f"{kafka_error_text(exc)}") from None
        return {tp.partition: int(tp.offset) for tp in result if tp.offset >= 0}

    def commit(self, topic: str, offsets: dict[int, int]) -> None:
        """Commit ``{partition: next offset}`` for this reader's group, synchronously, each partition's answer
        checked (:func:`consumer.kafka.source.commit_checked`, the same call the lanes' committer makes)."""
        result = commit_checked(self._consumer, {(topic, p): o for p, o in offsets.items()})
        refused = {key: error for key, (_offset, error) in result.items() if error is not None}
        if refused:
            (_topic, partition), error = next(iter(refused.items()))
            raise FatalError(f"could not commit progress for group {self.group_id!r} "
                             f"({len(refused)} partition(s), e.g. {topic}[{partition}]): {error}")

    def read(self, ranges: dict[TopicPartitionKey, OffsetRange], *,
             keep: Callable[[Record], bool] | None = None, limit: int | None = None,
             idle_timeout_s: float | None = None) -> list[Record]:
        """Every record in ``ranges``, in offset order per partition.

        ``keep`` filters what is returned (every record is still read); the read ends once ``limit`` records
        were kept. Fails when no record arrives for ``idle_timeout_s`` while some are missing.
        """
        pending = {key: span for key, span in ranges.items() if span[0] < span[1]}
        if not pending:
            return []
        self._consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _end) in pending.items()])
        idle_s = idle_timeout_s if idle_timeout_s is not None else max(self.timeout_s, 10.0)
        records: list[Record] = []
        last_progress = time.monotonic()
        try:
            while pending:
                messages = self._consumer.consume(num_messages=500, timeout=0.2)
                if messages:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > idle_s:
                    missing = ", ".join(f"{t}[{p}] from {first} to {end}" for (t, p), (first, end) in pending.items())
                    raise FatalError(f"no records arrived for {idle_s:g}s while reading {missing}")
                for message in messages:
                    error = message.error()
                    key = (message.topic(), message.partition())
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.pop(key, None)
                            continue
                        if error.fatal() or not error.retriable():
                            raise FatalError(f"reading {key[0]}[{key[1]}] failed: {error.str()}")
                        continue
                    span = pending.get(key)
                    if span is None:
                        continue
                    offset = message.offset()
                    if offset >= span[1]:
                        pending.pop(key, None)
                        continue
                    record = copy_record(message)
                    if keep is None or keep(record):
                        records.append(record)
                        if limit is not None and len(records) >= limit:
                            return records
                    if offset >= span[1] - 1:
                        pending.pop(key, None)
        finally:
            self._consumer.unassign()
        return records


def client_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """A consumer that never commits on its own and reports the end of each partition."""
    return {
        "log_level": 0,  # connection failures surface as one clear error, not a line per retry
        **settings.kafka_client_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }


def copy_record(message: Any) -> Record:
    headers = tuple((k, v if isinstance(v, bytes) else (v or b"")) for k, v in (message.headers() or []))
    kind, stamp = message.timestamp()
    return Record(topic=message.topic(), partition=message.partition(), offset=message.offset(),
                  key=message.key(), value=message.value(), headers=headers,
                  timestamp_ms=int(stamp) if kind and stamp is not None and stamp >= 0 else None)
