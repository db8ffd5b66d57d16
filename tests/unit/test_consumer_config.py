"""Settings that choose how the service talks to Kafka and to the destinations."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from consumer.app.build import build_sink
from consumer.config import KafkaConfig, load_settings
from consumer.kafka.source import consumer_config
from consumer.sinks.freshpaint import FreshpaintSink


def test_a_lane_fetches_again_soon_after_its_prefetch_queue_was_full() -> None:
    """With large events the bounded prefetch fills quickly; librdkafka's default 1 s back-off before the next
    fetch then throttled a 1.7 KB-per-event stream to a third of its rate (docs/performance.md, row l)."""
    config = consumer_config({}, KafkaConfig(), group_id="g")
    assert config["fetch.queue.backoff.ms"] <= 50
    assert config["queued.max.messages.kbytes"] == KafkaConfig().prefetch_max_kbytes


def test_client_properties_may_still_choose_the_fetch_back_off() -> None:
    assert consumer_config({"fetch.queue.backoff.ms": 200}, KafkaConfig(),
                           group_id="g")["fetch.queue.backoff.ms"] == 200


def test_each_member_is_named_by_its_host_unless_client_properties_name_it() -> None:
    """`usage-consumer status` and kafka-consumer-groups list members by client id: librdkafka's default
    ("rdkafka") would make every pod look the same."""
    assert consumer_config({}, KafkaConfig(), group_id="g")["client.id"] == f"usage-consumer@{socket.gethostname()}"
    assert consumer_config({"client.id": "mine"}, KafkaConfig(), group_id="g")["client.id"] == "mine"


@pytest.mark.parametrize(("configured", "transport"), [({}, "http1"), ({"http_client": "aiohttp"}, "aiohttp")])
def test_freshpaint_uses_the_lean_client_unless_configured_back_to_aiohttp(
        tmp_path: Path, configured: dict[str, Any], transport: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"freshpaint": configured}))
    sink = build_sink(load_settings(config, environ={"FRESHPAINT_TOKEN": "t"}), "freshpaint")
    assert isinstance(sink, FreshpaintSink)
    assert sink.transport == transport
