"""A share of malformed records in a flowing stream: every one dead-lettered with its reason, the rest delivered."""

from __future__ import annotations

from collections import Counter
from typing import Any

from consumer.testing.faultkit import DESTINATIONS

RATE_PER_S = 400
RECORDS = 2500
MALFORMED_EVERY = 25  # 4% of the stream


def test_malformed_records_are_dead_lettered_with_reasons_and_the_rest_delivered(
        make_scenario: Any, seed: int, figures: Any) -> None:
    scenario = make_scenario("malformed")
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed, malformed_every=MALFORMED_EVERY,
                                       limit=RECORDS)
    consumer = scenario.start_consumer("consumer")
    producer.wait_acked(RECORDS, timeout_s=60)
    scenario.drain(producer, deliver_timeout_s=90)
    code, _ = consumer.terminate()
    assert code == 0, consumer.log_tail()

    expected = scenario.expected()
    assert len(expected.malformed) == RECORDS // MALFORMED_EVERY
    # Each lane parks each malformed record once, with the reason its kind of damage calls for.
    letters = scenario.dead_letters()
    parked: Counter[tuple[str, int, int]] = Counter()
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        placement = (int(headers["dlq.source_partition"]), int(headers["dlq.source_offset"]))
        assert headers["dlq.source_topic"] == scenario.topic
        assert placement in expected.malformed, f"a valid record was dead-lettered: {headers}"
        assert headers["dlq.reason"] == expected.malformed[placement], headers
        assert headers["dlq.error_message"]
        parked[(headers["dlq.destination"], *placement)] += 1
    for destination in DESTINATIONS:
        assert {(p, o) for d, p, o in parked if d == destination} == set(expected.malformed)
    assert set(parked.values()) == {1}
    # Everything else arrived, and nothing that was never produced.
    result = scenario.figures()
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, result
        assert result[destination]["unexpected"] == 0, result
    scenario.check_commits()
