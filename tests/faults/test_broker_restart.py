"""The broker stops and starts again mid-stream: the consumer rides it out without a restart of its own.

This test owns its broker (not the session's) and restarts it with SIGTERM on the same ports and data, as a
rolling restart of a one-node cluster would. The consumer process must keep running, reconnect, resume
delivering, and end with everything delivered and committed.
"""

from __future__ import annotations

from typing import Any

from consumer.testing.devstack import DevStack
from consumer.testing.faultkit import DESTINATIONS
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.waiting import wait_until

RATE_PER_S = 300


def test_the_consumer_recovers_from_a_broker_restart_without_restarting_itself(
        make_scenario: Any, own_broker: tuple[LocalKafka, DevStack], seed: int, figures: Any) -> None:
    broker, stack = own_broker
    scenario = make_scenario("broker-restart", stack=stack)
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    consumer = scenario.start_consumer("consumer")
    scenario.wait_progress(500, timeout_s=90)

    before = {d: scenario.accepted(d) for d in DESTINATIONS}
    broker.restart()
    restarted_at = producer.produced
    # Progress after the restart on events written after it: the consumer is reading from the new broker.
    wait_until(lambda: producer.acked > restarted_at + 300, timeout_s=90, what="the producer to resume",
               diagnose=lambda: f"broker pid {broker.pid}, log tail:\n{broker.log_tail(120)}")
    scenario.wait_progress(300, timeout_s=120)
    assert consumer.alive(), consumer.log_tail()
    scenario.drain(producer, commit_timeout_s=90)
    assert consumer.alive(), "the consumer must not need a restart of its own"
    code, _ = consumer.terminate()
    assert code == 0, consumer.log_tail()
    assert len(scenario.processes) == 1

    result = scenario.figures(delivered_before_restart=before)
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
        assert result[destination]["unexpected"] == 0, result
    assert result["freshpaint"]["duplicates_after_dedup"] == 0, result
