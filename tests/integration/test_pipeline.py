"""The pipeline end to end: real broker, schema registry emulator, both destination emulators.

Each test produces Avro events (Confluent framing) to a fresh topic, runs the service as ``usage-consumer
run`` would, and asserts on what the emulators received and what the broker holds as committed offsets.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.mapping.compiler import insert_id
from consumer.testing.devstack import API_KEY, AUTH_KEY, TOKEN, DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import malformed_values, one_of_each, realistic_events
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("fresh_emulators")

def by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["event_type"]: e for e in events}


def expected_freshsuccess(e: dict[str, Any]) -> dict[str, Any] | None:
    """What the default mapping promises Freshsuccess for one event (written out, not computed by it)."""
    base = {"accountId": e["account_id"], "userId": e["user_id"], "createdAt": e["occurred_at"],
            "sessionId": e["session_id"]}
    kind = e["event_type"]
    if kind == "feature_used":
        out = {**base, "action": "feature", "feature": e["feature"], "module": e["module"],
               "total": e["count"] if e["count"] is not None else 1, "product": e["product"]}
    elif kind == "module_ended":
        out = {**base, "action": "moduleEnd", "module": e["module"], "timeSpent": e["duration_ms"]}
    elif kind == "session_synced":
        out = {**base, "action": "sessionSync", "activeDuration": e["duration_ms"]}
    elif kind == "user_identified":
        u = e["user"]
        out = {**base, "action": "identifyUser", "details": {**u["attributes"], "name": u["name"],
               "email": u["email"], "role": u["role"], "createdAt": u["created_at"]}}
    elif kind == "account_identified":
        a = e["account"]
        out = {**base, "action": "identifyAccount", "details": {**a["attributes"], "name": a["name"],
               "plan": a["plan"], "mrr": a["mrr"], "createdAt": a["created_at"]}}
    else:
        return None
    return out


def expected_freshpaint(e: dict[str, Any], topic: str, partition: int, offset: int) -> dict[str, Any]:
    props: dict[str, Any] = {"distinct_id": e["user_id"], "time": e["occurred_at"] / 1000,
                             "$insert_id": insert_id(e["event_id"], topic, partition, offset, 0),
                             "token": TOKEN}
    if e["device_id"] is not None:
        props["$device_id"] = e["device_id"]
    kind = e["event_type"]
    if kind == "feature_used":
        name = "Feature Used"
        props.update(e["properties"])
        props.update(feature=e["feature"], module=e["module"], product=e["product"],
                     count=e["count"] if e["count"] is not None else 1, account_id=e["account_id"])
    elif kind == "module_ended":
        name = "Module Ended"
        props.update(e["properties"])
        props.update(module=e["module"], product=e["product"], duration_ms=e["duration_ms"],
                     account_id=e["account_id"])
    elif kind == "session_synced":
        name = "Session Synced"
        props.update(e["properties"])
        props.update(duration_ms=e["duration_ms"], account_id=e["account_id"])
    elif kind == "user_identified":
        name = "$identify"
        u = e["user"]
        props["$user_props"] = {**u["attributes"], "name": u["name"], "email": u["email"], "role": u["role"],
                                "account_id": e["account_id"], "created_at": u["created_at"] / 1000}
    elif kind == "account_identified":
        name = "Account Identified"
        a = e["account"]
        props.update(account_id=e["account_id"], account_name=a["name"], plan=a["plan"], mrr=a["mrr"])
    else:
        name = "Page Viewed"
        props.update(e["properties"])
        props.update(product=e["product"], module=e["module"], account_id=e["account_id"])
    return {"event": name, "properties": props}


def test_each_action_and_event_kind_arrives_as_the_exact_documented_request(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = one_of_each()
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq)

    with RunningService(settings):
        fs_events = stack.emulators.freshsuccess.wait_for_events(5, timeout_s=60)
        fp_events = stack.emulators.freshpaint.wait_for_events(6, timeout_s=60)

    # Freshsuccess: one gzip NDJSON POST to /v1/{authKey}/{apiKey} carrying all five actions.
    requests = [r for r in stack.emulators.freshsuccess.requests() if r.path != "/v1/ping"]
    assert len(requests) == 1
    request = requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-encoding"] == "gzip"
    assert int(request.headers["content-length"]) == len(request.body)
    body = gzip.decompress(request.body)
    lines = body.split(b"\n")
    assert lines[-1] == b""
    assert not body.startswith(b"[")
    sent = [orjson.loads(line) for line in lines[:-1]]
    assert sent == [x for x in (expected_freshsuccess(e) for e in events) if x is not None]
    assert sent == fs_events
    assert stack.emulators.freshsuccess.violations() == []
    assert stack.emulators.freshsuccess.dropped() == []

    # Freshpaint: one POST /track per event, each a single JSON object with the token and $insert_id.
    fp_requests = stack.emulators.freshpaint.requests()
    assert all(r.path == "/track" and r.headers["content-type"] == "application/json" for r in fp_requests)
    received = {r["event"]: r for r in (orjson.loads(r.body) for r in fp_requests)}
    for offset, e in enumerate(events):
        want = expected_freshpaint(e, topic, 0, offset)
        assert received[want["event"]] == want
    assert len(fp_events) == 6
    assert stack.emulators.freshpaint.violations() == []


def test_deflate_and_plain_encodings_and_integration_routing(stack: DevStack, tmp_path: Path) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = [e for e in one_of_each() if e["event_type"] in ("feature_used", "page_viewed")]
    stack.produce_events(topic, schema_id, events)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("""
version: 1
defaults:
  freshsuccess:
    accountId: {field: account_id}
    userId: {field: user_id}
    sessionId: {field: session_id, default: "{user_id}"}
    createdAt: {field: occurred_at, convert: epoch_ms}
  freshpaint:
    distinct_id: {field: user_id}
    time: {field: occurred_at, convert: epoch_ms_to_s}
    $insert_id: {insert_id: true}
rules:
  - name: features
    when: {event_type: feature_used}
    freshsuccess: [{action: feature, fields: {feature: {field: feature}, module: {field: module}, total: 1}}]
  - name: pages-to-mixpanel-only
    when: {event_type: page_viewed}
    freshpaint:
      - event: {template: "Viewed {module}"}
        properties: {path: {field: properties.path}}
        integrations: {All: false, Mixpanel: true}
""")
    settings = stack.settings(topic, dlq, freshsuccess={"encoding": "deflate"}, mapping={"file": str(mapping)})
    with RunningService(settings):
        stack.emulators.freshsuccess.wait_for_events(1, timeout_s=60)
        fp = stack.emulators.freshpaint.wait_for_events(1, timeout_s=60)
    request = next(r for r in stack.emulators.freshsuccess.requests() if r.path != "/v1/ping")
    assert request.headers["content-encoding"] == "deflate"
    assert orjson.loads(zlib.decompress(request.body))["action"] == "feature"
    page = events[1]
    assert fp[0]["event"] == f"Viewed {page['module']}"
    assert fp[0]["properties"]["$options"] == {"integrations": {"All": False, "Mixpanel": True}}
    assert fp[0]["properties"]["path"] == page["properties"]["path"]

    topic2, dlq2 = stack.topics(partitions=1)
    stack.produce_events(topic2, stack.register(topic2), events[:1])
    stack.emulators.freshsuccess.reset()
    settings = stack.settings(topic2, dlq2, freshsuccess={"encoding": "none"}, freshpaint={"enabled": False},
                              mapping={"file": str(mapping)})
    with RunningService(settings):
        stack.emulators.freshsuccess.wait_for_events(1, timeout_s=60)
    request = next(r for r in stack.emulators.freshsuccess.requests() if r.path != "/v1/ping")
    assert "content-encoding" not in request.headers
    assert orjson.loads(request.body)["feature"] == events[0]["feature"]


def test_nothing_is_committed_while_a_destination_fails_and_everything_after_it_recovers(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=3)
    schema_id = stack.register(topic)
    events = list(realistic_events(600, seed=3))
    fs_expected = sum(1 for e in events if expected_freshsuccess(e) is not None)
    stack.emulators.freshsuccess.inject(Fault(status=503, duration_s=600))
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq)
    fs_group, fp_group = settings.group_for("freshsuccess"), settings.group_for("freshpaint")
    end = stack.end_offsets(topic)

    with RunningService(settings) as running:
        # Freshpaint is isolated from the Freshsuccess outage: it delivers everything and commits to the end.
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=90)
        wait_for(lambda: stack.committed(fp_group, topic) == end, timeout_s=30, what="freshpaint commits")
        # Freshsuccess has been failing all along: retried, nothing accepted, nothing committed.
        wait_for(lambda: stack.emulators.freshsuccess.stats()["faults_injected"] >= 3, timeout_s=30,
                 what="freshsuccess retries")
        assert stack.emulators.freshsuccess.events() == []
        assert stack.committed(fs_group, topic) == {}
        assert running.lane("freshsuccess").stats.delivered_events == 0

        stack.emulators.freshsuccess.clear_faults()
        stack.emulators.freshsuccess.wait_for_events(fs_expected, timeout_s=90)
        wait_for(lambda: stack.committed(fs_group, topic) == end, timeout_s=30, what="freshsuccess commits")

    received = stack.emulators.freshsuccess.events()
    def canonical(event: dict[str, Any]) -> bytes:
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)

    assert sorted(map(canonical, received)) == sorted(
        canonical(x) for x in (expected_freshsuccess(e) for e in events) if x is not None)


def test_malformed_records_are_dead_lettered_and_the_partition_moves_past_them(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    good = list(realistic_events(40, seed=5))
    values = [stack.encode(schema_id, e) for e in good]
    bad = malformed_values(schema_id, values[0])
    # interleave: bad records sit between valid ones in the same partition
    stream: list[tuple[bytes | None, bytes]] = []
    for i, value in enumerate(values):
        stream.append((b"k", value))
        if i % 10 == 5:
            stream.append((b"bad", bad[i // 10][1]))
    stack.produce(topic, stream, partition=0)
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False})
    group = settings.group_for("freshpaint")

    with RunningService(settings) as running:
        stack.emulators.freshpaint.wait_for_events(len(good), timeout_s=60)
        end = stack.end_offsets(topic)
        wait_for(lambda: stack.committed(group, topic) == end, timeout_s=30, what="commit past the bad records")
        stats = running.lane("freshpaint").stats

    assert sum(stats.dead_lettered.values()) == len(bad)
    letters = stack.read_all(dlq)
    assert len(letters) == len(bad)
    offsets = {i for i, (key, _) in enumerate(stream) if key == b"bad"}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        offset = int(headers["dlq.source_offset"])
        assert offset in offsets
        reason, value = next(b for b in bad if b[1] == stream[offset][1])
        assert headers["dlq.reason"] == reason
        assert headers["dlq.source_topic"] == topic
        assert headers["dlq.source_partition"] == "0"
        assert headers["dlq.destination"] == "freshpaint"
        assert headers["dlq.error_class"]
        assert headers["dlq.error_message"]
        assert "dlq.consumer_version" in headers
        assert letter.value() == value
        assert letter.key() == b"bad"


def test_freshsuccess_400_stops_the_lane_without_committing_or_leaking_keys(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    stack.produce_events(topic, schema_id, list(realistic_events(20, seed=9)))
    settings = stack.settings(topic, dlq, freshpaint={"enabled": False})
    stack.emulators.freshsuccess.inject(Fault(status=400, count=100))
    running = RunningService(settings)
    with running:
        wait_for(lambda: running.exit_code is not None, timeout_s=60, what="the service to stop itself")
    assert running.exit_code == 3
    lane = running.lane("freshsuccess")
    assert lane.fatal is not None
    assert "400" in lane.fatal
    assert AUTH_KEY not in lane.fatal
    assert API_KEY not in lane.fatal
    assert stack.committed(settings.group_for("freshsuccess"), topic) == {}
    out = capsys.readouterr()
    assert AUTH_KEY not in out.out + out.err
    assert API_KEY not in out.out + out.err


def test_freshpaint_rejections_are_dead_lettered_with_the_response_and_the_rest_delivered(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = [e for e in realistic_events(30, seed=21)]
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False},
                              freshpaint={"max_in_flight_requests": 1})
    stack.emulators.freshpaint.inject(Fault(status=422, count=2))
    with RunningService(settings):
        stack.emulators.freshpaint.wait_for_events(len(events) - 2, timeout_s=60)
        end = stack.end_offsets(topic)
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), topic) == end, timeout_s=30,
                 what="commit past the rejected events")
    letters = stack.read_all(dlq)
    assert len(letters) == 2
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        assert headers["dlq.reason"] == "rejected"
        assert headers["dlq.response_status"] == "422"
        assert headers["dlq.destination"] == "freshpaint"
    rejected_offsets = {int(dict(letter.headers())["dlq.source_offset"]) for letter in letters}
    delivered_ids = {e["properties"]["$insert_id"] for e in stack.emulators.freshpaint.events()}
    for offset, event in enumerate(events):
        assert (event["event_id"] in delivered_ids) != (offset in rejected_offsets)


def test_bad_credentials_pause_the_destination_without_dead_letters_until_fixed(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    events = list(realistic_events(50, seed=22))
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False})
    group = settings.group_for("freshpaint")
    stack.emulators.freshpaint.inject(Fault(status=401, duration_s=600))
    with RunningService(settings) as running:
        sink = running.lane("freshpaint").sink
        wait_for(lambda: sink.state == "bad_credentials", timeout_s=30, what="the sink to report bad credentials")
        wait_for(lambda: stack.emulators.freshpaint.stats()["faults_injected"] >= 2, timeout_s=30,
                 what="a retry with the same credentials")
        assert stack.committed(group, topic) == {}
        assert sum(running.lane("freshpaint").stats.dead_lettered.values()) == 0
        stack.emulators.freshpaint.clear_faults()
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
        end = stack.end_offsets(topic)
        wait_for(lambda: stack.committed(group, topic) == end, timeout_s=30, what="commits after the fix")
        assert sink.state == "ok"
    assert stack.read_all(dlq) == []


def test_a_schema_registry_outage_delays_events_but_never_dead_letters_them(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    events = list(realistic_events(20, seed=23))
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False})
    try:
        with RunningService(settings) as running:
            stack.registry.fail_with(503)  # after start-up: the writer schema is not cached yet
            stack.produce_events(topic, schema_id, events)
            lane = running.lane("freshpaint")
            wait_for(lambda: lane.stats.transient_failures >= 2, timeout_s=30, what="decode retries")
            assert stack.emulators.freshpaint.events() == []
            stack.registry.fail_with(None)
            stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
    finally:
        stack.registry.fail_with(None)
    assert stack.read_all(dlq) == []
    assert sorted(e["properties"]["$insert_id"] for e in stack.emulators.freshpaint.events()) == \
        sorted(e["event_id"] for e in events)


def test_a_schema_registry_down_at_start_up_stops_with_a_clear_message(stack: DevStack) -> None:
    from consumer.app.service import Service
    from consumer.errors import FatalError

    topic, dlq = stack.topics(partitions=1)
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False})
    stack.registry.fail_with(503)
    service = Service(settings)
    try:
        with pytest.raises(FatalError, match=r"schema registry at 127\.0\.0\.1:\d+ answered 503.*schema_registry_url"):
            service.start()
    finally:
        stack.registry.fail_with(None)
        service.close()


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from a Prometheus exposition, keyed by their sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def test_metrics_report_delivery_counts_and_lag_matching_the_emulators(stack: DevStack) -> None:
    import httpx

    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    events = list(realistic_events(300, seed=31))
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq)
    with RunningService(settings) as running:
        health = running.service.health
        assert health is not None
        base = f"http://127.0.0.1:{health.port}"
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        fs_expected = sum(1 for e in events if expected_freshsuccess(e) is not None)
        stack.emulators.freshsuccess.wait_for_events(fs_expected, timeout_s=60)
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
        end = stack.end_offsets(topic)
        for group in (settings.group_for("freshsuccess"), settings.group_for("freshpaint")):

            def caught_up(group: str = group) -> bool:
                return stack.committed(group, topic) == end

            wait_for(caught_up, timeout_s=30, what=f"{group} commits")

        def exposition() -> str:
            return httpx.get(f"{base}/metrics").text

        def lag_is_zero() -> bool:
            lag = metric_values(exposition(), "usage_consumer_consumer_lag")
            return len(lag) == 4 and all(v == 0 for v in lag.values())

        wait_for(lag_is_zero, timeout_s=30, what="lag 0 on every partition of both lanes")
        text = exposition()
    delivered = metric_values(text, "usage_consumer_delivered_events_total")
    assert delivered[(("destination", "freshsuccess"),)] == stack.emulators.freshsuccess.stats()["accepted"]
    assert delivered[(("destination", "freshpaint"),)] == stack.emulators.freshpaint.stats()["accepted"]
    consumed = metric_values(text, "usage_consumer_consumed_total")
    assert consumed[(("destination", "freshpaint"),)] == len(events)
    committed = metric_values(text, "usage_consumer_committed_offset")
    for partition, offset in end.items():
        key = (("destination", "freshpaint"), ("partition", str(partition)), ("topic", topic))
        assert committed[key] == offset
    skipped = metric_values(text, "usage_consumer_skipped_total")
    assert skipped[(("destination", "freshsuccess"),)] == len(events) - fs_expected


def test_the_kip848_consumer_group_protocol_delivers_and_commits(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=3)
    schema_id = stack.register(topic)
    events = list(realistic_events(120, seed=41))
    stack.produce_events(topic, schema_id, events)
    settings = stack.settings(topic, dlq, kafka={"group_protocol": "consumer"}, freshsuccess={"enabled": False})
    with RunningService(settings):
        stack.emulators.freshpaint.wait_for_events(len(events), timeout_s=60)
        end = stack.end_offsets(topic)
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), topic) == end, timeout_s=30,
                 what="commits under the consumer protocol")
