"""The chart's `streams:` value: several topics, each with its own reader schema and mapping (issue 13).

The two-stream release of ``fixtures/streams-values.yaml`` is rendered, written out the way the kubelet projects
the ConfigMap into the pod, and read back with the consumer's own ``load_settings`` and ``prepare``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.app.startup import prepare
from consumer.config import Settings, StreamConfig, load_settings
from consumer.errors import MappingInvalid
from consumer.mapping.model import Convert
from tests.chart.chart import (
    CHART,
    FIXTURES,
    Rendered,
    helm,
    render,
    render_notes,
    template_error,
    validation_errors,
    values_yaml,
    write_values,
)

STREAMS = FIXTURES / "streams-values.yaml"
MOUNT = "/etc/usage-consumer"
GROUPS = ("usage-consumer.freshsuccess", "usage-consumer.freshpaint")
SCHEMA_ERROR = "values don't meet the specifications of the schema"


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(STREAMS.read_text())
    return loaded


def _streams(**changes: Any) -> list[dict[str, Any]]:
    """The fixture's streams, the web stream (the first) updated with ``changes``."""
    streams: list[dict[str, Any]] = copy.deepcopy(_values()["streams"])
    streams[0].update(changes)
    return streams


def _project(rendered: Rendered, root: Path) -> Path:
    """Write the ConfigMap into ``root`` as the kubelet projects it at /etc/usage-consumer: the volume's
    ``items`` (or every key when it has none), each at its path. Every key must be projected."""
    configmap = rendered.one("ConfigMap")
    data: dict[str, str] = configmap["data"]
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in rendered.container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == MOUNT
    items = volume["configMap"].get("items") or [{"key": key, "path": key} for key in data]
    assert {item["key"] for item in items} == set(data), "a ConfigMap key the pod never sees"
    for item in items:
        target = root / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    return root


def _settings(rendered: Rendered, tmp_path: Path) -> Settings:
    """The pod's settings: the projected config.yaml, its /etc/usage-consumer paths pointed at the projection
    (each must exist there), loaded by the consumer."""
    root = _project(rendered, tmp_path / "etc-usage-consumer")
    config = yaml.safe_load((root / "config.yaml").read_text())
    for stream in config["streams"]:
        for key in ("reader_schema", "mapping"):
            if key in stream:
                path = Path(stream[key])
                assert path.is_relative_to(MOUNT), stream
                stream[key] = str(root / path.relative_to(MOUNT))
                assert Path(stream[key]).is_file(), f"{path} is not in the pod"
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return load_settings(root / "config.yaml", environ={})


def _without_registry(settings: Settings) -> Settings:
    """Only the streams whose reader schema is not a registry subject (no registry in these tests)."""
    return settings.model_copy(update={"streams": tuple(s for s in settings.streams
                                                        if s.reader_schema_subject is None)})


# ----------------------------------------------------------------------------------- render and validate

def test_streams_release_lints_and_renders_strictly():
    result = helm("lint", "--strict", "-f", str(STREAMS))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = render((STREAMS,))
    assert {"Deployment", "ConfigMap", "ScaledObject"} <= rendered.kinds()
    errors = [e for doc in rendered.docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)


def test_config_has_the_streams_and_none_of_the_keys_they_replace():
    config = render((STREAMS,)).config
    assert "topics" not in config["kafka"]  # the chart's default [usage-events] is dropped
    assert "mapping" not in config
    assert "reader_schema" not in config.get("decoding", {})
    assert config["streams"] == [
        {"name": "web", "topics": ["web.page-views", r"^web\.events\..*"],
         "reader_schema": f"{MOUNT}/streams/web.avsc", "mapping": f"{MOUNT}/streams/web.mapping.yaml",
         "other_records": "skip"},
        {"name": "product", "topics": ["usage-events"], "reader_schema_subject": "usage-events-value",
         "reader_schema_version": 3, "record_names": ["io.usageconsumer.events.UsageEvent"]},
    ]


def test_stream_files_hold_the_values_schema_and_mapping():
    rendered, web = render((STREAMS,)), _values()["streams"][0]
    data = rendered.one("ConfigMap")["data"]
    assert set(data) == {"config.yaml", "streams.web.avsc", "streams.web.mapping.yaml"}  # no mapping.yaml
    assert json.loads(data["streams.web.avsc"]) == web["reader_schema_inline"]
    assert yaml.safe_load(data["streams.web.mapping.yaml"]) == web["mapping"]


def test_the_pod_loads_the_streams_and_compiles_each_mapping_against_its_own_schema(tmp_path: Path):
    settings = _settings(render((STREAMS,)), tmp_path)
    web, product = settings.streams
    assert (web.name, web.topics, web.other_records) == ("web", ("web.page-views", r"^web\.events\..*"), "skip")
    assert web.reader_schema is not None
    assert web.mapping is not None
    # the subject stream: settings-level only (its schema comes from a registry at start-up)
    assert (product.reader_schema_subject, product.reader_schema_version) == ("usage-events-value", 3)
    assert product.record_names == ("io.usageconsumer.events.UsageEvent",)
    assert (product.reader_schema, product.reader_schema_inline, product.mapping) == (None, None, None)
    assert settings.topics() == ("web.page-views", r"^web\.events\..*", "usage-events")
    prepared = prepare(_without_registry(settings))
    assert [s.name for s in prepared.streams] == ["web"]
    assert prepared.streams[0].reader_schema["name"] == "PageView"
    assert prepared.has_rules_for("freshsuccess")
    assert prepared.has_rules_for("freshpaint")


def test_a_stream_mapping_is_checked_against_that_streams_schema(tmp_path: Path):
    """`user_id` is a field of the packaged UsageEvent, not of the web stream's PageView."""
    mapping = copy.deepcopy(_values()["streams"][0]["mapping"])
    mapping["defaults"]["freshpaint"]["distinct_id"] = {"field": "user_id"}
    settings = _settings(render((STREAMS,), set_json={"streams": _streams(mapping=mapping)}), tmp_path)
    with pytest.raises(MappingInvalid) as caught:
        prepare(_without_registry(settings))
    assert "stream 'web'" in str(caught.value)
    assert "user_id" in str(caught.value)


def test_values_yaml_example_renders_and_loads(tmp_path: Path):
    """The commented two-stream example in values.yaml is a working one."""
    text = (CHART / "values.yaml").read_text()
    block = text[text.index("# streams:\n"):text.index("\nstreams: []\n")]
    example = yaml.safe_load("\n".join(line.removeprefix("#").removeprefix(" ") for line in block.splitlines()))
    assert [s["name"] for s in example["streams"]] == ["web", "product"]
    settings = _settings(render(set_json=example), tmp_path)
    assert [s.name for s in prepare(_without_registry(settings)).streams] == ["web"]


def test_without_streams_the_configmap_and_volume_are_the_single_stream_ones():
    rendered = render(set_json={"streams": []})
    assert set(rendered.one("ConfigMap")["data"]) == {"config.yaml", "mapping.yaml"}
    assert "streams" not in rendered.config
    assert rendered.config["kafka"]["topics"] == ["usage-events"]
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == "config")
    assert "items" not in volume["configMap"]


# --------------------------------------------------------------------------------------------- refusals

BAD_STREAMS = [
    pytest.param({"mappings": {}}, ["/streams/0", "additional properties 'mappings' not allowed"], id="unknown-key"),
    pytest.param({"reader_schema_subject": "web-value"}, ["/streams/0/reader_schema_subject", "false schema"],
                 id="two-schema-sources"),
    pytest.param({"reader_schema": "/schemas/web.avsc"}, ["/streams/0", "'reader_schema' not allowed"],
                 id="schema-path-owned-by-the-chart"),
    pytest.param({"name": "web/eu"}, ["/streams/0/name", "does not match pattern"], id="bad-name"),
    pytest.param({"name": "w" * 65}, ["/streams/0/name", "does not match pattern"], id="name-too-long"),
    pytest.param({"topics": []}, ["/streams/0/topics", "minItems: got 0, want 1"], id="no-topics"),
    pytest.param({"other_records": "drop"}, ["/streams/0/other_records", "'dead_letter', 'skip'"],
                 id="unknown-other-records"),
    pytest.param({"reader_schema_version": 2}, ["/streams/0", "'reader_schema_subject' required"],
                 id="version-without-subject"),
    pytest.param({"reader_schema_inline": {"name": "PageView", "fields": []}},
                 ["/streams/0/reader_schema_inline", "missing property 'type'"], id="inline-schema-without-type"),
    pytest.param({"mapping": {"version": 1, "rules": [{"name": "x", "freshpaint": [{"evnt": "E"}]}]}},
                 ["/streams/0/mapping/rules/0/freshpaint/0", "'evnt' not allowed"], id="mapping-typo"),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_STREAMS)
def test_a_bad_stream_fails_at_template_time_naming_where(changes: dict[str, Any], expected: list[str]):
    error = template_error([STREAMS], set_json={"streams": _streams(**changes)})
    assert SCHEMA_ERROR in error, error
    for text in expected:
        assert text in error, error


@pytest.mark.parametrize("version", [pytest.param(0, id="zero"), pytest.param("newest", id="unknown-word")])
def test_a_bad_subject_version_is_refused(version: int | str):
    streams = _streams()
    streams[1]["reader_schema_version"] = version
    error = template_error([STREAMS], set_json={"streams": streams})
    assert "/streams/1/reader_schema_version" in error, error


@pytest.mark.parametrize("version", [pytest.param(1, id="one"), pytest.param("latest", id="latest")])
def test_a_good_subject_version_is_passed_through(version: int | str):
    streams = _streams()
    streams[1]["reader_schema_version"] = version
    assert render([STREAMS], set_json={"streams": streams}).config["streams"][1]["reader_schema_version"] == version


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"config": {"kafka": {"topics": ["usage-events", "more"]}}},
                 "config.kafka.topics (usage-events, more) and streams are both set", id="kafka-topics"),
    pytest.param({"config": {"decoding": {"reader_schema": "/schemas/x.avsc"}}},
                 "config.decoding.reader_schema and streams are both set", id="decoding-reader-schema"),
    pytest.param({"streams": _streams(name="product")}, "streams: the name product is used by more than one stream",
                 id="same-name-twice"),
])
def test_values_the_streams_replace_are_refused_with_what_to_change(
        values: dict[str, Any], message: str, tmp_path: Path):
    assert message in template_error([STREAMS, write_values(tmp_path, "more.yaml", values)])


def test_kafka_topics_set_to_null_is_fine_with_streams():
    config = render([STREAMS], sets={"config.kafka.topics": "null"}).config
    assert "topics" not in config["kafka"]


def test_a_configmap_over_the_kubernetes_limit_is_refused(tmp_path: Path):
    schema = {**_values()["streams"][0]["reader_schema_inline"], "doc": "x" * 1_100_000}
    values = write_values(tmp_path, "big.yaml", {"streams": _streams(reader_schema_inline=schema)})
    error = template_error([STREAMS, values])
    assert "the ConfigMap would hold" in error, error
    assert "at most 1 MiB" in error, error


def test_the_mapping_schema_knows_every_conversion_of_the_consumer():
    """A stream's mapping reads other schemas (bytes fields need base64 or hex); the schema refuses no
    conversion the consumer has."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["definitions"]["value"]["then"]["properties"]["convert"]["enum"]) == {c.value for c in Convert}
    assert schema["definitions"]["stream"]["properties"]["mapping"] == {"$ref": "#/definitions/mapping"}
    assert schema["properties"]["mapping"] == {"$ref": "#/definitions/mapping"}


def test_stream_schema_constraints_match_the_consumer():
    """Name pattern, version and other_records as the consumer's StreamConfig has them."""
    stream = json.loads((CHART / "values.schema.json").read_text())["definitions"]["stream"]["properties"]
    model = StreamConfig.model_json_schema()["properties"]
    assert stream["name"]["pattern"] == model["name"]["pattern"]
    assert stream["other_records"]["enum"] == model["other_records"]["enum"]
    assert stream["topics"]["minItems"] == model["topics"]["minItems"]
    assert {"type": "integer", "minimum": 1} in stream["reader_schema_version"]["oneOf"]
    assert {"const": "latest"} in stream["reader_schema_version"]["oneOf"]


# ------------------------------------------------------------------------------------- pods roll, KEDA

def _checksum(rendered: Rendered) -> str:
    annotations: dict[str, str] = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


def test_checksum_changes_with_a_streams_mapping_or_schema():
    base = _checksum(render((STREAMS,)))
    mapping = copy.deepcopy(_values()["streams"][0]["mapping"])
    mapping["rules"][0]["freshpaint"][0]["event"] = "Page Was Viewed"
    assert _checksum(render((STREAMS,), set_json={"streams": _streams(mapping=mapping)})) != base
    schema = copy.deepcopy(_values()["streams"][0]["reader_schema_inline"])
    schema["fields"].append({"name": "referrer", "type": ["null", "string"], "default": None})
    assert _checksum(render((STREAMS,), set_json={"streams": _streams(reader_schema_inline=schema)})) != base
    assert _checksum(render((STREAMS,), set_json={"streams": _streams(topics=["web.page-views"])})) != base
    # unrelated values, and the top-level mapping (which no stream reads), leave the pods alone
    assert _checksum(render((STREAMS,), sets={"replicaCount": "5"})) == base
    top = copy.deepcopy(values_yaml()["mapping"])
    top["rules"][0]["freshpaint"][0]["event"] = "Feature Was Used"
    assert _checksum(render((STREAMS,), set_json={"mapping": top})) == base


def _watched(rendered: Rendered) -> set[tuple[str, str | None]]:
    triggers = rendered.one("ScaledObject")["spec"]["triggers"]
    return {(t["metadata"]["consumerGroup"], t["metadata"].get("topic")) for t in triggers}


def test_keda_watches_every_named_topic_and_each_groups_committed_topics_for_a_pattern():
    rendered = render((STREAMS,))
    named = ("web.page-views", "usage-events")
    assert _watched(rendered) == {(group, topic) for group in GROUPS for topic in (*named, None)}
    triggers = rendered.one("ScaledObject")["spec"]["triggers"]
    assert len(triggers) == len(GROUPS) * (len(named) + 1)  # one each, no repeats
    assert not any(str(t["metadata"].get("topic", "")).startswith("^") for t in triggers)


def test_keda_without_patterns_names_every_topic_of_every_stream():
    streams = _streams(topics=["web.page-views", "web.clicks"])
    watched = _watched(render((STREAMS,), set_json={"streams": streams}))
    assert watched == {(g, t) for g in GROUPS for t in ("web.page-views", "web.clicks", "usage-events")}


def test_keda_names_a_topic_two_streams_share_once():
    streams = _streams(topics=["usage-events"], record_names=["com.example.web.PageView"])
    rendered = render((STREAMS,), set_json={"streams": streams})
    assert len(rendered.one("ScaledObject")["spec"]["triggers"]) == len(GROUPS)
    assert _watched(rendered) == {(g, "usage-events") for g in GROUPS}


# ------------------------------------------------------------------------------------------------ NOTES

def test_notes_list_the_streams(tmp_path: Path):
    notes = render_notes(tmp_path, (STREAMS,))
    assert "Streams (bootstrap kafka:9092):\n  web: web.page-views, ^web\\.events\\..*\n  product: usage-events\n" \
        in notes
    assert "Topics:" not in notes
    assert "KEDA cannot name a topic pattern (^web\\.events\\..*)" in notes


def test_notes_without_streams_list_the_topics(tmp_path: Path):
    notes = render_notes(tmp_path)
    assert "Topics: usage-events (bootstrap kafka:9092)" in notes
    assert "Streams" not in notes
