"""SIGTERM under load: exit 0 within the shutdown deadline with everything delivered committed.

After the exit, the broker's committed offsets sit exactly after the last delivered event: every event the
process delivered lies below them (nothing delivered is left uncommitted, so a restart repeats nothing)
and nothing below them is undelivered. A restart then delivers the rest.
"""

from __future__ import annotations

from typing import Any

from consumer.testing.emulators import Fault
from consumer.testing.faultkit import DESTINATIONS, Expected, Scenario, received
from consumer.testing.waiting import wait_until

RATE_PER_S = 400
SHUTDOWN_TIMEOUT_S = 10.0
EXIT_SLACK_S = 3.0
"""After the deadline: the final commit, leaving the group, closing the clients."""


def uncommitted_deliveries(scenario: Scenario, expected: Expected, destination: str) -> list[str]:
    """Delivered events at or past the committed offset: what a restart would deliver again."""
    committed = scenario.committed(destination)
    got = received(scenario.emulators, destination)
    return sorted(f"{p}@{o}" for key, (p, o) in expected.of_destination(destination).items()
                  if key in got and o >= committed.get(p, 0))


def test_sigterm_under_load_exits_0_in_time_with_everything_delivered_committed(
        make_scenario: Any, seed: int, figures: Any) -> None:
    scenario = make_scenario("sigterm")
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    consumer = scenario.start_consumer("consumer", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    scenario.wait_progress(1500, timeout_s=90)

    code, took_s = consumer.terminate()  # the producer keeps writing: the consumer stops mid-stream
    assert code == 0, consumer.log_tail()
    assert took_s < SHUTDOWN_TIMEOUT_S, f"exit took {took_s:.1f}s, deadline {SHUTDOWN_TIMEOUT_S}s"
    at_exit = scenario.expected()
    delivered_at_exit = {d: scenario.accepted(d) for d in DESTINATIONS}
    for destination in DESTINATIONS:
        assert uncommitted_deliveries(scenario, at_exit, destination) == []
    scenario.check_commits()
    behind = {d: sum(scenario.end_offsets().values()) - sum(scenario.committed(d).values()) for d in DESTINATIONS}

    restarted = scenario.start_consumer("consumer-restarted", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    scenario.wait_progress(300, timeout_s=90)
    producer.stop()
    scenario.wait_all_delivered(timeout_s=120)
    scenario.wait_committed_to_end(timeout_s=60)
    code, took2_s = restarted.terminate()
    assert code == 0, restarted.log_tail()

    result = scenario.figures(shutdown_timeout_s=SHUTDOWN_TIMEOUT_S, exit_s=[round(took_s, 2), round(took2_s, 2)],
                              delivered_before_sigterm=delivered_at_exit, left_for_restart=behind)
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
        assert result[destination]["duplicates"] == 0, f"a clean shutdown leaves nothing to deliver twice: {result}"


def test_sigterm_during_an_outage_exits_at_the_deadline_without_committing_undelivered_events(
        make_scenario: Any, seed: int, figures: Any) -> None:
    deadline_s = 3.0
    scenario = make_scenario("sigterm-outage")
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    consumer = scenario.start_consumer("consumer", shutdown_timeout_s=deadline_s)
    scenario.wait_progress(500, timeout_s=90)
    outage = scenario.emulators.freshsuccess
    refused = outage.stats()["faults_injected"]
    outage.inject(Fault(status=503))
    # Freshsuccess refuses batches now, while events keep arriving: shutdown cannot flush them all.
    wait_until(lambda: outage.stats()["faults_injected"] >= refused + 2, timeout_s=30,
               what="Freshsuccess to refuse batches", diagnose=scenario.diagnose)
    code, took_s = consumer.terminate()
    assert code == 0, consumer.log_tail()
    assert deadline_s - 0.5 <= took_s < deadline_s + EXIT_SLACK_S, \
        f"exit took {took_s:.1f}s with a {deadline_s}s deadline"
    lag = scenario.check_commits()  # Freshsuccess's offsets stop before its undelivered events
    assert lag["freshsuccess"] > 0, "the outage should have left Freshsuccess events undelivered"
    assert uncommitted_deliveries(scenario, scenario.expected(), "freshpaint") == []

    scenario.emulators.freshsuccess.clear_faults()
    restarted = scenario.start_consumer("consumer-restarted")
    producer.stop()
    scenario.wait_all_delivered(timeout_s=120)
    scenario.wait_committed_to_end(timeout_s=60)
    code, _ = restarted.terminate()
    assert code == 0, restarted.log_tail()
    result = scenario.figures(shutdown_timeout_s=deadline_s, exit_s=round(took_s, 2),
                              left_uncommitted_at_exit=lag)
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
