"""Freshpaint's own limits (issue 16): events over the configured caps are dead-lettered ``too_large`` and
nothing else is affected; ``max_requests_per_s`` paces the requests a lane sends."""

from __future__ import annotations

import time
from typing import Any

import pytest

from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.eventgen import realistic_events
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("fresh_emulators")

def feature_events(count: int, seed: int) -> list[dict[str, Any]]:
    return [e for e in realistic_events(count * 3, seed=seed) if e["event_type"] == "feature_used"][:count]


def test_events_over_the_caps_are_dead_lettered_too_large_and_the_rest_delivered(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = feature_events(30, seed=61)
    many = dict(events[3], properties={f"k{i}": "v" for i in range(300)})  # over 255 properties
    huge = dict(events[7], properties={"blob": "x" * 5000})  # one property, a body over 4,000 bytes
    events[3], events[7] = many, huge
    stack.produce(topic, [(b"k", stack.encode(schema_id, e)) for e in events], partition=0)
    settings = stack.settings(topic, dlq, freshpaint={"max_request_bytes": 4000})

    with RunningService(settings) as running:
        stack.emulators.freshpaint.wait_for_events(len(events) - 2, timeout_s=60)
        stack.emulators.freshsuccess.wait_for_events(len(events), timeout_s=60)  # Freshsuccess is not capped
        end = stack.end_offsets(topic)
        for destination in ("freshpaint", "freshsuccess"):
            group = settings.group_for(destination)
            wait_for(lambda group=group: stack.committed(group, topic) == end, timeout_s=30,  # type: ignore[misc]
                     what=f"{destination} committed past the capped events")
        parked = dict(running.lane("freshpaint").stats.dead_lettered)

    assert parked == {"too_large": 2}
    letters = {int(dict(letter.headers())["dlq.source_offset"]): letter for letter in stack.read_all(dlq)}
    assert sorted(letters) == [3, 7]
    messages = {offset: dict(letter.headers())["dlq.error_message"].decode() for offset, letter in letters.items()}
    assert "max_properties_per_event=255" in messages[3]
    assert "max_request_bytes=4000" in messages[7]
    assert all(dict(letter.headers())["dlq.reason"] == b"too_large" for letter in letters.values())
    delivered = {e["properties"]["$insert_id"] for e in stack.emulators.freshpaint.events()}
    assert len(delivered) == len(events) - 2


def test_a_lane_paced_by_max_requests_per_s_sends_no_faster(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    events = feature_events(150, seed=62)
    stack.produce_events(topic, schema_id, events)
    rate_per_s = 100.0
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False},
                              freshpaint={"max_requests_per_s": rate_per_s})

    with RunningService(settings) as running:
        started = time.monotonic()
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
        took_s = time.monotonic() - started
        throttled_s = running.lane("freshpaint").snapshot().throttled_s

    assert took_s >= (len(events) - rate_per_s / 10) / rate_per_s  # 150 events at 100/s, a 10-event burst
    assert throttled_s > 0
