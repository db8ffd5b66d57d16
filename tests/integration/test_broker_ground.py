"""The ground every later test stands on: a real broker, Avro records, a consumer group, manual commits."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.helpers import wait_for

SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "usage_event.avsc"
SCHEMA = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))


def encode(record: dict[str, object]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def decode(value: bytes) -> dict[str, object]:
    result = fastavro.schemaless_reader(io.BytesIO(value), SCHEMA, None)
    assert isinstance(result, dict)
    return result


def event(i: int) -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "event_type": "feature_used", "occurred_at": 1_700_000_000_000 + i,
            "account_id": f"acct-{i % 7}", "user_id": f"user-{i}", "feature": "export", "count": i}


def test_avro_records_consumed_by_a_group_and_committed_offsets_read_back(
    kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: Callable[..., str]
) -> None:
    partitions = 4
    topic = make_topic(partitions)
    sent = [event(i) for i in range(200)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for record in sent:
        producer.produce(topic, key=str(record["account_id"]).encode(), value=encode(record))
    assert producer.flush(30) == 0

    group = f"ground-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    received: list[dict[str, object]] = []
    next_offsets: dict[int, int] = {}
    try:
        def drained() -> bool:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                received.append(decode(msg.value()))
                next_offsets[msg.partition()] = msg.offset() + 1
            return len(received) >= len(sent)

        wait_for(drained, timeout_s=60, what="all produced records to be consumed")
        to_commit = [TopicPartition(topic, p, o) for p, o in next_offsets.items()]
        consumer.commit(offsets=to_commit, asynchronous=False)
    finally:
        consumer.close()

    assert sorted(r["event_id"] for r in received) == sorted(r["event_id"] for r in sent)  # type: ignore[type-var]
    assert received[0]["occurred_at"] is not None

    # Read the committed offsets back from the broker with the admin API, not from the consumer's memory.
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    result = kafka_admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    keys_per_partition = Counter(p for p in next_offsets)
    assert set(committed) == set(range(partitions))
    assert sum(committed[p] for p in next_offsets) == len(sent)
    for partition, next_offset in next_offsets.items():
        assert committed[partition] == next_offset
    assert keys_per_partition  # records really spread over partitions
    assert len(next_offsets) > 1
