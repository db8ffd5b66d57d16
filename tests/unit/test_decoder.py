"""The decoder turns Kafka values into event dicts in all three framings, or says exactly why it can't.

What a user relies on: events round-trip; events from older producers (schema v1) decode with the
current reader and get defaults; every bad value becomes a DecodeError or UnknownSchema (dead-lettered),
while a registry outage becomes a TransientError (retried, never dead-lettered) and the registry is asked
once per schema id.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decoding.decoder import (
    FRAMINGS,
    Decoder,
    encode_confluent,
    encode_raw,
    encode_single_object,
    make_decoder,
)
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import (
    ParsedSchema,
    SchemaStore,
    default_reader_schema_path,
    default_schema_dir,
    load_schema,
    parse,
)
from consumer.errors import ConfigError, DecodeError, EventError, TransientError, UnknownSchema
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator

SCHEMA_DIR = default_schema_dir()
CURRENT = parse(load_schema(SCHEMA_DIR / "usage_event.avsc"))
V1 = parse(load_schema(SCHEMA_DIR / "usage_event.v1.avsc"))
SUBJECT = "usage-events-value"
FIELDS_ADDED_AFTER_V1: dict[str, Any] = {"device_id": None, "product": None, "properties": {}}

EVENT: dict[str, Any] = {
    "event_id": "3f1c2a9e-8b7d-4e2a-9c1f-0a1b2c3d4e5f",
    "event_type": "user_identified",
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
    "user": {"email": "ada@example.com", "name": "Ada", "role": "admin", "created_at": 1_600_000_000_000,
             "attributes": {"team": "core"}},
    "account": {"name": "Example Ltd", "plan": "enterprise", "mrr": 1234.5, "created_at": 1_500_000_000_000,
                "attributes": {}},
    "properties": {"browser": "firefox", "locale": "en-GB"},
}
V1_EVENT: dict[str, Any] = {
    **{k: v for k, v in EVENT.items() if k not in FIELDS_ADDED_AFTER_V1},
    "user": {k: v for k, v in EVENT["user"].items() if k != "attributes"},
    "account": {k: v for k, v in EVENT["account"].items() if k != "attributes"},
}


def as_current(v1_record: dict[str, Any]) -> dict[str, Any]:
    """What the current reader must make of a v1 record: the same values plus the new fields' defaults."""
    expected = {**copy.deepcopy(v1_record), **copy.deepcopy(FIELDS_ADDED_AFTER_V1)}
    for nested in ("user", "account"):
        if expected[nested] is not None:
            expected[nested]["attributes"] = {}
    return expected


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def emulator() -> Iterator[SchemaRegistryEmulator]:
    with SchemaRegistryEmulator() as em:
        yield em


@pytest.fixture(scope="module")
def schema_ids(emulator: SchemaRegistryEmulator) -> dict[str, int]:
    return {"v1": emulator.register(SUBJECT, V1.source), "current": emulator.register(SUBJECT, CURRENT.source)}


@pytest.fixture(scope="module")
def registry(emulator: SchemaRegistryEmulator) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient(emulator.url, timeout_s=5.0) as client:
        yield client


@pytest.fixture(scope="module")
def decoders(registry: SchemaRegistryClient, schema_ids: dict[str, int]) -> dict[str, Decoder]:
    """One decoder per framing, reading with the current schema (raw also assumes the current writer)."""
    store = SchemaStore.from_directory(SCHEMA_DIR)
    return {
        framing: make_decoder(framing, reader_schema=CURRENT.source, registry=registry, store=store)
        for framing in FRAMINGS
    }


def encode(framing: str, record: dict[str, Any], schema: ParsedSchema, schema_ids: dict[str, int]) -> bytes:
    if framing == "confluent":
        return encode_confluent(schema_ids["v1" if schema is V1 else "current"], record, schema)
    if framing == "single-object":
        return encode_single_object(record, schema)
    return encode_raw(record, schema)


def decoder_for_writer(framing: str, writer: ParsedSchema, decoders: dict[str, Decoder]) -> Decoder:
    """Confluent and single-object events name their writer; raw needs it configured."""
    if framing == "raw" and writer is not CURRENT:
        return make_decoder("raw", reader_schema=CURRENT.source, writer_schema=writer.source)
    return decoders[framing]


# ------------------------------------------------------------------------------------------------ schemas


def test_default_schema_dir_is_the_repository_schemas_dir() -> None:
    assert default_reader_schema_path() == SCHEMA_DIR / "usage_event.avsc"
    assert (SCHEMA_DIR / "usage_event.v1.avsc").is_file()


def _crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as given in the Avro specification ("Schema Fingerprints"), written out independently."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_crc64_reference_matches_the_avro_spec_test_vector() -> None:
    assert _crc64_avro(b'"null"') == 7195948357588979594  # from Avro's schema-tests (signed long > 0)


@pytest.mark.parametrize("schema", [CURRENT, V1], ids=["current", "v1"])
def test_fingerprint_is_the_little_endian_rabin_of_the_canonical_form(schema: ParsedSchema) -> None:
    assert schema.fingerprint == _crc64_avro(schema.canonical_form.encode()).to_bytes(8, "little")
    assert schema.canonical_form.startswith('{"name":"io.usageconsumer.events.UsageEvent","type":"record"')


def test_store_finds_every_schema_file_by_fingerprint() -> None:
    store = SchemaStore.from_directory(SCHEMA_DIR)
    assert store.find(CURRENT.fingerprint).canonical_form == CURRENT.canonical_form
    assert store.find(V1.fingerprint).canonical_form == V1.canonical_form
    assert CURRENT.fingerprint != V1.fingerprint
    with pytest.raises(UnknownSchema, match="0011223344556677"):
        store.find(bytes.fromhex("0011223344556677"))


def test_reading_schemas_are_copies_and_the_source_keeps_its_logical_types() -> None:
    assert CURRENT.source["fields"][2]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert "logicalType" not in repr(CURRENT.reader)


def test_invalid_schema_files_name_the_file(tmp_path: Any) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": "a"}]}')
    with pytest.raises(ConfigError, match=r"bad\.avsc"):
        SchemaStore.from_directory(tmp_path)
    (tmp_path / "bad.avsc").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.avsc:1: not valid JSON"):
        SchemaStore.from_directory(tmp_path)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_framing_round_trips(framing: str, decoders: dict[str, Decoder], schema_ids: dict[str, int]
                                   ) -> None:
    value = encode(framing, EVENT, CURRENT, schema_ids)
    assert decoders[framing].decode(value) == EVENT


@pytest.mark.parametrize("framing", FRAMINGS)
def test_timestamps_decode_as_epoch_millisecond_ints(framing: str, decoders: dict[str, Decoder],
                                                      schema_ids: dict[str, int]) -> None:
    event = decoders[framing].decode(encode(framing, EVENT, CURRENT, schema_ids))
    assert type(event["occurred_at"]) is int
    assert type(event["user"]["created_at"]) is int
    assert event["occurred_at"] == 1_732_350_000_123


@pytest.mark.parametrize("framing", FRAMINGS)
def test_v1_events_decode_with_the_current_reader_and_get_defaults(
        framing: str, decoders: dict[str, Decoder], schema_ids: dict[str, int]) -> None:
    value = encode(framing, V1_EVENT, V1, schema_ids)
    event = decoder_for_writer(framing, V1, decoders).decode(value)
    assert event == as_current(V1_EVENT)
    assert event["properties"] == {}
    assert event["device_id"] is None
    assert event["user"]["attributes"] == {}


def test_single_object_knows_the_reader_schema_even_when_the_store_does_not() -> None:
    decoder = make_decoder("single-object", reader_schema=CURRENT.source, store=SchemaStore())
    assert decoder.decode(encode_single_object(EVENT, CURRENT)) == EVENT
    with pytest.raises(UnknownSchema, match=V1.fingerprint_hex):
        decoder.decode(encode_single_object(V1_EVENT, V1))


def test_a_writer_schema_that_cannot_be_resolved_is_a_schema_mismatch_naming_both(
        emulator: SchemaRegistryEmulator, decoders: dict[str, Decoder]) -> None:
    other = parse({"type": "record", "name": "Other", "namespace": "com.example",
                   "fields": [{"name": "x", "type": "long"}]})
    other_id = emulator.register("other-value", other.source)
    with pytest.raises(EventError) as caught:
        decoders["confluent"].decode(encode_confluent(other_id, {"x": 1}, other))
    assert caught.value.reason == "schema_mismatch"
    assert f"schema id {other_id} (com.example.Other)" in str(caught.value)
    assert f"reader schema {CURRENT.name}" in str(caught.value)


def test_an_incompatible_field_type_is_a_schema_mismatch(emulator: SchemaRegistryEmulator,
                                                         decoders: dict[str, Decoder]) -> None:
    changed = CURRENT.source | {"fields": [f | {"type": ["null", "string"]} if f["name"] == "duration_ms" else f
                                           for f in CURRENT.source["fields"]]}
    writer = parse(changed)
    writer_id = emulator.register("changed-value", changed)
    record = {**EVENT, "duration_ms": "fifteen seconds"}
    with pytest.raises(EventError) as caught:
        decoders["confluent"].decode(encode_confluent(writer_id, record, writer))
    assert caught.value.reason == "schema_mismatch"


# ------------------------------------------------------------------------------------------- bad values


def _bad_values(framing: str, schema_ids: dict[str, int]) -> dict[str, bytes | None]:
    good = encode(framing, EVENT, CURRENT, schema_ids)
    header = {"confluent": 5, "single-object": 10, "raw": 0}[framing]
    values: dict[str, bytes | None] = {
        "none": None,
        "empty": b"",
        "truncated body": good[:-1],
        "truncated in the middle": good[: header + 20],
        "trailing bytes": good + b"\x00",
        "garbage body": good[:header] + b"\xff" * 40,
    }
    if framing == "confluent":
        values["wrong magic"] = b"\x01" + good[1:]
        values["truncated header"] = good[:3]
    elif framing == "single-object":
        values["wrong magic"] = b"\xc3\x02" + good[2:]
        values["truncated header"] = good[:6]
    return values


@pytest.mark.parametrize("framing", FRAMINGS)
def test_bad_values_are_decode_errors_with_a_clear_message(framing: str, decoders: dict[str, Decoder],
                                                            schema_ids: dict[str, int]) -> None:
    for case, value in _bad_values(framing, schema_ids).items():
        with pytest.raises(DecodeError) as caught:
            decoders[framing].decode(value)
        message = str(caught.value)
        assert caught.value.reason == "undecodable", case
        if case == "none":
            assert "no value" in message
        elif case == "trailing bytes":
            assert "1 trailing bytes" in message
        elif case == "wrong magic":
            assert "magic" in message or "first two bytes" in message
        elif case.startswith("truncated"):
            assert "truncated" in message or "shorter than" in message, (case, message)


def test_invalid_utf8_is_a_decode_error() -> None:
    decoder = make_decoder("raw", reader_schema=CURRENT.source)
    good = encode_raw(EVENT, CURRENT)
    broken = good.replace(b"acct-000123", b"acct-\xff\xfe0123")
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decoder.decode(broken)


def test_unknown_schema_id_is_unknown_schema(decoders: dict[str, Decoder]) -> None:
    with pytest.raises(UnknownSchema, match="schema id 999999 is not known"):
        decoders["confluent"].decode(encode_confluent(999_999, EVENT, CURRENT))


def test_unknown_fingerprint_is_unknown_schema(decoders: dict[str, Decoder]) -> None:
    value = b"\xc3\x01" + bytes(8) + encode_raw(EVENT, CURRENT)
    with pytest.raises(UnknownSchema, match="0000000000000000"):
        decoders["single-object"].decode(value)


# --------------------------------------------------------------------------------------- registry outage


def test_registry_503_is_transient_then_recovers_and_the_cache_is_used() -> None:
    with SchemaRegistryEmulator() as emulator, SchemaRegistryClient(emulator.url) as registry:
        schema_id = emulator.register(SUBJECT, V1.source)
        decoder = make_decoder("confluent", reader_schema=CURRENT.source, registry=registry)
        value = encode_confluent(schema_id, V1_EVENT, V1)
        path = f"/schemas/ids/{schema_id}"

        emulator.fail_with(503)
        for _ in range(2):
            with pytest.raises(TransientError, match="503"):
                decoder.decode(value)
        assert emulator.request_count("GET", path) == 2  # a failure is not cached: each retry asks again

        emulator.fail_with(None)
        for _ in range(100):
            assert decoder.decode(value) == as_current(V1_EVENT)
        assert emulator.request_count("GET", path) == 3  # one successful fetch, then the cache

        emulator.fail_with(503)  # the registry going down again no longer matters for a known id
        assert decoder.decode(value) == as_current(V1_EVENT)
        assert emulator.request_count("GET", path) == 3


def test_registry_on_a_closed_port_is_transient_then_recovers() -> None:
    down = SchemaRegistryEmulator().start()
    port, url = down.port, down.url
    down.stop()
    with SchemaRegistryClient(url, timeout_s=2.0) as registry:
        decoder = make_decoder("confluent", reader_schema=CURRENT.source, registry=registry)
        value = encode_confluent(1, EVENT, CURRENT)
        with pytest.raises(TransientError, match="unreachable"):
            decoder.decode(value)
        with SchemaRegistryEmulator(port=port) as emulator:
            assert emulator.register(SUBJECT, CURRENT.source) == 1
            assert decoder.decode(value) == EVENT
            assert decoder.decode(value) == EVENT
            assert emulator.request_count("GET", "/schemas/ids/1") == 1


def test_transient_errors_are_not_event_errors() -> None:
    assert not issubclass(TransientError, EventError)  # so the caller never dead-letters them


# ------------------------------------------------------------------------------------------ configuration


def test_confluent_needs_a_registry() -> None:
    with pytest.raises(ConfigError, match="registry"):
        make_decoder("confluent", reader_schema=CURRENT.source)


def test_writer_schema_is_refused_where_events_name_their_own(registry: SchemaRegistryClient) -> None:
    with pytest.raises(ConfigError, match="writer_schema"):
        make_decoder("confluent", reader_schema=CURRENT.source, registry=registry, writer_schema=V1.source)


def test_reader_schema_must_be_a_valid_record() -> None:
    with pytest.raises(ConfigError, match="record"):
        make_decoder("raw", reader_schema={"type": "enum", "name": "E", "symbols": ["A"]})
    with pytest.raises(ConfigError, match="reader_schema"):
        make_decoder("raw", reader_schema={"type": "record", "name": "R", "fields": [{"name": "a"}]})


def test_unknown_framing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown framing"):
        make_decoder("protobuf", reader_schema=CURRENT.source)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- properties


def records(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Any valid record of an Avro record schema (the subset of types our schemas use)."""
    return _strategy(schema)


def _strategy(schema: Any) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of(*[_strategy(branch) for branch in schema])
    if isinstance(schema, dict) and schema["type"] == "record":
        return st.fixed_dictionaries({f["name"]: _strategy(f["type"]) for f in schema["fields"]})
    if isinstance(schema, dict) and schema["type"] == "map":
        return st.dictionaries(st.text(max_size=8), _strategy(schema["values"]), max_size=4)
    name = schema["type"] if isinstance(schema, dict) else schema
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "string": st.text(max_size=20),
        "long": st.integers(-(2**63), 2**63 - 1),
        "double": st.floats(allow_nan=False),
    }
    return primitives[name]


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)  # fixtures are module-scoped


@PROPERTY_SETTINGS
@given(record=records(CURRENT.source), framing=st.sampled_from(FRAMINGS))
def test_any_current_record_round_trips_exactly(record: dict[str, Any], framing: str,
                                                decoders: dict[str, Decoder],
                                                schema_ids: dict[str, int]) -> None:
    assert decoders[framing].decode(encode(framing, record, CURRENT, schema_ids)) == record


@PROPERTY_SETTINGS
@given(record=records(V1.source), framing=st.sampled_from(FRAMINGS))
def test_any_v1_record_decodes_to_itself_plus_defaults(record: dict[str, Any], framing: str,
                                                       decoders: dict[str, Decoder],
                                                       schema_ids: dict[str, int]) -> None:
    decoder = decoder_for_writer(framing, V1, decoders)
    assert decoder.decode(encode(framing, record, V1, schema_ids)) == as_current(record)


def _headers(schema_ids: dict[str, int]) -> dict[str, list[bytes]]:
    return {
        "confluent": [b"", *(b"\x00" + i.to_bytes(4, "big") for i in schema_ids.values())],
        "single-object": [b"", b"\xc3\x01" + CURRENT.fingerprint, b"\xc3\x01" + V1.fingerprint],
        "raw": [b""],
    }


@PROPERTY_SETTINGS
@given(data=st.data(), framing=st.sampled_from(FRAMINGS))
def test_random_bytes_only_ever_raise_event_errors(data: st.DataObject, framing: str,
                                                   decoders: dict[str, Decoder],
                                                   schema_ids: dict[str, int]) -> None:
    """Whatever arrives, the outcome is an event or a dead-letterable EventError, never a crash."""
    header = data.draw(st.sampled_from(_headers(schema_ids)[framing]), label="header")
    body = data.draw(st.binary(max_size=300), label="body")
    try:
        event = decoders[framing].decode(header + body)
    except (DecodeError, UnknownSchema):
        return
    assert isinstance(event, dict)  # some byte strings are valid events; that is fine


@PROPERTY_SETTINGS
@given(data=st.data(), framing=st.sampled_from(FRAMINGS))
def test_corrupted_valid_events_only_ever_raise_event_errors(data: st.DataObject, framing: str,
                                                             decoders: dict[str, Decoder],
                                                             schema_ids: dict[str, int]) -> None:
    value = bytearray(encode(framing, EVENT, CURRENT, schema_ids))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        value[data.draw(st.integers(0, len(value) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(value)), label="cut")
    with contextlib.suppress(DecodeError, UnknownSchema):
        decoders[framing].decode(bytes(value[:cut]))


def test_the_writer_schemas_name_is_read_from_the_header_alone(emulator: SchemaRegistryEmulator,
                                                              decoders: dict[str, Decoder]) -> None:
    other = parse({"type": "record", "name": "Purchase", "namespace": "com.example",
                   "fields": [{"name": "x", "type": "long"}]})
    other_id = emulator.register("shop-com.example.Purchase", other.source)
    value = encode_confluent(other_id, {"x": 1}, other)
    assert decoders["confluent"].writer_name(value) == "com.example.Purchase"
    assert decoders["confluent"].writer_name(value[:5] + b"\xff") == "com.example.Purchase"  # the body is not read
    with pytest.raises(DecodeError):
        decoders["confluent"].writer_name(b"\x07")
