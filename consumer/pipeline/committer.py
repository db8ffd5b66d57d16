"""The committer: the one place that decides when offsets are committed, and the one that believes a commit.

An offset counts as committed only when the broker confirmed it. Asynchronous commits are checked in the
consumer's commit callback, partition by partition; a refused one (a rebalance in progress, a coordinator
moving, a broker restarting) is sent again after a short backoff. Synchronous commits (revocation, shutdown)
are checked the same way before they return. ``confirmed`` is therefore what the broker holds for this
member's partitions, and it is what ``/metrics`` reports.

Commits go out as soon as a partition's finished prefix advances, one request at a time: whatever finishes
while a request is out is coalesced into the next one. A crash re-delivers only the batches in flight plus
one round trip, not a fixed commit interval's worth.

It commits only for partitions this member owns (assigned and not yet revoked or lost), and nothing at all
once halted (after a fatal error or an internal one): what was not committed is re-delivered to the next
owner, which is at-least-once, never loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog

from consumer.pipeline.offsets import OffsetTracker, TopicPartitionKey

log = structlog.get_logger(__name__)

CommitResult = Mapping[TopicPartitionKey, tuple[int, str | None]]
"""What the broker answered, per partition: ``(next_offset, error text or None)``."""


class CommitTarget(Protocol):
    """The Kafka side of a commit (:class:`~consumer.kafka.source.KafkaSource`); answers reach ``Committer.confirm``."""

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None: ...
    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult: ...


class Committer:
    """Commits one lane's finished prefixes and keeps the broker-confirmed offsets."""

    def __init__(self, tracker: OffsetTracker, *, destination: str = "", clock: Callable[[], float],
                 retry_backoff_s: tuple[float, float] = (0.2, 5.0), answer_timeout_s: float = 60.0) -> None:
        self.tracker = tracker
        self.destination = destination
        self.clock = clock
        self.confirmed: dict[TopicPartitionKey, int] = {}
        """Broker-confirmed ``next_offset`` per owned partition (known from assignment or our own commits)."""
        self.refused = 0
        """Commit answers that refused at least one partition (each is retried)."""
        self.last_confirmed_at = clock()
        """When (on ``clock``) the broker last confirmed a commit of ours; the start until the first."""
        self.halted: str | None = None
        self._target: CommitTarget | None = None
        self._outstanding: dict[TopicPartitionKey, int] | None = None
        self._sent_at = 0.0
        self._retry_at = 0.0
        self._backoff_s = retry_backoff_s
        self._delay_s = retry_backoff_s[0]
        self._answer_timeout_s = answer_timeout_s

    # ------------------------------------------------------------------------------ ownership

    def bind(self, target: CommitTarget) -> None:
        """Commit through ``target`` from now on (a replaced consumer owns nothing yet)."""
        self._target = target
        self._outstanding = None

    def assigned(self, keys: Iterable[TopicPartitionKey], committed: Mapping[TopicPartitionKey, int]) -> None:
        """This member owns ``keys`` now (the tracker holds what is owned); ``committed`` is what the group held
        for them (when known)."""
        for key in keys:
            self.tracker.assign(key)
            if key in committed:
                self.confirmed[key] = committed[key]

    def released(self, keys: Iterable[TopicPartitionKey]) -> None:
        """Revoked or lost: never commit for them again, and forget their work."""
        for key in keys:
            self.confirmed.pop(key, None)
            self.tracker.forget(key)

    def owns(self, key: TopicPartitionKey) -> bool:
        return self.tracker.owns(key)

    @property
    def owned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self.tracker.owned())

    def halt(self, reason: str) -> None:
        """Commit nothing more, whatever finishes later."""
        if self.halted is None:
            self.halted = reason

    # ------------------------------------------------------------------------------ commits

    def due(self, keys: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Owned partitions whose finished prefix is past what the broker confirmed."""
        wanted = None if keys is None else set(keys)
        return {key: next_offset for key, next_offset in self.tracker.committable().items()
                if (wanted is None or key in wanted) and next_offset > self.confirmed.get(key, -1)}

    def poll(self) -> None:
        """Send an asynchronous commit of what advanced, unless one is out or a retry is not due yet."""
        if self.halted is not None or self._target is None:
            return
        now = self.clock()
        if self._outstanding is not None:
            if now - self._sent_at < self._answer_timeout_s:
                return
            log.warning("commit_unanswered", destination=self.destination, waited_s=round(now - self._sent_at, 1),
                        partitions=describe(self._outstanding))
            self._outstanding = None
        if now < self._retry_at:
            return
        offsets = self.due()
        if offsets:
            self._outstanding = offsets
            self._sent_at = now
            self._target.commit_async(offsets)

    def confirm(self, result: CommitResult) -> None:
        """The broker's answer to a commit (asynchronous or not): believe only what it confirmed."""
        refused = {}
        for key, (next_offset, error) in result.items():
            if not self.tracker.owns(key):
                continue
            if error is None:
                self.last_confirmed_at = self.clock()
                if next_offset > self.confirmed.get(key, -1):
                    self.confirmed[key] = next_offset
            else:
                refused[key] = error
        outstanding = self._outstanding
        if outstanding is not None and all(result.get(k, (None,))[0] == v for k, v in outstanding.items()):
            self._outstanding = None
        if refused:
            self.refused += 1
            delay = self._delay_s
            self._retry_at = self.clock() + delay
            self._delay_s = min(self._delay_s * 2, self._backoff_s[1])
            log.warning("commit_refused", destination=self.destination, retry_in_s=round(delay, 2),
                        partitions=describe(refused), error=next(iter(refused.values())))
        elif outstanding is not None and self._outstanding is None:
            self._delay_s = self._backoff_s[0]

    def commit_now(self, keys: Iterable[TopicPartitionKey] | None = None) -> bool:
        """Commit synchronously what is due for ``keys`` (None: every owned partition), checked per partition.

        Returns whether the broker holds every finished prefix asked for. Used at revocation and shutdown.
        """
        if self.halted is not None or self._target is None:
            return False
        offsets = self.due(keys)
        if not offsets:
            return True
        result = self._target.commit_sync(offsets)
        self.confirm(result)
        missing = {key: off for key, off in offsets.items() if self.confirmed.get(key, -1) < off}
        if missing:
            log.warning("commit_failed", destination=self.destination, partitions=describe(missing))
            return False
        log.debug("offsets_committed", destination=self.destination, offsets=describe(offsets))
        return True


def describe(offsets: Mapping[TopicPartitionKey, object] | Iterable[TopicPartitionKey]) -> str:
    """``topic[0]@12,topic[1]@40`` (or ``topic[0],topic[1]`` for bare keys), sorted, for log lines."""
    if isinstance(offsets, Mapping):
        return ",".join(f"{t}[{p}]@{v}" if isinstance(v, int) else f"{t}[{p}]"
                        for (t, p), v in sorted(offsets.items()))
    return ",".join(f"{t}[{p}]" for t, p in sorted(offsets))
