"""Mapping edges from issue 11: $insert_id spaces (8), reserved keys through pass_properties (9), blank
required ids (12), NaN/Infinity (13), $identify without user props (14), user-mapped $insert_id (15), and
values JSON cannot carry (bytes, fixed, decimal) caught by the checker with a conversion on offer."""

from __future__ import annotations

import base64
import copy
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumer.errors import MappingInvalid, MissingRequiredField
from consumer.mapping import CompiledMapping, compile_mapping, insert_id
from consumer.yamlsource import load_yaml_text
from tests.unit.test_mapping import EVENT_ID, HEADER, INSERT_ID_RE, OFFSET, PARTITION, SCHEMA, TOPIC, default, run
from tests.unit.test_mapping import event as usage_event

__all__ = ["EVENT_ID", "HEADER", "INSERT_ID_RE", "default"]  # re-used from test_mapping (the fixture too)

# The shipped schema plus the Avro types JSON cannot carry as decoded (logical types are stripped before
# decoding, so a decimal arrives as its two's-complement bytes) and doubles that can be NaN.
EXTRA_FIELDS: list[dict[str, Any]] = [
    {"name": "score", "type": ["null", "double"], "default": None},
    {"name": "metrics", "type": {"type": "map", "values": "double"}, "default": {}},
    {"name": "blob", "type": ["null", "bytes"], "default": None},
    {"name": "blobs", "type": {"type": "map", "values": "bytes"}, "default": {}},
    {"name": "digest", "type": ["null", {"type": "fixed", "name": "Digest", "size": 4}], "default": None},
    {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}],
     "default": None},
    {"name": "tags", "type": {"type": "array", "items": "bytes"}, "default": []},
    {"name": "device", "default": None, "type": ["null", {
        "type": "record", "name": "Device", "fields": [
            {"name": "model", "type": ["null", "string"], "default": None},
            {"name": "serial", "type": ["null", "bytes"], "default": None},
        ]}]},
    {"name": "stats", "default": None, "type": ["null", {
        "type": "record", "name": "Stats", "fields": [
            {"name": "ratio", "type": ["null", "double"], "default": None},
            {"name": "label", "type": ["null", "string"], "default": None},
        ]}]},
]
SCHEMA_X: dict[str, Any] = copy.deepcopy(SCHEMA)
SCHEMA_X["fields"].extend(EXTRA_FIELDS)

def event(**overrides: Any) -> dict[str, Any]:
    """A decoded event of the extended schema (the extra fields null or empty unless overridden)."""
    extra: dict[str, Any] = {"score": None, "metrics": {}, "blob": None, "blobs": {}, "digest": None,
                             "price": None, "tags": [], "device": None, "stats": None}
    return usage_event(**{**extra, **overrides})


def compile_text(text: str, schema: dict[str, Any] | None = None) -> CompiledMapping:
    return compile_mapping(load_yaml_text(text, source="m.yaml"), schema or SCHEMA_X, source="m.yaml")


def problems_of(text: str, schema: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(MappingInvalid) as caught:
        compile_text(text, schema)
    return caught.value.problems


def json_round_trip(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the destination receives: strict JSON (orjson would write NaN as null; this refuses it)."""
    text = json.dumps(outputs, allow_nan=False)
    return list(json.loads(text))


# ---------------------------------------------------------------------------------------------------------
# 8. $insert_id: derived forms no longer share one space


def test_second_output_of_an_event_differs_from_first_output_of_a_hash_suffixed_event_id() -> None:
    assert insert_id("order-17", TOPIC, 0, 1, 1) != insert_id("order-17#1", TOPIC, 0, 2, 0)


def test_empty_event_id_differs_from_an_event_id_that_spells_the_offset() -> None:
    assert insert_id("", "usage-events", 0, 3, 0) != insert_id("kafka:usage-events:0:3", "usage-events", 0, 9, 0)


def test_offset_forms_with_colons_in_the_topic_do_not_collide() -> None:
    # Topic "t:0" partition 1 and topic "t" partition 0 would both read "kafka:t:0:1:..." if the name were not
    # length-prefixed (an offset of 1 vs a partition of 1 and so on).
    assert insert_id("", "t:0", 1, 5, 0) != insert_id("", "t", 0, 1, 5)
    assert insert_id("", "t:0", 1, 5, 0) != insert_id("", "t", 0, 1, 0)


def event_identity(event_id: Any, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
    """What makes two events the same event: their event_id when they have one, else where they were read."""
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    if isinstance(event_id, str) and event_id:
        return ("event_id", event_id)
    return ("kafka", topic, partition, offset)


VALID_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789-", min_size=1, max_size=36)
EVENT_IDS = st.one_of(st.just(""), st.none(), VALID_ID, st.text(max_size=50),
                      VALID_ID.map(lambda s: s + "#1"), st.integers(-10, 10**12))
TOPICS = st.sampled_from(["usage-events", "a", "a:1", "usage-events:0", "t#1"])
EVENTS = st.tuples(EVENT_IDS, TOPICS, st.integers(0, 12), st.integers(0, 10**9))


@settings(max_examples=400, deadline=None)
@given(a=EVENTS, b=EVENTS, i=st.integers(0, 4), j=st.integers(0, 4))
@example(a=("order-17", TOPIC, 0, 1), b=("order-17#1", TOPIC, 0, 2), i=1, j=0)
@example(a=("", "usage-events", 0, 3), b=("kafka:usage-events:0:3", "usage-events", 0, 9), i=0, j=0)
@example(a=(None, "usage-events", 0, 3), b=("kafka:usage-events:0:3", "other", 1, 1), i=2, j=2)
@example(a=("x", TOPIC, 0, 0), b=("x#1", TOPIC, 0, 0), i=1, j=0)
def test_insert_id_is_injective_over_event_and_output_index(a: tuple[Any, str, int, int],
                                                             b: tuple[Any, str, int, int], i: int, j: int) -> None:
    id_a, id_b = insert_id(*a, i), insert_id(*b, j)
    assert INSERT_ID_RE.fullmatch(id_a)
    assert INSERT_ID_RE.fullmatch(id_b)
    # Redelivery: the same event gets the same ids.
    assert id_a == insert_id(*a, i)
    same = event_identity(*a) == event_identity(*b) and i == j
    assert (id_a == id_b) == same


def test_compiled_mapping_ids_are_distinct_across_events_and_outputs() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - event: A
      - event: B
      - event: C
""")
    seen: dict[str, tuple[Any, ...]] = {}
    for event_id in ("order-17", "order-17#1", "order-17#2", "", "kafka:usage-events:3:12345", EVENT_ID):
        outputs = mapping.freshpaint(event(event_id=event_id), TOPIC, PARTITION, OFFSET)  # type: ignore[misc]
        for index, output in enumerate(outputs):
            iid = output["properties"]["$insert_id"]
            assert INSERT_ID_RE.fullmatch(iid)
            assert iid not in seen, (event_id, index, seen.get(iid))
            seen[iid] = (event_id, index)
    # A valid event_id keeps being the first output's id (unchanged across the upgrade).
    assert mapping.freshpaint(event(), TOPIC, 0, 0)[0]["properties"]["$insert_id"] == EVENT_ID  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# 9. pass_properties never injects the keys the Freshpaint contract reserves

HOSTILE_PROPERTIES = {
    "plan": "pro", "token": "stolen", "$options": "all", "$user_props": "x", "$ip": "6.6.6.6",
    "$device_id": "spoofed", "$insert_id": "dup-id",
}


def test_pass_properties_drops_reserved_keys(default: CompiledMapping) -> None:
    _, fp = run(default, event(device_id=None, properties=dict(HOSTILE_PROPERTIES)))
    props = fp[0]["properties"]
    assert props["plan"] == "pro"
    for key in ("token", "$options", "$user_props", "$ip", "$device_id"):
        assert key not in props, key
    assert props["$insert_id"] == EVENT_ID


def test_pass_properties_keeps_explicit_reserved_entries() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        pass_properties: true
        integrations: {Mixpanel: false}
        properties:
          $ip: {const: 10.0.0.1}
          $device_id: {field: device_id}
""")
    _, fp = run(mapping, event(properties=dict(HOSTILE_PROPERTIES)))
    props = fp[0]["properties"]
    assert props["$ip"] == "10.0.0.1"
    assert props["$device_id"] == "dev-1"
    assert props["$options"] == {"integrations": {"Mixpanel": False}}
    assert props["$insert_id"] == EVENT_ID
    assert "token" not in props
    assert "$user_props" not in props


def test_pass_properties_without_insert_id_mapping_does_not_inject_one() -> None:
    mapping = compile_text("""\
version: 1
rules:
  - name: r
    freshpaint:
      - event: A
        pass_properties: true
        properties:
          distinct_id: {field: user_id}
          time: {field: occurred_at, convert: epoch_ms_to_s}
""")
    _, fp = run(mapping, event(properties=dict(HOSTILE_PROPERTIES)))
    assert "$insert_id" not in fp[0]["properties"]


# ---------------------------------------------------------------------------------------------------------
# 12. Blank required ids are missing


@pytest.mark.parametrize("blank", ["", "   ", "\t\n", "\u3000"])
@pytest.mark.parametrize(("field", "destination", "slot"), [
    ("account_id", "freshsuccess", "accountId"),
    ("user_id", "freshsuccess", "userId"),
    ("user_id", "freshpaint", "distinct_id"),
    ("feature", "freshsuccess", "feature"),
])
def test_blank_required_ids_are_missing(default: CompiledMapping, blank: str, field: str, destination: str,
                                        slot: str) -> None:
    fn = default.freshsuccess if destination == "freshsuccess" else default.freshpaint
    assert fn is not None
    with pytest.raises(MissingRequiredField, match=f"required (field|property) '{slot}' is missing"):
        fn(event(**{field: blank}), TOPIC, PARTITION, OFFSET)


@pytest.mark.parametrize("blank", ["", "  "])
def test_blank_id_falls_back_to_its_default(default: CompiledMapping, blank: str) -> None:
    fs, _ = run(default, event(session_id=blank, module=blank))
    assert fs[0]["sessionId"] == "user-1"  # default "{user_id}"
    assert fs[0]["module"] == "core"  # default core


def test_blank_session_and_user_is_missing_session(default: CompiledMapping) -> None:
    with pytest.raises(MissingRequiredField, match=r"'(userId|sessionId)' is missing"):
        run(default, event(session_id="", user_id=""))


def test_blank_module_without_default_is_missing() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshsuccess:
      - action: moduleEnd
        fields: {module: {field: module}, timeSpent: {const: 5}}
    freshpaint:
      - event: {field: feature}
""")
    assert mapping.freshsuccess is not None
    assert mapping.freshpaint is not None
    with pytest.raises(MissingRequiredField, match="required field 'module' is missing"):
        mapping.freshsuccess(event(module=" "), TOPIC, PARTITION, OFFSET)
    with pytest.raises(MissingRequiredField, match="required field 'event' is missing"):
        mapping.freshpaint(event(feature=""), TOPIC, PARTITION, OFFSET)


def test_blank_constant_for_a_required_id_is_a_check_error() -> None:
    problems = problems_of(HEADER + """\
  - name: r
    freshsuccess:
      - action: sessionSync
        fields: {sessionId: "", activeDuration: {const: 5}}
""")
    assert len(problems) == 1
    assert "rule 'r': freshsuccess[0].fields.sessionId: " in problems[0]
    assert "blank" in problems[0]


# ---------------------------------------------------------------------------------------------------------
# 13. NaN and infinities are null


NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_double_is_left_out(default: CompiledMapping, bad: float) -> None:
    account: dict[str, Any] = {"name": "Acme", "plan": None, "mrr": bad, "created_at": None, "attributes": {}}
    fs, fp = run(default, event(event_type="account_identified", account=account))
    assert fs[0]["details"] == {"name": "Acme"}
    assert "mrr" not in fp[0]["properties"]
    json_round_trip(fs + fp)


@pytest.mark.parametrize("bad", NON_FINITE)
def test_object_holding_only_non_finite_is_missing(default: CompiledMapping, bad: float) -> None:
    account: dict[str, Any] = {"name": None, "plan": None, "mrr": bad, "created_at": None, "attributes": {}}
    assert default.freshsuccess is not None
    with pytest.raises(MissingRequiredField, match="required field 'details' is missing"):
        default.freshsuccess(event(event_type="account_identified", account=account), TOPIC, PARTITION, OFFSET)


NAN_MAPPING = HEADER + """\
  - name: r
    freshsuccess:
      - action: identifyAccount
        fields:
          details: {object: {label: {field: stats.label}}, merge: {field: metrics}}
      - action: sessionSync
        fields: {activeDuration: {field: score}}
    freshpaint:
      - event: A
        pass_properties: {field: metrics}
        properties:
          score: {field: score}
          fallback: {field: score, default: 0}
          text: {template: "score={score}"}
          ratio: {field: stats.ratio}
          stats: {object: {ratio: {field: stats.ratio}}, merge: {field: stats}}
"""


@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_inside_merged_maps_passed_maps_templates_and_defaults(bad: float) -> None:
    mapping = compile_text(NAN_MAPPING)
    record = event(score=bad, metrics={"a": bad, "b": 2.5}, stats={"ratio": bad, "label": "l"})
    assert mapping.freshsuccess is not None
    assert mapping.freshpaint is not None
    with pytest.raises(MissingRequiredField, match="required field 'activeDuration' is missing"):
        mapping.freshsuccess(record, TOPIC, PARTITION, OFFSET)
    fp = mapping.freshpaint(record, TOPIC, PARTITION, OFFSET)
    props = fp[0]["properties"]
    assert props["b"] == 2.5
    assert "a" not in props
    assert "score" not in props
    assert "text" not in props
    assert "ratio" not in props
    assert props["fallback"] == 0
    assert props["stats"] == {"label": "l"}
    json_round_trip(fp)


@pytest.mark.parametrize("bad", NON_FINITE)
def test_merged_map_holding_only_non_finite_is_missing(bad: float) -> None:
    mapping = compile_text(NAN_MAPPING)
    assert mapping.freshsuccess is not None
    record = event(score=1.0, metrics={"a": bad})
    with pytest.raises(MissingRequiredField, match="required field 'details' is missing"):
        mapping.freshsuccess(record, TOPIC, PARTITION, OFFSET)
    outputs = mapping.freshsuccess(event(score=1.0, metrics={"a": bad, "b": -1.0}), TOPIC, PARTITION, OFFSET)
    assert outputs[0]["details"] == {"b": -1.0}


@pytest.mark.parametrize("constant", [".inf", "-.inf", ".nan"])
def test_non_finite_constant_is_a_check_error(constant: str) -> None:
    problems = problems_of(HEADER + f"""\
  - name: r
    freshpaint:
      - event: A
        properties: {{x: {constant}}}
""")
    assert len(problems) == 1
    assert "JSON cannot carry" in problems[0]


# ---------------------------------------------------------------------------------------------------------
# 14. $identify with no user properties is not sent


def test_identify_with_empty_user_props_is_missing() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - identify: true
        user_props: {object: {role: {field: user.role}}}
      - identify: true
        user_props: {field: properties}
""")
    assert mapping.freshpaint is not None
    with pytest.raises(MissingRequiredField, match=r"freshpaint output #1 \(\$identify\): required property "
                                                   r"'\$user_props' is missing"):
        mapping.freshpaint(event(user={"email": None, "name": None, "role": None, "created_at": None,
                                       "attributes": {}}), TOPIC, PARTITION, OFFSET)
    with pytest.raises(MissingRequiredField, match=r"freshpaint output #2 \(\$identify\): required property "
                                                   r"'\$user_props' is missing"):
        mapping.freshpaint(event(user={"email": None, "name": None, "role": "admin", "created_at": None,
                                       "attributes": {}}, properties={}), TOPIC, PARTITION, OFFSET)
    fp = mapping.freshpaint(event(user={"email": None, "name": None, "role": "admin", "created_at": None,
                                        "attributes": {}}, properties={"plan": "pro"}), TOPIC, PARTITION, OFFSET)
    assert [o["properties"]["$user_props"] for o in fp] == [{"role": "admin"}, {"plan": "pro"}]


def test_identify_with_null_user_is_missing(default: CompiledMapping) -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - identify: true
        user_props: {field: user}
""")
    assert mapping.freshpaint is not None
    with pytest.raises(MissingRequiredField, match=r"'\$user_props' is missing"):
        mapping.freshpaint(event(user=None), TOPIC, PARTITION, OFFSET)


def test_identify_without_user_props_is_a_check_error() -> None:
    problems = problems_of(HEADER + """\
  - name: r
    freshpaint:
      - identify: true
""")
    assert problems == ["m.yaml:15: rule 'r': freshpaint[0]: 'identify: true' needs 'user_props:' (the user "
                        "properties $identify attaches); without them Freshpaint has nothing to do"]


# ---------------------------------------------------------------------------------------------------------
# 15. A user-mapped $insert_id is checked


def mapped_insert_id() -> CompiledMapping:
    return compile_text("""\
version: 1
rules:
  - name: r
    freshpaint:
      - event: A
        properties:
          distinct_id: {field: user_id}
          time: {field: occurred_at, convert: epoch_ms_to_s}
          $insert_id: {field: properties.order}
""")


def test_invalid_mapped_insert_id_is_replaced_by_a_derived_valid_one() -> None:
    mapping = mapped_insert_id()
    bad = "order 17 for account acct-1 placed by user-1 at 2023-11-14 22:13:20 UTC"
    assert len(bad) > 36
    _, fp = run(mapping, event(properties={"order": bad}))
    iid = fp[0]["properties"]["$insert_id"]
    assert INSERT_ID_RE.fullmatch(iid)
    _, again = run(mapping, event(properties={"order": bad}, event_id="other"))
    assert again[0]["properties"]["$insert_id"] == iid  # deterministic, from the value alone
    _, other = run(mapping, event(properties={"order": bad + "!"}))
    assert other[0]["properties"]["$insert_id"] != iid


def test_valid_mapped_insert_id_is_kept_and_blank_is_left_out() -> None:
    mapping = mapped_insert_id()
    assert run(mapping, event(properties={"order": "order-17"}))[1][0]["properties"]["$insert_id"] == "order-17"
    for blank in ("", "  "):
        assert "$insert_id" not in run(mapping, event(properties={"order": blank}))[1][0]["properties"]
    assert "$insert_id" not in run(mapping, event(properties={}))[1][0]["properties"]


def test_invalid_constant_insert_id_is_a_check_error() -> None:
    problems = problems_of(HEADER.replace("$insert_id: {insert_id: true}", "$insert_id: not a valid id")
                           + "  - name: r\n    freshpaint: [{event: A}]\n")
    assert len(problems) == 1
    assert "$insert_id" in problems[0]
    assert "36" in problems[0]


# ---------------------------------------------------------------------------------------------------------
# Values JSON cannot carry: check rejects them and names the conversion


def one_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def test_bytes_field_into_a_property_names_base64_and_hex() -> None:
    problem = one_problem(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties: {raw: {field: blob}}
""")
    assert problem.startswith("m.yaml:16: rule 'r': freshpaint[0].properties.raw: ")
    assert "field 'blob'" in problem
    assert "convert: base64" in problem
    assert "convert: hex" in problem


def test_decimal_field_names_string_and_float() -> None:
    problem = one_problem(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties: {price: {field: price}}
""")
    assert problem.startswith("m.yaml:16: rule 'r': freshpaint[0].properties.price: ")
    assert "field 'price'" in problem
    assert "decimal" in problem
    assert "convert: string" in problem
    assert "convert: float" in problem


@pytest.mark.parametrize(("value", "field", "hint"), [
    ("{object: {a: {const: 1}}, merge: {field: blobs}}", "blobs", "base64"),
    ("{object: {a: {const: 1}}, merge: {field: device}}", "device.serial", "base64"),
    ("{field: device}", "device.serial", "base64"),
    ("{field: tags}", "tags", "base64"),
    ("{field: blobs}", "blobs", "base64"),
])
def test_bytes_inside_objects_maps_and_lists_are_check_errors(value: str, field: str, hint: str) -> None:
    problem = one_problem(HEADER + f"""\
  - name: r
    freshpaint:
      - event: A
        properties: {{x: {value}}}
""")
    assert problem.startswith("m.yaml:16: rule 'r': freshpaint[0].properties.x")
    assert f"'{field}'" in problem
    assert hint in problem
    assert "JSON" in problem


def test_pass_properties_of_a_bytes_map_is_a_check_error() -> None:
    problem = one_problem(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        pass_properties: {field: blobs}
""")
    assert problem.startswith("m.yaml:16: rule 'r': freshpaint[0].pass_properties.field: ")
    assert "'blobs'" in problem
    assert "convert: base64" in problem


def test_merge_of_a_decimal_record_names_the_field() -> None:
    schema = copy.deepcopy(SCHEMA_X)
    schema["fields"].append({"name": "order", "default": None, "type": ["null", {
        "type": "record", "name": "Order", "fields": [
            {"name": "total", "type": {"type": "fixed", "name": "Money", "size": 8, "logicalType": "decimal",
                                       "precision": 18, "scale": 4}}]}]})
    problems = problems_of(HEADER + """\
  - name: r
    freshsuccess:
      - action: identifyAccount
        fields:
          details: {object: {a: {const: 1}}, merge: {field: order}}
""", schema)
    assert len(problems) == 1
    assert problems[0].startswith("m.yaml:17: rule 'r': freshsuccess[0].fields.details.merge")
    assert "'order.total'" in problems[0]
    assert "convert: string" in problems[0]


def test_conversions_make_bytes_fixed_and_decimal_json() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties:
          b64: {field: blob, convert: base64}
          hex: {field: digest, convert: hex}
          serial: {field: device.serial, convert: hex}
          price: {field: price, convert: string}
          price_f: {field: price, convert: float}
""")
    price = (-12345).to_bytes(3, "big", signed=True)
    record = event(blob=b"\x00\xffhi", digest=b"\xde\xad\xbe\xef", device={"model": None, "serial": b"\x01"},
                   price=price)
    _, fp = run(mapping, record)
    props = fp[0]["properties"]
    assert props["b64"] == base64.b64encode(b"\x00\xffhi").decode()
    assert props["hex"] == "deadbeef"
    assert props["serial"] == "01"
    assert props["price"] == "-123.45"
    assert props["price_f"] == -123.45
    orjson.dumps(fp)
    _, nulls = run(mapping, event())
    assert not {"b64", "hex", "serial", "price", "price_f"} & set(nulls[0]["properties"])


def test_decimal_conversion_keeps_scale_and_large_values() -> None:
    mapping = compile_text(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties: {price: {field: price, convert: string}}
""")
    for unscaled, text in [(0, "0.00"), (5, "0.05"), (10**30, "1" + "0" * 28 + ".00"), (-1, "-0.01")]:
        raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8 or 1, "big", signed=True)
        assert run(mapping, event(price=raw))[1][0]["properties"]["price"] == text


def test_conversions_that_cannot_apply_are_check_errors() -> None:
    problems = problems_of(HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties:
          a: {field: feature, convert: base64}
          b: {field: blob, convert: string}
""")
    assert len(problems) == 2
    assert "convert 'base64' cannot apply" in problems[0]
    assert "convert 'string' cannot apply" in problems[1]
    assert "base64" in problems[1]


def test_bytes_deep_inside_recursive_and_union_types_are_found_once() -> None:
    schema = copy.deepcopy(SCHEMA_X)
    schema["fields"].append({"name": "tree", "default": None, "type": ["null", {
        "type": "record", "name": "Node", "fields": [
            {"name": "label", "type": ["null", "string"], "default": None},
            {"name": "children", "type": {"type": "array", "items": "Node"}, "default": []},
            {"name": "extra", "type": ["null", "string", {"type": "map", "values": ["null", "bytes"]}],
             "default": None},
        ]}]})
    text = HEADER + """\
  - name: r
    freshpaint:
      - event: A
        properties: {t: {field: tree}}
"""
    problems = problems_of(text, schema)
    assert len(problems) == 1
    assert "holds in 'tree.extra' a map of bytes" in problems[0]
    assert "{field: tree.extra.KEY} with 'convert: base64'" in problems[0]
    # Without the bytes the recursive type is fine (and checking it terminates).
    schema["fields"][-1]["type"][1]["fields"].pop()
    compile_text(text, schema)


def test_the_dispatch_field_is_the_first_written_on_a_tie_whatever_the_hash_seed() -> None:
    """The compiled code must not depend on PYTHONHASHSEED: on a tie, the field written first is looked up.

    A pair of fields that this process's string hashing would put in the other order is picked, so the check
    fails whenever the choice follows set order instead of the file's order.
    """
    candidates = ("product", "module", "feature", "event_type", "session_id", "device_id")
    first, second = next((a, b) for a in candidates for b in candidates if a != b and list({a, b}) == [b, a])
    source = compile_text(HEADER + f"""
  - name: r
    when: {{{first}: x, {second}: y}}
    freshpaint:
      - event: e
""").python_source
    assert f"_map_freshpaint_table.get(r.get({first!r})" in source


TOPIC_RULES = HEADER + """
  - name: web
    when: {$topic: [web.eu, web.us]}
    freshpaint:
      - event: Web Event
        properties:
          source_topic: {field: $topic}
  - name: mobile
    when: {field: $topic, eq: mobile.all}
    freshpaint:
      - event: Mobile Event
"""


def test_rules_read_and_select_on_the_records_topic() -> None:
    """``$topic`` is the topic the record was read from: a rule can select on it and a value can read it."""
    mapping = compile_text(TOPIC_RULES)
    assert mapping.freshpaint is not None
    record = event()
    outputs = {topic: [(o["event"], o["properties"].get("source_topic")) for o in
                       mapping.freshpaint(dict(record), topic, PARTITION, OFFSET)]
               for topic in ("web.eu", "web.us", "mobile.all", "billing")}
    assert outputs == {"web.eu": [("Web Event", "web.eu")], "web.us": [("Web Event", "web.us")],
                       "mobile.all": [("Mobile Event", None)], "billing": []}
    assert [rule for rule, _, _ in mapping.explain(dict(record), "web.eu", PARTITION, OFFSET)] == ["web"]
    assert mapping.rules_matching(dict(record), topic="mobile.all") == ["mobile"]


def test_a_mapping_that_does_not_read_the_topic_leaves_the_record_as_decoded() -> None:
    record = event()
    mapping = compile_text(HEADER + """
  - name: all
    freshpaint:
      - event: Anything
""")
    assert mapping.freshpaint is not None
    mapping.freshpaint(record, TOPIC, PARTITION, OFFSET)
    assert "$topic" not in record


def test_the_topic_is_text_with_nothing_inside() -> None:
    problems = problems_of(HEADER + """
  - name: bad
    when: {$topic: 7}
    freshpaint:
      - event: E
        properties:
          x: {field: $topic.name}
""")
    assert any("$topic" in p and "nothing inside" in p for p in problems), problems
    assert len(problems) == 2, problems
