"""Commits that cannot succeed are retried, and never reported as done before the broker confirmed them.

This test owns its broker. The consumer reads a finished stream while both destinations answer 503, so
nothing is delivered and nothing is committed. Then the broker is frozen (SIGSTOP: it accepts connections but
answers nothing) and the destinations recover: every event is delivered while no commit the lanes send is
answered (librdkafka keeps retrying each by itself; the lanes send a new one after ``commit.answer_timeout_s``,
3 s here). While the broker is frozen ``/metrics`` must not show one of those offsets as committed, and the
lanes must be sending them again. When the broker thaws, a retry gets
through: the broker holds the end of the topic, ``/metrics`` says exactly what the broker holds, and since the
member kept its partitions (its session outlives the freeze) nothing is delivered twice.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from consumer.testing.devstack import DevStack
from consumer.testing.emulators import Fault
from consumer.testing.faultkit import DESTINATIONS
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.waiting import wait_until

EVENTS = 600


def test_failed_commits_are_retried_and_reported_only_once_the_broker_holds_them(
        make_scenario: Any, own_broker: tuple[LocalKafka, DevStack], seed: int, figures: Any) -> None:
    broker, stack = own_broker
    scenario = make_scenario("commit-confirmed", stack=stack)
    emulators = scenario.emulators
    outage = Fault(status=503)
    emulators.freshsuccess.inject(outage)
    emulators.freshpaint.inject(outage)
    producer = scenario.start_producer(rate_per_s=600, seed=seed)
    wait_until(lambda: producer.acked >= EVENTS, timeout_s=60, what=f"{EVENTS} events produced")
    producer.stop()
    end = {p: o for p, o in scenario.end_offsets().items() if o > 0}

    # A session that outlives the freeze: the member keeps its partitions, so what it delivered while the
    # broker was frozen can only reach the broker through commits sent again after it thawed.
    consumer = scenario.start_consumer("consumer", kafka={"session_timeout_ms": 90_000},
                                       commit={"answer_timeout_s": 3.0})

    def consumed_everything() -> bool:
        consumed = {labels["destination"]: value
                    for labels, value in consumer.metrics().get("usage_consumer_consumed_total", [])}
        return all(consumed.get(d, 0) >= sum(end.values()) for d in DESTINATIONS)

    wait_until(consumed_everything, timeout_s=90, interval_s=0.25, what="the consumer to read the whole stream",
               diagnose=consumer.log_tail)
    scenario.check_commits()  # nothing delivered yet: only skipped events may be committed past

    os.killpg(broker.pid, signal.SIGSTOP)
    try:
        emulators.freshsuccess.clear_faults()
        emulators.freshpaint.clear_faults()
        scenario.wait_all_delivered(timeout_s=120)
        wait_until(lambda: consumer.log_text().count("commit_unanswered") >= 2 * len(DESTINATIONS), timeout_s=60,
                   interval_s=0.25, what="unanswered commits to be sent again", diagnose=consumer.log_tail)
        # Delivered while the broker is frozen: every commit fails, and none may be reported as done.
        reported_while_down = consumer.committed_offsets(scenario.topic)
        for destination in DESTINATIONS:
            for partition, offset in reported_while_down.get(destination, {}).items():
                assert offset < end.get(partition, 0), \
                    f"{destination}[{partition}] reported {offset} committed while the broker was frozen"
    finally:
        os.killpg(broker.pid, signal.SIGCONT)

    wait_until(lambda: all(scenario.committed(d) == end for d in DESTINATIONS), timeout_s=90, interval_s=0.25,
               what=f"both groups to hold the end offsets {end} after the broker thawed",
               diagnose=scenario.diagnose)

    def reported_matches_broker() -> bool:
        reported = consumer.committed_offsets(scenario.topic)
        return all(reported.get(d) == scenario.committed(d) for d in DESTINATIONS)

    wait_until(reported_matches_broker, timeout_s=30, interval_s=0.25, what="/metrics to match the broker",
               diagnose=lambda: f"reported {consumer.committed_offsets(scenario.topic)}")
    log = consumer.log_text()
    retried = log.count("commit_refused") + log.count("commit_unanswered")
    assert consumer.alive(), consumer.log_tail()
    code, _ = consumer.terminate()
    assert code == 0, consumer.log_tail()

    result = scenario.figures(commit_answers_refused_or_lost=retried, reported_while_broker_frozen=reported_while_down)
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
        assert result[destination]["unexpected"] == 0, result
        assert result[destination]["duplicates"] == 0, result
