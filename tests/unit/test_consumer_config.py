"""The librdkafka settings of a lane's consumer."""

from __future__ import annotations

from consumer.config import KafkaConfig
from consumer.kafka.source import consumer_config


def test_a_lane_fetches_again_soon_after_its_prefetch_queue_was_full() -> None:
    """With large events the bounded prefetch fills quickly; librdkafka's default 1 s back-off before the next
    fetch then throttled a 1.7 KB-per-event stream to a third of its rate (docs/performance.md, row l)."""
    config = consumer_config({}, KafkaConfig(), group_id="g")
    assert config["fetch.queue.backoff.ms"] <= 50
    assert config["queued.max.messages.kbytes"] == KafkaConfig().prefetch_max_kbytes


def test_client_properties_may_still_choose_the_fetch_back_off() -> None:
    assert consumer_config({"fetch.queue.backoff.ms": 200}, KafkaConfig(),
                           group_id="g")["fetch.queue.backoff.ms"] == 200
