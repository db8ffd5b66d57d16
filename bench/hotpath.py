#!/usr/bin/env python3
"""Where the time goes: the per-event CPU cost of each stage of the poll thread, without Kafka or HTTP.

Measures decode (every field, and only the fields the Freshsuccess rules read, as that lane does), the
compiled default mapping, serialization into the batch body, offset tracking, gzip of a closed batch, and the
verdict as the lane calls it (median of ``--repeat`` runs, microseconds per event).
Run: ``.venv/bin/python bench/hotpath.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from consumer.config import default_mapping_file
from consumer.decoding.decoder import RawDecoder
from consumer.decoding.encoding import encode_raw
from consumer.decoding.schemas import default_reader_schema_path, event_time_field, load_schema, parse
from consumer.mapping import load_mapping
from consumer.pipeline.batcher import Batcher
from consumer.pipeline.offsets import OffsetTracker, Work
from consumer.pipeline.verdict import SEND, Judge
from consumer.sinks.compress import compress
from consumer.testing.eventgen import realistic_events
from consumer.testing.fakes import kafka_message

REPO = Path(__file__).resolve().parent.parent


def timed(repeat: int, events: int, run: Callable[[], Any]) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) / events * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    schema = load_schema(default_reader_schema_path())
    parsed = parse(schema)
    events = list(realistic_events(args.events, seed=3))
    values = [encode_raw(e, parsed) for e in events]
    messages = [kafka_message("usage", i % 8, i // 8, v, timestamp_ms=i) for i, v in enumerate(values)]
    mapping = load_mapping(default_mapping_file(), schema)
    when = event_time_field(schema)
    assert when is not None
    needed = mapping.fields_read["freshsuccess"] | {when[0]}  # what the Freshsuccess lane reads
    decoders = {(fields, reader): RawDecoder(parsed, parsed, None if fields == "every" else needed,
                                              generated=reader == "generated")
                for fields in ("every", "rules") for reader in ("fastavro", "generated")}
    decoder, lean = decoders["every", "generated"], decoders["rules", "generated"]
    map_fs = mapping.freshsuccess
    assert map_fs is not None
    records = [decoder.decode(v) for v in values]
    outputs = [map_fs(r, "usage", 0, i) for i, r in enumerate(records)]

    def decode_with(chosen: RawDecoder) -> Callable[[], None]:
        def run() -> None:
            decode = chosen.decode
            for v in values:
                decode(v)
        return run

    def map_all() -> None:
        for i, r in enumerate(records):
            map_fs(r, "usage", 0, i)

    judge = Judge(decoder=lean, map_fn=map_fs, max_event_bytes=1 << 20, ndjson=True,  # as the lane builds it
                  event_time=when)
    decisions = [judge.decide(v, "usage", 0, i) for i, v in enumerate(values)]

    def serialize_all() -> None:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        for out in outputs:
            if out:
                b"".join([dumps(o, option=newline) for o in out])

    def batch_all() -> None:
        batcher = Batcher("freshsuccess", max_events=10**9, max_bytes=10**12, max_wait_s=1e9,
                          clock=time.monotonic, ndjson=True)
        for i, decision in enumerate(decisions):
            if decision.kind == SEND:
                batcher.add(decision, None, ("usage", 0), i)

    def decide_all() -> None:
        decide = judge.decide
        for i, v in enumerate(values):
            decide(v, "usage", 0, i)

    def track_all() -> None:
        tracker = OffsetTracker()
        for partition in range(8):
            tracker.assign(("usage", partition))
        work = Work("batch")
        for m in messages:
            tracker.track((m.topic(), m.partition()), m.offset(), work, m)

    body = bytearray()
    for out in outputs[:3000]:
        for o in out:
            body += orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE)
    per_batch_events = sum(len(o) for o in outputs[:3000])

    def gzip_batches() -> None:
        for _ in range(args.events // per_batch_events):
            compress(bytes(body), "gzip", 1)

    stages = {
        "decode, every field, fastavro (cached schema)": timed(args.repeat, args.events,
                                                              decode_with(decoders["every", "fastavro"])),
        "decode, every field, generated reader": timed(args.repeat, args.events, decode_with(decoder)),
        "decode, Freshsuccess fields, fastavro": timed(args.repeat, args.events,
                                                      decode_with(decoders["rules", "fastavro"])),
        "decode, Freshsuccess fields, generated reader (the lane)": timed(args.repeat, args.events,
                                                                        decode_with(lean)),
        "map (compiled default mapping, Freshsuccess)": timed(args.repeat, args.events, map_all),
        "serialize the NDJSON lines (orjson)": timed(args.repeat, args.events, serialize_all),
        "append to the batch body": timed(args.repeat, args.events, batch_all),
        "track offsets": timed(args.repeat, args.events, track_all),
        "gzip the closed batches (isal level 1, delivery thread)": timed(args.repeat, args.events, gzip_batches),
    }
    print(f"per-event CPU, median of {args.repeat} runs over {args.events:,} events (µs/event):")
    for name, value in stages.items():
        print(f"  {name:<58}{value:6.2f}")
    poll_thread = sum(v for k, v in stages.items()
                      if "gzip" not in k and "every field" not in k and "fastavro" not in k)
    print(f"  {'sum on the poll thread':<58}{poll_thread:6.2f}  -> at most {1e6 / poll_thread:,.0f} events/s/core")
    verdict = timed(args.repeat, args.events, decide_all)
    print(f"  {'the verdict as the lane calls it (size+decode+map+serialize)':<58}{verdict:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
