"""The generated Avro readers (:mod:`consumer.decoding.compiled`) read exactly what fastavro reads.

Properties over generated schemas and records: the same record as fastavro's ``schemaless_reader``, read to
the body's last byte; a prefix of the fields reads those fields alone; a truncated body is always refused.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.config import load_settings
from consumer.decoding.compiled import compile_reader
from consumer.decoding.decoder import RawDecoder, decoder_for
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from consumer.errors import DecodeError
from consumer.testing.eventgen import realistic_events

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
SCALARS = [p for p in PRIMITIVES if p != "null"]


def avro_types(depth: int) -> st.SearchStrategy[Any]:
    """Avro types up to ``depth`` levels of nesting; named types get their names in :func:`named`."""
    scalar = st.sampled_from(SCALARS)
    if depth == 0:
        return st.one_of(scalar, st.just("null"))
    inner = avro_types(depth - 1)
    non_union = inner.filter(lambda t: not isinstance(t, list) and t != "null")
    return st.one_of(
        scalar,
        st.just("null"),
        st.integers(1, 4).map(lambda n: {"type": "enum", "symbols": [f"S{i}" for i in range(n)]}),
        st.integers(0, 4).map(lambda n: {"type": "fixed", "size": n}),
        inner.filter(lambda t: t != "null").map(lambda t: {"type": "array", "items": t}),
        inner.map(lambda t: {"type": "map", "values": t}),
        st.tuples(non_union, st.booleans()).map(lambda x: ["null", x[0]] if x[1] else [x[0], "null"]),
        st.just(["null", "string", "long"]),
        st.lists(inner, min_size=0, max_size=4).map(
            lambda ts: {"type": "record", "fields": [{"name": f"f{i}", "type": t} for i, t in enumerate(ts)]}),
    )


def named(schema: Any, counter: itertools.count[int]) -> Any:
    """A copy of ``schema`` with a fresh name on every record, enum and fixed."""
    if isinstance(schema, list):
        return [named(branch, counter) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    copy = dict(schema)
    if copy["type"] in ("record", "enum", "fixed"):
        copy["name"] = f"T{next(counter)}"
    if copy["type"] == "record":
        copy["fields"] = [{**f, "type": named(f["type"], counter)} for f in copy["fields"]]
    elif copy["type"] == "array":
        copy["items"] = named(copy["items"], counter)
    elif copy["type"] == "map":
        copy["values"] = named(copy["values"], counter)
    return copy


def values(schema: Any) -> st.SearchStrategy[Any]:
    """Values that fastavro writes unambiguously with ``schema``."""
    if isinstance(schema, list):
        return st.one_of(*[values(branch) for branch in schema])
    if isinstance(schema, str):
        return {
            "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False), "bytes": st.binary(max_size=20), "string": st.text(max_size=10),
        }[schema]
    kind = schema["type"]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(values(schema["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), values(schema["values"]), max_size=4)
    return st.fixed_dictionaries({f["name"]: values(f["type"]) for f in schema["fields"]})


@st.composite
def schemas_and_records(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = draw(st.lists(avro_types(2), min_size=1, max_size=6))
    schema = named({"type": "record", "fields": [{"name": f"f{i}", "type": t} for i, t in enumerate(fields)]},
                   itertools.count())
    return schema, draw(values(schema))


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def parsed_schema(schema: dict[str, Any]) -> dict[str, Any]:
    parsed = fastavro.parse_schema(schema)
    assert isinstance(parsed, dict)
    return parsed


def fastavro_read(schema: dict[str, Any], body: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(schema), None)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(schemas_and_records())
def test_a_generated_reader_reads_what_fastavro_reads_to_the_last_byte(case: tuple[dict[str, Any], Any]) -> None:
    schema, record = case
    body = encode(schema, record)
    read = compile_reader(parsed_schema(schema))
    if read is None:  # an array of nulls somewhere: left to fastavro
        return
    framed = b"\x00HEAD" + body  # read from an offset, as after a framing header
    assert read(framed, 5) == (fastavro_read(schema, body), len(framed))


@FAST
@given(schemas_and_records(), st.data())
def test_a_truncated_body_is_refused_whoever_reads_it(case: tuple[dict[str, Any], Any], data: st.DataObject) -> None:
    schema, record = case
    body = encode(schema, record)
    if not body:
        return
    cut = data.draw(st.integers(0, len(body) - 1))
    decoder = RawDecoder(parse(schema), parse(schema))
    with pytest.raises(DecodeError):
        decoder.decode(body[:cut])


@FAST
@given(schemas_and_records(), st.data())
def test_reading_some_fields_gives_what_a_projected_fastavro_read_gives(case: tuple[dict[str, Any], Any],
                                                                        data: st.DataObject) -> None:
    """A lane reads only the fields its mapping uses: the others are skipped (whatever their type). The kept
    ones are what fastavro reads; a generated reader returns exactly them (fastavro, reading a schema this
    module does not generate, may return more)."""
    schema, record = case
    names = [f["name"] for f in schema["fields"]]
    kept = data.draw(st.sets(st.sampled_from(names), min_size=1))
    body = encode(schema, record)
    decoder = RawDecoder(parse(schema), parse(schema), frozenset(kept))
    expected = {n: v for n, v in fastavro_read(schema, body).items() if n in kept}
    decoded = decoder.decode(body)
    assert {n: decoded[n] for n in kept} == expected
    read = compile_reader(parsed_schema(schema), frozenset(kept))
    if read is not None:  # to the body's last byte, skipping included
        assert read(body, 0) == (expected, len(body))


@FAST
@given(schemas_and_records(), st.data())
def test_a_truncated_body_is_refused_with_fields_skipped(case: tuple[dict[str, Any], Any],
                                                         data: st.DataObject) -> None:
    """Skipping steps over bytes without reading them, but never past the end: a body cut anywhere is refused
    when the last field is among those read."""
    schema, record = case
    names = [f["name"] for f in schema["fields"]]
    kept = data.draw(st.sets(st.sampled_from(names))) | {names[-1]}
    body = encode(schema, record)
    if not body:
        return
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(DecodeError):
        RawDecoder(parse(schema), parse(schema), frozenset(kept)).decode(body[:cut])


def test_blocks_with_a_byte_size_negative_counts_are_read_like_fastavro() -> None:
    """Writers may write an array or map block as ``-count, size in bytes, items``; fastavro's writer never
    does, so this body is made by hand: [1, 2] in one sized block, then [3], then the end."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}]}
    body = bytes([0x03, 0x04, 0x02, 0x04, 0x02, 0x06, 0x00])  # -2 (zig-zag 3), 2 bytes, 1, 2; 1, 3; 0
    read = compile_reader(parsed_schema(schema))
    assert read is not None
    assert read(body, 0) == ({"xs": [1, 2, 3]}, len(body)) == (fastavro_read(schema, body), len(body))


@pytest.mark.parametrize(("body", "why"), [
    (bytes([0x04]), "union index out of range"),
    (bytes([0x00, 0x0A]), "enum index out of range"),
    (bytes([0x00, 0x00, 0x01]), "negative string length"),
], ids=["union", "enum", "length"])
def test_an_index_or_length_out_of_range_is_refused_as_undecodable(body: bytes, why: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "u", "type": ["null", "long"]},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
        {"name": "s", "type": "string"}]}
    with pytest.raises(DecodeError, match=why):
        RawDecoder(parse(schema), parse(schema)).decode(body)


def test_union_indexes_beyond_one_byte_are_refused_or_read_as_the_union_allows() -> None:
    """Up to 64 branches the index byte is compared as written, so an index written in two bytes is out of
    range; a union of more branches reads it as a number, like fastavro."""
    small = {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["null", "long"]}]}
    with pytest.raises(DecodeError, match="union index out of range"):
        RawDecoder(parse(small), parse(small)).decode(bytes([0x80, 0x01]))  # index 64
    wide = {"type": "record", "name": "W", "fields": [{"name": "u", "type": [
        {"type": "fixed", "name": f"F{n}", "size": 1} for n in range(70)]}]}
    body = bytes([0x82, 0x01, 0x2A])  # branch 65, then its one byte
    assert RawDecoder(parse(wide), parse(wide)).decode(body) == fastavro_read(wide, body) == {"u": b"*"}


def test_a_recursive_schema_or_an_array_of_nulls_is_left_to_fastavro() -> None:
    recursive = {"type": "record", "name": "Node", "fields": [
        {"name": "next", "type": ["null", "Node"]}]}
    nulls = {"type": "record", "name": "R", "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}]}
    assert compile_reader(parsed_schema(recursive)) is None
    assert compile_reader(parsed_schema(nulls)) is None
    assert RawDecoder(parse(nulls), parse(nulls)).decode(encode(nulls, {"xs": [None, None]})) == {"xs": [None, None]}


def test_the_product_schema_is_read_by_a_generated_reader_equal_to_fastavro() -> None:
    parsed = parse(load_schema(default_reader_schema_path()))
    decoder = RawDecoder(parsed, parsed)
    assert decoder._plan.read is not None
    for event in realistic_events(500, seed=7):
        body = encode(parsed.source, event)
        assert decoder.decode(body) == fastavro.schemaless_reader(io.BytesIO(body), parsed.reader, None)


@pytest.mark.parametrize(("configured", "generated"), [({}, True), ({"reader": "fastavro"}, False)])
def test_decoding_reader_chooses_the_generated_reader_or_fastavro(
        tmp_path: Path, configured: dict[str, Any], generated: bool) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"decoding": {"framing": "raw", **configured}}))
    decoder = decoder_for(load_settings(config, environ={}), load_schema(default_reader_schema_path()))
    assert isinstance(decoder, RawDecoder)
    assert (decoder._plan.read is not None) is generated
    event = next(iter(realistic_events(1, seed=1)))
    assert decoder.decode(encode(load_schema(default_reader_schema_path()), event))["event_id"] == event["event_id"]
