"""Several streams in one consumer: each topic decoded with its own stream's reader schema and mapped by its
own stream's mapping, on the real broker with the registry and destination emulators.

The second stream's record looks nothing like ``UsageEvent``: a nested record, an enum and a map.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.config import load_settings
from consumer.decoding.encoding import encode_confluent
from consumer.decoding.schemas import parse
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import realistic_events
from tests.helpers import wait_for
from tests.unit.test_streams import PAGE_VIEW, VISITOR_HEADER, WEB_MAPPING, write

pytestmark = pytest.mark.usefixtures("fresh_emulators")

def page_views(count: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "at": 1_767_000_000_000 + i, "visitor": f"v{i % 7}",
             "page": {"path": f"/p/{i}", "referrer": None}, "device": ("DESKTOP", "MOBILE", "TABLET")[i % 3],
             "labels": {"campaign": f"c{i % 2}"}} for i in range(count)]


PURCHASE: dict[str, Any] = {
    "type": "record", "name": "Purchase", "namespace": "com.example.web",
    "fields": [
        {"name": "order", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "visitor", "type": "string"},
        {"name": "cents", "type": "long"},
    ],
}

PURCHASE_MAPPING = VISITOR_HEADER + """\
  - name: purchased
    freshpaint:
      - event: Purchased
        properties:
          order: {field: order}
          cents: {field: cents}
"""


def test_three_topics_each_decoded_and_mapped_by_their_own_streams_schema_and_mapping(stack: DevStack,
                                                                                    tmp_path: Path) -> None:
    """The UsageEvent topic, a topic of page views (nested record, enum, map), and a shop topic carrying page
    views and purchases (RecordNameStrategy subjects), in one consumer: each event delivered per its own
    stream's mapping, checked by id at the emulators."""
    usage_topic, dlq = stack.topics(partitions=2, prefix="streams-usage")
    web_topic = stack.create_topic(f"streams-web-{uuid.uuid4().hex[:8]}", 2)
    shop_topic = stack.create_topic(f"streams-shop-{uuid.uuid4().hex[:8]}", 2)
    usage_id = stack.register(usage_topic)
    web_id = stack.registry.register(f"{web_topic}-value", PAGE_VIEW)
    shop_view_id = stack.registry.register(f"{shop_topic}-com.example.web.PageView", PAGE_VIEW)
    purchase_id = stack.registry.register(f"{shop_topic}-com.example.web.Purchase", PURCHASE)
    usage_events = list(realistic_events(40, seed=31))
    views, shop_views = page_views(30), page_views(12)
    purchases: list[dict[str, Any]] = [{"order": f"o-{uuid.uuid4().hex[:6]}", "at": 1_767_000_000_000 + i,
                                        "visitor": f"v{i}", "cents": 100 * i} for i in range(9)]
    stack.produce_events(usage_topic, usage_id, usage_events)
    view_schema, purchase_schema = parse(PAGE_VIEW), parse(PURCHASE)
    stack.produce(web_topic, ((v["visitor"].encode(), encode_confluent(web_id, v, view_schema)) for v in views))
    stack.produce(shop_topic, [*((v["visitor"].encode(), encode_confluent(shop_view_id, v, view_schema))
                                 for v in shop_views),
                               *((p["visitor"].encode(), encode_confluent(purchase_id, p, purchase_schema))
                                 for p in purchases)])
    schema_file = write(tmp_path, "page_view.avsc", json.dumps(PAGE_VIEW))
    mapping_file = write(tmp_path, "web.yaml", WEB_MAPPING)
    settings = stack.settings(usage_topic, dlq, streams=[
        {"name": "usage", "topics": [usage_topic]},
        {"name": "web", "topics": [web_topic], "reader_schema": str(schema_file), "mapping": str(mapping_file)},
        {"name": "shop-views", "topics": [shop_topic], "record_names": ["com.example.web.PageView"],
         "reader_schema": str(schema_file), "mapping": str(mapping_file)},
        {"name": "shop-purchases", "topics": [shop_topic], "record_names": ["com.example.web.Purchase"],
         "reader_schema_inline": PURCHASE, "mapping": str(write(tmp_path, "purchases.yaml", PURCHASE_MAPPING))},
    ])
    with RunningService(settings):
        def committed_to_the_end() -> bool:
            return all(stack.committed(settings.group_for(lane), topic) == stack.end_offsets(topic)
                       for lane, topics in (("freshpaint", (web_topic, shop_topic, usage_topic)),
                                            ("freshsuccess", (usage_topic,)))
                       for topic in topics)

        wait_for(committed_to_the_end, timeout_s=90, what="both lanes committed every topic to the end")
    received = stack.emulators.freshpaint.events()
    by_view: dict[str, list[dict[str, Any]]] = {}
    for event in received:
        if "view_id" in event["properties"]:  # the usage stream's page views have none
            by_view.setdefault(event["properties"]["view_id"], []).append(event)
    for view in [*views, *shop_views]:
        [delivered] = by_view.pop(view["id"])
        properties = delivered["properties"]
        assert (properties["distinct_id"], properties["path"], properties["device"], properties["campaign"]) == (
            view["visitor"], view["page"]["path"], view["device"], view["labels"]["campaign"])
    assert by_view == {}
    assert sorted((e["properties"]["order"], e["properties"]["cents"]) for e in received if e["event"] == "Purchased") \
        == sorted((p["order"], p["cents"]) for p in purchases)
    # the usage stream went through the packaged mapping: each of its events reached Freshpaint, by its id
    usage_ids = {e["event_id"] for e in usage_events}
    assert usage_ids <= {e["properties"].get("$insert_id") for e in received}
    assert {"feature", "moduleEnd", "sessionSync"} <= {a["action"] for a in stack.emulators.freshsuccess.events()}
    # nothing of the web and shop streams went to Freshsuccess (their mappings have no Freshsuccess rules)
    assert all("view_id" not in a and "order" not in a for a in stack.emulators.freshsuccess.events())
    assert stack.read_all(dlq, timeout_s=2) == []


def test_a_topic_created_after_start_up_that_matches_a_streams_pattern_is_consumed_without_a_restart(
        stack: DevStack, tmp_path: Path) -> None:
    usage_topic, dlq = stack.topics(partitions=1, prefix="streams-usage")
    prefix = f"streams-late-{uuid.uuid4().hex[:8]}"
    schema_file = write(tmp_path, "page_view.avsc", json.dumps(PAGE_VIEW))
    mapping_file = write(tmp_path, "web.yaml", WEB_MAPPING)
    settings = stack.settings(usage_topic, dlq, kafka={"metadata_refresh_interval_s": 1.0},
                              freshsuccess={"enabled": False}, streams=[
        {"name": "usage", "topics": [usage_topic]},
        {"name": "web", "topics": [f"^{prefix}-.*"], "reader_schema": str(schema_file), "mapping": str(mapping_file)},
    ])
    views = page_views(12)
    with RunningService(settings) as running:
        wait_for(lambda: len(running.lane("freshpaint").tracker.owned()) == 1, timeout_s=60,
                 what="the lane to own the usage topic's partition")
        late = stack.create_topic(f"{prefix}-eu", 2)  # after start-up: only the pattern can bring it in
        web_id = stack.registry.register(f"{late}-value", PAGE_VIEW)
        parsed = parse(PAGE_VIEW)
        stack.produce(late, ((v["visitor"].encode(), encode_confluent(web_id, v, parsed)) for v in views))

        def delivered() -> bool:
            return {v["id"] for v in views} <= {e["properties"].get("view_id")
                                                for e in stack.emulators.freshpaint.events()}

        wait_for(delivered, timeout_s=90, what="the new topic's page views at Freshpaint")
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), late) == stack.end_offsets(late),
                 timeout_s=60, what="the new topic committed to its end")


def test_a_topic_carrying_two_record_types_maps_each_by_its_own_stream(stack: DevStack, tmp_path: Path) -> None:
    shop, dlq = stack.topics(partitions=2, prefix="streams-shop")
    view_id = stack.registry.register(f"{shop}-com.example.web.PageView", PAGE_VIEW)
    purchase_id = stack.registry.register(f"{shop}-com.example.web.Purchase", PURCHASE)
    refund = {**PURCHASE, "name": "Refund"}
    refund_id = stack.registry.register(f"{shop}-com.example.web.Refund", refund)
    views = page_views(10)
    purchases: list[dict[str, Any]] = [{"order": f"o-{uuid.uuid4().hex[:6]}", "at": 1_767_000_000_000 + i,
                                        "visitor": f"v{i}", "cents": 100 * i} for i in range(8)]
    refunds: list[dict[str, Any]] = [{"order": "r-1", "at": 1_767_000_000_000, "visitor": "v1", "cents": 5}]
    view_schema, purchase_schema, refund_schema = parse(PAGE_VIEW), parse(PURCHASE), parse(refund)
    stack.produce(shop, [*((v["visitor"].encode(), encode_confluent(view_id, v, view_schema)) for v in views),
                         *((p["visitor"].encode(), encode_confluent(purchase_id, p, purchase_schema))
                           for p in purchases),
                         *((r["visitor"].encode(), encode_confluent(refund_id, r, refund_schema)) for r in refunds)])
    write(tmp_path, "page_view.avsc", json.dumps(PAGE_VIEW))
    write(tmp_path, "purchase.avsc", json.dumps(PURCHASE))
    settings = stack.settings(shop, dlq, freshsuccess={"enabled": False}, streams=[
        {"name": "views", "topics": [shop], "record_names": ["com.example.web.PageView"],
         "reader_schema": str(tmp_path / "page_view.avsc"), "mapping": str(write(tmp_path, "web.yaml", WEB_MAPPING))},
        {"name": "purchases", "topics": [shop], "record_names": ["com.example.web.Purchase"],
         "reader_schema": str(tmp_path / "purchase.avsc"),
         "mapping": str(write(tmp_path, "purchases.yaml", PURCHASE_MAPPING))},
    ])
    with RunningService(settings):
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), shop) == stack.end_offsets(shop),
                 timeout_s=60, what="the shared topic committed to its end")
    events = stack.emulators.freshpaint.events()
    assert sorted(e["properties"]["view_id"] for e in events if e["event"] == "Page Viewed") == \
        sorted(v["id"] for v in views)
    assert sorted((e["properties"]["order"], e["properties"]["cents"]) for e in events if e["event"] == "Purchased") \
        == sorted((p["order"], p["cents"]) for p in purchases)
    [letter] = stack.read_all(dlq, timeout_s=10)
    headers = dict(letter.headers())
    assert headers["dlq.reason"] == b"no_stream"
    assert b"com.example.web.Refund" in headers["dlq.error_message"]


def test_an_incompatible_writer_schema_is_dead_lettered_schema_mismatch_naming_both(stack: DevStack) -> None:
    topic, dlq = stack.topics(partitions=1, prefix="streams-mismatch")
    usage_id = stack.register(topic)
    incompatible = {**stack.schema, "fields": [f | {"type": ["null", "string"]} if f["name"] == "duration_ms" else f
                                               for f in stack.schema["fields"]]}
    bad_id = stack.registry.register(f"{topic}-value", incompatible)
    good = list(realistic_events(5, seed=41))
    bad = {**good[0], "event_id": str(uuid.uuid4()), "duration_ms": "long"}
    stack.produce_events(topic, usage_id, good)
    stack.produce(topic, [(b"k", encode_confluent(bad_id, bad, parse(incompatible)))])
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False})
    with RunningService(settings):
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), topic) == stack.end_offsets(topic),
                 timeout_s=60, what="the topic committed past the incompatible record")
    [letter] = stack.read_all(dlq, timeout_s=10)
    headers = dict(letter.headers())
    assert headers["dlq.reason"] == b"schema_mismatch"
    assert f"schema id {bad_id}".encode() in headers["dlq.error_message"]
    assert b"reader schema io.usageconsumer.events.UsageEvent" in headers["dlq.error_message"]


def test_a_compatible_new_writer_schema_registered_mid_stream_loses_nothing(stack: DevStack, tmp_path: Path) -> None:
    topic, dlq = stack.topics(partitions=2, prefix="streams-evolve")
    subject = f"{topic}-value"
    v1_id = stack.registry.register(subject, PAGE_VIEW)
    v2 = {**PAGE_VIEW, "fields": [*PAGE_VIEW["fields"], {"name": "title", "type": ["null", "string"], "default": None}]}
    first, second = page_views(20), page_views(20)
    stack.produce(topic, ((v["visitor"].encode(), encode_confluent(v1_id, v, parse(PAGE_VIEW))) for v in first))
    settings = stack.settings(topic, dlq, freshsuccess={"enabled": False}, streams=[
        {"name": "web", "topics": [topic], "reader_schema": str(write(tmp_path, "pv.avsc", json.dumps(PAGE_VIEW))),
         "mapping": str(write(tmp_path, "web.yaml", WEB_MAPPING))}])
    wanted = {v["id"] for v in first + second}

    def seen() -> set[str]:
        return {e["properties"].get("view_id") for e in stack.emulators.freshpaint.events()} & wanted

    with RunningService(settings):
        wait_for(lambda: len(seen()) == len(first), timeout_s=60, what="the v1 page views delivered")
        v2_id = stack.registry.register(subject, v2)  # the producer moves to v2 while the consumer runs
        assert v2_id != v1_id
        stack.produce(topic, ((v["visitor"].encode(), encode_confluent(v2_id, {**v, "title": "t"}, parse(v2)))
                              for v in second))
        wait_for(lambda: seen() == wanted, timeout_s=60, what="the v2 page views delivered too")
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), topic) == stack.end_offsets(topic),
                 timeout_s=60, what="committed to the end")
    assert stack.read_all(dlq, timeout_s=2) == []


def test_dead_letters_of_a_stream_are_replayed_through_their_own_streams_schema_and_mapping(
        stack: DevStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in stack.secrets_env().items():
        monkeypatch.setenv(variable, value)
    usage_topic, dlq = stack.topics(partitions=1, prefix="streams-replay")
    web_topic = stack.create_topic(f"streams-replay-web-{uuid.uuid4().hex[:8]}", 1)
    web_id = stack.registry.register(f"{web_topic}-value", PAGE_VIEW)
    views = page_views(3)
    stack.produce(web_topic, ((v["visitor"].encode(), encode_confluent(web_id, v, parse(PAGE_VIEW))) for v in views))
    path = stack.config_file(usage_topic, dlq, freshsuccess={"enabled": False}, streams=[
        {"name": "usage", "topics": [usage_topic]},
        {"name": "web", "topics": [web_topic], "reader_schema": str(write(tmp_path, "pv.avsc", json.dumps(PAGE_VIEW))),
         "mapping": str(write(tmp_path, "web.yaml", WEB_MAPPING))}])
    settings = load_settings(path, environ=stack.secrets_env())
    stack.emulators.freshpaint.inject(Fault(status=422, count=3))  # Freshpaint refuses the three page views
    with RunningService(settings):
        wait_for(lambda: len(stack.read_all(dlq, timeout_s=2)) == 3, timeout_s=60, what="three rejected views parked")
    assert stack.emulators.freshpaint.events() == []
    stack.emulators.freshpaint.clear_faults()
    capsys.readouterr()

    # inspect decodes each dead letter with its source topic's stream
    assert main(["dlq", "inspect", "--config", str(path), "--json"]) == 0
    letters = json.loads(capsys.readouterr().out)["dead_letters"]
    assert sorted(letter["event"]["id"] for letter in letters) == sorted(v["id"] for v in views)
    # the dry run plans each with its stream's mapping; nothing is sent
    assert main(["dlq", "replay", "--config", str(path), "--to-destinations", "--reason", "rejected", "--dry-run",
                 "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert [e["plan"]["outputs"][0]["output"]["event"] for e in planned["plan"]] == ["Page Viewed"] * 3
    assert stack.emulators.freshpaint.events() == []
    # map reads records of every stream's topics and explains each with its own stream
    assert main(["map", "--config", str(path), "--from-topic", "3", "--topic", web_topic, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [(e["stream"], e["rules"]) for e in events] == [("web", ["page-viewed"])] * 3

    code = main(["dlq", "replay", "--config", str(path), "--to-destinations", "--reason", "rejected"])
    assert code == 0, capsys.readouterr().err
    assert sorted(e["properties"]["view_id"] for e in stack.emulators.freshpaint.events()) == \
        sorted(v["id"] for v in views)


def test_a_stream_reads_its_reader_schema_from_the_registry_with_references(stack: DevStack, tmp_path: Path) -> None:
    """The page record is its own subject; the page view references it, and so do its writer's records."""
    topic, dlq = stack.topics(partitions=1, prefix="streams-subject")
    page = next(f["type"] for f in PAGE_VIEW["fields"] if f["name"] == "page")
    page_subject = f"{topic}-com.example.web.Page"
    stack.registry.register(page_subject, {**page, "namespace": "com.example.web"})
    view = {**PAGE_VIEW, "fields": [{**f, "type": "com.example.web.Page"} if f["name"] == "page" else f
                                    for f in PAGE_VIEW["fields"]]}
    view_id = stack.registry.register(f"{topic}-value", view,
                                      [{"name": "com.example.web.Page", "subject": page_subject, "version": 1}])
    views = page_views(20)
    writer = parse(PAGE_VIEW)  # the same record, written out whole: what the referencing schema stands for
    stack.produce(topic, ((v["visitor"].encode(), encode_confluent(view_id, v, writer)) for v in views))
    mapping_file = write(tmp_path, "web.yaml", WEB_MAPPING)
    settings = stack.settings(topic, dlq, streams=[{"name": "web", "topics": [topic], "mapping": str(mapping_file),
                                                    "reader_schema_subject": f"{topic}-value"}])
    with RunningService(settings):
        wait_for(lambda: stack.committed(settings.group_for("freshpaint"), topic) == stack.end_offsets(topic),
                 timeout_s=60, what="the web stream committed to the end")
    delivered = {e["properties"]["view_id"]: e["properties"]["path"] for e in stack.emulators.freshpaint.events()}
    assert delivered == {v["id"]: v["page"]["path"] for v in views}
    assert stack.read_all(dlq, timeout_s=2) == []
