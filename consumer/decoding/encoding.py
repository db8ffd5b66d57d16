"""Encode records in the three framings the decoder reads; used by the demo, tests and benchmarks.

Not on the consumer's hot path. Records are written with the schema's logical types kept, so a
``timestamp-millis`` field accepts either an ``int`` of epoch milliseconds or an aware ``datetime``.
Invalid records raise whatever fastavro raises (``ValueError``, ``TypeError``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any

from fastavro import schemaless_writer

from consumer.decoding.schemas import ParsedSchema

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "encode_confluent",
    "encode_raw",
    "encode_single_object",
]

CONFLUENT_MAGIC = b"\x00"
"""First byte of the Confluent wire format; a 4-byte big-endian schema id follows."""
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""First two bytes of Avro single-object encoding; an 8-byte little-endian CRC-64-AVRO fingerprint follows."""

_MAX_SCHEMA_ID = 2**32 - 1


def encode_raw(record: Mapping[str, Any], parsed_schema: ParsedSchema) -> bytes:
    """Plain Avro binary of ``record``, no framing."""
    out = BytesIO()
    schemaless_writer(out, parsed_schema.writer, record)
    return out.getvalue()


def encode_confluent(schema_id: int, record: Mapping[str, Any], parsed_schema: ParsedSchema) -> bytes:
    """Confluent wire format: ``00`` + 4-byte big-endian ``schema_id`` + Avro binary."""
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise ValueError(f"schema id must fit in 4 unsigned bytes, got {schema_id}")
    out = BytesIO()
    out.write(CONFLUENT_MAGIC)
    out.write(schema_id.to_bytes(4, "big"))
    schemaless_writer(out, parsed_schema.writer, record)
    return out.getvalue()


def encode_single_object(record: Mapping[str, Any], parsed_schema: ParsedSchema) -> bytes:
    """Avro single-object encoding: ``C3 01`` + the schema's 8-byte fingerprint + Avro binary."""
    out = BytesIO()
    out.write(SINGLE_OBJECT_MAGIC)
    out.write(parsed_schema.fingerprint)
    schemaless_writer(out, parsed_schema.writer, record)
    return out.getvalue()
