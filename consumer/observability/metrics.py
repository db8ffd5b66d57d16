"""Prometheus metrics, read from the lanes at scrape time.

The per-event path only bumps plain integers in :class:`~consumer.pipeline.lane.LaneStats`; this collector turns them
into metric families when ``/metrics`` is scraped, so metrics cost nothing per event. Histograms (batch size,
batch delivery time) are observed once per batch. Each ``Metrics`` has its own registry: no global state.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumer.errors import dead_letter_reasons

PREFIX = "usage_consumer"


@dataclass
class Tally:
    """One stream's verdicts for one destination: sent, skipped, and dead-lettered by reason (a record that
    must wait is counted when it is finally decided). The verdict counts; the metrics read."""

    sent: int = 0
    skipped: int = 0
    parked: collections.Counter[str] = field(default_factory=collections.Counter)


EVENT_AGE_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Event age at delivery: one hour matters most (Freshsuccess counts usage in the hour an event arrives)."""


class AgeHistogram:
    """How old events were when their destination accepted them, counted per bucket of
    :data:`EVENT_AGE_BUCKETS_S` (the ``le`` bounds; the last count is ``+Inf``).

    Observed once per delivered batch on the lane's thread, from the events' times to the second: events of one
    batch share few distinct seconds, so the cost per event is a ``Counter`` update, not a bucket search."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(EVENT_AGE_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, now_s: float, event_times_s: Iterable[int]) -> None:
        counts = self.counts
        added = 0.0
        for when, events in collections.Counter(event_times_s).items():
            age_s = max(0.0, now_s - when)
            counts[bisect.bisect_left(EVENT_AGE_BUCKETS_S, age_s)] += events
            added += age_s * events
        self.sum_s += added

    def copy(self) -> AgeHistogram:
        other = AgeHistogram()
        other.counts = list(self.counts)
        other.sum_s = self.sum_s
        return other

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus exposes buckets (cumulative, ending at ``+Inf``)."""
        running, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, EVENT_AGE_BUCKETS_S), "+Inf"], self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass(frozen=True)
class LaneSnapshot:
    """What a lane reports at one scrape (:meth:`consumer.pipeline.lane.Lane.snapshot`): counters, state, offsets."""

    name: str
    counters: Mapping[str, int]
    """``consumed``, ``delivered_events``, ``delivered_messages``, ``skipped``, ``decode_retries``,
    ``commits_refused``."""
    dead_lettered: Mapping[str, int]
    failed: bool
    in_flight_batches: int
    paused_partitions: int
    destination_state: str
    committed: Mapping[tuple[str, int], int]
    lag: Mapping[tuple[str, int], int]
    streams: Mapping[str, Tally] = field(default_factory=dict)
    """The verdict's counts per stream (``(none)``: records no stream takes)."""
    lag_seconds: Mapping[tuple[str, int], float] = field(default_factory=dict)
    """Per owned partition, the age of the oldest record consumed and not yet delivered or parked (0: none)."""
    event_ages: AgeHistogram = field(default_factory=AgeHistogram)
    last_commit_timestamp_s: float = 0.0
    """Unix time of the last broker-confirmed commit (the lane's start until its first)."""
    throttled_s: float = 0.0
    """Time the sink's requests waited for its rate cap (``freshpaint.max_requests_per_s``)."""


class Reporting(Protocol):
    """Anything that can report a :class:`LaneSnapshot` (a lane)."""

    def snapshot(self) -> LaneSnapshot: ...


COUNTERS = {
    "consumed": "Records consumed from Kafka.",
    "delivered_events": "Outputs accepted by the destination.",
    "delivered_messages": "Kafka records whose outputs were all accepted.",
    "skipped": "Records no mapping rule selected (committed, not delivered).",
    "decode_retries": "Decode attempts postponed by a transient failure (registry down).",
    "commits_refused": "Commit answers in which the broker refused a partition (each is sent again).",
}
BATCH_EVENT_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
DELIVERY_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The service's metrics; lanes are registered as they start."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lanes: list[Reporting] = []
        self.registry.register(_LaneCollector(lambda: list(self._lanes)))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.batch_events = Histogram(f"{PREFIX}_batch_events", "Outputs per delivered batch.", ["destination"],
                                      buckets=BATCH_EVENT_BUCKETS, registry=self.registry)
        self.batch_delivery_seconds = Histogram(
            f"{PREFIX}_batch_delivery_seconds", "Time from handing a batch to its sink to its acceptance, "
            "retries included.", ["destination"], buckets=DELIVERY_SECONDS_BUCKETS, registry=self.registry)
        self.retries = Counter(f"{PREFIX}_retries", "Requests retried, by destination and reason.",
                               ["destination", "reason"], registry=self.registry)

    def add_lane(self, lane: Reporting) -> None:
        self._lanes.append(lane)

    def on_retry(self, destination: str) -> Callable[[str, float], None]:
        """A sink's ``on_retry`` hook that counts retries for ``destination``."""
        counter = self.retries

        def count(reason: str, _delay_s: float) -> None:
            counter.labels(destination, reason).inc()

        return count

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _LaneCollector(Collector):
    def __init__(self, lanes: Callable[[], list[Reporting]]) -> None:
        self._lanes = lanes

    def collect(self) -> Iterable[Any]:
        return list(self._families())

    def _families(self) -> Iterator[Any]:
        families = {name: CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["destination"])
                    for name, doc in COUNTERS.items()}
        dead = CounterMetricFamily(f"{PREFIX}_dead_lettered", "Records parked in the dead-letter topic.",
                                   labels=["destination", "reason"])
        failed = GaugeMetricFamily(f"{PREFIX}_failed", "1 when the lane stopped on a fatal error.",
                                   labels=["destination"])
        in_flight = GaugeMetricFamily(f"{PREFIX}_in_flight_batches", "Batches handed to the sink, not yet done.",
                                      labels=["destination"])
        paused = GaugeMetricFamily(f"{PREFIX}_paused_partitions", "Partitions paused for backpressure.",
                                   labels=["destination"])
        state = GaugeMetricFamily(f"{PREFIX}_destination_state", "1 for the destination's current state.",
                                  labels=["destination", "state"])
        committed = GaugeMetricFamily(f"{PREFIX}_committed_offset",
                                      "Next offset the broker confirmed as committed, per owned partition.",
                                      labels=["destination", "topic", "partition"])
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag", "High watermark minus committed offset.",
                                labels=["destination", "topic", "partition"])
        lag_seconds = GaugeMetricFamily(f"{PREFIX}_lag_seconds", "Age of the oldest record consumed and not yet "
                                        "delivered or dead-lettered, per owned partition (0: none).",
                                        labels=["destination", "topic", "partition"])
        event_age = HistogramMetricFamily(f"{PREFIX}_event_age_seconds", "Now minus the event's own time when "
                                          "the destination accepted it.", labels=["destination"])
        throttled = CounterMetricFamily(f"{PREFIX}_throttled_seconds", "Time requests waited for the "
                                        "destination's rate cap (max_requests_per_s), summed over requests.",
                                        labels=["destination"])
        last_commit = GaugeMetricFamily(f"{PREFIX}_last_commit_timestamp_seconds", "Unix time of the last "
                                        "broker-confirmed commit (the lane's start until its first).",
                                        labels=["destination"])
        by_stream = CounterMetricFamily(f"{PREFIX}_stream_records", "Records judged, by stream and verdict (send, "
                                        "skip, dead_letter); a destination's later refusal is in dead_lettered.",
                                        labels=["destination", "stream", "verdict"])
        stream_dead = CounterMetricFamily(f"{PREFIX}_stream_dead_lettered", "Records the verdict dead-lettered, "
                                          "by stream and reason.", labels=["destination", "stream", "reason"])
        for lane in self._lanes():
            snap = lane.snapshot()
            name = snap.name
            for metric in COUNTERS:
                families[metric].add_metric([name], snap.counters[metric])
            for reason in sorted({*dead_letter_reasons(), *snap.dead_lettered}):
                dead.add_metric([name, reason], snap.dead_lettered.get(reason, 0))
            failed.add_metric([name], 1 if snap.failed else 0)
            in_flight.add_metric([name], snap.in_flight_batches)
            paused.add_metric([name], snap.paused_partitions)
            for known in ("ok", "retrying", "bad_credentials"):
                state.add_metric([name, known], 1 if snap.destination_state == known else 0)
            for (topic, partition), offset in snap.committed.items():
                committed.add_metric([name, topic, str(partition)], offset)
            for (topic, partition), value in snap.lag.items():
                lag.add_metric([name, topic, str(partition)], value)
            for (topic, partition), age_s in snap.lag_seconds.items():
                lag_seconds.add_metric([name, topic, str(partition)], age_s)
            event_age.add_metric([name], snap.event_ages.cumulative(), snap.event_ages.sum_s)
            last_commit.add_metric([name], snap.last_commit_timestamp_s)
            throttled.add_metric([name], snap.throttled_s)
            for stream, tally in snap.streams.items():
                by_stream.add_metric([name, stream, "send"], tally.sent)
                by_stream.add_metric([name, stream, "skip"], tally.skipped)
                by_stream.add_metric([name, stream, "dead_letter"], sum(tally.parked.values()))
                for reason, count in tally.parked.items():
                    stream_dead.add_metric([name, stream, reason], count)
        yield from families.values()
        yield from (dead, failed, in_flight, paused, state, committed, lag, lag_seconds, event_age, last_commit,
                    throttled, by_stream, stream_dead)
