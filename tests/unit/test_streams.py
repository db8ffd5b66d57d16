"""Streams in the configuration: parsed and checked at start-up, and each record judged by its topic's stream."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from consumer.app.build import judge_for
from consumer.app.startup import prepare
from consumer.cli import main
from consumer.config import load_settings
from consumer.decoding.decoder import make_decoder
from consumer.decoding.encoding import encode_raw
from consumer.decoding.schemas import parse
from consumer.errors import ConfigError, DecodeError, FatalError, MappingInvalid, TransientError
from consumer.mapping import load_mapping
from consumer.pipeline.verdict import (
    PARK,
    SEND,
    SKIP,
    WAIT,
    Judge,
    RecordTypeJudges,
    StreamJudges,
    tallies_by_stream,
)
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator

PAGE_VIEW: dict[str, Any] = {
    "type": "record", "name": "PageView", "namespace": "com.example.web",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "visitor", "type": "string"},
        {"name": "page", "type": {"type": "record", "name": "Page", "fields": [
            {"name": "path", "type": "string"},
            {"name": "referrer", "type": ["null", "string"], "default": None}]}},
        {"name": "device", "type": {"type": "enum", "name": "Device", "symbols": ["DESKTOP", "MOBILE", "TABLET"]}},
        {"name": "labels", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}

VISITOR_HEADER = """\
version: 1
defaults:
  freshpaint:
    distinct_id: {field: visitor}
    time: {field: at, convert: epoch_ms_to_s}
    $insert_id: {insert_id: true}
rules:
"""
"""The head of a mapping for the web records: the visitor is the Freshpaint user."""

WEB_MAPPING = VISITOR_HEADER + """\
  - name: page-viewed
    freshpaint:
      - event: Page Viewed
        properties:
          view_id: {field: id}
          path: {field: page.path}
          device: {field: device}
          campaign: {field: labels.campaign}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def config(tmp_path: Path, document: dict[str, Any]) -> Path:
    return write(tmp_path, "config.yaml", json.dumps(document, indent=2))


def two_streams(tmp_path: Path, web_mapping: str = WEB_MAPPING) -> Path:
    write(tmp_path, "page_view.avsc", json.dumps(PAGE_VIEW))
    write(tmp_path, "web.yaml", web_mapping)
    return config(tmp_path, {"streams": [
        {"name": "usage", "topics": ["usage-events"]},
        {"name": "web", "topics": ["web-events", "web-events-eu"], "reader_schema": "page_view.avsc",
         "mapping": "web.yaml"},
    ]})


def test_without_streams_the_configuration_is_one_stream_of_the_single_stream_keys(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, {"kafka": {"topics": ["a", "b"]}, "mapping": {"file": "m.yaml"}}),
                             environ={})
    [stream] = settings.stream_list()
    assert (stream.name, stream.topics, stream.mapping) == ("default", ("a", "b"), tmp_path / "m.yaml")
    assert settings.topics() == ("a", "b")


def test_streams_are_read_with_paths_relative_to_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(two_streams(tmp_path), environ={})
    assert [s.name for s in settings.stream_list()] == ["usage", "web"]
    assert settings.topics() == ("usage-events", "web-events", "web-events-eu")
    assert settings.stream_list()[1].reader_schema == tmp_path / "page_view.avsc"


@pytest.mark.parametrize(("document", "says"), [
    ({"kafka": {"topics": ["a"]}, "streams": [{"name": "s", "topics": ["b"]}]}, "streams: replaces kafka.topics"),
    ({"mapping": {"file": "m.yaml"}, "streams": [{"name": "s", "topics": ["b"]}]}, "replaces mapping.file"),
    ({"streams": [{"name": "s", "topics": ["a"]}, {"name": "s", "topics": ["b"]}]}, "used more than once"),
    ({"streams": [{"name": "s", "topics": ["a"]}, {"name": "t", "topics": ["a"]}]},
     "topic 'a' is in both stream 's' and stream 't'"),
    ({"streams": [{"name": "s", "topics": []}]}, "streams.0.topics"),
    ({"streams": [{"name": "s", "topics": ["a"], "schema": "x.avsc"}]}, "schema"),
    ({"streams": [{"name": "no spaces", "topics": ["a"]}]}, "streams.0.name"),
])
def test_a_bad_streams_section_stops_start_up_saying_what_is_wrong(tmp_path: Path, document: dict[str, Any],
                                                                   says: str) -> None:
    path = config(tmp_path, document)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(path) in str(caught.value)
    assert says in str(caught.value)


def test_each_stream_is_compiled_against_its_own_schema(tmp_path: Path) -> None:
    prepared = prepare(load_settings(two_streams(tmp_path), environ={}))
    usage, web = prepared.streams
    assert (usage.reader_schema["name"], web.reader_schema["name"]) == ("UsageEvent", "PageView")
    assert set(usage.mapping.functions) == {"freshsuccess", "freshpaint"}
    assert set(web.mapping.functions) == {"freshpaint"}
    with pytest.raises(ConfigError, match=re.escape("reads one stream; this configuration has 2 (usage, web)")):
        prepared.only("this command")  # the tools that read one stream refuse two, rather than pick one


def test_a_rule_reading_a_field_only_another_streams_schema_has_fails_check_naming_stream_file_and_line(
        tmp_path: Path) -> None:
    schema_file = write(tmp_path, "page_view.avsc", json.dumps(PAGE_VIEW))
    mapping_file = write(tmp_path, "web.yaml", WEB_MAPPING.replace("{field: page.path}", "{field: feature}"))
    config = write(tmp_path, "config.yaml", json.dumps({"streams": [
        {"name": "usage", "topics": ["usage-events"]},
        {"name": "web", "topics": ["web-events"], "reader_schema": schema_file.name, "mapping": mapping_file.name},
    ]}))
    with pytest.raises(MappingInvalid) as caught:
        prepare(load_settings(config, environ={}))
    [problem] = caught.value.problems
    line = WEB_MAPPING.splitlines().index("          path: {field: page.path}") + 1
    assert problem.startswith(f"stream 'web': {mapping_file}:{line}: rule 'page-viewed'"), problem
    assert "feature" in problem


def test_a_missing_schema_file_of_a_stream_is_named_with_the_stream(tmp_path: Path) -> None:
    path = config(tmp_path, {"streams": [{"name": "web", "topics": ["w"], "reader_schema": "nope.avsc"}]})
    with pytest.raises(MappingInvalid) as caught:
        prepare(load_settings(path, environ={}))
    [problem] = caught.value.problems
    assert problem.startswith("stream 'web': ")
    assert "nope.avsc" in problem


def test_check_lists_each_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(two_streams(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[2] for line in lines] == ["stream 'usage' (usage-events)",
                                                        "stream 'web' (web-events, web-events-eu)"]
    assert "destinations with rules: freshpaint)" in lines[1]


def web_stream(tmp_path: Path, **schema_source: Any) -> dict[str, Any]:
    write(tmp_path, "web.yaml", WEB_MAPPING)
    return {"name": "web", "topics": ["web-events"], "mapping": "web.yaml", **schema_source}


def test_a_reader_schema_written_inline_is_used_like_a_file(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, {"streams": [web_stream(tmp_path, reader_schema_inline=PAGE_VIEW)]})
    [web] = prepare(load_settings(path, environ={})).streams
    assert web.reader_schema == PAGE_VIEW
    assert web.schema_source == "inline"
    assert main(["check", "--config", str(path)]) == 0
    assert "compiles against the reader schema written inline" in capsys.readouterr().out


def test_a_reader_schema_from_the_registry_is_fetched_by_subject_latest_or_pinned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = {**PAGE_VIEW, "fields": [*PAGE_VIEW["fields"], {"name": "title", "type": ["null", "string"],
                                                         "default": None}]}
    with SchemaRegistryEmulator() as registry:
        first, second = registry.register("web-value", PAGE_VIEW), registry.register("web-value", v2)
        decoding = {"schema_registry_url": registry.url}
        latest = config(tmp_path, {"decoding": decoding,
                                   "streams": [web_stream(tmp_path, reader_schema_subject="web-value")]})
        [web] = prepare(load_settings(latest, environ={})).streams
        assert [f["name"] for f in web.reader_schema["fields"]][-1] == "title"
        assert web.schema_source == f"subject 'web-value' version 2 (id {second}) from 127.0.0.1:{registry.port}"
        pinned = config(tmp_path, {"decoding": decoding, "streams": [
            web_stream(tmp_path, reader_schema_subject="web-value", reader_schema_version=1)]})
        [web] = prepare(load_settings(pinned, environ={})).streams
        assert "title" not in [f["name"] for f in web.reader_schema["fields"]]
        assert web.schema_source == f"subject 'web-value' version 1 (id {first}) from 127.0.0.1:{registry.port}"
        assert main(["check", "--config", str(pinned)]) == 0
        assert "compiles against the reader schema of subject 'web-value' version 1" in capsys.readouterr().out

        missing = config(tmp_path, {"decoding": decoding, "streams": [
            web_stream(tmp_path, reader_schema_subject="web-value", reader_schema_version=3),
            {"name": "app", "topics": ["app-events"], "reader_schema_subject": "app-value"}]})
        with pytest.raises(MappingInvalid) as caught:
            prepare(load_settings(missing, environ={}))
        assert caught.value.problems == [
            f"stream 'web': subject 'web-value' has no version 3 in the schema registry at 127.0.0.1:{registry.port}",
            f"stream 'app': subject 'app-value' is not in the schema registry at 127.0.0.1:{registry.port}"]


def test_a_reader_schema_subject_with_the_registry_down_stops_start_up_saying_so(tmp_path: Path) -> None:
    registry = SchemaRegistryEmulator().start()
    url = registry.url
    registry.stop()
    path = config(tmp_path, {"decoding": {"schema_registry_url": url},
                             "streams": [web_stream(tmp_path, reader_schema_subject="web-value")]})
    with pytest.raises(FatalError, match=r"stream 'web': cannot fetch its reader schema \(subject 'web-value'\): "
                                         r"schema registry at 127\.0\.0\.1:\d+ is unreachable"):
        prepare(load_settings(path, environ={}))


@pytest.mark.parametrize(("source", "says"), [
    ({"reader_schema": "a.avsc", "reader_schema_inline": PAGE_VIEW},
     "stream 'web': give one of reader_schema, reader_schema_inline, not several"),
    ({"reader_schema_inline": PAGE_VIEW, "reader_schema_subject": "s"},
     "give one of reader_schema_inline, reader_schema_subject, not several"),
    ({"reader_schema_version": 2}, "reader_schema_version needs reader_schema_subject"),
    ({"reader_schema_subject": "s", "reader_schema_version": 0}, "reader_schema_version"),
])
def test_a_stream_has_one_reader_schema_source(tmp_path: Path, source: dict[str, Any], says: str) -> None:
    path = config(tmp_path, {"streams": [web_stream(tmp_path, **source)]})
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(path, environ={})


def test_an_inline_reader_schema_that_is_not_avro_is_named_with_its_stream(tmp_path: Path) -> None:
    broken = {**PAGE_VIEW, "fields": [{"name": "id", "type": "strang"}]}
    path = config(tmp_path, {"streams": [web_stream(tmp_path, reader_schema_inline=broken)]})
    with pytest.raises(MappingInvalid) as caught:
        prepare(load_settings(path, environ={}))
    [problem] = caught.value.problems
    assert problem.startswith("stream 'web': reader_schema_inline: invalid Avro schema"), problem
    assert "strang" in problem


RECORD_NAME_RULES = VISITOR_HEADER + """\
  - name: current
    when: {$record_name: com.example.web.PageView}
    freshpaint:
      - event: Page Viewed
        properties:
          record: {field: $record_name}
  - name: legacy
    when: {field: $record_name, ne: com.example.web.PageView}
    freshpaint:
      - event: Legacy View
        properties:
          record: {field: $record_name}
"""


def test_rules_read_and_select_on_the_writer_schemas_record_name(tmp_path: Path) -> None:
    """``$record_name`` is the full name of the record's writer schema: here a legacy writer resolves to the
    reader through an alias, and the rules tell the two apart."""
    reader = {**PAGE_VIEW, "aliases": ["com.legacy.View"]}
    legacy = {**PAGE_VIEW, "name": "View", "namespace": "com.legacy"}
    mapping = load_mapping(write(tmp_path, "web.yaml", RECORD_NAME_RULES), reader)
    assert mapping.reads_record_name
    settings = load_settings(config(tmp_path, {}), environ={})
    view = {"id": "v-1", "at": 1_767_000_000_000, "visitor": "ada", "page": {"path": "/", "referrer": None},
            "device": "MOBILE", "labels": {}}
    seen = []
    for writer in (PAGE_VIEW, legacy):
        decoder = make_decoder("raw", reader_schema=reader, writer_schema=writer)
        decision = judge_for(settings, "freshpaint", decoder, mapping).decide(encode_raw(view, parse(writer)),
                                                                              "web", 0, 0)
        seen += [(o["event"], o["properties"]["record"]) for o in decision.outputs]
    assert seen == [("Page Viewed", "com.example.web.PageView"), ("Legacy View", "com.legacy.View")]
    plain = load_mapping(write(tmp_path, "plain.yaml", WEB_MAPPING), reader)
    assert not plain.reads_record_name
    decision = judge_for(settings, "freshpaint", make_decoder("raw", reader_schema=reader), plain).decide(
        encode_raw(view, parse(PAGE_VIEW)), "web", 0, 0)
    assert decision.record is not None
    assert "$record_name" not in decision.record  # filled in only when a rule reads it


VIEW = {"id": "v-1", "at": 1_767_000_000_000, "visitor": "ada", "page": {"path": "/pricing", "referrer": None},
        "device": "MOBILE", "labels": {"campaign": "spring"}}


def test_map_explains_file_samples_with_the_stream_of_the_topic_or_stream_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(two_streams(tmp_path))
    views = write(tmp_path, "views.jsonl", json.dumps(VIEW) + "\n")
    for how, topic in ((["--topic", "web-events-eu"], "web-events-eu"), (["--stream", "web"], "web-events")):
        assert main(["map", "--config", path, *how, str(views), "--json"]) == 0
        [event] = json.loads(capsys.readouterr().out)["events"]
        assert (event["stream"], event["topic"]) == ("web", topic)
        assert event["rules"] == ["page-viewed"]
        sent = event["destinations"]["freshpaint"]
        assert sent["outcome"] == "send"
        assert [o["output"]["event"] for o in sent["outputs"]] == ["Page Viewed"]
        assert event["destinations"]["freshsuccess"]["reason"] == "no_rules"

    assert main(["map", "--config", path, "--stream", "web", str(views)]) == 0
    assert "[stream web]" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize(("how", "says"), [
    ([], "this configuration has 2 streams (usage, web): say which with --topic or --stream"),
    (["--topic", "billing"], "topic 'billing' belongs to no stream"),
    (["--stream", "mobile"], "no stream is named 'mobile' (streams: usage, web)"),
    (["--stream", "web", "--topic", "usage-events"], "topic 'usage-events' is not a topic of stream 'web'"),
])
def test_map_with_several_streams_says_which_stream_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             how: list[str], says: str) -> None:
    views = write(tmp_path, "views.jsonl", json.dumps(VIEW) + "\n")
    assert main(["map", "--config", str(two_streams(tmp_path)), *how, str(views)]) == 2
    assert says in capsys.readouterr().err


class Named:
    """A decoder that says which stream's schema decoded the record."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0

    def decode(self, value: bytes | None) -> dict[str, Any]:
        return {"stream": self.name}

    def close(self) -> None:
        self.closed += 1


def test_each_record_is_judged_by_its_topics_stream_and_a_topic_of_no_stream_is_parked() -> None:
    usage, web = Named("usage"), Named("web")

    def echo(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [{"stream": record["stream"], "topic": topic}]

    web_judge = Judge(decoder=web, map_fn=echo, max_event_bytes=1000, ndjson=False)
    judges = StreamJudges({"u": Judge(decoder=usage, map_fn=echo, max_event_bytes=1000, ndjson=False),
                           "w1": web_judge, "w2": web_judge})
    assert [judges.decide(b"x", topic, 0, 0).outputs for topic in ("u", "w1", "w2")] == [
        [{"stream": "usage", "topic": "u"}], [{"stream": "web", "topic": "w1"}], [{"stream": "web", "topic": "w2"}]]
    assert judges.decide(b"x", "u", 0, 0).kind == SEND
    stray = judges.decide(b"x", "other", 0, 0)
    assert (stray.kind, stray.reason) == (PARK, "no_stream")
    judges.close()
    assert (usage.closed, web.closed) == (1, 1)  # a judge shared by two topics is closed once


def test_a_topic_pattern_routes_topics_first_seen_later_names_first_then_patterns_in_order() -> None:
    usage, web, rest = Named("usage"), Named("web"), Named("rest")

    def echo(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [{"stream": record["stream"]}]

    def judge(decoder: Named) -> Judge:
        return Judge(decoder=decoder, map_fn=echo, max_event_bytes=1000, ndjson=False)

    judges = StreamJudges({"web.special": judge(usage)},
                          [(re.compile(r"^web\."), judge(web)), (re.compile(r"^(web|app)\."), judge(rest))])
    streams = {topic: judges.decide(b"x", topic, 0, 0).outputs[0]["stream"]
               for topic in ("web.special", "web.new", "app.new")}
    assert streams == {"web.special": "usage", "web.new": "web", "app.new": "rest"}
    assert judges.decide(b"x", "billing", 0, 0).reason == "no_stream"
    judges.close()
    assert (usage.closed, web.closed, rest.closed) == (1, 1, 1)


@pytest.mark.parametrize(("topic", "says"), [
    ("^web[", "is not a regular expression"),
    ("^usage", "also matches usage-events.dlq, which this service writes"),
])
def test_a_topic_pattern_that_does_not_compile_or_catches_our_own_topics_is_refused(tmp_path: Path, topic: str,
                                                                                      says: str) -> None:
    path = config(tmp_path, {"streams": [{"name": "s", "topics": [topic]}]})
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(path, environ={})


def test_only_named_topics_must_exist_at_start_up(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, {"streams": [{"name": "s", "topics": ["a", r"^web\..*"]}]}),
                             environ={})
    assert settings.topics() == ("a", r"^web\..*")
    assert settings.named_topics() == ("a",)


def test_streams_may_share_a_topic_when_each_lists_its_record_types(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, {"streams": [
        {"name": "views", "topics": ["shop"], "record_names": ["com.example.PageView"]},
        {"name": "buys", "topics": ["shop"], "record_names": ["com.example.Purchase"], "other_records": "skip"},
    ]}), environ={})
    assert [s.record_names for s in settings.stream_list()] == [("com.example.PageView",), ("com.example.Purchase",)]
    assert settings.named_topics() == ("shop",)  # subscribed once: librdkafka refuses a topic named twice


@pytest.mark.parametrize(("streams", "says"), [
    ([{"name": "a", "topics": ["shop"], "record_names": ["X"]}, {"name": "b", "topics": ["shop"]}],
     "unless each stream on it lists its record_names"),
    ([{"name": "a", "topics": ["shop"], "record_names": ["X"]}, {"name": "b", "topics": ["shop"],
                                                                "record_names": ["X", "Y"]}],
     "record type(s) X on topic 'shop' are listed by more than one stream"),
])
def test_a_shared_topic_without_distinct_record_types_is_refused(tmp_path: Path, streams: list[dict[str, Any]],
                                                                 says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(config(tmp_path, {"streams": streams}), environ={})


def test_on_a_shared_topic_the_writer_schemas_record_name_picks_the_stream() -> None:
    views, buys = Named("views"), Named("buys")
    names = {b"v": "com.example.PageView", b"p": "com.example.Purchase", b"r": "com.example.Refund"}

    def writer_name(value: bytes | None) -> str:
        if value == b"down":
            raise TransientError("registry down")
        if value == b"junk":
            raise DecodeError("bad header")
        assert value is not None
        return names[value]

    def echo(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [{"stream": record["stream"]}]

    by_name = {"com.example.PageView": Judge(decoder=views, map_fn=echo, max_event_bytes=1000, ndjson=False),
               "com.example.Purchase": Judge(decoder=buys, map_fn=echo, max_event_bytes=1000, ndjson=False)}
    strict = RecordTypeJudges(writer_name, by_name, skip_others=False)
    assert [strict.decide(v, "shop", 0, 0).outputs for v in (b"v", b"p")] == [[{"stream": "views"}],
                                                                               [{"stream": "buys"}]]
    refund = strict.decide(b"r", "shop", 0, 0)
    assert (refund.kind, refund.reason) == (PARK, "no_stream")
    assert "com.example.Refund" in str(refund.error)
    assert strict.decide(b"down", "shop", 0, 0).kind == WAIT  # a registry outage waits, never dead-letters
    assert strict.decide(b"junk", "shop", 0, 0).reason == "undecodable"
    lenient = RecordTypeJudges(writer_name, by_name, skip_others=True)
    assert lenient.decide(b"r", "shop", 0, 0).kind == SKIP


def test_the_verdicts_are_counted_per_stream_once_however_many_routes_reach_a_stream() -> None:
    """What ``usage_consumer_stream_records_total`` reports: each stream's sends, skips and dead letters by
    reason, and the records no stream takes (under ``(none)``); a record that must wait is not counted."""
    views, buys = Named("views"), Named("buys")
    names = {b"v": "com.example.PageView", b"p": "com.example.Purchase", b"r": "com.example.Refund"}

    def writer_name(value: bytes | None) -> str:
        if value == b"down":
            raise TransientError("registry down")
        assert value is not None
        return names.get(value, "com.example.PageView")

    def echo_or_skip(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        return [] if topic == "quiet" else [{"stream": record["stream"]}]

    view_judge = Judge(decoder=views, map_fn=echo_or_skip, max_event_bytes=5, ndjson=False, stream="views")
    buy_judge = Judge(decoder=buys, map_fn=echo_or_skip, max_event_bytes=5, ndjson=False, stream="buys")
    shop = RecordTypeJudges(writer_name, {"com.example.PageView": view_judge, "com.example.Purchase": buy_judge},
                            skip_others=False)
    judges = StreamJudges({"shop": shop, "quiet": view_judge, "views": view_judge})
    for value, topic in [(b"v", "shop"), (b"p", "shop"), (b"p", "shop"), (b"r", "shop"), (b"v", "quiet"),
                         (b"v", "views"), (b"toolong", "views"), (b"v", "billing"), (b"down", "shop")]:
        judges.decide(value, topic, 0, 0)
    tallies = tallies_by_stream(judges)
    assert {name: (t.sent, t.skipped, dict(t.parked)) for name, t in tallies.items()} == {
        "views": (2, 1, {"oversized": 1}), "buys": (2, 0, {}), "(none)": (0, 0, {"no_stream": 2})}


def test_a_judge_shared_by_several_routes_closes_its_decoder_once() -> None:
    decoder = Named("web")
    judge = Judge(decoder=decoder, map_fn=lambda *_: [], max_event_bytes=1000, ndjson=False)
    judges = StreamJudges({"a": judge, "b": RecordTypeJudges(lambda _: "X", {"X": judge}, skip_others=False)})
    judges.close()
    judge.close()
    assert decoder.closed == 1
