"""No value can crash a lane: random reader schemas, random values, a mapping that passes every field on.

Schemas mix every Avro type a producing team may use (bytes, fixed, decimal, enums, nested unions, arrays,
maps of records); the mapping merges the whole record into one output, as an unchecked ``merge:`` would.
Whatever the values, the lane finishes every record (delivered, or dead-lettered with a reason code) and
commits to the end; it never raises and never stops. The lane is stepped on a manual clock with a stepped
delivery (:mod:`consumer.testing.stepping`): no thread, no real time.
"""

from __future__ import annotations

import decimal
import io
import itertools
from typing import Any

import fastavro
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decoding.decoder import RawDecoder
from consumer.decoding.schemas import parse
from consumer.pipeline.lane import Lane, LaneSettings
from consumer.pipeline.ports import SourceCallbacks
from consumer.pipeline.verdict import Judge
from consumer.testing.stepping import ManualClock, SteppedDelivery, step_until
from tests.unit.test_lane import TOPIC, FakeDeadLetters, FakeMessage, FakeSource

_names = (f"T{i}" for i in itertools.count())

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "string", "bytes")


def leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(PRIMITIVES),
        st.builds(lambda size: {"type": "fixed", "name": next(_names), "size": size}, st.integers(1, 8)),
        st.builds(lambda p, s: {"type": "bytes", "logicalType": "decimal", "precision": p, "scale": min(s, p)},
                  st.integers(1, 20), st.integers(0, 6)),
        st.builds(lambda n: {"type": "enum", "name": next(_names), "symbols": [f"S{i}" for i in range(n)]},
                  st.integers(1, 4)),
    )


def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    record = st.lists(inner, min_size=1, max_size=4).map(
        lambda types: {"type": "record", "name": next(_names),
                       "fields": [{"name": f"f{i}", "type": t} for i, t in enumerate(types)]})
    return st.one_of(
        record,
        st.builds(lambda t: {"type": "array", "items": t}, inner),
        st.builds(lambda t: {"type": "map", "values": t}, inner),
        st.builds(lambda t: ["null", t], inner.filter(lambda t: t != "null" and not isinstance(t, list))),
    )


field_types = st.recursive(leaf(), extend, max_leaves=8)


def value_of(schema: Any, data: st.DataObject) -> Any:
    """A random value that ``schema`` can encode, hostile where the type allows (NaN, U+2028, empties)."""
    if isinstance(schema, list):
        return value_of(data.draw(st.sampled_from(schema)), data)
    if isinstance(schema, str):
        return data.draw({
            "null": st.none(), "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32), "double": st.floats(allow_nan=True, allow_infinity=True),
            "string": st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
                ["", " ", "\u2028", "\u0085", "$options", "token"]),
            "bytes": st.binary(max_size=8),
        }[schema])
    kind = schema["type"]
    if kind == "fixed":
        return data.draw(st.binary(min_size=schema["size"], max_size=schema["size"]))
    if kind == "bytes":  # decimal
        digits = data.draw(st.integers(-(10 ** schema["precision"]) + 1, 10 ** schema["precision"] - 1))
        return decimal.Decimal(digits).scaleb(-schema["scale"])
    if kind == "enum":
        return data.draw(st.sampled_from(schema["symbols"]))
    if kind == "array":
        return [value_of(schema["items"], data) for _ in range(data.draw(st.integers(0, 3)))]
    if kind == "map":
        keys = data.draw(st.lists(st.sampled_from(["a", "$ip", "token", "", "x.y"]), max_size=3, unique=True))
        return {k: value_of(schema["values"], data) for k in keys}
    return {f["name"]: value_of(f["type"], data) for f in schema["fields"]}


def pass_everything(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    """What merging every field (``merge: {field: ...}``) into an output would emit, unchecked."""
    return [{"accountId": "a", "userId": "u", "createdAt": 1_700_000_000_000, "action": "identifyUser",
             "details": record, "n": offset}]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(types=st.lists(field_types, min_size=1, max_size=5), ndjson=st.booleans(), data=st.data())
def test_no_value_of_any_schema_makes_the_lane_raise(types: list[Any], ndjson: bool, data: st.DataObject) -> None:
    schema = {"type": "record", "name": next(_names), "fields": [{"name": f"f{i}", "type": t}
                                                                  for i, t in enumerate(types)]}
    parsed = parse(schema)
    values = []
    for _ in range(data.draw(st.integers(1, 6))):
        record = value_of(schema, data)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed.writer, record)
        values.append(out.getvalue())
    messages = [FakeMessage(0, offset, value) for offset, value in enumerate(values)]
    sources: list[FakeSource] = []

    def factory(callbacks: SourceCallbacks) -> FakeSource:
        sources.append(FakeSource(messages, callbacks))
        return sources[0]

    destination = WireDestination(ndjson=ndjson)
    decoder = RawDecoder(parsed, parsed)

    def finished() -> bool:
        assert lane.fatal is None, lane.fatal
        return sources[0].stored().get((TOPIC, 0)) == len(values)

    with SteppedDelivery(ManualClock()) as delivery:
        dead = FakeDeadLetters(delivery.clock)
        lane = Lane(sink=destination, source_factory=factory,
                    judge=Judge(decoder=decoder, map_fn=pass_everything, max_event_bytes=1 << 20, ndjson=ndjson),
                    dead_letters=dead, delivery=delivery, clock=delivery.clock.now,
                    settings=LaneSettings(consume_timeout_s=0.0, max_events=3, max_wait_s=0.0))
        # lane.step() never raises; a handful of steps finish six records (batches close at once, max_wait_s=0)
        step_until(lane.step, delivery, finished, max_steps=20, what="every record to be finished")
        lane.shutdown(1.0)
    parked = {offset for offset, _reason in dead.parked}
    assert all(reason == "mapping_failed" for _offset, reason in dead.parked)
    assert sorted(destination.offsets) == [o for o in range(len(values)) if o not in parked]
    for offset, value in enumerate(values):  # parked exactly when the record holds what JSON cannot carry
        assert (offset in parked) == _holds_unjsonable(decoder.decode(value)), offset


class WireDestination:
    """Accepts every batch after writing it as the sink would (NDJSON body, or one JSON object per event)."""

    name = "freshsuccess"

    def __init__(self, *, ndjson: bool) -> None:
        self.state = "ok"
        self.throttled_s = 0.0
        self.ndjson = ndjson
        self.offsets: list[int] = []

    async def write(self, batch: Any) -> list[Any]:
        if self.ndjson:
            events = [orjson.loads(line) for line in bytes(batch.body).splitlines()]
        else:
            events = [orjson.loads(orjson.dumps(output)) for output in batch.outputs]
        self.offsets += [event["n"] for event in events]
        return []


def _holds_unjsonable(value: Any) -> bool:
    if isinstance(value, bytes | decimal.Decimal):
        return True
    if isinstance(value, float):
        return False  # NaN/Infinity are written as null by orjson, not refused
    if isinstance(value, dict):
        return any(_holds_unjsonable(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_unjsonable(v) for v in value)
    return False


