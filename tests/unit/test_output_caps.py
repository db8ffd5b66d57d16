"""Freshpaint's caps on one event, decided in the verdict: at the cap is sent, over it is parked ``too_large``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from consumer.pipeline.verdict import PARK, SEND, Judge, OutputCaps


class Passthrough:
    def decode(self, value: bytes | None) -> dict[str, Any]:
        return dict(orjson.loads(value or b"{}"))


def one_event(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    return [{"event": "E", "properties": record}]


def decide(properties: dict[str, Any], caps: OutputCaps) -> Any:
    judge = Judge(decoder=Passthrough(), map_fn=one_event, max_event_bytes=1 << 20, ndjson=False, caps=caps)
    return judge.decide(orjson.dumps(properties), "t", 0, 0)


@pytest.mark.parametrize(("count", "kind"), [(5, SEND), (6, PARK)])
def test_more_properties_than_the_cap_is_too_large(count: int, kind: str) -> None:
    decision = decide({f"k{i}": i for i in range(count)}, OutputCaps(max_properties=5, max_bytes=10_000))
    assert decision.kind == kind
    if kind == PARK:
        assert decision.reason == "too_large"
        assert "6 properties, more than max_properties_per_event=5" in str(decision.error)


def test_a_body_over_the_byte_cap_is_too_large_and_at_the_cap_is_sent() -> None:
    properties = {"blob": "x" * 100}
    size = len(orjson.dumps({"event": "E", "properties": properties}))
    assert decide(properties, OutputCaps(max_properties=10, max_bytes=size)).kind == SEND
    over = decide(properties, OutputCaps(max_properties=10, max_bytes=size - 1))
    assert (over.kind, over.reason) == (PARK, "too_large")
    assert f"{size} bytes, more than max_request_bytes={size - 1}" in str(over.error)
