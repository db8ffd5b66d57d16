"""Memory through a 60-second Freshsuccess outage while the producer keeps writing.

The Freshsuccess lane fills its bounded buffers, pauses its partitions and keeps polling; Freshpaint keeps
delivering. The consumer's resident set (``VmRSS``) is sampled every second: it must stay under
``MAX_RSS_MIB`` and grow by less than ``MAX_GROWTH_MIB`` from the start of the outage to its end. The member
must stay in its group although the outage outlasts ``max.poll.interval.ms`` (set to 10 s here), and once
Freshsuccess is back everything is delivered.
"""

from __future__ import annotations

import time
from typing import Any

from consumer.testing.emulators import Fault
from consumer.testing.faultkit import DESTINATIONS

OUTAGE_S = 60.0
RATE_PER_S = 600
MAX_RSS_MIB = 250
MAX_GROWTH_MIB = 40


def test_rss_stays_flat_through_a_60s_freshsuccess_outage_with_the_producer_writing(
        make_scenario: Any, seed: int, figures: Any) -> None:
    scenario = make_scenario("memory", sections={"kafka": {"max_poll_interval_ms": 10_000}})
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    consumer = scenario.start_consumer("consumer")
    scenario.wait_progress(1500, timeout_s=90)

    outage = scenario.emulators.freshsuccess
    outage.inject(Fault(status=503))
    produced_at_start = producer.produced
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    tick = started
    while True:  # one RSS sample a second, on a fixed cadence
        rss = consumer.rss_kib()
        assert rss is not None, f"the consumer died during the outage\n{consumer.log_tail()}"
        samples.append((round(time.monotonic() - started, 1), rss))
        if time.monotonic() - started >= OUTAGE_S:
            break
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    lag = scenario.check_commits()
    outage.clear_faults()
    produced_during = producer.produced - produced_at_start
    refused = outage.stats()["faults_injected"]

    scenario.wait_progress(300, timeout_s=120)
    scenario.drain(producer, deliver_timeout_s=180, commit_timeout_s=90)
    assert consumer.alive()
    code, _ = consumer.terminate()
    assert code == 0, consumer.log_tail()

    mib = [kib / 1024 for _, kib in samples]
    rss_figures = {"start": round(mib[0], 1), "end": round(mib[-1], 1), "min": round(min(mib), 1),
                   "max": round(max(mib), 1), "growth": round(mib[-1] - mib[0], 1),
                   "peak_growth": round(max(mib) - mib[0], 1), "samples": len(mib)}
    print(f"RSS during the outage (MiB): {rss_figures}")
    print("samples (s, KiB):", samples)
    left_group = [e for e in consumer.log_events() if e.get("event") in ("partitions_lost", "partitions_revoked")
                  and e.get("level") != "debug"]
    result = scenario.figures(outage_s=OUTAGE_S, rate_per_s=RATE_PER_S, produced_during_outage=produced_during,
                              refused_requests=refused, uncommitted_at_outage_end=lag, rss_mib=rss_figures,
                              rss_limit_mib=MAX_RSS_MIB, rss_growth_limit_mib=MAX_GROWTH_MIB)
    figures.record(result)

    assert len(samples) >= OUTAGE_S
    assert max(mib) < MAX_RSS_MIB, rss_figures
    assert mib[-1] - mib[0] < MAX_GROWTH_MIB, rss_figures
    assert refused > 0
    assert lag["freshsuccess"] > produced_during / 2, "the outage should have held Freshsuccess back"
    # Revocations happen only at the final shutdown: the paused member kept its place in the group.
    assert len(left_group) == len(DESTINATIONS), left_group
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
    assert result["freshsuccess"]["duplicates"] == 0, result
