"""Micro-benchmark of the decoder: µs per event for each framing on a ~220-byte usage event.

Run: ``.venv/bin/python bench/decode_micro.py [--events N] [--runs R]``. Prints the best of ``runs``
timings per case (the minimum is the least disturbed by other load on a small machine). ``baseline`` is a
bare ``fastavro.schemaless_reader`` call on a parsed schema (what the decoder cannot beat); the framings
add header handling, the per-writer lookup and the checks.
The Confluent case uses a schema registry emulator on 127.0.0.1 (one fetch, then the cache).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader

from consumer.decoding.decoder import encode_confluent, encode_raw, encode_single_object, make_decoder
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import SchemaStore, default_schema_dir, load_schema, parse
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator

EVENT: dict[str, Any] = {
    "event_id": "3f1c2a9e-8b7d-4e2a-9c1f-0a1b2c3d4e5f",
    "event_type": "feature_used",
    "occurred_at": 1_732_350_000_123,
    "account_id": "acct-000123",
    "user_id": "user-00004567",
    "session_id": "sess-9a8b7c6d5e4f",
    "device_id": "dev-1234567890ab",
    "product": "analytics",
    "module": "reports",
    "feature": "export_csv",
    "duration_ms": 15_342,
    "count": 3,
    "user": None,
    "account": None,
    "properties": {"plan": "enterprise", "browser": "firefox", "locale": "en-GB", "ab": "b", "region": "eu"},
}


def _time_per_event_us(fn: Callable[[], object], events: int, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(events):
            fn()
        timings.append((time.perf_counter() - started) / events * 1e6)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    schema_dir = default_schema_dir()
    current = parse(load_schema(schema_dir / "usage_event.avsc"))
    v1 = parse(load_schema(schema_dir / "usage_event.v1.avsc"))
    v1_event = {k: v for k, v in EVENT.items() if k not in ("device_id", "product", "properties")}
    raw = encode_raw(EVENT, current)
    print(f"event: {len(raw)} bytes of Avro body, {args.events} events x {args.runs} runs (best run)")

    with SchemaRegistryEmulator() as emulator, SchemaRegistryClient(emulator.url) as registry:
        current_id = emulator.register("usage-events-value", current.source)
        v1_id = emulator.register("usage-events-value", v1.source)
        store = SchemaStore.from_directory(schema_dir)
        confluent = make_decoder("confluent", reader_schema=current, registry=registry)
        single = make_decoder("single-object", reader_schema=current, store=store)
        plain = make_decoder("raw", reader_schema=current)
        plain_v1 = make_decoder("raw", reader_schema=current, writer_schema=v1)
        cases: list[tuple[str, Callable[[], object]]] = []
        reader = current.reader
        cases.append(("baseline: schemaless_reader(BytesIO(body))", lambda: schemaless_reader(BytesIO(raw), reader)))
        for name, decoder, value in (
            ("confluent", confluent, encode_confluent(current_id, EVENT, current)),
            ("single-object", single, encode_single_object(EVENT, current)),
            ("raw", plain, raw),
            ("confluent, v1 writer -> current reader", confluent, encode_confluent(v1_id, v1_event, v1)),
            ("single-object, v1 writer -> current reader", single, encode_single_object(v1_event, v1)),
            ("raw, v1 writer -> current reader", plain_v1, encode_raw(v1_event, v1)),
        ):
            decoder.decode(value)  # warm the per-writer cache
            cases.append((name, lambda d=decoder, v=value: d.decode(v)))  # type: ignore[misc]
        for name, fn in cases:
            print(f"{name:45s} {_time_per_event_us(fn, args.events, args.runs):6.2f} µs/event")


if __name__ == "__main__":
    main()
