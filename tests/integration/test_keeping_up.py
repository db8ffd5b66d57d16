"""Is it keeping up? With a destination held down, lag in seconds rises in ``/metrics`` and in ``usage-consumer
status --json``, and the events it held are counted old at delivery; after recovery lag is back to 0 and fresh
events are counted young (issue 15)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from consumer.config import load_settings
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import realistic_events
from tests.helpers import wait_for
from tests.integration.test_pipeline import metric_values
from tests.integration.test_tools_status import of, status

OUTAGE_S = 6.0
"""How long Freshsuccess refuses everything: every event of the first wave is at least this old when delivered."""


pytestmark = pytest.mark.usefixtures("fresh_emulators", "tool_environment")

def happening_now(count: int, seed: int) -> list[dict[str, Any]]:
    """Events of the Freshsuccess kinds that happened just now (their ``occurred_at`` is the wall clock)."""
    now_ms = int(time.time() * 1000)
    events = [e for e in realistic_events(count * 3, seed=seed) if e["event_type"] == "feature_used"][:count]
    for event in events:
        event["occurred_at"] = now_ms
    return events


def freshsuccess(text: str, name: str) -> dict[Any, float]:
    return {key: value for key, value in metric_values(text, name).items()
            if ("destination", "freshsuccess") in key}


def age_bucket(text: str, le: str) -> float:
    return freshsuccess(text, "usage_consumer_event_age_seconds_bucket")[
        (("destination", "freshsuccess"), ("le", le))]


def test_a_destination_outage_raises_lag_seconds_and_event_age_and_both_fall_back_after_recovery(
        stack: DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    config = stack.config_file(topic, dlq)
    settings = load_settings(config, environ=DevStack.secrets_env())
    first = happening_now(40, seed=51)

    with RunningService(settings) as running:
        health = running.service.health
        assert health is not None
        metrics_url = f"http://127.0.0.1:{health.port}/metrics"

        def exposition() -> str:
            return httpx.get(metrics_url).text

        stack.emulators.freshsuccess.inject(Fault(status=503, duration_s=600))
        produced_at = time.time()
        stack.produce_events(topic, schema_id, first)

        def lag_seconds() -> list[float]:
            return list(freshsuccess(exposition(), "usage_consumer_lag_seconds").values())

        wait_for(lambda: len(lag_seconds()) == 2 and max(lag_seconds()) >= OUTAGE_S, timeout_s=60,
                 what=f"freshsuccess lag of at least {OUTAGE_S}s while it is down")
        held = time.time() - produced_at
        assert max(lag_seconds()) <= held + 1  # the age of the oldest record waiting, not anything larger
        shown = of(status(capsys, config), "freshsuccess")  # from Kafka alone: the next uncommitted record
        assert shown["lag_messages"] == len(first)
        assert OUTAGE_S <= shown["lag_s"] <= time.time() - produced_at + 1
        assert freshsuccess(exposition(), "usage_consumer_event_age_seconds_count") == {
            (("destination", "freshsuccess"),): 0}
        assert stack.emulators.freshsuccess.events() == []

        stack.emulators.freshsuccess.clear_faults()
        stack.emulators.freshsuccess.wait_for_events(len(first), timeout_s=60)
        wait_for(lambda: lag_seconds() == [0.0, 0.0], timeout_s=30, what="freshsuccess lag back to 0 seconds")
        wait_for(lambda: of(status(capsys, config), "freshsuccess")["lag_s"] == 0, timeout_s=30,
                 what="status: freshsuccess lag back to 0 seconds once its commits land")
        text = exposition()
        assert freshsuccess(text, "usage_consumer_event_age_seconds_count")[
            (("destination", "freshsuccess"),)] == len(first)
        assert age_bucket(text, "5.0") == 0  # every event of the outage waited longer than that

        second = happening_now(30, seed=52)
        stack.produce_events(topic, schema_id, second)
        stack.emulators.freshsuccess.wait_for_events(len(first) + len(second), timeout_s=60)
        wait_for(lambda: age_bucket(exposition(), "+Inf") == len(first) + len(second), timeout_s=30,
                 what="the second wave counted")
        assert age_bucket(exposition(), "5.0") == len(second)  # delivered fresh: the age fell back
