"""A lane driven step by step with a fake source: backpressure, transient decode failures, bad events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer.batcher import Batch
from consumer.delivery import DeliveryLoop
from consumer.errors import DecodeError, EventError, Rejected, TransientError
from consumer.lane import Lane, LaneSettings
from consumer.offsets import TopicPartitionKey, Work
from consumer.source import RebalanceCallback
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
    """A MessageSource over a fixed list of messages, honouring pause/resume like librdkafka does."""

    pending: list[FakeMessage]
    on_assign: RebalanceCallback
    on_revoke: RebalanceCallback
    paused: set[TopicPartitionKey] = field(default_factory=set)
    commits: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    assigned: bool = False

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if not self.assigned:
            self.assigned = True
            self.on_assign(self.assignment())
        out = [m for m in self.pending if (TOPIC, m.partition()) not in self.paused][:max_messages]
        for m in out:
            self.pending.remove(m)
        return out

    def commit(self, offsets: dict[TopicPartitionKey, int], *, asynchronous: bool) -> bool:
        self.commits.append(dict(offsets))
        return True

    def pause(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused |= set(keys)

    def resume(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused -= set(keys)

    def assignment(self) -> list[TopicPartitionKey]:
        return [(TOPIC, 0), (TOPIC, 1)]

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        return None

    def close(self) -> None:
        pass

    def committed(self) -> dict[TopicPartitionKey, int]:
        merged: dict[TopicPartitionKey, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class GatedDestination:
    """Delivers only while the gate is open; records what it delivered."""

    name = "freshsuccess"
    serialize = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.delivered: list[int] = []

    async def deliver(self, batch: Batch) -> list[tuple[int, Rejected]]:
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


def make_lane(messages: list[FakeMessage], destination: Any, dead: FakeDeadLetters, decoder: Decoder,
              delivery: DeliveryLoop, **overrides: Any) -> tuple[Lane, FakeSource]:
    sources: list[FakeSource] = []

    def factory(on_assign: RebalanceCallback, on_revoke: RebalanceCallback, _on_lost: RebalanceCallback) -> FakeSource:
        sources.append(FakeSource(messages, on_assign, on_revoke))
        return sources[0]

    settings = LaneSettings(**{"consume_batch_size": 10, "consume_timeout_s": 0.001, "max_events": 5,
                               "max_wait_s": 0.01, "max_in_flight_batches": 2, "commit_interval_s": 0.0,
                               **overrides})
    lane = Lane(destination=destination, source_factory=factory, decoder=decoder, map_fn=map_one,
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
    assert source.committed() == {}

    destination.gate.set()

    def drained() -> bool:
        lane.step()
        return not source.pending and source.committed() == {(TOPIC, 0): 50, (TOPIC, 1): 50}

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
        return source.committed() == {(TOPIC, 0): 10, (TOPIC, 1): 10}

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
        return source.committed() == {(TOPIC, 0): 20}

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
    destination.gate.set()

    def partition_1_committed() -> bool:
        lane.step()
        return (TOPIC, 1) in source.committed()

    wait_for(partition_1_committed, timeout_s=10, what="the kept partition to commit")
    assert all((TOPIC, 0) not in commit for commit in source.commits)


def test_a_consumer_left_out_of_its_group_after_a_loss_is_replaced(delivery: DeliveryLoop) -> None:
    created: list[FakeSource] = []

    def factory(on_assign: RebalanceCallback, on_revoke: RebalanceCallback, _on_lost: RebalanceCallback) -> FakeSource:
        created.append(FakeSource(messages(4) if not created else [], on_assign, on_revoke))
        return created[-1]

    lane = Lane(destination=GatedDestination(), source_factory=factory, decoder=Decoder(), map_fn=map_one,
                dead_letters=FakeDeadLetters(), delivery=delivery,
                settings=LaneSettings(consume_timeout_s=0.001, rejoin_timeout_s=0.05, commit_interval_s=0.0))
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
