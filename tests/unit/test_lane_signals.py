"""The signals an operator reads to see whether a lane keeps up (issue 15): lag in seconds, the age of events
at delivery and the time of the last broker-confirmed commit, per lane and in the ``/metrics`` exposition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.decoding.schemas import event_time_field
from consumer.errors import dead_letter_reasons
from consumer.observability.metrics import EVENT_AGE_BUCKETS_S, AgeHistogram, Metrics
from consumer.pipeline.lane import Lane, LaneSettings
from consumer.pipeline.ports import SourceCallbacks
from consumer.pipeline.verdict import Judge
from consumer.testing.fakes import kafka_message
from consumer.testing.stepping import ManualClock, SteppedDelivery, step_until
from tests.unit.test_lane import P0, P1, TICK_S, TOPIC, FakeDeadLetters, FakeSource, RecordingDestination, drain

WALL_START_S = 1_800_000_000.0
"""Unix time at the lane clock's zero: Kafka timestamps and event times are compared with it."""


@pytest.fixture
def delivery() -> Iterator[SteppedDelivery]:
    with SteppedDelivery(ManualClock()) as stepped:
        yield stepped


class TimedDecoder:
    """Events ``{"n": n, "occurred_at": ms}`` from values ``b"n:ms"``."""

    def decode(self, value: bytes | None) -> dict[str, Any]:
        n, occurred_at_ms = (value or b"0:0").split(b":")
        return {"n": int(n), "occurred_at": int(occurred_at_ms)}


def map_n(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    return [{"n": record["n"]}]


def timed_messages(produced_at_s: list[float], occurred_at_s: list[float]) -> list[Any]:
    """Message ``i`` on partition ``i % 2``, stamped by Kafka at ``produced_at_s[i]``, for an event of
    ``occurred_at_s[i]``."""
    return [kafka_message(TOPIC, i % 2, i // 2, f"{i}:{int(when * 1000)}".encode(),
                          timestamp_ms=int(stamped * 1000))
            for i, (stamped, when) in enumerate(zip(produced_at_s, occurred_at_s, strict=True))]


def timed_lane(messages: list[Any], destination: RecordingDestination, delivery: SteppedDelivery,
               metrics: Metrics | None = None) -> tuple[Lane, FakeSource]:
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(FakeSource(messages, callbacks))
        return sources[0]

    clock = delivery.clock
    judge = Judge(decoder=TimedDecoder(), map_fn=map_n, max_event_bytes=1 << 20, ndjson=True,
                  event_time=("occurred_at", 1000))
    lane = Lane(sink=destination, source_factory=factory, judge=judge, dead_letters=FakeDeadLetters(clock),
                delivery=delivery, metrics=metrics, clock=clock.now, wall_clock=lambda: WALL_START_S + clock.now(),
                settings=LaneSettings(consume_batch_size=10, consume_timeout_s=0.001, max_events=4,
                                      max_wait_s=TICK_S, max_in_flight_batches=2))
    if metrics is not None:
        metrics.add_lane(lane)
    return lane, sources[0]


def test_lag_seconds_is_the_age_of_the_oldest_undelivered_record_and_falls_to_zero_once_it_is_delivered(
        delivery: SteppedDelivery) -> None:
    produced = [WALL_START_S - 100 + i for i in range(6)]  # P0: records 0, 2, 4; P1: 1, 3, 5
    destination = RecordingDestination(open_gate=False)
    lane, source = timed_lane(timed_messages(produced, produced), destination, delivery)
    step_until(lane.step, delivery, lambda: lane.stats.consumed == 6 and delivery.clock.now() > 1.0,
               tick_s=TICK_S, max_steps=500, what="every record consumed and a lag refresh due")
    lane.step()  # the refresh sees the records held by the closed gate

    now_s = WALL_START_S + delivery.clock.now()
    assert lane.snapshot().lag_seconds == {P0: pytest.approx(now_s - produced[0]),
                                           P1: pytest.approx(now_s - produced[1])}

    destination.gate.set()
    drain(lane, source, delivery, {P0: 3, P1: 3}, "every record delivered and committed", max_steps=500)
    delivery.clock.advance(1.0)
    lane.step()
    assert lane.snapshot().lag_seconds == {P0: 0.0, P1: 0.0}


def test_the_age_of_each_delivered_event_is_counted_from_its_own_time_not_the_kafka_timestamp(
        delivery: SteppedDelivery) -> None:
    occurred = [WALL_START_S - 2 * 3600, WALL_START_S - 10, WALL_START_S - 10, WALL_START_S - 400]
    destination = RecordingDestination()
    lane, source = timed_lane(timed_messages([WALL_START_S] * 4, occurred), destination, delivery)
    drain(lane, source, delivery, {P0: 2, P1: 2}, "every record delivered and committed", max_steps=500)

    ages = lane.snapshot().event_ages
    delivered_s = WALL_START_S + delivery.clock.now()
    expected = AgeHistogram()
    expected.observe(delivered_s, [int(t) for t in occurred])
    assert ages.cumulative() == expected.cumulative()
    assert dict(ages.cumulative())["3600.0"] == 3  # the two-hour-old event is the one past the hour
    assert dict(ages.cumulative())["+Inf"] == 4
    assert ages.sum_s == pytest.approx(sum(delivered_s - t for t in occurred), abs=4)


def test_the_last_commit_time_is_the_start_until_the_broker_confirms_a_commit_then_the_confirmation(
        delivery: SteppedDelivery) -> None:
    destination = RecordingDestination(open_gate=False)
    produced = [WALL_START_S] * 2
    lane, source = timed_lane(timed_messages(produced, produced), destination, delivery)
    step_until(lane.step, delivery, lambda: delivery.clock.now() >= 30, tick_s=1.0, max_steps=100,
               what="half a minute with nothing delivered")
    assert lane.snapshot().last_commit_timestamp_s == pytest.approx(WALL_START_S)

    destination.gate.set()
    drain(lane, source, delivery, {P0: 1, P1: 1}, "both records committed", max_steps=500)
    confirmed_s = WALL_START_S + delivery.clock.now()
    delivery.clock.advance(5.0)
    assert lane.snapshot().last_commit_timestamp_s == pytest.approx(confirmed_s, abs=TICK_S)


def test_the_exposition_carries_lag_seconds_event_age_buckets_last_commit_and_process_metrics(
        delivery: SteppedDelivery) -> None:
    metrics = Metrics()
    occurred = [WALL_START_S - 30, WALL_START_S - 5000]
    lane, source = timed_lane(timed_messages([WALL_START_S - 60] * 2, occurred), RecordingDestination(),
                              delivery, metrics)
    drain(lane, source, delivery, {P0: 1, P1: 1}, "both records committed", max_steps=500)

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples}
    lane_labels = (("destination", "freshsuccess"),)
    assert samples[("usage_consumer_event_age_seconds_count", lane_labels)] == 2
    assert samples[("usage_consumer_event_age_seconds_bucket", (*lane_labels, ("le", "3600.0")))] == 1
    assert samples[("usage_consumer_event_age_seconds_bucket", (*lane_labels, ("le", "60.0")))] == 1
    assert len([key for key in samples if key[0] == "usage_consumer_event_age_seconds_bucket"]) == \
        len(EVENT_AGE_BUCKETS_S) + 1
    partition_0 = (*lane_labels, ("partition", "0"), ("topic", TOPIC))
    assert samples[("usage_consumer_lag_seconds", partition_0)] == 0.0
    assert samples[("usage_consumer_last_commit_timestamp_seconds", lane_labels)] > WALL_START_S
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert ("process_cpu_seconds_total", ()) in samples


@pytest.mark.parametrize(("fields", "expected"), [
    ([{"name": "id", "type": "string"},
      {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}], ("occurred_at", 1000)),
    ([{"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
      {"name": "later", "type": {"type": "long", "logicalType": "timestamp-millis"}}], ("at", 1_000_000)),
    ([{"name": "day", "type": {"type": "int", "logicalType": "date"}}, {"name": "n", "type": "long"}], None),
], ids=["millis", "micros-or-null-first", "none"])
def test_the_event_time_is_the_first_top_level_timestamp_field(fields: list[dict[str, Any]],
                                                                expected: tuple[str, int] | None) -> None:
    assert event_time_field({"type": "record", "name": "E", "fields": fields}) == expected


def test_every_dead_letter_reason_is_exported_at_zero_before_its_first_letter(delivery: SteppedDelivery) -> None:
    metrics = Metrics()
    produced = [WALL_START_S] * 2
    timed_lane(timed_messages(produced, produced), RecordingDestination(), delivery, metrics)
    samples = {s.labels["reason"]: s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples if s.name == "usage_consumer_dead_lettered_total"}
    assert samples == dict.fromkeys(dead_letter_reasons(), 0.0)
    assert {"undecodable", "mapping_failed", "rejected", "no_stream", "schema_mismatch"} <= samples.keys()
