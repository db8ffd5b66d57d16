"""A lane driven step by step with a fake source, a manual clock and a stepped delivery: batching,
backpressure, transient decode failures, bad events, commits, lost partitions and revocation.

No thread and no real time: ``lane.step()`` runs in a loop with a bounded number of steps, sinks hold a batch
on an ``asyncio.Event`` the test opens, and batch ages, backoffs and revocation deadlines pass only when the
:class:`~consumer.testing.stepping.ManualClock` advances (see :mod:`consumer.testing.stepping`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from consumer.errors import DecodeError, EventError, Rejected, TransientError
from consumer.observability.metrics import Metrics
from consumer.pipeline.batcher import Batch
from consumer.pipeline.committer import CommitResult
from consumer.pipeline.lane import Lane, LaneSettings
from consumer.pipeline.offsets import TopicPartitionKey, Work
from consumer.pipeline.ports import SourceCallbacks
from consumer.pipeline.verdict import Judge
from consumer.testing.fakes import kafka_message
from consumer.testing.stepping import ManualClock, SteppedDelivery, step_until

TOPIC = "usage"
P0, P1 = (TOPIC, 0), (TOPIC, 1)
TICK_S = 0.01
"""Simulated time between two steps when a test lets time run: the lanes' ``max_wait_s`` unless overridden."""


def FakeMessage(partition: int, offset: int, value: bytes) -> Any:
    """A real ``confluent_kafka.Message`` on ``TOPIC`` with key ``b"k"``."""
    return kafka_message(TOPIC, partition, offset, value, key=b"k")


@dataclass
class FakeSource:
    """A MessageSource over a fixed list of messages, honouring pause/resume like librdkafka does.

    Asynchronous commits are answered (confirmed) during the next ``consume``, as librdkafka's callback is,
    unless ``hold_answers``. Rebalances run inside ``consume`` after it picked its messages, as librdkafka's
    can: a revoked partition stays assigned while ``on_revoke`` runs (its last commit goes in there), a lost one
    is gone before ``on_lost`` runs. Closing revokes what is still assigned, as librdkafka's ``close`` does.
    """

    pending: list[Any]
    callbacks: SourceCallbacks
    paused: set[TopicPartitionKey] = field(default_factory=set)
    commits: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    """Commits the broker stored, in order."""
    sync_commits: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    """The synchronous ones among them."""
    commits_after_release: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    """Commit requests (either kind) naming a partition this member had already given up: must stay empty."""
    unanswered: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    hold_answers: bool = False
    assigned: bool = False
    revoke_during_consume: list[TopicPartitionKey] = field(default_factory=list)
    """Partitions to revoke inside the next ``consume``."""
    lose_during_consume: list[TopicPartitionKey] = field(default_factory=list)
    """Partitions to lose (session timed out) inside the next ``consume``."""
    released: set[TopicPartitionKey] = field(default_factory=set)
    """Partitions revoked or lost: no longer this member's."""

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if not self.assigned:
            self.assigned = True
            self.callbacks.on_assign(self.assignment())
        out = [m for m in self.pending if (TOPIC, m.partition()) not in self.paused][:max_messages]
        for m in out:
            self.pending.remove(m)
        if not self.hold_answers:
            for offsets in self.unanswered:
                self.commits.append(offsets)
                self.callbacks.on_commit({k: (v, None) for k, v in offsets.items()})
            self.unanswered.clear()
        if self.revoke_during_consume:
            revoked, self.revoke_during_consume = self.revoke_during_consume, []
            self.callbacks.on_revoke(revoked)
            self._release(revoked)
        if self.lose_during_consume:
            lost, self.lose_during_consume = self.lose_during_consume, []
            self._release(lost)
            self.callbacks.on_lost(lost)
        return out

    def _release(self, keys: list[TopicPartitionKey]) -> None:
        self.released |= set(keys)
        self.pending = [m for m in self.pending if (TOPIC, m.partition()) not in self.released]

    def _check_owned(self, offsets: dict[TopicPartitionKey, int]) -> None:
        if any(key in self.released for key in offsets):
            self.commits_after_release.append(dict(offsets))

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self._check_owned(offsets)
        self.unanswered.append(dict(offsets))

    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
        self._check_owned(offsets)
        self.commits.append(dict(offsets))
        self.sync_commits.append(dict(offsets))
        return {k: (v, None) for k, v in offsets.items()}

    def committed(self, keys: list[TopicPartitionKey], timeout_s: float) -> dict[TopicPartitionKey, int]:
        return {}

    def pause(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused |= set(keys)

    def resume(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused -= set(keys)

    def assignment(self) -> list[TopicPartitionKey]:
        return [key for key in (P0, P1) if key not in self.released]

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        return None

    def close(self) -> None:
        owned = self.assignment() if self.assigned else []
        if owned:
            self.callbacks.on_revoke(owned)
            self._release(owned)

    def stored(self) -> dict[TopicPartitionKey, int]:
        """What the broker holds now."""
        merged: dict[TopicPartitionKey, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class RecordingDestination:
    """Delivers a batch once its gate (an ``asyncio.Event`` the test sets) is open; records every batch's events
    in order. The first ``let_through`` batches are delivered whatever the gate."""

    name = "freshsuccess"
    ndjson = True
    state = "ok"
    throttled_s = 0.0

    def __init__(self, *, open_gate: bool = True, let_through: int = 0) -> None:
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.let_through = let_through
        self.batches: list[list[dict[str, Any]]] = []

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        if self.let_through > 0:
            self.let_through -= 1
        else:
            await self.gate.wait()
        self.batches.append([orjson.loads(line) for line in bytes(batch.body).splitlines()])
        return []

    @property
    def delivered(self) -> list[int]:
        return [event["n"] for batch in self.batches for event in batch]

    def delivered_of(self, partition: int) -> list[int]:
        """Delivered offsets of one partition, in delivery order (``messages()`` puts event n at n // 2)."""
        return [n // 2 for n in self.delivered if n % 2 == partition]


class FakeDeadLetters:
    """Parks in memory, confirmed at once. Its ``flush`` waits out its timeout on ``clock`` (``make_lane`` gives
    it the lane's), as a real flush with something queued would: a lane waiting for work that nothing in flight
    will finish then reaches its deadline instead of spinning forever in simulated time."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.parked: list[tuple[int, str]] = []
        self.failure: str | None = None
        self.clock = clock

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        self.parked.append((message.offset(), error.reason))  # confirmed at once: nothing held

    def poll(self) -> None:
        pass

    def flush(self, timeout_s: float) -> int:
        if self.clock is not None:
            self.clock.advance(timeout_s)
        return 0

    def close(self, timeout_s: float = 5.0) -> None:
        pass


class Decoder:
    def __init__(self, transient_failures: int = 0) -> None:
        self.transient_failures = transient_failures

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientError("schema registry down", retry_after_s=0.01)
        if value == b"bad":
            raise DecodeError("not avro")
        return {"n": int(value or b"0")}


def map_one(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    if record["n"] < 0:
        raise KeyError("boom")  # a mapping bug on one event
    return [{"n": record["n"]}]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def delivery(clock: ManualClock) -> Iterator[SteppedDelivery]:
    with SteppedDelivery(clock) as stepped:
        yield stepped


def judge(decoder: Any, map_fn: Any = map_one, *, ndjson: bool = True) -> Judge:
    return Judge(decoder=decoder, map_fn=map_fn, max_event_bytes=1_048_576, ndjson=ndjson)


def make_lane(messages: list[Any], destination: Any, dead: FakeDeadLetters, decoder: Decoder,
              delivery: SteppedDelivery, map_fn: Any = map_one, **overrides: Any) -> tuple[Lane, FakeSource]:
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(FakeSource(messages, callbacks))
        return sources[0]

    if dead.clock is None:
        dead.clock = delivery.clock
    settings = LaneSettings(**{"consume_batch_size": 10, "consume_timeout_s": 0.001, "max_events": 5,
                               "max_wait_s": TICK_S, "max_in_flight_batches": 2, **overrides})
    lane = Lane(sink=destination, source_factory=factory, judge=judge(decoder, map_fn),
                dead_letters=dead, delivery=delivery, settings=settings, clock=delivery.clock.now)
    return lane, sources[0]


def messages(count: int, partitions: int = 2) -> list[Any]:
    """Event ``n`` is message ``n``: partition ``n % partitions``, offset ``n // partitions``."""
    return [FakeMessage(i % partitions, i // partitions, str(i).encode()) for i in range(count)]


def run_steps(lane: Lane, delivery: SteppedDelivery, count: int, *, tick_s: float = 0.0) -> None:
    """``count`` steps, each followed by the delivery running what it can; ``tick_s`` passes after each."""
    for _ in range(count):
        lane.step()
        delivery.run_until_idle()
        delivery.clock.advance(tick_s)


def drain(lane: Lane, source: FakeSource, delivery: SteppedDelivery, until: dict[TopicPartitionKey, int],
          what: str, *, max_steps: int = 100, tick_s: float = TICK_S) -> None:
    """Step, with time running, until the broker holds exactly ``until`` and no commit is unanswered."""
    step_until(lane.step, delivery, lambda: source.stored() == until and not source.unanswered,
               max_steps=max_steps, tick_s=tick_s, what=what)


# ---------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize(("limits", "closed"), [
    ({"max_events": 4}, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ({"max_events": 100, "max_bytes": 2 * len(b'{"n":0}\n') + 1}, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
], ids=["max_events", "max_bytes"])
def test_a_batch_closes_on_max_events_or_max_bytes_while_time_stands_still(
        limits: dict[str, int], closed: list[list[int]], delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(10, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             max_wait_s=60.0, max_in_flight_batches=10, **limits)
    run_steps(lane, delivery, 5)
    assert [[event["n"] for event in batch] for batch in destination.batches] == closed
    delivered = sum(len(batch) for batch in closed)
    assert lane.batcher.open_events == 10 - delivered  # the rest waits for max_wait_s, which has not passed
    assert source.stored() == {P0: delivered}


def test_an_open_batch_closes_once_max_wait_s_passes_on_the_lane_clock(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(3, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             max_wait_s=30.0)
    run_steps(lane, delivery, 5)
    assert lane.batcher.open_events == 3
    delivery.clock.advance(29.0)
    run_steps(lane, delivery, 5)
    assert destination.batches == []  # 29 s old: not due yet
    delivery.clock.advance(1.0)
    run_steps(lane, delivery, 3)
    assert destination.delivered == [0, 1, 2]
    assert source.stored() == {P0: 3}


# ----------------------------------------------------------------------------------- flow and failures


def test_backpressure_pauses_fetching_and_nothing_is_committed_until_delivery(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(100), destination, FakeDeadLetters(), Decoder(), delivery)
    run_steps(lane, delivery, 30, tick_s=TICK_S)
    assert source.paused == {P0, P1}  # in-flight limit reached: fetching paused
    assert lane.in_flight == 2
    assert len(source.pending) > 50    # and the rest was left in Kafka
    assert source.stored() == {}

    destination.gate.set()
    step_until(lane.step, delivery, lambda: not source.pending and source.stored() == {P0: 50, P1: 50},
               max_steps=100, tick_s=TICK_S, what="the lane to drain and commit")
    assert sorted(destination.delivered) == list(range(100))
    assert source.paused == set()


def test_a_lane_full_for_less_than_pause_after_s_waits_for_a_slot_without_pausing(delivery: SteppedDelivery) -> None:
    """Pausing makes librdkafka drop the records it prefetched for the paused partitions (to fetch them again
    after resume). A lane only briefly full waits for a delivery instead, consuming nothing meanwhile; it
    pauses once it has been full for ``pause_after_s``, and then polls again to stay in its group."""
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(100), destination, FakeDeadLetters(), Decoder(), delivery, pause_after_s=2.0)
    step_until(lane.step, delivery, lambda: lane.in_flight == 2 and lane.batcher.full, max_steps=50,
               what="every in-flight slot taken and the next batch full")
    full_at, pending = delivery.clock.now(), len(source.pending)
    step_until(lane.step, delivery, lambda: delivery.clock.now() - full_at >= 1.9, max_steps=100,
               what="1.9 s of waiting")
    assert source.paused == set()
    assert len(source.pending) == pending  # nothing consumed while waiting for a slot

    step_until(lane.step, delivery, lambda: source.paused == {P0, P1}, max_steps=10, what="the pause")
    assert delivery.clock.now() - full_at >= 2.0
    destination.gate.set()
    step_until(lane.step, delivery, lambda: not source.pending and source.stored() == {P0: 50, P1: 50},
               max_steps=200, tick_s=TICK_S, what="the lane to drain and commit")
    assert sorted(destination.delivered) == list(range(100))


def test_transient_decode_failures_hold_messages_in_order_without_dead_letters(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    dead = FakeDeadLetters()
    lane, source = make_lane(messages(20), destination, dead, Decoder(transient_failures=3), delivery)
    run_steps(lane, delivery, 5)  # time stands still: the retry (about 10 ms away) is not due
    assert lane.stats.transient_failures == 1
    assert destination.batches == []
    assert source.paused == {P0, P1}  # held messages: fetching paused meanwhile

    drain(lane, source, delivery, {P0: 10, P1: 10}, "delivery after the registry recovers")
    assert dead.parked == []
    assert lane.stats.transient_failures == 3
    assert destination.delivered_of(0) == list(range(10))  # each partition in order, none lost or repeated
    assert destination.delivered_of(1) == list(range(10))


def test_bad_events_are_parked_and_never_block_their_partition(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    dead = FakeDeadLetters()
    batch = messages(20, partitions=1)
    batch[4].set_value(b"bad")
    batch[13].set_value(b"-1")
    lane, source = make_lane(batch, destination, dead, Decoder(), delivery)
    drain(lane, source, delivery, {P0: 20}, "commit past the bad events")
    assert sorted(dead.parked) == [(4, "undecodable"), (13, "mapping_failed")]
    assert destination.delivered == [n for n in range(20) if n not in (4, 13)]
    assert dict(lane.stats.dead_lettered) == {"undecodable": 1, "mapping_failed": 1}
    [(stream, tally)] = lane.snapshot().streams.items()  # the stream label of the metrics
    assert (stream, tally.sent, dict(tally.parked)) == ("", 18, {"undecodable": 1, "mapping_failed": 1})
    exposition = metrics_of(lane)
    assert 'usage_consumer_stream_records_total{destination="freshsuccess",stream="",verdict="send"} 18.0' \
        in exposition
    assert ('usage_consumer_stream_dead_lettered_total{destination="freshsuccess",reason="undecodable",stream=""} '
            '1.0') in exposition


def metrics_of(lane: Lane) -> str:
    metrics = Metrics()
    metrics.add_lane(lane)
    return metrics.exposition().decode()


class BrokenDeadLetters(FakeDeadLetters):
    """The dead-letter topic refuses writes: the event is neither delivered nor parked."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        work.hold()
        work.fail()
        self.failure = f"dead-letter topic refused {message.offset()}"


def test_an_unwritable_dead_letter_topic_stops_the_lane_before_committing_past_the_event(
    delivery: SteppedDelivery,
) -> None:
    batch = messages(20, partitions=1)
    batch[7].set_value(b"bad")
    lane, source = make_lane(batch, RecordingDestination(), BrokenDeadLetters(), Decoder(), delivery)
    step_until(lane.step, delivery, lambda: lane.fatal is not None, max_steps=50, tick_s=TICK_S,
               what="the lane to stop")
    assert lane.fatal is not None
    assert "refused 7" in lane.fatal
    assert all(offset <= 7 for commit in source.commits for offset in commit.values())
    lane.shutdown(1.0)
    assert all(offset <= 7 for commit in source.commits for offset in commit.values())


def test_a_consumer_left_out_of_its_group_after_a_loss_is_replaced(delivery: SteppedDelivery) -> None:
    created: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        created.append(FakeSource(messages(4) if not created else [], callbacks))
        return created[-1]

    lane = Lane(sink=RecordingDestination(), source_factory=factory, judge=judge(Decoder()),
                dead_letters=FakeDeadLetters(delivery.clock), delivery=delivery, clock=delivery.clock.now,
                settings=LaneSettings(consume_timeout_s=0.001, rejoin_timeout_s=5.0))
    lane.step()
    created[0].lose_during_consume = [P0, P1]  # and the stuck client never calls back again
    lost_at = delivery.clock.now()
    run_steps(lane, delivery, 5)
    assert len(created) == 1  # not before the rejoin timeout
    step_until(lane.step, delivery, lambda: len(created) == 2, max_steps=20, tick_s=1.0, what="a new consumer")
    assert delivery.clock.now() - lost_at > 5.0
    lane.step()  # the new consumer's first poll runs the assignment callback
    assert created[1].assigned
    assert lane._lost_at is None
    lane.shutdown(1.0)


@dataclass
class HangingClose(FakeSource):
    """librdkafka's ``close`` can hang on a coordinator that went away; this one hangs until ``release``."""

    release: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.release.wait(30)
        self.callbacks.on_lost([P0, P1])  # a callback that comes far too late: the partitions are another's now
        self.closed.set()


def test_a_replaced_consumer_whose_close_hangs_is_left_behind_and_its_late_callbacks_are_ignored(
        delivery: SteppedDelivery) -> None:
    created: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        created.append(HangingClose(messages(4), callbacks) if not created else FakeSource(messages(6), callbacks))
        return created[-1]

    destination = RecordingDestination()
    lane = Lane(sink=destination, source_factory=factory, judge=judge(Decoder()),
                dead_letters=FakeDeadLetters(delivery.clock), delivery=delivery, clock=delivery.clock.now,
                settings=LaneSettings(consume_timeout_s=0.001, rejoin_timeout_s=5.0, replaced_close_timeout_s=0.05))
    lane.step()
    old = created[0]
    assert isinstance(old, HangingClose)
    old.lose_during_consume = [P0, P1]
    step_until(lane.step, delivery, lambda: len(created) == 2, max_steps=20, tick_s=1.0,
               what="a new consumer while the old one is still closing")
    assert not old.closed.is_set()
    new = created[1]
    lane.step()  # the new consumer is assigned P0 and P1
    old.release.set()  # the old client finally closes and revokes P0 and P1, which are the new one's now
    assert old.closed.wait(10)
    drain(lane, new, delivery, {P0: 3, P1: 3}, "the new consumer's records committed", tick_s=0.1)
    assert destination.delivered[4:] == [0, 1, 2, 3, 4, 5]  # after the old consumer's four
    lane.shutdown(1.0)


# ------------------------------------------------------------------ commits and decisions at the edges


class ExplodingDeadLetters(FakeDeadLetters):
    """The producer's queue is full: ``park`` raises (an internal error, not an event's)."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        raise BufferError("Local: Queue full")


def test_after_an_internal_error_the_lane_stops_and_commits_nothing_more(delivery: SteppedDelivery) -> None:
    batch = messages(10, partitions=1)
    batch[6].set_value(b"bad")  # offsets 0-5 are finished (skipped) when parking offset 6 blows up
    lane, source = make_lane(batch, RecordingDestination(), ExplodingDeadLetters(), Decoder(), delivery,
                             map_fn=lambda record, topic, partition, offset: [])
    with pytest.raises(BufferError):
        lane.run(threading.Event(), shutdown_timeout_s=1.0)
    assert lane.fatal is not None
    assert lane.fatal.startswith("internal error: BufferError")
    assert source.stored() == {}
    assert source.unanswered == []


def test_a_full_batch_stops_filling_while_no_in_flight_slot_is_free(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(200, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             consume_batch_size=50, max_events=5, max_in_flight_batches=1, max_wait_s=60.0)
    run_steps(lane, delivery, 10)
    assert lane.in_flight == 1
    assert lane.batcher.open_events <= 5
    destination.gate.set()
    drain(lane, source, delivery, {P0: 200}, "everything to be delivered and committed", max_steps=200)
    assert max(len(batch) for batch in destination.batches) <= 5
    assert destination.delivered == list(range(200))


def test_a_value_json_cannot_carry_is_dead_lettered_and_the_partition_goes_on(delivery: SteppedDelivery) -> None:
    def map_bytes(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [{"n": record["n"], "blob": b"\x00\xff" if record["n"] == 3 else None}]

    dead = FakeDeadLetters()
    destination = RecordingDestination()
    lane, source = make_lane(messages(8, partitions=1), destination, dead, Decoder(), delivery, map_fn=map_bytes)
    drain(lane, source, delivery, {P0: 8}, "commit past the event with bytes")
    assert dead.parked == [(3, "mapping_failed")]
    assert destination.delivered == [0, 1, 2, 4, 5, 6, 7]


def test_commits_follow_delivery_not_a_timer_and_count_only_once_confirmed(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(10, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             max_wait_s=3600.0)

    def committed_to_end() -> bool:
        for asked in source.unanswered:  # sent, not yet answered: not reported as committed
            assert all(lane.stats.committed.get(k, -1) < v for k, v in asked.items()), "reported before confirmed"
        return source.stored() == {P0: 10}

    # time stands still (no tick): only delivery can move a commit
    step_until(lane.step, delivery, committed_to_end, max_steps=20, what="commits after each delivery")
    assert delivery.clock.now() == 0.0
    assert lane.stats.committed == {P0: 10}


class RefusingSource(FakeSource):
    """Refuses the first asynchronous commits, as a broker does during a rebalance."""

    refusals: int = 2

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if self.unanswered and self.refusals:
            self.refusals -= 1
            offsets = self.unanswered.pop(0)
            self.callbacks.on_commit({k: (v, "Broker: Group rebalance in progress") for k, v in offsets.items()})
        return super().consume(max_messages, timeout_s)


def test_a_refused_commit_is_retried_and_not_reported_until_the_broker_holds_it(
        delivery: SteppedDelivery) -> None:
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(RefusingSource(messages(10, partitions=1), callbacks))
        return sources[0]

    lane = Lane(sink=RecordingDestination(), source_factory=factory, judge=judge(Decoder()),
                dead_letters=FakeDeadLetters(delivery.clock), delivery=delivery, clock=delivery.clock.now,
                settings=LaneSettings(consume_timeout_s=0.001, max_events=100, max_wait_s=0.0,
                                      commit_retry_backoff_s=(0.01, 0.02)))
    source = sources[0]

    def confirmed() -> bool:
        for key, offset in lane.stats.committed.items():
            assert source.stored().get(key) == offset, "reported a commit the broker does not hold"
        return source.stored() == {P0: 10}

    step_until(lane.step, delivery, lambda: lane.stats.commits_refused == 1, max_steps=20,
               what="the first commit to be refused")
    run_steps(lane, delivery, 5)  # time stands still: the retry waits for its backoff
    assert lane.stats.commits_refused == 1
    assert source.unanswered == []
    assert source.stored() == {}
    step_until(lane.step, delivery, confirmed, max_steps=50, tick_s=TICK_S, what="the refused commit to be retried")
    assert lane.stats.commits_refused == 2
    assert lane.stats.committed == {P0: 10}


# ---------------------------------------------------------------------------- revocation and loss


def test_a_revocation_finishes_the_revoked_partitions_work_commits_it_and_forgets_them(
        delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery, max_wait_s=60.0,
                             revoke_timeout_s=10.0, pause_after_s=0.0)  # full: pause and keep consuming at once
    run_steps(lane, delivery, 3)
    assert lane.tracker.pending_messages(P0)
    assert source.stored() == {}
    fetched = 10 - sum(1 for m in source.pending if m.partition() == 0)
    consumed = fetched - sum(1 for m in lane._held if m.partition() == 0)  # held back (no slot) are the new owner's
    assert consumed > 0
    destination.gate.set()  # the destination answers again; the delivery runs only while the lane waits
    source.revoke_during_consume = [P0]
    started = delivery.clock.now()
    lane.step()  # librdkafka calls the revocation inside consume
    assert delivery.clock.now() - started < 10.0  # finished before the deadline
    # delivered, then committed synchronously inside the callback, before the partition was given up
    assert source.sync_commits == [{P0: consumed}]
    assert source.commits_after_release == []
    assert not lane.tracker.owns(P0)
    assert not lane.committer.owns(P0)
    assert P0 not in lane.stats.committed
    assert destination.delivered_of(0) == list(range(consumed))

    # the kept partition's last, partial batch closes on its age (60 s): let time run faster
    drain(lane, source, delivery, {P0: consumed, P1: 10}, "the kept partition to be committed", tick_s=10.0)
    assert destination.delivered_of(0) == list(range(consumed))  # what was held back is not delivered here
    assert destination.delivered_of(1) == list(range(10))
    assert source.commits_after_release == []


def test_a_revocation_past_its_deadline_abandons_the_unfinished_work_uncommitted(
        delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False, let_through=1)  # the first batch only, then nothing
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery, max_wait_s=60.0,
                             revoke_timeout_s=2.0, pause_after_s=0.0)  # full: pause and keep consuming at once
    for _ in range(3):
        lane.step()  # the delivery does not run: every batch is still in flight when the revocation starts
    assert destination.batches == []
    source.revoke_during_consume = [P0]
    started = delivery.clock.now()
    lane.step()
    assert delivery.clock.now() - started >= 2.0  # waited up to the deadline (on the lane's clock)
    # the first batch (offsets 0-2 of partition 0) finished during the wait and was committed; the rest not
    assert destination.delivered_of(0) == [0, 1, 2]
    assert source.sync_commits == [{P0: 3}]
    assert not lane.tracker.owns(P0)

    destination.gate.set()  # the abandoned batches finish later: still nothing more is committed for it
    drain(lane, source, delivery, {P0: 3, P1: 10}, "the kept partition to be committed", tick_s=10.0)
    assert max(destination.delivered_of(0)) > 2  # they did finish, after the partition was given up
    assert source.commits_after_release == []
    assert all(commit.get(P0, 0) <= 3 for commit in source.commits)


def test_records_of_a_partition_revoked_during_consume_are_neither_tracked_nor_delivered(
        delivery: SteppedDelivery) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery)
    source.revoke_during_consume = [P0]  # inside the very first consume, after it picked its records
    lane.step()
    assert not lane.tracker.owns(P0)
    assert lane.stats.consumed == 10  # five of partition 0 among them, dropped
    drain(lane, source, delivery, {P1: 10}, "partition 1 to be committed")
    assert all(n % 2 == 1 for n in destination.delivered), "records of the revoked partition were delivered"
    assert sorted(destination.delivered) == list(range(1, 20, 2))
    assert all(P0 not in commit for commit in source.commits)
    assert not lane.tracker.owns(P0)


def test_lost_partitions_are_dropped_without_waiting_or_committing(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False, let_through=3)
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery, max_wait_s=60.0)
    source.hold_answers = True  # the first commit stays unanswered, so later finished work waits uncommitted
    run_steps(lane, delivery, 3)
    assert lane.committer.due().get(P0) == 8  # finished (batches 1-3), not yet committed
    assert lane.tracker.pending_messages(P0)  # and more in flight (batch 4, held at the gate)
    source.lose_during_consume = [P0]
    started = delivery.clock.now()
    lane.step()
    assert delivery.clock.now() == started  # no wait for the lost partition's work
    assert not lane.tracker.owns(P0)
    assert not lane.committer.owns(P0)
    assert source.commits_after_release == []
    assert source.sync_commits == []

    source.hold_answers = False
    destination.gate.set()
    step_until(lane.step, delivery, lambda: source.stored().get(P1) == 10, max_steps=50, tick_s=TICK_S,
               what="the kept partition to commit")
    assert source.commits_after_release == []
    assert source.stored()[P0] == 5  # only the commit asked for while it was owned
    assert max(destination.delivered_of(0)) == 9  # its last batch did finish, uncommitted


def test_a_revocation_while_the_consumer_closes_neither_waits_nor_commits_again(delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False, let_through=1)
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery, max_wait_s=60.0,
                             revoke_timeout_s=30.0)
    for _ in range(3):
        lane.step()  # the delivery does not run: every batch is still in flight when the shutdown starts
    started = delivery.clock.now()
    lane.shutdown(1.0)  # commits what finished, then closes the consumer, which revokes everything
    assert source.released == {P0, P1}
    assert 1.0 <= delivery.clock.now() - started < 30.0  # the shutdown's bound, not a revocation's on top
    assert source.sync_commits == [{P0: 3, P1: 2}]  # once, by the shutdown
    assert source.commits_after_release == []
