"""The service at its edges on a real broker: a failed start closes what it opened, log lines name their lane."""

from __future__ import annotations

import os

import pytest
import structlog

from consumer.app.service import Service
from consumer.errors import ConfigError
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.eventgen import realistic_events
from tests.helpers import wait_for


def kafka_client_threads() -> int:
    """librdkafka's threads in this process (``rdk:main``, ``rdk:broker...``): one set per open client."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended while we looked
            continue
    return sum(1 for name in names if name.startswith("rdk:"))


def test_a_start_that_fails_after_a_lane_was_built_closes_its_consumer_and_producer(
        stack: DevStack, tmp_path: object) -> None:
    topic, dlq = stack.topics(partitions=1)
    not_pem = stack._config_dir() / "not-a-ca-bundle.pem"
    not_pem.write_text("this is not a certificate\n")
    # The Freshsuccess lane (a consumer and a dead-letter producer) is built first; Freshpaint's CA bundle fails.
    settings = stack.settings(topic, dlq, freshpaint={"ca_bundle": str(not_pem)})
    before = kafka_client_threads()
    service = Service(settings)
    with pytest.raises(ConfigError, match=r"freshpaint\.ca_bundle"):
        service.start()
    assert [lane.name for lane in service.lanes] == ["freshsuccess"]
    service.close()  # what `usage-consumer run` does next; closing twice is harmless
    wait_for(lambda: kafka_client_threads() <= before, timeout_s=10,
             what=f"the failed start's Kafka clients to close ({kafka_client_threads()} threads, {before} before)")


def test_rebalance_log_lines_name_the_destination_of_their_lane(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    stack.produce_events(topic, schema_id, realistic_events(20, seed=5))
    settings = stack.settings(topic, dlq)
    with structlog.testing.capture_logs() as logs, RunningService(settings) as running:
        wait_for(lambda: all(running.lane(d).tracker.owned() for d in ("freshsuccess", "freshpaint")),
                 timeout_s=60, what="both lanes to be assigned")
    lines = [(e["event"], e.get("destination")) for e in logs
             if e["event"] in ("partitions_assigned", "partitions_revoked")]
    assert ("partitions_assigned", "freshsuccess") in lines
    assert ("partitions_assigned", "freshpaint") in lines
    assert ("partitions_revoked", "freshsuccess") in lines  # leaving the group at shutdown
    assert all(destination in ("freshsuccess", "freshpaint") for _, destination in lines), lines
