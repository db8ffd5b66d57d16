"""Hostile input: whatever a buggy or malicious producer writes to the topic, the consumer neither crashes
nor hangs, its memory stays bounded, and every record it cannot deliver is dead-lettered with a reason.

The real decoder (Confluent framing, the shipped reader schema) and the real default mapping run inside a
real :class:`~consumer.pipeline.lane.Lane`, fed by a fake source and stepped on a manual clock with a stepped
delivery (:mod:`consumer.testing.stepping`); only Kafka and HTTP are replaced. Property-based
tests (hypothesis) generate random bytes, mutated and truncated records, and valid records with extreme
field values; deterministic cases cover the known attack shapes (declared-huge strings and maps, invalid
UTF-8, oversized records, absurd timestamps, hostile writer schemas). If ``atheris`` is installed, a
coverage-guided fuzz of the decoder and the mapper runs for a few seconds too.

The whole module is time-bounded (hypothesis example counts and deadlines, a fixed fuzz duration): about
30-60 s on a loaded machine.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consumer.config import default_mapping_file
from consumer.decoding.decoder import Decoder, make_decoder
from consumer.decoding.encoding import encode_confluent
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import ParsedSchema, default_reader_schema_path, load_schema, parse
from consumer.errors import EventError, Rejected, UnknownSchema
from consumer.mapping import CompiledMapping, load_mapping
from consumer.mapping.compiler import MapFn
from consumer.pipeline.batcher import Batch
from consumer.pipeline.committer import CommitResult
from consumer.pipeline.lane import Lane, LaneSettings
from consumer.pipeline.offsets import TopicPartitionKey, Work
from consumer.pipeline.ports import SourceCallbacks
from consumer.pipeline.verdict import Judge
from consumer.testing.fakes import kafka_message
from consumer.testing.stepping import ManualClock, SteppedDelivery, step_until

TOPIC = "hostile"
SCHEMA_ID = 1
HEADER = b"\x00" + struct.pack(">I", SCHEMA_ID)
MAX_EVENT_BYTES = 64 * 1024  # small, so that "oversized" is cheap to produce
DESTINATIONS = ("freshsuccess", "freshpaint")
REASONS = {"undecodable", "unknown_schema", "mapping_failed", "missing_required_field", "oversized"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
YEAR_9999_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ROOT = Path(__file__).resolve().parents[2]

READER: dict[str, Any] = load_schema(default_reader_schema_path())
PARSED: ParsedSchema = parse(READER)
MAPPING: CompiledMapping = load_mapping(default_mapping_file(), READER)


def judge_for(destination: str, decoder: Decoder) -> Judge:
    return Judge(decoder=decoder, map_fn=map_fn_for(destination), max_event_bytes=MAX_EVENT_BYTES,
                 ndjson=destination == "freshsuccess")


def map_fn_for(destination: str) -> MapFn:
    fn: MapFn | None = getattr(MAPPING, destination)
    assert fn is not None
    return fn


def base_event(**overrides: Any) -> dict[str, Any]:
    """A valid feature_used event (both destinations map it); ``overrides`` replace fields."""
    event: dict[str, Any] = {
        "event_id": "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9", "event_type": "feature_used",
        "occurred_at": 1_763_900_000_000, "account_id": "acct-1", "user_id": "user-1", "session_id": None,
        "device_id": None, "product": "analytics", "module": "reports", "feature": "export", "duration_ms": None,
        "count": None, "user": None, "account": None, "properties": {},
    }
    event.update(overrides)
    return event


def encode(event: dict[str, Any]) -> bytes:
    return encode_confluent(SCHEMA_ID, event, PARSED)


VALID = encode(base_event())


# ------------------------------------------------------------------------------------------- harness


class StubRegistry(SchemaRegistryClient):
    """A registry that knows a fixed set of ids (the decoder's only window onto the registry)."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:  # no HTTP client: nothing to ask
        self.host = "registry.invalid"
        self.known = schemas

    def close(self) -> None:
        pass  # no HTTP client to close

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        try:
            return self.known[schema_id]
        except KeyError:
            raise UnknownSchema(f"schema id {schema_id} is not known") from None


def new_decoder(schemas: dict[int, dict[str, Any]] | None = None) -> Decoder:
    return make_decoder("confluent", reader_schema=PARSED, registry=StubRegistry(schemas or {SCHEMA_ID: READER}))


def Message(offset: int, value: bytes | None) -> Any:
    """A real ``confluent_kafka.Message``: partition 0 of ``TOPIC``, no key, no headers."""
    return kafka_message(TOPIC, 0, offset, value)


@dataclass
class ListSource:
    """One partition holding ``pending``; honours pause like librdkafka (paused: nothing is returned)."""

    pending: list[Any]
    callbacks: SourceCallbacks
    stored: dict[TopicPartitionKey, int] = field(default_factory=dict)
    paused: bool = False
    assigned: bool = False

    def consume(self, max_messages: int, timeout_s: float) -> Sequence[Any]:
        if not self.assigned:
            self.assigned = True
            self.callbacks.on_assign([(TOPIC, 0)])
        if self.paused:
            return []
        out, self.pending = self.pending[:max_messages], self.pending[max_messages:]
        return out

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self.callbacks.on_commit(self.commit_sync(offsets))

    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
        self.stored.update(offsets)
        return {key: (offset, None) for key, offset in offsets.items()}

    def committed(self, keys: list[TopicPartitionKey], timeout_s: float) -> dict[TopicPartitionKey, int]:
        return {}

    def pause(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused = True

    def resume(self, keys: Iterable[TopicPartitionKey]) -> None:
        self.paused = False

    def assignment(self) -> list[TopicPartitionKey]:
        return [(TOPIC, 0)]

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        return None

    def close(self) -> None:
        pass


class RecordingDestination:
    """Accepts every batch once its gate is open (``blocked``: closed until the test sets ``gate``); checks that
    what would go on the wire is valid JSON."""

    def __init__(self, name: str, *, blocked: bool = False) -> None:
        self.name = name
        self.state = "ok"
        self.throttled_s = 0.0
        self.ndjson = name == "freshsuccess"
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.delivered_offsets: list[int] = []

    async def write(self, batch: Batch) -> list[tuple[int, Rejected]]:
        await self.gate.wait()
        if self.ndjson:
            lines = bytes(batch.body).splitlines()
            assert len(lines) == batch.events
            for line in lines:
                assert isinstance(orjson.loads(line), dict)
        else:
            for output in batch.outputs:
                orjson.dumps(output)  # what the sink sends (plus the token)
            self.delivered_offsets.extend(source.offset() for source in batch.sources)
        return []


class RecordingDeadLetters:
    """Parks in memory, confirmed at once; ``flush`` waits out its timeout on the lane's clock, so a lane waiting
    for work that nothing in flight will finish reaches its deadline instead of spinning in simulated time."""

    def __init__(self, clock: ManualClock) -> None:
        self.parked: dict[int, str] = {}
        self.failure: str | None = None
        self.clock = clock

    def park(self, message: Any, error: EventError, destination: str, work: Work) -> None:
        assert message.offset() not in self.parked, "parked twice"
        assert error.reason in REASONS, error.reason
        assert str(error), "a dead letter needs a message"
        self.parked[message.offset()] = error.reason

    def poll(self) -> None:
        pass

    def flush(self, timeout_s: float) -> int:
        self.clock.advance(timeout_s)
        return 0

    def close(self, timeout_s: float = 5.0) -> None:
        pass


@dataclass
class Outcome:
    parked: dict[int, str]
    committed: int
    lane: Lane


def run_lane(values: Sequence[bytes | None], destination: str, *, decoder: Decoder | None = None,
             max_steps: int = 20) -> Outcome:
    """Feed ``values`` (offsets 0..n-1) through a real lane, stepped on a manual clock, until every offset is
    committed: a few steps (one consume takes them all, batches close at once), bounded by ``max_steps``."""
    source_holder: list[ListSource] = []

    def factory(callbacks: SourceCallbacks) -> ListSource:
        source_holder.append(ListSource([Message(i, v) for i, v in enumerate(values)], callbacks))
        return source_holder[0]

    end = len(values)

    def drained() -> bool:
        assert lane.fatal is None, lane.fatal
        return source.stored.get((TOPIC, 0)) == end or end == 0

    with SteppedDelivery(ManualClock()) as delivery:
        dead = RecordingDeadLetters(delivery.clock)
        lane = Lane(sink=RecordingDestination(destination), source_factory=factory,
                    judge=judge_for(destination, decoder or new_decoder()), dead_letters=dead, delivery=delivery,
                    clock=delivery.clock.now,
                    settings=LaneSettings(consume_batch_size=50, consume_timeout_s=0.0, max_events=100,
                                          max_wait_s=0.0))
        source = source_holder[0]
        step_until(lane.step, delivery, drained, max_steps=max_steps,
                   what=f"the {destination} lane to commit {end} records")
        lane.shutdown(5.0)
    return Outcome(dead.parked, source.stored.get((TOPIC, 0), 0), lane)


def oracle(value: bytes | None, destination: str) -> str | int:
    """What must happen to one record: the dead-letter reason, or how many outputs it produces."""
    if value is not None and len(value) > MAX_EVENT_BYTES:
        return "oversized"
    outcome = decode_and_map(value, destination)
    return outcome.reason if isinstance(outcome, EventError) else len(outcome)


def check_lane(values: Sequence[bytes | None]) -> dict[str, dict[int, str]]:
    """Both lanes finish every record: dead-lettered with the reason the decoder/mapper gives, else delivered."""
    parked_by_destination = {}
    for destination in DESTINATIONS:
        outcome = run_lane(values, destination)
        assert outcome.committed == len(values)
        for offset, value in enumerate(values):
            expected = oracle(value, destination)
            if isinstance(expected, str):
                assert outcome.parked.get(offset) == expected, (offset, value[:64] if value else value)
            else:
                assert offset not in outcome.parked, (offset, outcome.parked[offset])
        parked_by_destination[destination] = outcome.parked
    return parked_by_destination


# ----------------------------------------------------------------------------- property-based tests

# A loaded CI machine can be slow; a hang is still caught (minutes, not seconds).
FAST = settings(max_examples=400, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 flips a byte, 1 inserts one, 2 deletes one."""
    out = bytearray(data)
    for kind, position, byte in edits:
        if not out:
            break
        at = position % len(out)
        if kind == 0:
            out[at] ^= byte or 1
        elif kind == 1:
            out.insert(at, byte)
        else:
            del out[at]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=8)
hostile_values = st.one_of(
    st.none(),                                                   # a tombstone
    st.binary(max_size=300),                                     # random bytes, any framing
    st.binary(max_size=300).map(lambda body: HEADER + body),     # the right header, a random body
    st.integers(0, len(VALID) - 1).map(lambda cut: VALID[:cut]),  # truncated
    edits.map(lambda e: mutate(VALID, e)),                       # flipped, inserted, deleted bytes
)


@FAST
@given(value=hostile_values)
def test_the_decoder_and_mapper_raise_only_event_errors(value: bytes | None) -> None:
    """Never an unexpected exception: bad bytes are an EventError with a reason, good ones map to JSON."""
    for destination in DESTINATIONS:
        outcome = decode_and_map(value, destination)
        if isinstance(outcome, EventError):
            assert outcome.reason in REASONS
            assert str(outcome)
        else:
            orjson.dumps(outcome)


def decode_and_map(value: bytes | None, destination: str) -> list[dict[str, Any]] | EventError:
    """The outputs, or the EventError that stopped them (anything else escapes and fails the test)."""
    try:
        return map_fn_for(destination)(new_decoder().decode(value), TOPIC, 0, 0)
    except EventError as exc:
        return exc


@FAST
@given(values=st.lists(hostile_values, min_size=1, max_size=12))
def test_a_lane_fed_hostile_records_finishes_every_one(values: list[bytes | None]) -> None:
    check_lane(values)


text = st.text(max_size=40)
long_values = st.integers(INT64_MIN, INT64_MAX)
extreme_events = st.builds(
    base_event,
    event_id=text, event_type=st.sampled_from(["feature_used", "module_ended", "session_synced", "user_identified",
                                               "account_identified", "page_viewed", "", "\x00"]),
    occurred_at=long_values, account_id=text, user_id=text,
    session_id=st.none() | text, device_id=st.none() | text, product=st.none() | text, module=st.none() | text,
    feature=st.none() | text, duration_ms=st.none() | long_values, count=st.none() | long_values,
    user=st.none() | st.fixed_dictionaries({
        "email": st.none() | text, "name": st.none() | text, "role": st.none() | text,
        "created_at": st.none() | long_values, "attributes": st.dictionaries(text, text, max_size=5)}),
    account=st.none() | st.fixed_dictionaries({
        "name": st.none() | text, "plan": st.none() | text,
        "mrr": st.none() | st.floats(allow_nan=True, allow_infinity=True),
        "created_at": st.none() | long_values, "attributes": st.dictionaries(text, text, max_size=5)}),
    properties=st.dictionaries(text, text, max_size=20),
)


@FAST
@given(events=st.lists(extreme_events, min_size=1, max_size=8))
def test_valid_records_with_extreme_values_never_crash_and_serialize(events: list[dict[str, Any]]) -> None:
    """Any Unicode, any 64-bit number, NaN and infinities: delivered as valid JSON or dead-lettered."""
    try:
        values = [encode(e) for e in events]
    except (ValueError, TypeError):  # a record fastavro itself refuses to write is not a test case
        assume(False)
        raise
    check_lane(values)


# ------------------------------------------------------------------------------ known attack shapes


def varint(n: int) -> bytes:
    """Avro's zig-zag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_body(body: bytes) -> bytes:
    return HEADER + body


def first_fields(event_id: bytes = b"e", event_type: bytes = b"feature_used") -> bytes:
    """event_id and event_type as Avro strings, raw (they may be invalid UTF-8)."""
    return varint(len(event_id)) + event_id + varint(len(event_type)) + event_type


def huge_map_declared() -> bytes:
    """A properties map claiming 2**62 entries, followed by almost nothing."""
    before_map = VALID[len(HEADER):-1]  # the valid body minus its empty map terminator
    return with_body(before_map + varint(2**62) + b"\x02k\x02v")


def negative_block_map() -> bytes:
    """A map block with a negative count (meaning a byte size follows) that lies about its size."""
    before_map = VALID[len(HEADER):-1]
    return with_body(before_map + varint(-(2**40)) + varint(2**62) + b"\x02k")


def real_map(entries: int) -> bytes:
    return encode(base_event(properties={f"k{i}": "v" for i in range(entries)}))


CASES: dict[str, tuple[bytes | None, str | None]] = {
    # name: (record value, the reason both lanes must dead-letter it with; None: must be delivered)
    "tombstone": (None, "undecodable"),
    "empty": (b"", "undecodable"),
    "json-not-avro": (b'{"event_type": "feature_used"}', "undecodable"),
    "header-only": (HEADER, "undecodable"),
    "unknown-schema-id": (b"\x00\xff\xff\xff\xff" + VALID[5:], "unknown_schema"),
    "truncated-by-one": (VALID[:-1], "undecodable"),
    "trailing-garbage": (VALID + b"\x00\x01", "undecodable"),
    "string-length-2**62": (with_body(varint(2**62) + b"abc"), "undecodable"),
    "string-length-negative": (with_body(varint(-5) + b"abc"), "undecodable"),
    "varint-never-ends": (with_body(b"\xff" * 60_000), "undecodable"),
    "map-declares-2**62-entries": (huge_map_declared(), "undecodable"),
    "map-negative-block-lies": (negative_block_map(), "undecodable"),
    "union-index-out-of-range": (with_body(first_fields() + varint(1_763_900_000_000) + b"\x02a\x02u" + b"\x7e"),
                                 "undecodable"),
    "invalid-utf8": (with_body(first_fields(event_id=b"\xc3\x28")), "undecodable"),
    "utf8-surrogate": (with_body(first_fields(event_id=b"\xed\xa0\x80")), "undecodable"),
    "overlong-utf8-nul": (with_body(first_fields(event_type=b"\xc0\x80")), "undecodable"),
    "oversized": (real_map(20_000), "oversized"),
    "large-map-under-the-limit": (real_map(4_000), None),
    "long-strings-under-the-limit": (encode(base_event(feature="f" * 30_000, user_id="u" * 30_000)), None),
    "nul-and-control-characters": (encode(base_event(feature="\x00\x1b[2J\u202e", account_id="\x00")), None),
    "int64-extremes": (encode(base_event(count=INT64_MAX, duration_ms=INT64_MIN)), None),
    "nan-and-infinite-mrr": (encode(base_event(event_type="account_identified", account={
        "name": "n", "plan": "p", "mrr": math.nan, "created_at": None, "attributes": {"x": "y"}})), None),
    "infinite-mrr": (encode(base_event(event_type="account_identified", account={
        "name": "n", "plan": "p", "mrr": -math.inf, "created_at": None, "attributes": {}})), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_known_attack_shapes(name: str) -> None:
    value, reason = CASES[name]
    started = time.monotonic()
    parked = check_lane([VALID, value, VALID])
    assert time.monotonic() - started < 20, "far too slow: a hang in the making"
    for destination in DESTINATIONS:
        # The record itself as expected; its neighbours are unaffected.
        assert parked[destination] == ({1: reason} if reason else {}), destination


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_a_record_allocates_in_proportion_to_its_size(name: str) -> None:
    """Memory: a record that *declares* a huge string or map allocates nothing of that size; the peak
    while decoding and mapping stays within a small multiple of the record's own size."""
    value, _reason = CASES[name]
    decoder = new_decoder()
    decoder.decode(VALID)  # warm the per-schema plan
    size = len(value) if value is not None else 0
    tracemalloc.start()
    try:
        try:
            record = decoder.decode(value) if size <= MAX_EVENT_BYTES else None
            if record is not None:
                for destination in DESTINATIONS:
                    orjson.dumps(map_fn_for(destination)(record, TOPIC, 0, 0))
        except EventError:
            pass
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024 + 150 * size, f"{peak} bytes allocated for a {size}-byte record"


OUT_OF_RANGE_TIMESTAMPS = {"negative": -1, "int64-min": INT64_MIN, "zero": 0, "year-9999": YEAR_9999_MS,
                           "int64-max": INT64_MAX}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE_TIMESTAMPS))
def test_out_of_range_timestamps_never_crash_and_every_record_is_finished(name: str) -> None:
    at = OUT_OF_RANGE_TIMESTAMPS[name]
    values = [encode(base_event(occurred_at=at)),
              encode(base_event(event_type="user_identified", user={
                  "email": None, "name": None, "role": None, "created_at": at, "attributes": {}}))]
    check_lane(values)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE_TIMESTAMPS))
def test_out_of_range_timestamps_are_dead_lettered(name: str) -> None:
    parked = check_lane([encode(base_event(occurred_at=OUT_OF_RANGE_TIMESTAMPS[name]))])
    for destination in DESTINATIONS:
        assert parked[destination].get(0) == "mapping_failed", (destination, parked)


# --------------------------------------------------------------------------- hostile writer schemas


def nested_records(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "record", "name": "Leaf", "fields": []}
    for level in range(depth):
        schema = {"type": "record", "name": f"R{level}", "fields": [{"name": "f", "type": schema}]}
    return schema


def test_a_writer_schema_nested_too_deep_to_parse_is_an_unknown_schema() -> None:
    decoder = new_decoder({SCHEMA_ID: READER, 2: nested_records(3000)})
    value = b"\x00\x00\x00\x00\x02" + b"\x00" * 16
    outcome = run_lane([VALID, value, VALID], "freshsuccess", decoder=decoder)
    assert outcome.parked == {1: "unknown_schema"}


def registry_answering(schema_text: str) -> SchemaRegistryClient:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schema": schema_text})

    return SchemaRegistryClient("http://registry.test", transport=httpx.MockTransport(handler))


def test_deeply_nested_json_from_the_registry_is_an_unknown_schema() -> None:
    decoder = make_decoder("confluent", reader_schema=PARSED,
                           registry=registry_answering("[" * 100_000 + "]" * 100_000))
    with pytest.raises(UnknownSchema):
        decoder.decode(b"\x00\x00\x00\x00\x07" + b"\x00" * 16)


# ------------------------------------------------------------------------------------- memory bound


def test_a_blocked_freshsuccess_lane_holds_a_bounded_amount_of_hostile_data() -> None:
    """While the destination does not answer, what the lane holds is bounded by its batch settings in bytes,
    however big each record's map is (backpressure pauses fetching)."""
    assert_bounded_while_blocked("freshsuccess")


def test_a_blocked_freshpaint_lane_holds_a_bounded_amount_of_hostile_data() -> None:
    assert_bounded_while_blocked("freshpaint")


def assert_bounded_while_blocked(destination: str) -> None:
    record = real_map(5_000)  # ~40 KB on the wire, several MB as Python objects
    values = [record] * 100
    sources: list[ListSource] = []

    def factory(callbacks: SourceCallbacks) -> ListSource:
        sources.append(ListSource([Message(i, v) for i, v in enumerate(values)], callbacks))
        return sources[0]

    sink = RecordingDestination(destination, blocked=True)
    max_bytes = 64 * 1024
    with SteppedDelivery(ManualClock()) as delivery:
        lane = Lane(sink=sink, source_factory=factory, judge=judge_for(destination, new_decoder()),
                    dead_letters=RecordingDeadLetters(delivery.clock), delivery=delivery, clock=delivery.clock.now,
                    settings=LaneSettings(consume_batch_size=5, consume_timeout_s=0.0, max_events=2000,
                                          max_bytes=max_bytes, max_wait_s=60.0, max_in_flight_batches=1))
        tracemalloc.start()
        try:
            for _ in range(200):
                lane.step()
                delivery.run_until_idle()  # the batch in flight waits at the closed gate
            current, _peak = tracemalloc.get_traced_memory()
            delivered_while_blocked = lane.stats.delivered_messages
        finally:
            tracemalloc.stop()
            sink.gate.set()
            lane.shutdown(5.0)
        assert delivered_while_blocked == 0
        # unblocked at shutdown: what it had taken was delivered, then committed
        assert sources[0].stored.get((TOPIC, 0), 0) == lane.stats.delivered_messages > 0
    assert current < 8 * 1024 * 1024, f"{current / 1e6:.0f} MB held while blocked"
