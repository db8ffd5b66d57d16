"""When it is safe to commit: the per-partition contiguous low-watermark of finished work.

Every consumed message is tracked against exactly one :class:`Work` item: the batch that carries its
outputs, the dead-letter produce that parks it, or :data:`NOTHING_TO_DO` when no rule selects it. A work
item is *done* once every hold on it has been released (the batch was accepted, the dead letter confirmed).
A partition's committable ``next_offset`` is one past the last message of the longest done prefix, so a
committed offset never passes a message that was neither delivered nor dead-lettered, whatever order the
work completes in.

Consecutive messages of one partition that share a work item are kept as one segment, so the per-message
cost is a comparison and an integer store. Everything here runs on the poll thread: no locks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

TopicPartitionKey = tuple[str, int]


class Timestamped(Protocol):
    """A consumed record's Kafka timestamp, as ``confluent_kafka.Message.timestamp()`` gives it."""

    def timestamp(self) -> tuple[int, int]: ...


class Work:
    """Something that must finish before the messages tracked against it may be committed."""

    __slots__ = ("description", "failed", "pending")

    def __init__(self, description: str = "", *, holds: int = 1) -> None:
        self.description = description
        self.pending = holds
        self.failed = False

    def hold(self, count: int = 1) -> None:
        self.pending += count

    def release(self) -> None:
        if self.pending <= 0:
            raise RuntimeError(f"work {self.description!r} released more often than held")
        self.pending -= 1

    def fail(self) -> None:
        """Mark the work as never finishing (its messages must not be committed past)."""
        self.failed = True

    @property
    def done(self) -> bool:
        return self.pending == 0 and not self.failed

    def __repr__(self) -> str:
        return f"Work({self.description!r}, pending={self.pending}, failed={self.failed})"


NOTHING_TO_DO = Work("nothing to do", holds=0)
"""For messages no rule selects: done from the start, counted as skipped by the caller."""


@dataclass
class _Segment:
    work: Work
    last_offset: int
    first_timestamp_ms: int = -1
    """Kafka timestamp of the segment's first record (-1: unknown), for the age of the oldest unfinished one."""


@dataclass
class _PartitionState:
    segments: deque[_Segment] = field(default_factory=deque)
    next_offset: int | None = None
    """One past the last finished message of the done prefix: what may be committed."""
    last_tracked: int = -1


def kafka_timestamp_ms(record: Timestamped | None) -> int:
    """The record's Kafka timestamp in ms, or -1 when it has none."""
    if record is None:
        return -1
    kind, timestamp_ms = record.timestamp()
    return timestamp_ms if kind else -1  # kind 0: TIMESTAMP_NOT_AVAILABLE


class OffsetTracker:
    """Tracks consumed offsets per partition and yields the offsets that are safe to commit."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, _PartitionState] = {}

    def assign(self, key: TopicPartitionKey) -> None:
        self._partitions.setdefault(key, _PartitionState())

    def forget(self, key: TopicPartitionKey) -> None:
        """Drop a revoked partition: nothing is ever committed for it again by this member."""
        self._partitions.pop(key, None)

    def owned(self) -> list[TopicPartitionKey]:
        return list(self._partitions)

    def owns(self, key: TopicPartitionKey) -> bool:
        return key in self._partitions

    def track(self, key: TopicPartitionKey, offset: int, work: Work, record: Timestamped | None = None) -> None:
        """Record that the message at ``offset`` finishes when ``work`` does. Offsets arrive in order.

        ``record`` (the message) is asked for its timestamp only when it opens a segment: the first record of
        each segment is all :meth:`oldest_unfinished_ms` needs. Only assigned partitions are tracked: a record of
        any other is a caller's bug (``KeyError``).
        """
        state = self._partitions[key]
        if offset <= state.last_tracked:
            raise ValueError(f"offset {offset} of {key} tracked after {state.last_tracked}")
        state.last_tracked = offset
        segments = state.segments
        if segments and segments[-1].work is work:
            segments[-1].last_offset = offset
        else:
            segments.append(_Segment(work, offset, kafka_timestamp_ms(record)))

    def _advance(self, state: _PartitionState) -> None:
        segments = state.segments
        while segments and segments[0].work.done:
            state.next_offset = segments.popleft().last_offset + 1

    def committable(self) -> dict[TopicPartitionKey, int]:
        """``next_offset`` of every partition with a finished prefix (the committer knows what is new)."""
        ready: dict[TopicPartitionKey, int] = {}
        for key, state in self._partitions.items():
            self._advance(state)
            if state.next_offset is not None:
                ready[key] = state.next_offset
        return ready

    def pending_messages(self, key: TopicPartitionKey) -> bool:
        """Whether any tracked message of the partition is not finished yet."""
        state = self._partitions.get(key)
        if state is None:
            return False
        self._advance(state)
        return bool(state.segments)

    def oldest_unfinished_ms(self) -> dict[TopicPartitionKey, int]:
        """Per partition with unfinished messages, the Kafka timestamp (ms) of the oldest (when known)."""
        oldest: dict[TopicPartitionKey, int] = {}
        for key, state in self._partitions.items():
            self._advance(state)
            if state.segments and state.segments[0].first_timestamp_ms >= 0:
                oldest[key] = state.segments[0].first_timestamp_ms
        return oldest

    def unfinished(self) -> int:
        """How many partitions still wait on some work (for shutdown and revocation)."""
        return sum(1 for key in self._partitions if self.pending_messages(key))
