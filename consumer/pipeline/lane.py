"""A lane: one destination's pipeline, from its own consumer group to its own committed offsets.

Read top to bottom, one iteration of :meth:`Lane.step` is::

    collect finished deliveries              (release their work)
    commit what they finished                (committer: asynchronous, confirmed by the broker)
    consume a batch of messages              (source: the lane's own consumer)
      -> decide each one                     (verdict: size, decode, map, serialize)
      -> add its outputs to the open batch   (batcher), or park it (dead letters), or skip it
    submit closed batches to the sink        (delivery thread: compression + HTTP)

Each destination gets a lane of its own (its own consumer group by default), so an outage of one
destination pauses only its lane: the other keeps delivering and committing. A lane never commits past
a message whose outputs were neither accepted nor dead-lettered; after a fatal error (e.g. Freshsuccess
answered 400) or an internal one it commits nothing further and stops.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

from consumer.config import BatchingConfig, CommitConfig, KafkaConfig, RetryConfig
from consumer.errors import EventError, FatalError, Rejected, TransientError
from consumer.observability.metrics import AgeHistogram, LaneSnapshot, Metrics
from consumer.pipeline.batcher import Batch, Batcher
from consumer.pipeline.committer import CommitResult, Committer
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.offsets import NOTHING_TO_DO, OffsetTracker, TopicPartitionKey, Work, kafka_timestamp_ms
from consumer.pipeline.ports import MessageSource, SourceCallbacks
from consumer.pipeline.verdict import PARK, SEND, SKIP, WAIT, Decides, tallies_by_stream

__all__ = ["DeadLetters", "Lane", "LaneSettings", "LaneStats", "Sink", "SourceFactory"]

log = structlog.get_logger(__name__)

_WAIT_SLICE_S = 0.05
"""While finishing work (revocation, shutdown): the longest single wait before the lane checks again."""


class DeadLetters(Protocol):
    """Where undeliverable events are parked (:class:`~consumer.kafka.deadletter.DeadLetterProducer`)."""

    failure: str | None
    """Set once a dead letter could not be written; the lane then stops."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None: ...
    def poll(self) -> None: ...
    def flush(self, timeout_s: float) -> int: ...
    def close(self, timeout_s: float = 5.0) -> None: ...


class Sink(Protocol):
    """A destination's HTTP client (:mod:`consumer.sinks`): writes a closed batch, returns the outputs it
    rejected for good."""

    name: str
    ndjson: bool
    """True when batches are built as an NDJSON body (Freshsuccess), False for one request per output."""

    @property
    def state(self) -> str:
        """``ok``, ``retrying`` or ``bad_credentials``, for health and metrics."""

    @property
    def throttled_s(self) -> float:
        """Time its requests waited for a rate cap so far (0 without one), for metrics."""

    def write(self, batch: Batch) -> Coroutine[Any, Any, list[tuple[int, Rejected]]]: ...


SourceFactory = Callable[[SourceCallbacks], MessageSource]
"""Builds the lane's source, reporting rebalances and commit answers to the given callbacks."""


def _default(section: type[BaseModel], key: str) -> Any:
    """The configuration's own default (``consumer/config.py`` is the one place defaults are written)."""
    return section.model_fields[key].default


@dataclass(frozen=True)
class LaneSettings:
    """What one lane needs from the configuration (:func:`consumer.app.build.lane_settings` fills it in); the
    defaults are the configuration's."""

    consume_batch_size: int = _default(KafkaConfig, "consume_batch_size")
    consume_timeout_s: float = _default(KafkaConfig, "consume_timeout_s")
    max_events: int = _default(BatchingConfig, "max_events")
    max_bytes: int = _default(BatchingConfig, "max_bytes")
    max_wait_s: float = _default(BatchingConfig, "max_wait_s")
    max_in_flight_batches: int = _default(BatchingConfig, "max_in_flight_batches")
    revoke_timeout_s: float = _default(KafkaConfig, "revocation_timeout_s")
    progress_interval_s: float = 10.0
    rejoin_timeout_s: float = _default(KafkaConfig, "session_timeout_ms") / 1000
    replaced_close_timeout_s: float = 5.0
    """How long a replaced consumer's ``close`` may take before it is left to finish on its own thread
    (librdkafka's close can hang on a coordinator that went away)."""
    """After partitions are lost, a consumer that has not been through a rebalance (no assignment callback,
    even an empty one) for this long is replaced by a new one: librdkafka can stay out of its group after a
    session timeout across a broker restart. One session timeout."""
    transient_backoff_s: tuple[float, float] = (_default(RetryConfig, "initial_backoff_s"),
                                                _default(RetryConfig, "max_backoff_s"))
    commit_retry_backoff_s: tuple[float, float] = (_default(CommitConfig, "retry_initial_backoff_s"),
                                                   _default(CommitConfig, "retry_max_backoff_s"))
    """Waits before a refused commit is sent again (doubling up to the second value)."""
    commit_answer_timeout_s: float = _default(CommitConfig, "answer_timeout_s")
    """A commit unanswered for this long is sent again."""
    committed_lookup_timeout_s: float = 5.0
    """At assignment, how long to wait for the group's committed offsets of the new partitions (metrics, lag)."""
    pause_after_s: float = 1.0
    """How long a lane whose in-flight slots are all taken (and its next batch full) waits for a delivery before
    it pauses its partitions. Pausing makes librdkafka drop what it has prefetched for them, to be fetched again
    after resume, so a lane only briefly full waits instead (not consuming; rebalance callbacks wait as long)."""


@dataclass
class LaneStats:
    """What a lane did; read by the demo's summary, the tests and the metrics endpoint."""

    consumed: int = 0
    delivered_messages: int = 0
    delivered_events: int = 0
    batches_delivered: int = 0
    skipped: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    transient_failures: int = 0
    commits_refused: int = 0
    committed: dict[TopicPartitionKey, int] = field(default_factory=dict)
    """Broker-confirmed ``next_offset`` per owned partition (the committer's own record)."""
    lag: dict[TopicPartitionKey, int] = field(default_factory=dict)
    """High watermark minus committed offset, refreshed about once a second."""
    oldest_unfinished_ms: dict[TopicPartitionKey, int] = field(default_factory=dict)
    """Kafka timestamp of the oldest record consumed and not yet finished, per partition; refreshed with ``lag``."""
    event_ages: AgeHistogram = field(default_factory=AgeHistogram)


class Lane:
    """Consumes for one destination and commits only what that destination has taken."""

    def __init__(self, *, sink: Sink, source_factory: SourceFactory, judge: Decides,
                 dead_letters: DeadLetters, delivery: Delivery, settings: LaneSettings = LaneSettings(),
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``clock`` times the lane's own work (batch age, deadlines); ``wall_clock`` is compared with Kafka
        timestamps and event times (lag in seconds, event age)."""
        self.name = sink.name
        self.wall_clock = wall_clock
        self.sink = sink
        self.judge = judge
        self.dead_letters = dead_letters
        self.delivery = delivery
        self.settings = settings
        self.clock = clock
        self.stats = LaneStats()
        self.tracker = OffsetTracker()
        self.committer = Committer(self.tracker, destination=sink.name, clock=clock,
                                   retry_backoff_s=settings.commit_retry_backoff_s,
                                   answer_timeout_s=settings.commit_answer_timeout_s)
        self.stats.committed = self.committer.confirmed
        self.batcher = Batcher(sink.name, max_events=settings.max_events, max_bytes=settings.max_bytes,
                               max_wait_s=settings.max_wait_s, clock=clock, ndjson=sink.ndjson)
        self.fatal: str | None = None
        self.metrics = metrics
        self.last_step_at = clock()
        self._in_flight: list[tuple[Batch, concurrent.futures.Future[list[tuple[int, Rejected]]]]] = []
        self._held: deque[Any] = deque()
        self._retry_at = 0.0
        self._retry_delay_s = settings.transient_backoff_s[0]
        self._paused: set[TopicPartitionKey] = set()
        self._blocked_since: float | None = None
        """When the lane last became full (every in-flight slot taken, the next batch full); None while it is not."""
        self._released: set[TopicPartitionKey] = set()
        """Partitions revoked or lost since the last ``consume`` began: its records of them are dropped."""
        self._next_progress = clock() + settings.progress_interval_s
        self._next_lag = clock()
        self._closing = False
        self._rng = random.Random()
        self._source_factory = source_factory
        self._lost_at: float | None = None
        self._generation = 0
        """Which source the callbacks serve: a replaced one's late callbacks are ignored."""
        self.source = self._new_source()
        self.committer.bind(self.source)

    def _new_source(self) -> MessageSource:
        """A new consumer whose callbacks reach the lane only while it is the lane's current one."""
        self._generation += 1
        generation = self._generation

        def current(callback: Callable[[Any], None]) -> Callable[[Any], None]:
            def call(argument: Any) -> None:
                if self._generation == generation:
                    callback(argument)
            return call

        return self._source_factory(SourceCallbacks(
            on_assign=current(self._on_assign), on_revoke=current(self._on_revoke),
            on_lost=current(self._on_lost), on_commit=current(self._on_commit)))

    # ------------------------------------------------------------------------------- the loop

    def run(self, stop: threading.Event, *, shutdown_timeout_s: float = 30.0) -> None:
        """Step until ``stop`` is set or a fatal error; then shut down within ``shutdown_timeout_s``.

        An unexpected exception stops the lane like a fatal error (nothing more is committed) and is raised.
        """
        try:
            while not stop.is_set() and self.fatal is None:
                self.step()
        except BaseException as exc:
            self._fail(f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.shutdown(shutdown_timeout_s)

    def step(self) -> None:
        """One iteration: collect, commit, submit, consume, decide, submit."""
        self.last_step_at = self.clock()
        self._collect()
        self.dead_letters.poll()
        if self.dead_letters.failure is not None:
            self._fail(self.dead_letters.failure)
        if self.fatal is not None:
            return
        self.committer.poll()
        now = self.clock()
        if self.batcher.is_due(now) and self._has_capacity():
            self._submit()
        if self._held and now >= self._retry_at and not self._blocked():
            self._process(self._take_held())
        self._apply_backpressure(now)
        self._released.clear()
        if self._full_briefly(now):  # wait for a slot: pausing would drop what librdkafka prefetched
            self.delivery.wait([future for _, future in self._in_flight], _WAIT_SLICE_S)
        else:
            self._consume()
        if self.batcher.full and self._has_capacity():
            self._submit()
        self.committer.poll()
        now = self.clock()
        if now >= self._next_lag:
            self._next_lag = now + 1.0
            self._refresh_lag()
        if now >= self._next_progress:
            self._next_progress = now + self.settings.progress_interval_s
            self._log_progress()
        if self._lost_at is not None and now - self._lost_at > self.settings.rejoin_timeout_s:
            self._replace_source(now)

    def _full_briefly(self, now: float) -> bool:
        """Full (see :meth:`_blocked`) for less than ``pause_after_s``, and no retry pending: the lane waits for
        a delivery rather than consume (what a full batch left over is held until a slot frees). Past that it
        consumes again, paused, so it keeps serving its group."""
        since = self._blocked_since
        return since is not None and not self._retry_pending(now) and now - since < self.settings.pause_after_s

    def _consume(self) -> None:
        messages = self.source.consume(self.settings.consume_batch_size, self.settings.consume_timeout_s)
        if messages:
            self.stats.consumed += len(messages)
            if self._released:
                messages = self._owned_only(messages)
            if self._held:  # keep partition order behind messages waiting for a retry or for capacity
                self._held.extend(messages)
            else:
                self._process(messages)

    def _owned_only(self, messages: Sequence[Any]) -> list[Any]:
        """Drop records of partitions revoked or lost while ``consume`` ran: another member owns them now."""
        released = self._released
        kept = [m for m in messages
                if m.error() is not None or ((m.topic(), m.partition()) not in released
                                             and self.tracker.owns((m.topic(), m.partition())))]
        if len(kept) != len(messages):
            log.info("records_of_released_partitions_dropped", destination=self.name,
                     records=len(messages) - len(kept))
        return kept

    def _replace_source(self, now: float) -> None:
        """Close a consumer stuck outside its group and subscribe a new one (nothing is owned to commit).

        The old consumer is closed on a thread of its own, waited for at most ``replaced_close_timeout_s``:
        librdkafka's close can hang on a coordinator that went away, and the lane must not hang with it. Its
        callbacks no longer reach the lane either way (it owns nothing the new consumer may not own)."""
        log.warning("consumer_replaced", destination=self.name, stuck_s=round(now - (self._lost_at or now), 1))
        old = self.source
        self._generation += 1  # detach the old consumer's callbacks first
        closer = threading.Thread(target=self._close_replaced, args=(old,), name=f"close-replaced-{self.name}",
                                  daemon=True)
        closer.start()
        closer.join(self.settings.replaced_close_timeout_s)
        if closer.is_alive():
            log.warning("consumer_close_abandoned", destination=self.name,
                        waited_s=self.settings.replaced_close_timeout_s)
        self._paused.clear()
        self.committer.released(self.committer.owned)
        self._lost_at = self.clock()
        self.source = self._new_source()
        self.committer.bind(self.source)

    def _close_replaced(self, source: MessageSource) -> None:
        try:
            source.close()
        except Exception as exc:  # a stuck client may fail to close cleanly; the new one matters
            log.warning("consumer_close_failed", destination=self.name, error=str(exc))

    # ---------------------------------------------------------------------- per-message work

    def _take_held(self) -> list[Any]:
        held = list(self._held)
        self._held.clear()
        return held

    def _blocked(self) -> bool:
        """The open batch is full and no in-flight slot is free: nothing more may be added."""
        return self.batcher.full and len(self._in_flight) >= self.settings.max_in_flight_batches

    def _process(self, messages: Sequence[Any]) -> None:
        # The per-event path: locals instead of attribute lookups, counters summed once per call.
        decide = self.judge.decide
        track = self.tracker.track
        batcher = self.batcher
        add = batcher.add
        in_flight = self._in_flight
        max_in_flight = self.settings.max_in_flight_batches
        skipped = 0
        try:
            for index, message in enumerate(messages):
                error = message.error()
                if error is not None:
                    if error.fatal():
                        self._fail(f"Kafka consumer error: {error}")
                        return
                    log.warning("consumer_error_seen", destination=self.name, error=str(error))
                    continue
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                key = (topic, partition)
                decision = decide(message.value(), topic, partition, offset)
                kind = decision.kind
                if kind is SEND:
                    track(key, offset, add(decision, message, key, offset), message)
                    if batcher.full:
                        if len(in_flight) < max_in_flight:
                            self._submit()
                        else:  # no slot for the full batch: keep the rest until one frees
                            self._held.extend(messages[index + 1:])
                            return
                elif kind is SKIP:
                    track(key, offset, NOTHING_TO_DO, message)
                    skipped += 1
                elif kind is PARK:
                    assert isinstance(decision.error, EventError)
                    work = Work(f"dead letter {topic}[{partition}]@{offset}", holds=0)
                    self.dead_letters.park(message, decision.error, self.name, work)
                    track(key, offset, work, message)
                    self.stats.dead_lettered[decision.error.reason] += 1
                elif kind is WAIT:
                    assert isinstance(decision.error, TransientError)
                    self._hold(messages[index:], decision.error)
                    return
                else:  # STOP, e.g. the schema registry URL points at something else
                    self._fail(str(decision.error))
                    return
        finally:
            self.stats.skipped += skipped
        self._retry_delay_s = self.settings.transient_backoff_s[0]

    def _hold(self, messages: Sequence[Any], exc: TransientError) -> None:
        """A transient failure (e.g. the schema registry is down): keep the messages, retry later."""
        self._held.extend(messages)
        delay = exc.retry_after_s or self._retry_delay_s
        delay *= 1 + self._rng.uniform(-0.2, 0.2)
        self._retry_at = self.clock() + delay
        self._retry_delay_s = min(self._retry_delay_s * 2, self.settings.transient_backoff_s[1])
        self.stats.transient_failures += 1
        first = messages[0]
        log.warning("decode_retry_scheduled", destination=self.name, error=str(exc), delay_s=round(delay, 2),
                    held=len(self._held), topic=first.topic(), partition=first.partition(), offset=first.offset())

    # ------------------------------------------------------------------------- delivery side

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def paused_partitions(self) -> int:
        return len(self._paused)

    def snapshot(self) -> LaneSnapshot:
        """What this lane reports at a scrape (read from another thread: every value is copied)."""
        stats = self.stats
        return LaneSnapshot(
            name=self.name,
            counters={"consumed": stats.consumed, "delivered_events": stats.delivered_events,
                      "delivered_messages": stats.delivered_messages, "skipped": stats.skipped,
                      "decode_retries": stats.transient_failures, "commits_refused": stats.commits_refused},
            dead_lettered=dict(stats.dead_lettered), failed=self.fatal is not None,
            in_flight_batches=len(self._in_flight), paused_partitions=len(self._paused),
            destination_state=self.destination_state, committed=dict(stats.committed), lag=dict(stats.lag),
            streams=tallies_by_stream(self.judge), lag_seconds=self._lag_seconds(),
            event_ages=stats.event_ages.copy(), throttled_s=self.sink.throttled_s,
            last_commit_timestamp_s=self.wall_clock() - (self.clock() - self.committer.last_confirmed_at))

    def _lag_seconds(self) -> dict[TopicPartitionKey, float]:
        """Per owned partition, how long its oldest unfinished record has waited since Kafka stamped it."""
        now_ms = self.wall_clock() * 1000
        oldest = self.stats.oldest_unfinished_ms  # replaced whole on the poll thread, never changed in place
        return {key: max(0.0, (now_ms - oldest[key]) / 1000) if key in oldest else 0.0
                for key in self.tracker.owned()}

    @property
    def destination_state(self) -> str:
        """The sink's own state (``ok``, ``retrying``, ``bad_credentials``)."""
        return self.sink.state

    def _has_capacity(self) -> bool:
        return len(self._in_flight) < self.settings.max_in_flight_batches

    def _submit(self) -> None:
        batch = self.batcher.take()
        if batch is None:
            return
        batch.submitted_at = self.clock()
        future = self.delivery.submit(self.sink.write(batch))
        self._in_flight.append((batch, future))
        if self.metrics is not None:
            self.metrics.batch_events.labels(self.name).observe(batch.events)

    def _collect(self) -> None:
        if not self._in_flight:
            return
        still: list[tuple[Batch, concurrent.futures.Future[list[tuple[int, Rejected]]]]] = []
        before = len(self._in_flight)
        for batch, future in self._in_flight:
            if not future.done():
                still.append((batch, future))
                continue
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                self._delivered(batch, future.result())
            elif isinstance(error, FatalError):
                self._fail(str(error))
            else:
                self._fail(f"{self.name} delivery failed unexpectedly: {type(error).__name__}: {error}")
        self._in_flight = still
        if len(still) < before:
            self._refresh_oldest()

    def _delivered(self, batch: Batch, rejected: list[tuple[int, Rejected]]) -> None:
        for index, error in rejected:
            self.dead_letters.park(batch.sources[index], error, self.name, batch.work)
            self.stats.dead_lettered[error.reason] += 1
        batch.work.release()
        if self.metrics is not None:
            self.metrics.batch_delivery_seconds.labels(self.name).observe(self.clock() - batch.submitted_at)
        self.stats.event_ages.observe(self.wall_clock(), batch.event_times_s)
        self.stats.delivered_events += batch.events - len(rejected)
        self.stats.delivered_messages += batch.messages
        self.stats.batches_delivered += 1
        log.debug("batch_delivered", destination=self.name, batch_id=batch.batch_id, events=batch.events,
                  rejected=len(rejected), offsets={f"{t}[{p}]": s for (t, p), s in batch.spans.items()})

    def _fail(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
            self.committer.halt(reason)
            log.error("lane_stopped", destination=self.name, reason=reason)

    def _apply_backpressure(self, now: float) -> None:
        """Pause fetching while the destination cannot take more; keep polling to stay in the group.

        Messages held for a retry pause the lane at once. A lane that is full pauses once it has been full for
        ``pause_after_s``; until then :meth:`step` waits for a delivery instead of consuming."""
        if not self._blocked():
            self._blocked_since = None
        elif self._blocked_since is None:
            self._blocked_since = now
        if self._retry_pending(now) or (self._blocked_since is not None and not self._full_briefly(now)):
            to_pause = set(self.source.assignment()) - self._paused
            if to_pause:
                self.source.pause(to_pause)
                self._paused |= to_pause
                log.info("partitions_paused", destination=self.name, partitions=len(to_pause),
                         in_flight=len(self._in_flight), held=len(self._held))
        elif self._paused and not self._held and self._blocked_since is None:
            owned = set(self.source.assignment())
            self.source.resume(self._paused & owned)
            log.info("partitions_resumed", destination=self.name, partitions=len(self._paused & owned))
            self._paused.clear()

    def _retry_pending(self, now: float) -> bool:
        """Messages are held for a retry that is not due yet (e.g. the schema registry is down)."""
        return bool(self._held) and now < self._retry_at

    # ------------------------------------------------------------------------------ commits

    def _on_commit(self, result: CommitResult) -> None:
        self.committer.confirm(result)
        self.stats.commits_refused = self.committer.refused

    def _refresh_lag(self) -> None:
        lag = {}
        for key, committed in list(self.committer.confirmed.items()):
            high = self.source.high_watermark(key)
            if high is not None:
                lag[key] = max(0, high - committed)
        self.stats.lag = lag
        self._refresh_oldest()

    def _refresh_oldest(self) -> None:
        """Find each partition's oldest unfinished record, for lag in seconds: once a second and after deliveries."""
        oldest = self.tracker.oldest_unfinished_ms()
        for message in self._held:  # consumed, waiting for a retry or for capacity: not tracked yet
            key = (message.topic(), message.partition())
            timestamp_ms = kafka_timestamp_ms(message)
            if timestamp_ms >= 0 and key not in oldest:
                oldest[key] = timestamp_ms
        self.stats.oldest_unfinished_ms = oldest

    def _wait_for(self, keys: set[TopicPartitionKey] | None, timeout_s: float) -> bool:
        """Deliver what is open or in flight until ``keys`` (None: all) have no unfinished work.

        The deadline is on the lane's clock and each wait goes through the delivery, so a test's manual clock
        and stepped delivery decide when work finishes and when the deadline passes.
        """
        if self.fatal is None:
            self._submit()
        deadline = self.clock() + timeout_s
        while True:
            self._collect()
            self.dead_letters.poll()
            if self.fatal is not None:
                return False
            owned = self.tracker.owned() if keys is None else [k for k in keys if self.tracker.owns(k)]
            if not any(self.tracker.pending_messages(k) for k in owned):
                return True
            if self.clock() >= deadline:
                return False
            futures = [f for _, f in self._in_flight]
            if futures:
                self.delivery.wait(futures, _WAIT_SLICE_S)
            else:
                self.dead_letters.flush(_WAIT_SLICE_S)

    def _on_assign(self, keys: list[TopicPartitionKey]) -> None:
        self._lost_at = None
        committed = self.source.committed(keys, self.settings.committed_lookup_timeout_s) if keys else {}
        self.committer.assigned(keys, committed)

    def _on_revoke(self, keys: list[TopicPartitionKey]) -> None:
        """Finish the revoked partitions' work within a bound, commit it (confirmed), and forget them."""
        revoked = set(keys)
        self._released |= revoked
        if not self._closing:
            finished = self._wait_for(revoked, self.settings.revoke_timeout_s)
            if not finished:
                log.warning("revocation_deadline_passed", destination=self.name, partitions=len(revoked))
            self.committer.commit_now(revoked)
        self._forget(revoked)

    def _on_lost(self, keys: list[TopicPartitionKey]) -> None:
        """Partitions taken away without a revocation (session lost): another member may own them already,
        so commit nothing for them and do not wait; their unfinished work is redelivered to the new owner."""
        self._lost_at = self.clock()
        self._released |= set(keys)
        self._forget(set(keys))

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self.committer.released(keys)
        self._paused -= keys
        if self._held:
            self._held = deque(m for m in self._held if (m.topic(), m.partition()) not in keys)

    # ----------------------------------------------------------------------------- shutdown

    def shutdown(self, timeout_s: float) -> None:
        """Flush in-flight work within ``timeout_s``, commit synchronously (confirmed), leave the group."""
        if self._closing:
            return
        finished = self._wait_for(None, timeout_s) if self.fatal is None else False
        if self.fatal is None:
            if not finished:
                log.warning("shutdown_deadline_passed", destination=self.name, in_flight=len(self._in_flight))
            self.committer.commit_now()
        self._closing = True
        for _batch, future in self._in_flight:
            future.cancel()
        self.dead_letters.close(5.0)
        self.source.close()
        self.judge.close()
        self._log_progress(final=True)

    def close(self) -> None:
        """Release the consumer and producer of a lane that never ran (a failed start); commits nothing."""
        if self._closing:
            return
        self._closing = True
        self.dead_letters.close(0.0)
        self.source.close()
        self.judge.close()

    def _log_progress(self, *, final: bool = False) -> None:
        stats = self.stats
        log.info("lane_finished" if final else "lane_progress", destination=self.name, consumed=stats.consumed,
                 delivered_events=stats.delivered_events, delivered_messages=stats.delivered_messages,
                 skipped=stats.skipped, dead_lettered=dict(stats.dead_lettered), in_flight=len(self._in_flight),
                 paused=len(self._paused), held=len(self._held), commits_refused=stats.commits_refused)
