"""A lane driven step by step with a fake source: backpressure, transient decode failures, bad events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from consumer.errors import DecodeError, EventError, Rejected, TransientError
from consumer.pipeline.batcher import Batch
from consumer.pipeline.committer import CommitResult
from consumer.pipeline.delivery import DeliveryLoop
from consumer.pipeline.lane import Lane, LaneSettings
from consumer.pipeline.offsets import TopicPartitionKey, Work
from consumer.pipeline.ports import SourceCallbacks
from consumer.pipeline.verdict import Judge
from tests.helpers import wait_for

TOPIC = "usage"


@dataclass
class FakeMessage:
    _partition: int
    _offset: int
    _value: bytes

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def error(self) -> None:
        return None


@dataclass
class FakeSource:
    """A MessageSource over a fixed list of messages, honouring pause/resume like librdkafka does.

    Asynchronous commits are answered (confirmed) during the next ``consume``, as librdkafka's callback is.
    """

    pending: list[FakeMessage]
    callbacks: SourceCallbacks
    paused: set[TopicPartitionKey] = field(default_factory=set)
    commits: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    """Commits the broker stored, in order."""
    unanswered: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    assigned: bool = False
    revoke_during_consume: list[TopicPartitionKey] = field(default_factory=list)
    revoked: set[TopicPartitionKey] = field(default_factory=set)
    """Partitions to revoke inside the next ``consume``, after it picked its messages (as librdkafka can)."""

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if not self.assigned:
            self.assigned = True
            self.callbacks.on_assign(self.assignment())
        out = [m for m in self.pending if (TOPIC, m.partition()) not in self.paused][:max_messages]
        for m in out:
            self.pending.remove(m)
        for offsets in self.unanswered:
            self.commits.append(offsets)
            self.callbacks.on_commit({k: (v, None) for k, v in offsets.items()})
        self.unanswered.clear()
        if self.revoke_during_consume:
            revoked, self.revoke_during_consume = self.revoke_during_consume, []
            self.revoked |= set(revoked)
            self.callbacks.on_revoke(revoked)
            self.pending = [m for m in self.pending if (TOPIC, m.partition()) not in self.revoked]
        return out

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self.unanswered.append(dict(offsets))

    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
        self.commits.append(dict(offsets))
        return {k: (v, None) for k, v in offsets.items()}

    def committed(self, keys: list[TopicPartitionKey], timeout_s: float) -> dict[TopicPartitionKey, int]:
        return {}

    def pause(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused |= set(keys)

    def resume(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused -= set(keys)

    def assignment(self) -> list[TopicPartitionKey]:
        return [key for key in ((TOPIC, 0), (TOPIC, 1)) if key not in self.revoked]

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        return None

    def close(self) -> None:
        pass

    def stored(self) -> dict[TopicPartitionKey, int]:
        """What the broker holds now."""
        merged: dict[TopicPartitionKey, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class GatedDestination:
    """Delivers only while the gate is open; records what it delivered."""

    name = "freshsuccess"
    ndjson = True
    state = "ok"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.delivered: list[int] = []

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        self.delivered.append(batch.events)
        return []


class FakeDeadLetters:
    def __init__(self) -> None:
        self.parked: list[tuple[int, str]] = []
        self.failure: str | None = None

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        self.parked.append((message.offset(), error.reason))  # confirmed at once: nothing held

    def poll(self) -> None:
        pass

    def flush(self, timeout_s: float) -> int:
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
def delivery() -> Iterator[DeliveryLoop]:
    loop = DeliveryLoop().start()
    yield loop
    loop.stop()


def judge(decoder: Any, map_fn: Any = map_one, *, ndjson: bool = True) -> Judge:
    return Judge(decoder=decoder, map_fn=map_fn, max_event_bytes=1_048_576, ndjson=ndjson)


def make_lane(messages: list[FakeMessage], destination: Any, dead: FakeDeadLetters, decoder: Decoder,
              delivery: DeliveryLoop, map_fn: Any = map_one, **overrides: Any) -> tuple[Lane, FakeSource]:
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(FakeSource(messages, callbacks))
        return sources[0]

    settings = LaneSettings(**{"consume_batch_size": 10, "consume_timeout_s": 0.001, "max_events": 5,
                               "max_wait_s": 0.01, "max_in_flight_batches": 2, **overrides})
    lane = Lane(sink=destination, source_factory=factory, judge=judge(decoder, map_fn),
                dead_letters=dead, delivery=delivery, settings=settings)
    return lane, sources[0]


def messages(count: int, partitions: int = 2) -> list[FakeMessage]:
    return [FakeMessage(i % partitions, i // partitions, str(i).encode()) for i in range(count)]


def test_backpressure_pauses_fetching_and_nothing_is_committed_until_delivery(delivery: DeliveryLoop) -> None:
    destination = GatedDestination()
    lane, source = make_lane(messages(100), destination, FakeDeadLetters(), Decoder(), delivery)
    for _ in range(30):
        lane.step()
    assert source.paused == {(TOPIC, 0), (TOPIC, 1)}  # in-flight limit reached: fetching paused
    assert len(source.pending) > 50                    # and the rest was left in Kafka
    assert source.stored() == {}

    destination.gate.set()

    def drained() -> bool:
        lane.step()
        return not source.pending and source.stored() == {(TOPIC, 0): 50, (TOPIC, 1): 50}

    wait_for(drained, timeout_s=10, what="the lane to drain and commit")
    assert sum(destination.delivered) == 100
    assert source.paused == set()


def test_transient_decode_failures_hold_messages_in_order_without_dead_letters(delivery: DeliveryLoop) -> None:
    destination = GatedDestination()
    destination.gate.set()
    dead = FakeDeadLetters()
    lane, source = make_lane(messages(20), destination, dead, Decoder(transient_failures=3), delivery)

    def drained() -> bool:
        lane.step()
        return source.stored() == {(TOPIC, 0): 10, (TOPIC, 1): 10}

    wait_for(drained, timeout_s=10, what="delivery after the registry recovers")
    assert dead.parked == []
    assert lane.stats.transient_failures == 3
    assert sum(destination.delivered) == 20


def test_bad_events_are_parked_and_never_block_their_partition(delivery: DeliveryLoop) -> None:
    destination = GatedDestination()
    destination.gate.set()
    dead = FakeDeadLetters()
    batch = messages(20, partitions=1)
    batch[4]._value = b"bad"
    batch[13]._value = b"-1"
    lane, source = make_lane(batch, destination, dead, Decoder(), delivery)

    def drained() -> bool:
        lane.step()
        return source.stored() == {(TOPIC, 0): 20}

    wait_for(drained, timeout_s=10, what="commit past the bad events")
    assert sorted(dead.parked) == [(4, "undecodable"), (13, "mapping_failed")]
    assert sum(destination.delivered) == 18
    assert dict(lane.stats.dead_lettered) == {"undecodable": 1, "mapping_failed": 1}


class BrokenDeadLetters(FakeDeadLetters):
    """The dead-letter topic refuses writes: the event is neither delivered nor parked."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        work.hold()
        work.fail()
        self.failure = f"dead-letter topic refused {message.offset()}"


def test_an_unwritable_dead_letter_topic_stops_the_lane_before_committing_past_the_event(
    delivery: DeliveryLoop,
) -> None:
    destination = GatedDestination()
    destination.gate.set()
    batch = messages(20, partitions=1)
    batch[7]._value = b"bad"
    lane, source = make_lane(batch, destination, BrokenDeadLetters(), Decoder(), delivery)
    def stopped() -> bool:
        lane.step()
        return lane.fatal is not None

    wait_for(stopped, timeout_s=10, what="the lane to stop")
    assert lane.fatal is not None
    assert "refused 7" in lane.fatal
    assert all(offset <= 7 for commit in source.commits for offset in commit.values())
    lane.shutdown(1.0)
    assert all(offset <= 7 for commit in source.commits for offset in commit.values())


def test_lost_partitions_are_dropped_without_waiting_or_committing(delivery: DeliveryLoop) -> None:
    destination = GatedDestination()  # closed: nothing finishes
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery)
    for _ in range(5):
        lane.step()
    assert lane.tracker.pending_messages((TOPIC, 0))
    lane._on_lost([(TOPIC, 0)])
    assert (TOPIC, 0) not in lane.tracker.owned()
    assert not lane.committer.owns((TOPIC, 0))
    destination.gate.set()

    def partition_1_committed() -> bool:
        lane.step()
        return (TOPIC, 1) in source.stored()

    wait_for(partition_1_committed, timeout_s=10, what="the kept partition to commit")
    assert all((TOPIC, 0) not in commit for commit in source.commits)


def test_a_consumer_left_out_of_its_group_after_a_loss_is_replaced(delivery: DeliveryLoop) -> None:
    created: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        created.append(FakeSource(messages(4) if not created else [], callbacks))
        return created[-1]

    lane = Lane(sink=GatedDestination(), source_factory=factory, judge=judge(Decoder()),
                dead_letters=FakeDeadLetters(), delivery=delivery,
                settings=LaneSettings(consume_timeout_s=0.001, rejoin_timeout_s=0.05))
    lane.step()
    created[0].assigned = True  # the stuck client never calls back again
    lane._on_lost([(TOPIC, 0), (TOPIC, 1)])
    def replaced() -> bool:
        lane.step()
        return len(created) == 2

    wait_for(replaced, timeout_s=10, what="a new consumer")
    lane.step()  # the new consumer's first poll runs the assignment callback
    assert created[1].assigned
    assert lane._lost_at is None
    lane.shutdown(1.0)


# ------------------------------------------------------------------ commits and decisions at the edges


class RecordingDestination:
    """Delivers at once while the gate is open; records every batch's events (NDJSON lines) in order."""

    name = "freshsuccess"
    ndjson = True
    state = "ok"

    def __init__(self, *, open_gate: bool = True) -> None:
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.batches: list[list[dict[str, Any]]] = []

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        self.batches.append([orjson.loads(line) for line in bytes(batch.body).splitlines()])
        return []

    @property
    def delivered(self) -> list[int]:
        return [event["n"] for batch in self.batches for event in batch]


def drain(lane: Lane, source: FakeSource, until: dict[TopicPartitionKey, int], what: str) -> None:
    def done() -> bool:
        lane.step()
        return source.stored() == until and not source.unanswered

    wait_for(done, timeout_s=10, what=what)


def test_records_of_a_partition_revoked_during_consume_are_neither_tracked_nor_delivered(
        delivery: DeliveryLoop) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery)
    source.revoke_during_consume = [(TOPIC, 0)]  # inside the very first consume, after it picked its records
    drain(lane, source, {(TOPIC, 1): 10}, "partition 1 to be committed")
    assert all(n % 2 == 1 for n in destination.delivered), "records of the revoked partition were delivered"
    assert sorted(destination.delivered) == list(range(1, 20, 2))
    assert all((TOPIC, 0) not in commit for commit in source.commits)
    assert not lane.tracker.owns((TOPIC, 0))


class ExplodingDeadLetters(FakeDeadLetters):
    """The producer's queue is full: ``park`` raises (an internal error, not an event's)."""

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        raise BufferError("Local: Queue full")


def test_after_an_internal_error_the_lane_stops_and_commits_nothing_more(delivery: DeliveryLoop) -> None:
    batch = messages(10, partitions=1)
    batch[6]._value = b"bad"  # offsets 0-5 are finished (skipped) when parking offset 6 blows up
    lane, source = make_lane(batch, RecordingDestination(), ExplodingDeadLetters(), Decoder(), delivery,
                             map_fn=lambda record, topic, partition, offset: [])
    with pytest.raises(BufferError):
        lane.run(threading.Event(), shutdown_timeout_s=1.0)
    assert lane.fatal is not None
    assert lane.fatal.startswith("internal error: BufferError")
    assert source.stored() == {}
    assert source.unanswered == []


def test_a_full_batch_stops_filling_while_no_in_flight_slot_is_free(delivery: DeliveryLoop) -> None:
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(200, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             consume_batch_size=50, max_events=5, max_in_flight_batches=1, max_wait_s=60.0)
    for _ in range(10):
        lane.step()
    assert lane.batcher.open_events <= 5
    destination.gate.set()
    drain(lane, source, {(TOPIC, 0): 200}, "everything to be delivered and committed")
    assert max(len(batch) for batch in destination.batches) <= 5
    assert destination.delivered == list(range(200))


def test_a_value_json_cannot_carry_is_dead_lettered_and_the_partition_goes_on(delivery: DeliveryLoop) -> None:
    def map_bytes(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [{"n": record["n"], "blob": b"\x00\xff" if record["n"] == 3 else None}]

    dead = FakeDeadLetters()
    destination = RecordingDestination()
    lane, source = make_lane(messages(8, partitions=1), destination, dead, Decoder(), delivery, map_fn=map_bytes)
    drain(lane, source, {(TOPIC, 0): 8}, "commit past the event with bytes")
    assert dead.parked == [(3, "mapping_failed")]
    assert destination.delivered == [0, 1, 2, 4, 5, 6, 7]


def test_commits_follow_delivery_not_a_timer_and_count_only_once_confirmed(delivery: DeliveryLoop) -> None:
    destination = RecordingDestination()
    lane, source = make_lane(messages(10, partitions=1), destination, FakeDeadLetters(), Decoder(), delivery,
                             max_wait_s=3600.0)
    lane.clock = lambda: 0.0  # time stands still: only delivery can move a commit

    def committed_to_end() -> bool:
        lane.step()
        for asked in source.unanswered:  # sent, not yet answered: not reported as committed
            assert all(lane.stats.committed.get(k, -1) < v for k, v in asked.items()), "reported before confirmed"
        return source.stored() == {(TOPIC, 0): 10}

    wait_for(committed_to_end, timeout_s=10, what="commits after each delivery")
    assert lane.stats.committed == {(TOPIC, 0): 10}


class RefusingSource(FakeSource):
    """Refuses the first asynchronous commits, as a broker does during a rebalance."""

    refusals: int = 2

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if self.unanswered and self.refusals:
            self.refusals -= 1
            offsets = self.unanswered.pop(0)
            self.callbacks.on_commit({k: (v, "Broker: Group rebalance in progress") for k, v in offsets.items()})
        return super().consume(max_messages, timeout_s)


def test_a_refused_commit_is_retried_and_not_reported_until_the_broker_holds_it(delivery: DeliveryLoop) -> None:
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(RefusingSource(messages(10, partitions=1), callbacks))
        return sources[0]

    lane = Lane(sink=RecordingDestination(), source_factory=factory, judge=judge(Decoder()),
                dead_letters=FakeDeadLetters(), delivery=delivery,
                settings=LaneSettings(consume_timeout_s=0.001, max_events=100, max_wait_s=0.0,
                                      commit_retry_backoff_s=(0.01, 0.02)))
    source = sources[0]

    def confirmed() -> bool:
        lane.step()
        for key, offset in lane.stats.committed.items():
            assert source.stored().get(key) == offset, "reported a commit the broker does not hold"
        return source.stored() == {(TOPIC, 0): 10}

    wait_for(confirmed, timeout_s=10, what="the refused commit to be retried")
    assert lane.stats.commits_refused == 2
    assert lane.stats.committed == {(TOPIC, 0): 10}


# ------------------------------------------------------------------------------------------- revocation


def test_a_revocation_finishes_the_revoked_partitions_work_commits_it_and_forgets_them(
        delivery: DeliveryLoop) -> None:
    destination = RecordingDestination(open_gate=False)
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery, max_wait_s=60.0)
    for _ in range(3):
        lane.step()
    assert lane.tracker.pending_messages((TOPIC, 0))
    fetched = 10 - sum(1 for m in source.pending if m.partition() == 0)
    consumed = fetched - sum(1 for m in lane._held if m.partition() == 0)  # held back (no slot) are the new owner's
    destination.gate.set()
    lane._on_revoke([(TOPIC, 0)])  # as librdkafka calls it, inside consume
    assert source.stored()[(TOPIC, 0)] == consumed  # delivered, then committed synchronously before giving it up
    assert not lane.tracker.owns((TOPIC, 0))
    assert not lane.committer.owns((TOPIC, 0))
    assert (TOPIC, 0) not in lane.stats.committed
    assert sorted(n for n in destination.delivered if n % 2 == 0) == list(range(0, 2 * consumed, 2))


def test_a_revocation_past_its_deadline_abandons_the_unfinished_work_uncommitted(delivery: DeliveryLoop) -> None:
    destination = RecordingDestination(open_gate=False)  # nothing finishes
    lane, source = make_lane(messages(20), destination, FakeDeadLetters(), Decoder(), delivery,
                             revoke_timeout_s=0.05)
    for _ in range(3):
        lane.step()
    lane._on_revoke([(TOPIC, 0)])
    assert (TOPIC, 0) not in source.stored()
    destination.gate.set()  # the abandoned batches finish later: still nothing is committed for the partition
    drain(lane, source, {(TOPIC, 1): 10}, "the kept partition to be committed")
    assert (TOPIC, 0) not in source.stored()
