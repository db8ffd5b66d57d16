"""Sample events for the dry run: JSON lines, an Avro object container file, or records read from a topic.

Every sample ends up as what the consumer would see: bytes plus a decoder. File samples are encoded with
their schema (the reader schema for JSON lines, the file's own schema for a container file) and decoded
by a raw-Avro decoder resolving to the reader schema, so they take the same decoding path as a Kafka
record would (defaults filled in, timestamps as epoch milliseconds). Topic samples keep their exact bytes
and go through the configured decoder (framing, registry).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import fastavro
from fastavro.validation import validate

from consumer.config import Settings
from consumer.decoding.decoder import FRAMING_HEADERS, Decoder, make_decoder
from consumer.decoding.encoding import encode_raw
from consumer.decoding.schemas import ParsedSchema, parse
from consumer.errors import ConfigError
from consumer.kafka.reader import Reader
from consumer.pipeline.offsets import TopicPartitionKey

AVRO_CONTAINER_MAGIC = b"Obj\x01"


@dataclass(frozen=True)
class Sample:
    """One event to explain: where it came from, its bytes and how to decode them, or why it is unusable."""

    label: str
    topic: str
    partition: int
    offset: int
    value: bytes | None
    decoder: Decoder | None
    """None for topic samples: use the configured decoder."""
    size_bytes: int
    problem: str | None = None
    """Set when the input line or record is not an event at all (a bad sample, not a dead letter)."""
    stream: str = ""
    """The stream whose reader schema encoded a file sample (topic samples: found by the lane's routing)."""


def load_files(paths: list[str], reader: ParsedSchema, *, framing: str, topic: str, partition: int,
               first_offset: int, stream: str = "") -> Iterator[Sample]:
    """Samples from JSON-lines or Avro container files (``-`` is stdin) of ``stream``, encoded with its
    ``reader`` schema; offsets count up from ``first_offset``."""
    offset = first_offset
    for path in paths:
        for sample in _load_one(path, reader, framing=framing, topic=topic, partition=partition,
                                first_offset=offset):
            offset = sample.offset + 1
            yield replace(sample, stream=stream)


def _load_one(path: str, reader: ParsedSchema, *, framing: str, topic: str, partition: int,
              first_offset: int) -> Iterator[Sample]:
    import sys

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read sample file: {exc.strerror or exc}", file=path) from None
    # what the framing adds in front of the Avro body, for the max_event_bytes check of file samples
    header = FRAMING_HEADERS.get(framing)  # type: ignore[call-overload]
    header_bytes = header.size if header is not None else 0
    name = "<stdin>" if path == "-" else path
    if data.startswith(AVRO_CONTAINER_MAGIC):
        yield from _container(io.BytesIO(data), name, reader, header_bytes, topic, partition, first_offset)
    else:
        yield from _json_lines(data, name, reader, header_bytes, topic, partition, first_offset)


def _json_lines(data: bytes, name: str, reader: ParsedSchema, header_bytes: int, topic: str, partition: int,
                first_offset: int) -> Iterator[Sample]:
    decoder = make_decoder("raw", reader_schema=reader)
    offset = first_offset
    # JSON lines end at "\n" only: str.splitlines() would also split inside strings at U+2028, U+0085, ...
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.decode("utf-8", "replace").removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        label = f"{name}:{number}"
        value, problem = _encode_json(line, reader)
        yield Sample(label, topic, partition, offset, value, decoder,
                     size_bytes=len(value or b"") + header_bytes, problem=problem)
        offset += 1


def _encode_json(line: str, reader: ParsedSchema) -> tuple[bytes | None, str | None]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(event, dict):
        return None, f"a JSON {type(event).__name__}, not an object"
    unknown = unknown_fields(event, reader.source)
    if unknown:
        return None, f"field(s) not in schema {reader.name}: {', '.join(unknown)}"
    try:
        validate(event, reader.writer, raise_errors=True)
        return encode_raw(event, reader), None
    except Exception as exc:  # fastavro's ValidationError lists every mismatch; anything else: say what
        return None, f"does not match schema {reader.name}: {_validation_text(exc)}"


def _validation_text(exc: Exception) -> str:
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else [str(exc)]
    lines = [str(e) for e in errors]
    shown = "; ".join(lines[:3])
    return shown + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")


def unknown_fields(value: Any, schema: Any, path: str = "") -> list[str]:
    """Keys of ``value`` that the record schema (or its nested records) does not define; typos otherwise vanish."""
    if isinstance(schema, list):  # a union: check against the record branch, if the value is an object
        records = [s for s in schema if isinstance(s, dict) and s.get("type") == "record"]
        return unknown_fields(value, records[0], path) if records and isinstance(value, dict) else []
    if not (isinstance(schema, dict) and schema.get("type") == "record" and isinstance(value, dict)):
        return []
    fields = {f["name"]: f["type"] for f in schema.get("fields", [])}
    found = [f"{path}{key}" for key in value if key not in fields]
    for key, inner in value.items():
        if key in fields:
            found.extend(unknown_fields(inner, fields[key], f"{path}{key}."))
    return found


def _container(stream: IO[bytes], name: str, reader: ParsedSchema, header_bytes: int, topic: str,
               partition: int, first_offset: int) -> Iterator[Sample]:
    try:
        container = fastavro.reader(stream)
        writer_schema = json.loads(container.metadata["avro.schema"])
        writer = parse(writer_schema)
    except Exception as exc:  # a broken header: say so about the file as a whole
        raise ConfigError(f"not a readable Avro container file: {type(exc).__name__}: {exc}", file=name) from None
    decoder = make_decoder("raw", reader_schema=reader, writer_schema=writer)
    offset = first_offset
    index = 0
    while True:
        index += 1
        label = f"{name}#{index}"
        try:
            record = next(container)
        except StopIteration:
            return
        except Exception as exc:  # a corrupt block ends the file; earlier records were fine
            yield Sample(label, topic, partition, offset, None, None, 0,
                         problem=f"unreadable container block: {type(exc).__name__}: {exc}")
            return
        if not isinstance(record, dict):
            raise ConfigError(f"the container's schema is {writer.name}, not a record", file=name)
        # Re-encode with the file's own schema (logical types included), then decode like a raw record.
        value = encode_raw(record, writer)
        yield Sample(label, topic, partition, offset, value, decoder, len(value) + header_bytes)
        offset += 1


def load_topic(settings: Settings, count: int, *, partition: int | None, offset: int | None,
               group_id: str, topic: str | None = None) -> list[Sample]:
    """Up to ``count`` records of ``topic`` (default: every topic the streams name), read without committing.

    With ``partition`` and ``offset``: the records from that position on (of ``topic``, or the first topic).
    Otherwise the newest records, spread evenly over every partition of every topic read.
    """
    topics = [topic] if topic is not None else list(settings.named_topics())
    if not topics:
        raise ConfigError("the streams name only topic patterns: say which topic to read with --topic")
    if count < 1:
        raise ConfigError("--from-topic needs a count of at least 1")
    with Reader(settings, group_id) as reader:
        ranges: dict[TopicPartitionKey, tuple[int, int]] = {}
        if partition is not None or offset is not None:
            topic = topics[0]
            chosen = partition if partition is not None else 0
            if chosen not in reader.partitions(topic):
                raise ConfigError(f"topic {topic!r} has no partition {chosen}")
            low, high = reader.watermarks(topic, chosen)
            start = max(low, offset if offset is not None else high - count)
            ranges[(topic, chosen)] = (start, min(high, start + count))
        else:
            keys = [(t, p) for t in topics for p in reader.partitions(t)]
            share = max(1, math.ceil(count / len(keys)))
            for topic, part in keys:
                low, high = reader.watermarks(topic, part)
                ranges[(topic, part)] = (max(low, high - share), high)
        records = reader.read(ranges)
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    if partition is None and offset is None and len(records) > count:
        records = sorted(records, key=lambda r: r.timestamp_ms or 0)[-count:]
        records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return [Sample(r.position, r.topic, r.partition, r.offset, r.value, None, len(r.value or b""))
            for r in records[:count]]
