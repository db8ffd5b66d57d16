"""The comparison loops of ``make bench``, each run as its own process so its CPU and memory are its own.

- ``consume``: the consume ceiling, a confluent-kafka loop that only consumes (batch ``consume``).
- ``decode``: the decode ceiling, consume + usage-consumer's decoder (generated readers, cached schemas).
- ``naive``: the loop a user would write first: confluent-kafka's generic ``AvroDeserializer`` per message,
  a hand-written mapping, ``json.dumps``, ``gzip.compress``, one synchronous httpx POST per batch of 1,000
  events to Freshsuccess, and a synchronous commit after each POST.

Each prints one JSON line: events, seconds from the first message to the last, and events/s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import uuid
from typing import Any

from confluent_kafka import Consumer


def consumer_for(bootstrap: str, topic: str) -> Any:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.auto.offset.store": False})
    consumer.subscribe([topic])
    return consumer


def drain(args: argparse.Namespace, handle: Any) -> tuple[int, float]:
    """Consume ``args.count`` records, calling ``handle(value)`` on each; time first message to last."""
    consumer = consumer_for(args.bootstrap, args.topic)
    seen = 0
    started = 0.0
    while seen < args.count:
        messages = consumer.consume(num_messages=1000, timeout=1.0)
        if messages and not started:
            started = time.perf_counter()
        for message in messages:
            if message.error() is None:
                handle(message.value())
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen, elapsed


def run_consume(args: argparse.Namespace) -> tuple[int, float]:
    return drain(args, lambda value: None)


def run_decode(args: argparse.Namespace) -> tuple[int, float]:
    from consumer.decoding.decoder import make_decoder
    from consumer.decoding.registry import SchemaRegistryClient
    from consumer.decoding.schemas import default_reader_schema_path, load_schema

    decoder = make_decoder("confluent", reader_schema=load_schema(default_reader_schema_path()),
                           registry=SchemaRegistryClient(args.registry))
    return drain(args, decoder.decode)


def naive_map(event: dict[str, Any]) -> dict[str, Any] | None:
    """What a first hand-written mapping looks like (Freshsuccess actions only)."""
    base = {"accountId": event["account_id"], "userId": event["user_id"],
            "createdAt": int(event["occurred_at"].timestamp() * 1000),
            "sessionId": event["session_id"] or event["user_id"]}
    kind = event["event_type"]
    if kind == "feature_used":
        return {**base, "action": "feature", "feature": event["feature"], "module": event["module"] or "core",
                "total": event["count"] or 1}
    if kind == "module_ended":
        return {**base, "action": "moduleEnd", "module": event["module"] or "core", "timeSpent": event["duration_ms"]}
    if kind == "session_synced":
        return {**base, "action": "sessionSync", "activeDuration": event["duration_ms"]}
    if kind == "user_identified":
        return {**base, "action": "identifyUser", "details": dict(event["user"] or {}, created_at=None)}
    if kind == "account_identified":
        return {**base, "action": "identifyAccount", "details": dict(event["account"] or {}, created_at=None)}
    return None


def run_naive(args: argparse.Namespace) -> tuple[int, float]:
    import httpx
    from confluent_kafka import TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
    client = httpx.Client()
    url = f"{args.freshsuccess_url}/v1/{args.auth_key}/{args.api_key}"
    consumer = consumer_for(args.bootstrap, args.topic)
    seen = 0
    started = 0.0
    pending: list[str] = []
    last: dict[int, int] = {}
    while seen < args.count:
        messages = consumer.consume(num_messages=1000, timeout=1.0)
        if messages and not started:
            started = time.perf_counter()
        for message in messages:
            if message.error() is not None:
                continue
            event = deserializer(message.value(), SerializationContext(message.topic(), MessageField.VALUE))
            seen += 1
            last[message.partition()] = message.offset()
            action = naive_map(event)
            if action is not None:
                pending.append(json.dumps(action, default=str))
            if len(pending) >= 1000 or seen >= args.count:
                body = gzip.compress(("\n".join(pending) + "\n").encode())
                response = client.post(url, content=body, headers={"Content-Type": "application/json",
                                                                    "Content-Encoding": "gzip"})
                response.raise_for_status()
                pending.clear()
                consumer.commit(offsets=[TopicPartition(args.topic, p, o + 1) for p, o in last.items()],
                                asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen, elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["consume", "decode", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--registry", default="")
    parser.add_argument("--freshsuccess-url", default="")
    parser.add_argument("--auth-key", default="")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    runner = {"consume": run_consume, "decode": run_decode, "naive": run_naive}[args.mode]
    events, elapsed = runner(args)
    print(json.dumps({"events": events, "elapsed_s": elapsed, "events_per_s": events / elapsed if elapsed else 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
