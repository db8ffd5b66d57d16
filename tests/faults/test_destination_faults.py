"""A destination answers 5xx, times out, or drops connections for a period while the stream flows.

Throughout the fault the committed offsets read from the broker never pass an event the destination has
not received; after it, everything arrives and both groups commit to the end of the topic. Both destinations
are faulted at once: each lane has its own consumer group, retries and backpressure.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from consumer.testing.emulators import Emulators, Fault
from consumer.testing.faultkit import DESTINATIONS

RATE_PER_S = 300
FAULT_S = 5.0
CLIENT_TIMEOUT_S = 1.0

FAULTS = {
    "http_503": Fault(status=503, duration_s=FAULT_S),
    # A slow server: it answers (and keeps the events) after the client gave up, so the retry repeats them.
    "timeout": Fault(latency_s=CLIENT_TIMEOUT_S * 2.5, duration_s=FAULT_S),
    "dropped_connection": Fault(drop_connection=True, duration_s=FAULT_S),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_a_failing_destination_holds_commits_at_the_last_delivered_event_and_then_catches_up(
        make_scenario: Any, own_emulators: Emulators, seed: int, figures: Any, kind: str) -> None:
    # Only the timeout case shortens the client timeout: elsewhere a slow answer from a busy emulator
    # would be a timeout too, and its retry a (legitimate) repeat.
    timeouts = {"timeout_s": CLIENT_TIMEOUT_S} if kind == "timeout" else {}
    scenario = make_scenario(f"dest-{kind}", emulators=own_emulators,
                             sections={"freshsuccess": timeouts, "freshpaint": timeouts})
    emulators = scenario.emulators
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    consumer = scenario.start_consumer("consumer")
    scenario.wait_progress(300, timeout_s=90)

    fault = FAULTS[kind]
    emulators.freshsuccess.inject(fault)
    emulators.freshpaint.inject(fault)
    ends = time.monotonic() + FAULT_S
    samples = 0
    max_lag = dict.fromkeys(DESTINATIONS, 0)
    while time.monotonic() < ends:  # sample the broker's committed offsets all through the fault
        lag = scenario.check_commits()
        max_lag = {d: max(max_lag[d], lag[d]) for d in DESTINATIONS}
        samples += 1
        time.sleep(0.3)
    assert samples >= 3
    for emulator in (emulators.freshsuccess, emulators.freshpaint):
        assert emulator.stats()["faults_injected"] > 0, f"{emulator.name} never saw the fault"

    scenario.wait_progress(300, timeout_s=90)  # recovered while the stream still flows
    scenario.drain(producer)
    assert consumer.alive(), "the consumer must ride out a destination fault without restarting"
    code, _ = consumer.terminate()
    assert code == 0, consumer.log_tail()

    result = scenario.figures(fault=kind, fault_s=FAULT_S, commit_samples_during_fault=samples,
                              max_uncommitted_during_fault=max_lag,
                              faults_injected={e.name: e.stats()["faults_injected"]
                                               for e in (emulators.freshsuccess, emulators.freshpaint)})
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
        assert result[destination]["unexpected"] == 0, result
    assert result["freshpaint"]["duplicates_after_dedup"] == 0, result
    if kind != "timeout":  # refused requests were never kept, so nothing can repeat
        assert result["freshsuccess"]["duplicates"] == 0, result
