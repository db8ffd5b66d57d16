"""What the broker knows about the lanes' consumer groups, read without ever joining or committing for them.

``usage-consumer status`` asks four questions, each answered by the cheapest call that cannot disturb a
running group:

- **who is in the group**: ``AdminClient.describe_consumer_groups`` (state, members, assignments);
- **where the group is**: ``Consumer.committed`` on a consumer that carries the group's id but never
  subscribes, so it never joins, never triggers a rebalance and (auto-commit off) never commits. Not the
  admin ``list_consumer_group_offsets``: librdkafka's admin client dereferences a missing group handle when
  the coordinator answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS (confluentinc/librdkafka#5040)
  and takes the process down, which a moving coordinator, exactly when an operator looks, would trigger;
- **where the topic ends**: ``Consumer.get_watermark_offsets`` per partition;
- **how old the next unconsumed record is**: one throwaway consumer with a group id of its own, *assigned*
  (never subscribed) to each partition's exact next offset, reads one record per partition for its timestamp.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.config import Settings, is_topic_pattern
from consumer.errors import ConfigError, FatalError
from consumer.kafka.failures import kafka_error_text, metadata_or_refusal
from consumer.kafka.reader import client_config
from consumer.pipeline.offsets import TopicPartitionKey

PROBE_SETTINGS = {
    "fetch.message.max.bytes": 4096,
    "queued.min.messages": 1,
    "fetch.wait.max.ms": 10,
    "fetch.queue.backoff.ms": 10,
}
"""The throwaway consumer wants one record per partition, not the backlog behind it: small fetches (the broker
still returns at least one whole record batch, so a large record is never cut) and no prefetch beyond one
message. With a queue that small librdkafka's default 1 s back-off after a full queue, and its 500 ms fetch
wait, would make every re-assignment (each ``--watch`` refresh) take a second; 10 ms each keeps it at a few
round trips."""

COORDINATOR_BUSY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                    KafkaError.COORDINATOR_NOT_AVAILABLE}
COORDINATOR_RETRY_S = 0.2


@dataclass(frozen=True)
class GroupMember:
    """One member of a consumer group as the coordinator describes it."""

    client_id: str
    host: str
    member_id: str
    assigned: tuple[TopicPartitionKey, ...]


@dataclass(frozen=True)
class GroupDescription:
    """A consumer group's state (``stable``, ``empty``, ``dead``, ``preparing_rebalancing``...) and members."""

    group: str
    state: str
    members: tuple[GroupMember, ...] = ()
    coordinator: str | None = None
    error: str | None = None
    """Why the group could not be described (then ``state`` is ``unknown``)."""

    def owner_of(self, key: TopicPartitionKey) -> GroupMember | None:
        return next((member for member in self.members if key in member.assigned), None)


@dataclass(frozen=True)
class NextRecord:
    """The first record at or after a partition's next offset: where it is and when Kafka stamped it."""

    offset: int
    timestamp_ms: int | None


class GroupInspector:
    """The clients ``status`` needs, opened once and reused across ``--watch`` refreshes; close it when done."""

    def __init__(self, settings: Settings, *, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._errors: list[KafkaError] = []  # authentication and TLS failures only reach the error callback
        self.own_group = f"{settings.kafka.group_id}.status-{uuid.uuid4().hex[:8]}"
        """The throwaway consumer's group: unique, never joined, never committed to."""
        self._probe = Consumer({**client_config(settings, self.own_group), **PROBE_SETTINGS,
                                "error_cb": self._errors.append})
        self._admin: AdminClient | None = None
        self._offset_readers: dict[str, Consumer] = {}

    def __enter__(self) -> GroupInspector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for reader in self._offset_readers.values():
            reader.close()
        self._offset_readers.clear()
        self._probe.close()

    # ---------------------------------------------------------------------------------- the topics

    def partitions(self, topics: Iterable[str]) -> list[TopicPartitionKey]:
        """Every partition of ``topics`` (names, and ``^`` patterns matched against the cluster's topics), in
        order. One clear error when the broker does not answer, or a named topic does not exist."""
        metadata = metadata_or_refusal(self._probe, self.settings, self._errors, self.timeout_s)
        found: dict[TopicPartitionKey, None] = {}  # ordered, each partition once (a name may match two patterns)
        for topic in topics:
            if is_topic_pattern(topic):  # what the lanes' subscription matches now (internal topics never)
                names = sorted(name for name in metadata.topics
                               if re.search(topic, name) and not name.startswith("__"))
            else:
                described = metadata.topics.get(topic)
                if described is None or described.error is not None or not described.partitions:
                    raise ConfigError(f"topic {topic!r} does not exist on {self.settings.kafka.bootstrap_servers}",
                                      file=self.settings.source)
                names = [topic]
            for name in names:
                found.update(dict.fromkeys((name, partition) for partition in sorted(metadata.topics[name].partitions)))
        return list(found)

    def watermarks(self, keys: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, tuple[int, int]]:
        """Per partition ``(earliest offset still held, end offset)``; the end is the high watermark (the last
        stable offset for the ``read_committed`` lanes: what they can read)."""
        marks = {}
        for topic, partition in keys:
            try:
                low, high = self._probe.get_watermark_offsets(TopicPartition(topic, partition),
                                                              timeout=self.timeout_s)
            except KafkaException as exc:
                raise FatalError(f"could not read the end offsets of {topic}[{partition}] from "
                                 f"{self.settings.kafka.bootstrap_servers}: {kafka_error_text(exc)}") from None
            marks[(topic, partition)] = (int(low), int(high))
        return marks

    # ---------------------------------------------------------------------------------- the groups

    def describe(self, groups: Iterable[str]) -> dict[str, GroupDescription]:
        """Each group's state and members. A coordinator that is moving or still loading is asked again until
        the timeout; a group it still cannot describe is ``unknown``, with why."""
        pending = list(dict.fromkeys(groups))
        if self._admin is None:
            self._admin = AdminClient({"log_level": 0, **self.settings.kafka_client_config()})
        described: dict[str, GroupDescription] = {}
        deadline = time.monotonic() + self.timeout_s
        while pending:
            futures = self._admin.describe_consumer_groups(pending, request_timeout=self.timeout_s)
            again = []
            for group in pending:
                try:
                    described[group] = describe_group(group, futures[group].result(timeout=self.timeout_s + 5))
                except KafkaException as exc:
                    described[group] = GroupDescription(group, "unknown", error=error_name_and_text(exc))
                    if coordinator_busy(exc) and time.monotonic() < deadline:
                        again.append(group)
                except Exception as exc:  # a future that never settled: say so, show the rest
                    described[group] = GroupDescription(group, "unknown", error=f"{type(exc).__name__}: {exc}")
            pending = again
            if pending:
                time.sleep(COORDINATOR_RETRY_S)
        return described

    def committed(self, group: str, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The group's committed next offsets (partitions with nothing committed are left out), read with a
        consumer of the group's id that never subscribes (so it never joins) and never commits."""
        if not keys:
            return {}
        reader = self._offset_readers.get(group)
        if reader is None:
            reader = Consumer({**client_config(self.settings, group), "error_cb": self._errors.append})
            self._offset_readers[group] = reader
        wanted = [TopicPartition(t, p) for t, p in keys]
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                found = reader.committed(wanted, timeout=self.timeout_s)
            except KafkaException as exc:
                if coordinator_busy(exc) and time.monotonic() < deadline:  # moving or loading: answers soon
                    time.sleep(COORDINATOR_RETRY_S)
                    continue
                raise FatalError(f"could not read the committed offsets of group {group!r} from "
                                 f"{self.settings.kafka.bootstrap_servers}: {kafka_error_text(exc)}") from None
            return {(tp.topic, tp.partition): int(tp.offset) for tp in found
                    if tp.error is None and tp.offset >= 0}

    # ----------------------------------------------------------------------------- the next record

    def next_records(self, spans: dict[TopicPartitionKey, tuple[int, int]]) -> dict[TopicPartitionKey, NextRecord]:
        """For each partition's ``(next offset, end offset)``, the first record at or after the next offset
        (there may be none at that exact offset: compaction, transaction markers). Partitions with nothing
        to read, or whose record did not arrive within the timeout, are left out."""
        pending = {key: span for key, span in spans.items() if span[0] < span[1]}
        if not pending:
            return {}
        found: dict[TopicPartitionKey, NextRecord] = {}
        self._probe.assign([TopicPartition(t, p, first) for (t, p), (first, _end) in pending.items()])
        deadline = time.monotonic() + self.timeout_s
        try:
            while pending and time.monotonic() < deadline:
                for message in self._probe.consume(num_messages=len(pending), timeout=0.2):
                    key = (message.topic(), message.partition())
                    if key not in pending:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.pop(key)  # nothing readable before the end (markers only)
                        elif error.fatal() or not error.retriable():
                            raise FatalError(f"reading {key[0]}[{key[1]}] failed: {error.str()}")
                        continue
                    offset = int(message.offset())
                    if offset >= pending[key][1]:
                        pending.pop(key)
                        continue
                    found[key] = NextRecord(offset, record_timestamp_ms(message))
                    pending.pop(key)
        finally:
            self._probe.unassign()
        return found


def describe_group(group: str, description: Any) -> GroupDescription:
    """A :class:`GroupDescription` from the admin client's ``ConsumerGroupDescription``."""
    members = []
    for member in description.members or ():
        assignment = getattr(member, "assignment", None)
        partitions = assignment.topic_partitions if assignment is not None else []
        members.append(GroupMember(client_id=member.client_id, host=member.host, member_id=member.member_id,
                                   assigned=tuple(sorted((tp.topic, tp.partition) for tp in partitions))))
    state = getattr(description.state, "name", str(description.state)).lower()
    node = description.coordinator
    coordinator = f"{node.host}:{node.port}" if node is not None else None
    return GroupDescription(group, state, tuple(sorted(members, key=lambda m: (m.client_id, m.member_id))),
                            coordinator)


def coordinator_busy(exc: KafkaException) -> bool:
    """The group's coordinator is moving or loading (it answers soon), or the client says to retry."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in COORDINATOR_BUSY)


def error_name_and_text(exc: KafkaException) -> str:
    """``NOT_COORDINATOR: ConsumerGroupDescribe``: the code's name first, since some texts are empty."""
    error = exc.args[0] if exc.args else None
    text = kafka_error_text(exc).strip().rstrip(":")
    if not isinstance(error, KafkaError):
        return text
    return f"{error.name()}: {text}" if text else str(error.name())


def record_timestamp_ms(message: Any) -> int | None:
    """The record's Kafka timestamp (create or log-append time), None when it carries none."""
    kind, stamp = message.timestamp()
    return int(stamp) if kind and stamp is not None and stamp >= 0 else None
