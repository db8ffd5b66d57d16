"""What the pipeline needs from Kafka, as protocols: :mod:`consumer.kafka.source` implements them, tests
supply their own, and the pipeline never imports the Kafka client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consumer.pipeline.committer import CommitResult
from consumer.pipeline.offsets import TopicPartitionKey

RebalanceCallback = Callable[[list[TopicPartitionKey]], None]
CommitCallback = Callable[[CommitResult], None]


class MessageSource(Protocol):
    """What a lane needs from Kafka; tests may supply their own.

    Commits are the :class:`~consumer.pipeline.committer.Committer`'s: ``commit_async`` answers through the
    ``on_commit`` callback the source was built with, ``commit_sync`` returns the answer.
    """

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]: ...
    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None: ...
    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult: ...
    def committed(self, keys: list[TopicPartitionKey], timeout_s: float) -> dict[TopicPartitionKey, int]: ...
    def pause(self, keys: Iterable[TopicPartitionKey]) -> None: ...
    def resume(self, keys: Iterable[TopicPartitionKey]) -> None: ...
    def assignment(self) -> list[TopicPartitionKey]: ...
    def high_watermark(self, key: TopicPartitionKey) -> int | None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceCallbacks:
    """What a source reports back to its lane, on the poll thread (from within ``consume``)."""

    on_assign: RebalanceCallback
    on_revoke: RebalanceCallback
    on_lost: RebalanceCallback
    on_commit: CommitCallback
