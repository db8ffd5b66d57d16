"""One corpus, two paths, one verdict: what the running lanes do with each record is what ``usage-consumer map``
says they would do.

The corpus holds valid events of every kind, every dead-letter reason a lane can reach before sending
(oversized, undecodable, unknown_schema, missing_required_field, mapping_failed), hostile values (NaN doubles,
U+2028 and U+0085 in strings, blank ids, reserved Freshpaint keys in properties) and the ``$insert_id`` repro
inputs of issue 11. It is produced once to a one-partition topic; the service runs over it until both lanes
have committed to the end; then ``usage-consumer map --json --from-topic`` plans the same records. For each
record and destination the outcome (send, skip, dead letter and its reason) and, for sends, the exact outputs
must agree.
"""

from __future__ import annotations

import io
import json
import random
from contextlib import redirect_stdout
from typing import Any

import orjson
import pytest

from consumer.cli import main
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.eventgen import make_event, malformed_values, one_of_each
from tests.helpers import wait_for

DESTINATIONS = ("freshsuccess", "freshpaint")
MAX_EVENT_BYTES = 2000


def corpus_events(topic: str) -> list[dict[str, Any]]:
    """Events (by offset) whose account_id marks them, so that Freshsuccess outputs can be traced back."""
    rng = random.Random(3)
    events = one_of_each(seed=4)

    def kind(event_type: str, **changes: Any) -> dict[str, Any]:
        event = make_event(rng, len(events), event_type)
        event.update(changes)
        return event

    events += [
        kind("module_ended", duration_ms=None),                                  # Freshsuccess: missing timeSpent
        kind("feature_used", user_id=""),                                        # blank id: missing everywhere
        kind("feature_used", user_id="   "),
        kind("account_identified", account={"name": "NaN Ltd", "plan": "pro", "mrr": float("nan"),
                                            "created_at": 1_700_000_000_000, "attributes": {}}),
        kind("account_identified", account={"name": "Inf Ltd", "plan": "pro", "mrr": float("inf"),
                                            "created_at": 1_700_000_000_000, "attributes": {}}),
        kind("feature_used", feature="line\u2028separator", properties={
            "$options": "not an object", "$ip": "10.1.2.3", "token": "stolen", "$user_props": "x",
            "$device_id": "injected", "note": "next\u0085line"}),
        kind("page_viewed", properties={"$insert_id": "injected id with spaces", "url": "/a"}),
        kind("feature_used", occurred_at=0),                                     # mapping_failed: time out of range
        kind("feature_used", properties={"pad": "x" * (MAX_EVENT_BYTES + 100)}), # oversized
        kind("feature_used", session_id=""),                                     # blank with a default: sent
        kind("user_identified", event_id="order-17"),                            # the $insert_id repro pair
        kind("user_identified", event_id="order-17#1"),
    ]
    blank_at = len(events)
    events.append(kind("page_viewed", event_id=""))
    events.append(kind("page_viewed", event_id=f"kafka:{topic}:0:{blank_at}"))
    for index, event in enumerate(events):
        if event["account_id"].strip() == event["account_id"] and event["user_id"].strip():
            event["account_id"] = f"corpus-{index:03d}"
    return events


def lane_outcomes(stack: DevStack, topic: str, dlq: str, records: int) -> dict[tuple[str, int], Any]:
    """(destination, offset) -> ("dead_letter", reason) | ("send", outputs) | ("skip",), from what happened."""
    outcomes: dict[tuple[str, int], Any] = {}
    for letter in stack.read_all(dlq):
        headers = {k: v.decode() for k, v in letter.headers() or []}
        if headers["dlq.source_topic"] == topic:
            key = (headers["dlq.destination"], int(headers["dlq.source_offset"]))
            assert key not in outcomes, f"parked twice: {key}"
            outcomes[key] = ("dead_letter", headers["dlq.reason"])
    return outcomes


def normalized(output: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(output))


def test_the_running_lanes_and_the_dry_run_reach_the_same_verdict_on_every_record(
        stack: DevStack, monkeypatch: pytest.MonkeyPatch) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = corpus_events(topic)
    values = [(e["account_id"].encode(), stack.encode(schema_id, e)) for e in events]
    values += [(b"malformed", value) for _reason, value in malformed_values(schema_id, values[0][1])]
    stack.produce(topic, values)
    records = len(values)
    decoding = {"max_event_bytes": MAX_EVENT_BYTES}
    config = stack.config_file(topic, dlq, decoding=decoding)
    settings = stack.settings(topic, dlq, decoding=decoding)

    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.reset()
    with RunningService(settings):
        wait_for(lambda: all(stack.committed(settings.group_for(d), topic).get(0) == records for d in DESTINATIONS),
                 timeout_s=90, what="both lanes to commit the whole corpus")

    for variable, value in DevStack.secrets_env().items():
        monkeypatch.setenv(variable, value)
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["map", "--config", str(config), "--json", "--from-topic", str(records), "--partition", "0",
                     "--offset", "0"])
    assert code == 0, out.getvalue()[-2000:]
    plans = json.loads(out.getvalue())["events"]
    assert [p["offset"] for p in plans] == list(range(records))

    parked = lane_outcomes(stack, topic, dlq, records)
    fs_received: dict[str, list[Any]] = {}
    for output in stack.emulators.freshsuccess.events():
        fs_received.setdefault(output["accountId"], []).append(normalized(output))
    fp_received: dict[str, Any] = {}
    for event in stack.emulators.freshpaint.events():
        properties = {k: v for k, v in event["properties"].items() if k != "token"}
        fp_received[properties["$insert_id"]] = normalized({**event, "properties": properties})

    seen_reasons: set[str] = set()
    disagreements = []
    for plan in plans:
        offset = plan["offset"]
        for destination in DESTINATIONS:
            planned = plan["destinations"][destination]
            outcome = planned["outcome"]
            if outcome == "dead_letter":
                seen_reasons.add(planned["reason"])
                want: Any = ("dead_letter", planned["reason"])
                got: Any = parked.get((destination, offset))
            elif outcome == "send":
                outputs = [normalized(o["output"]) for o in planned["outputs"]]
                want = ("send", outputs)
                if destination == "freshsuccess":
                    got = ("send", fs_received.get(outputs[0]["accountId"], []))
                else:
                    got = ("send", [fp_received.get(o["properties"]["$insert_id"]) for o in outputs])
                if (destination, offset) in parked:
                    got = parked[(destination, offset)]
            else:
                assert outcome == "skip", planned
                want = ("skip",)
                got = parked.get((destination, offset), ("skip",))
            if want != got:
                disagreements.append(f"{destination} @{offset}: map says {want}, the lane did {got}")
    assert disagreements == []
    assert seen_reasons >= {"oversized", "undecodable", "unknown_schema", "missing_required_field", "mapping_failed"}
    # Nothing was delivered that the dry run did not plan, and every Freshpaint id is distinct.
    planned_fp = sum(len(p["destinations"]["freshpaint"].get("outputs", [])) for p in plans)
    assert len(stack.emulators.freshpaint.events()) == planned_fp == len(fp_received)
