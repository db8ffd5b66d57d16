"""The mapping: exact outputs per action and event kind, values, $insert_id, runtime errors, validation."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import EventError, MappingFailed, MappingInvalid, MissingRequiredField
from consumer.mapping import CompiledMapping, compile_mapping, insert_id, insert_id_base, load_mapping
from consumer.mapping.compiler import INSERT_ID_NAMESPACE
from consumer.yamlsource import load_yaml_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas" / "usage_event.avsc").read_text(encoding="utf-8"))
DEFAULT_MAPPING = ROOT / "consumer" / "defaults" / "mapping.yaml"
EVENT_ID = "3f1e7c52-8a4b-4c1e-9d2f-0a1b2c3d4e5f"
INSERT_ID_RE = re.compile(r"[A-Za-z0-9-]{1,36}")

TOPIC, PARTITION, OFFSET = "usage-events", 3, 12345


def event(**overrides: Any) -> dict[str, Any]:
    """A decoded UsageEvent as fastavro gives it: every field present, nullable ones None by default."""
    record: dict[str, Any] = {
        "event_id": EVENT_ID, "event_type": "feature_used", "occurred_at": 1_700_000_000_123,
        "account_id": "acct-1", "user_id": "user-1", "session_id": "sess-1", "device_id": "dev-1",
        "product": "app", "module": "reports", "feature": "export", "duration_ms": None, "count": 3,
        "user": None, "account": None, "properties": {},
    }
    record.update(overrides)
    return record


@pytest.fixture(scope="module")
def default() -> CompiledMapping:
    return load_mapping(DEFAULT_MAPPING, SCHEMA)


def compile_text(text: str, schema: dict[str, Any] | None = None) -> CompiledMapping:
    return compile_mapping(load_yaml_text(text, source="m.yaml"), schema or SCHEMA, source="m.yaml")


def problems_of(text: str) -> list[str]:
    with pytest.raises(MappingInvalid) as caught:
        compile_text(text)
    return caught.value.problems


def run(mapping: CompiledMapping, record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    fs = mapping.freshsuccess(record, TOPIC, PARTITION, OFFSET) if mapping.freshsuccess else []
    fp = mapping.freshpaint(record, TOPIC, PARTITION, OFFSET) if mapping.freshpaint else []
    return fs, fp


# A minimal header for hand-written mappings in the tests below.
HEADER = """\
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
"""


# ---------------------------------------------------------------------------------------------------------
# The default mapping, one event kind at a time


def test_default_mapping_compiles_against_the_shipped_schema(default: CompiledMapping) -> None:
    assert default.rule_names == ("feature-used", "module-ended", "session-synced", "user-identified",
                                  "account-identified", "page-viewed")
    assert default.freshsuccess is not None
    assert default.freshpaint is not None


def test_feature_used(default: CompiledMapping) -> None:
    fs, fp = run(default, event(properties={"plan": "pro", "url": "/r"}))
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "feature", "sessionId": "sess-1",
                   "feature": "export", "module": "reports", "total": 3, "product": "app"}]
    assert fp == [{"event": "Feature Used", "properties": {
        "plan": "pro", "url": "/r",
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1", "$insert_id": EVENT_ID,
        "feature": "export", "module": "reports", "product": "app", "count": 3, "account_id": "acct-1"}}]


def test_feature_used_defaults_fill_nulls(default: CompiledMapping) -> None:
    record = event(session_id=None, device_id=None, module=None, count=None, product=None)
    fs, fp = run(default, record)
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "feature", "sessionId": "user-1",
                   "feature": "export", "module": "core", "total": 1}]
    assert fp == [{"event": "Feature Used", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$insert_id": EVENT_ID,
        "feature": "export", "count": 1, "account_id": "acct-1"}}]


def test_module_ended(default: CompiledMapping) -> None:
    fs, fp = run(default, event(event_type="module_ended", duration_ms=45_000, feature=None, count=None))
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "moduleEnd", "sessionId": "sess-1", "module": "reports", "timeSpent": 45_000}]
    assert fp == [{"event": "Module Ended", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1", "$insert_id": EVENT_ID,
        "module": "reports", "product": "app", "duration_ms": 45_000, "account_id": "acct-1"}}]


def test_session_synced(default: CompiledMapping) -> None:
    fs, fp = run(default, event(event_type="session_synced", duration_ms=600_000))
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "sessionSync", "sessionId": "sess-1", "activeDuration": 600_000}]
    assert fp == [{"event": "Session Synced", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1", "$insert_id": EVENT_ID,
        "duration_ms": 600_000, "account_id": "acct-1"}}]


def test_user_identified(default: CompiledMapping) -> None:
    user = {"email": "ada@example.com", "name": "Ada", "role": None, "created_at": 1_600_000_000_000,
            "attributes": {"tier": "gold", "name": "overridden by the named field"}}
    fs, fp = run(default, event(event_type="user_identified", user=user))
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "identifyUser", "sessionId": "sess-1",
                   "details": {"tier": "gold", "name": "Ada", "email": "ada@example.com",
                               "createdAt": 1_600_000_000_000}}]
    assert fp == [{"event": "$identify", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1", "$insert_id": EVENT_ID,
        "$user_props": {"tier": "gold", "name": "Ada", "email": "ada@example.com", "account_id": "acct-1",
                        "created_at": 1_600_000_000.0}}}]


def test_account_identified(default: CompiledMapping) -> None:
    account = {"name": "Acme", "plan": "enterprise", "mrr": 1234.5, "created_at": None,
               "attributes": {"region": "eu"}}
    fs, fp = run(default, event(event_type="account_identified", account=account))
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "identifyAccount", "sessionId": "sess-1",
                   "details": {"region": "eu", "name": "Acme", "plan": "enterprise", "mrr": 1234.5}}]
    assert fp == [{"event": "Account Identified", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1", "$insert_id": EVENT_ID,
        "account_id": "acct-1", "account_name": "Acme", "plan": "enterprise", "mrr": 1234.5}}]


def test_page_viewed_goes_to_freshpaint_only(default: CompiledMapping) -> None:
    record = event(event_type="page_viewed", feature=None, count=None,
                   properties={"url": "https://x/y", "token": "attacker", "distinct_id": "spoofed"})
    fs, fp = run(default, record)
    assert fs == []
    # Passed-through properties never override mapped ones, and never carry a token.
    assert fp == [{"event": "Page Viewed", "properties": {
        "url": "https://x/y", "distinct_id": "user-1", "time": 1_700_000_000.123, "$device_id": "dev-1",
        "$insert_id": EVENT_ID, "product": "app", "module": "reports", "account_id": "acct-1"}}]


def test_unknown_event_type_produces_nothing(default: CompiledMapping) -> None:
    assert run(default, event(event_type="something_new")) == ([], [])
    assert default.explain(event(event_type="something_new"), TOPIC, PARTITION, OFFSET) == []


def test_outputs_do_not_share_state_between_events(default: CompiledMapping) -> None:
    props = {"plan": "pro"}
    _, first = run(default, event(properties=props))
    first[0]["properties"]["mutated"] = True
    _, second = run(default, event(properties=props))
    assert "mutated" not in second[0]["properties"]
    assert props == {"plan": "pro"}


def test_explain_matches_the_map_functions(default: CompiledMapping) -> None:
    record = event(event_type="user_identified", user={"email": "e", "name": None, "role": None,
                                                       "created_at": None, "attributes": {}})
    fs, fp = run(default, record)
    explained = default.explain(record, TOPIC, PARTITION, OFFSET)
    assert explained == [("user-identified", "freshsuccess", fs[0]), ("user-identified", "freshpaint", fp[0])]


# ---------------------------------------------------------------------------------------------------------
# Runtime failures


def test_missing_required_field_names_rule_and_field(default: CompiledMapping) -> None:
    assert default.freshsuccess is not None
    with pytest.raises(MissingRequiredField) as caught:
        default.freshsuccess(event(feature=None), TOPIC, PARTITION, OFFSET)
    assert str(caught.value) == ("rule 'feature-used': freshsuccess output #1 (action 'feature'): "
                                 "required field 'feature' is missing (field 'feature' is null)")
    assert caught.value.reason == "missing_required_field"


def test_missing_duration_and_details_are_reported(default: CompiledMapping) -> None:
    assert default.freshsuccess is not None
    with pytest.raises(MissingRequiredField, match="'timeSpent' is missing"):
        default.freshsuccess(event(event_type="module_ended"), TOPIC, PARTITION, OFFSET)
    with pytest.raises(MissingRequiredField, match="'activeDuration' is missing"):
        default.freshsuccess(event(event_type="session_synced"), TOPIC, PARTITION, OFFSET)
    with pytest.raises(MissingRequiredField, match="'details' is missing"):
        default.freshsuccess(event(event_type="user_identified"), TOPIC, PARTITION, OFFSET)
    with pytest.raises(MissingRequiredField, match=r"rule 'account-identified'.*'details' is missing"):
        default.freshsuccess(event(event_type="account_identified"), TOPIC, PARTITION, OFFSET)


def test_missing_freshpaint_event_name() -> None:
    mapping = compile_text(HEADER + """\
  - name: named-by-feature
    freshpaint:
      - event: {template: "{feature} Used"}
""")
    assert mapping.freshpaint is not None
    with pytest.raises(MissingRequiredField) as caught:
        mapping.freshpaint(event(feature=None), TOPIC, PARTITION, OFFSET)
    assert str(caught.value) == ("rule 'named-by-feature': freshpaint output #1 (event): required field "
                                 "'event' is missing (a field used by the template is null)")


def test_value_that_does_not_convert_is_mapping_failed() -> None:
    mapping = compile_text(HEADER + """\
  - name: seats
    freshpaint:
      - event: Seats
        properties:
          seats: {field: properties.seats, convert: int}
""")
    assert mapping.freshpaint is not None
    out = mapping.freshpaint(event(properties={"seats": "12"}), TOPIC, PARTITION, OFFSET)
    assert out[0]["properties"]["seats"] == 12
    with pytest.raises(MappingFailed) as caught:
        mapping.freshpaint(event(properties={"seats": "a secret-ish value"}), TOPIC, PARTITION, OFFSET)
    message = str(caught.value)
    assert message == ("rule 'seats': freshpaint output #1 (event): property 'seats': cannot apply convert "
                       "'int' to a str value: not a number")
    assert "secret" not in message
    assert caught.value.reason == "mapping_failed"


# ---------------------------------------------------------------------------------------------------------
# Values: fields, consts, templates, defaults, objects, converts


def test_values_consts_templates_defaults_and_objects() -> None:
    mapping = compile_text(HEADER + """\
  - name: values
    freshpaint:
      - event: {template: "{feature} in {module} {{literal}}"}
        properties:
          bare: 7
          quoted: {const: "{not a template}"}
          obj_const: {const: {a: [1, 2]}}
          from_map: {field: properties.plan}
          missing_key: {field: properties.absent}
          with_default: {field: properties.absent, default: "plan-{feature}"}
          default_number: {field: count, default: 1}
          null_template: {template: "{product}/{module}"}
          nested:
            object:
              feature: {field: feature}
              none: {field: product}
              inner: {object: {n: {const: 1}}}
          only_nulls: {object: {a: {field: product}}}
""")
    _, fp = run(mapping, event(product=None, count=None, properties={"plan": "pro"}))
    assert fp == [{"event": "export in reports {literal}", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$insert_id": EVENT_ID,
        "bare": 7, "quoted": "{not a template}", "obj_const": {"a": [1, 2]}, "from_map": "pro",
        "with_default": "plan-export", "default_number": 1,
        "nested": {"feature": "export", "inner": {"n": 1}}}}]
    # Constant objects are copied per event, not shared.
    _, again = run(mapping, event(product=None, count=None))
    assert again[0]["properties"]["obj_const"] is not fp[0]["properties"]["obj_const"]


@pytest.mark.parametrize(("convert", "field", "value", "expected"), [
    ("epoch_ms", "occurred_at", 1_700_000_000_123, 1_700_000_000_123),
    ("epoch_ms_to_s", "occurred_at", 1_700_000_000_123, 1_700_000_000.123),
    ("epoch_ms_to_s", "occurred_at", 1_700_000_000_005, 1_700_000_000.005),
    ("ms_to_s", "duration_ms", 1500, 1.5),
    ("s_to_ms", "account.mrr", 1.2346, 1235),
    ("string", "count", 42, "42"),
    ("string", "account.mrr", 2.5, "2.5"),
    ("int", "properties.n", "42", 42),
    ("int", "properties.n", "42.0", 42),
    ("int", "account.mrr", 9.99, 9),
    ("float", "properties.n", "2.5", 2.5),
    ("float", "count", 3, 3.0),
    ("bool", "properties.n", "Yes", True),
    ("bool", "properties.n", "0", False),
    ("bool", "count", 1, True),
])
def test_converts(convert: str, field: str, value: Any, expected: Any) -> None:
    mapping = compile_text(HEADER + f"""\
  - name: c
    freshpaint:
      - event: E
        properties:
          out: {{field: {field}, convert: {convert}}}
""")
    record = event(occurred_at=value if field == "occurred_at" else 1_700_000_000_000)
    top, _, rest = field.partition(".")
    if rest:
        record[top] = {"n": value} if top == "properties" else {"mrr": value, "name": None, "plan": None,
                                                                 "created_at": None, "attributes": {}}
    else:
        record[top] = value
    _, fp = run(mapping, record)
    result = fp[0]["properties"]["out"]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("convert", "value"), [
    ("int", "abc"), ("int", "1.5"), ("float", "nan"), ("float", "x"), ("bool", "maybe"), ("bool", "2"),
])
def test_converts_that_fail(convert: str, value: str) -> None:
    mapping = compile_text(HEADER + f"""\
  - name: c
    freshpaint:
      - event: E
        properties:
          out: {{field: properties.n, convert: {convert}}}
""")
    with pytest.raises(MappingFailed, match=f"rule 'c'.*property 'out'.*convert '{convert}'"):
        run(mapping, event(properties={"n": value}))


def test_constants_are_converted_once_at_compile_time() -> None:
    mapping = compile_text(HEADER + """\
  - name: c
    freshpaint:
      - event: E
        properties:
          n: {const: "17", convert: int}
""")
    assert "_cv_int" not in mapping.python_source
    assert run(mapping, event())[1][0]["properties"]["n"] == 17


def test_integrations_and_identify() -> None:
    mapping = compile_text(HEADER + """\
  - name: routed
    freshpaint:
      - event: Routed
        integrations: {All: false, Mixpanel: true}
      - identify: true
        user_props: {field: properties}
""")
    _, fp = run(mapping, event(properties={"plan": "pro"}))
    assert fp[0] == {"event": "Routed", "properties": {
        "distinct_id": "user-1", "time": 1_700_000_000.123, "$insert_id": EVENT_ID,
        "$options": {"integrations": {"All": False, "Mixpanel": True}}}}
    assert fp[1]["event"] == "$identify"
    assert fp[1]["properties"]["$user_props"] == {"plan": "pro"}


def test_outputs_may_override_defaults() -> None:
    mapping = compile_text(HEADER + """\
  - name: override
    freshsuccess:
      - action: sessionSync
        fields:
          sessionId: {const: fixed}
          activeDuration: {field: duration_ms, default: 0}
    freshpaint:
      - event: E
        properties:
          distinct_id: {field: account_id}
""")
    fs, fp = run(mapping, event())
    assert fs == [{"accountId": "acct-1", "userId": "user-1", "createdAt": 1_700_000_000_123,
                   "action": "sessionSync", "sessionId": "fixed", "activeDuration": 0}]
    assert fp[0]["properties"]["distinct_id"] == "acct-1"


def test_generated_code_carries_hostile_text_as_data_only() -> None:
    hostile = "x'); import os; os.system('false') #\n\"{{"
    name, text, template = json.dumps(hostile), json.dumps(hostile), json.dumps(hostile + "{feature}")
    mapping = compile_text(HEADER + f"""\
  - name: {name}
    freshpaint:
      - event: {text}
        properties:
          {text}: {{template: {json.dumps(hostile.replace("{", "{{") + "{feature}")}}}
          "__import__('os')": {{field: [properties, {text}]}}
""")
    del template
    _, fp = run(mapping, event(properties={hostile: "v"}))
    assert fp[0]["event"] == hostile
    assert fp[0]["properties"][hostile] == hostile + "export"
    assert fp[0]["properties"]["__import__('os')"] == "v"
    assert mapping.rule_names == (hostile,)


# ---------------------------------------------------------------------------------------------------------
# Rules and predicates


def test_all_matching_rules_fire_in_file_order_with_distinct_insert_ids() -> None:
    mapping = compile_text(HEADER + """\
  - name: everything
    freshpaint:
      - event: Any Event
  - name: features
    when: {event_type: feature_used}
    freshpaint:
      - event: First
      - event: Second
  - name: pro-plan
    when: {properties.plan: pro}
    freshpaint:
      - event: Pro
""")
    _, fp = run(mapping, event(properties={"plan": "pro"}))
    assert [o["event"] for o in fp] == ["Any Event", "First", "Second", "Pro"]
    ids = [o["properties"]["$insert_id"] for o in fp]
    assert ids[0] == EVENT_ID
    assert len(set(ids)) == 4
    assert all(INSERT_ID_RE.fullmatch(i) for i in ids)
    assert [o["properties"]["$insert_id"] for o in run(mapping, event(properties={"plan": "pro"}))[1]] == ids
    explained = mapping.explain(event(properties={"plan": "pro"}), TOPIC, PARTITION, OFFSET)
    assert [(rule, dest, out) for rule, dest, out in explained] == [
        ("everything", "freshpaint", fp[0]), ("features", "freshpaint", fp[1]),
        ("features", "freshpaint", fp[2]), ("pro-plan", "freshpaint", fp[3])]
    _, other = run(mapping, event(event_type="page_viewed"))
    assert [o["event"] for o in other] == ["Any Event"]


@pytest.mark.parametrize(("when", "matching", "not_matching"), [
    ("{event_type: [feature_used, page_viewed]}", {"event_type": "page_viewed"}, {"event_type": "x"}),
    ("{field: event_type, in: [a, b]}", {"event_type": "b"}, {"event_type": "c"}),
    ("{field: event_type, not_in: [a, b]}", {"event_type": "c"}, {"event_type": "a"}),
    ("{field: event_type, ne: a}", {"event_type": "b"}, {"event_type": "a"}),
    ("{field: count, gt: 5}", {"count": 6}, {"count": 5}),
    ("{field: count, ge: 5}", {"count": 5}, {"count": None}),
    ("{field: count, lt: 5}", {"count": 4}, {"count": 5}),
    ("{field: count, le: 5}", {"count": 5}, {"count": 6}),
    ("{field: account.mrr, gt: 100}", {"account": {"mrr": 100.5}}, {"account": None}),
    ("{field: properties.plan, exists: true}", {"properties": {"plan": "x"}}, {"properties": {}}),
    ("{field: properties.plan, exists: false}", {"properties": {}}, {"properties": {"plan": "x"}}),
    ("{field: product, not_null: true}", {"product": "p"}, {"product": None}),
    ("{field: product, eq: null}", {"product": None}, {"product": "p"}),
    ("{all: [{event_type: a}, {module: m}]}", {"event_type": "a", "module": "m"},
     {"event_type": "a", "module": "n"}),
    ("{any: [{event_type: a}, {module: m}]}", {"event_type": "b", "module": "m"},
     {"event_type": "b", "module": "n"}),
    ("{not: {event_type: a}}", {"event_type": "b"}, {"event_type": "a"}),
    ("{event_type: a, module: m}", {"event_type": "a", "module": "m"}, {"event_type": "b", "module": "m"}),
])
def test_predicates(when: str, matching: dict[str, Any], not_matching: dict[str, Any]) -> None:
    mapping = compile_text(HEADER + f"""\
  - name: p
    when: {when}
    freshpaint:
      - event: Hit
""")
    assert [o["event"] for o in run(mapping, event(**matching))[1]] == ["Hit"]
    assert run(mapping, event(**not_matching))[1] == []
    assert len(mapping.explain(event(**matching), TOPIC, PARTITION, OFFSET)) == 1
    assert mapping.explain(event(**not_matching), TOPIC, PARTITION, OFFSET) == []


def test_mapping_without_freshsuccess_rules_has_no_freshsuccess_function() -> None:
    mapping = compile_text(HEADER + "  - name: fp-only\n    freshpaint: [{event: E}]\n")
    assert mapping.freshsuccess is None
    assert mapping.freshpaint is not None


# ---------------------------------------------------------------------------------------------------------
# $insert_id


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.text(), st.integers()), st.integers(0, 10))
def test_insert_id_is_short_safe_and_deterministic(event_id: Any, outputs: int) -> None:
    ids = [insert_id(event_id, TOPIC, PARTITION, OFFSET, i) for i in range(outputs + 1)]
    assert all(INSERT_ID_RE.fullmatch(i) for i in ids)
    assert ids == [insert_id(event_id, TOPIC, PARTITION, OFFSET, i) for i in range(outputs + 1)]
    assert len(set(ids)) == len(ids)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.text(min_size=1))
def test_different_event_ids_give_different_insert_ids(a: str, b: str) -> None:
    if a != b:
        assert insert_id_base(a, TOPIC, 0, 0) != insert_id_base(b, TOPIC, 0, 0)


def test_insert_id_rules() -> None:
    assert insert_id_base(EVENT_ID, TOPIC, 0, 0) == EVENT_ID  # already valid: as is
    assert insert_id_base("order-17", TOPIC, 0, 0) == "order-17"
    long_id = "x" * 37
    assert insert_id_base(long_id, TOPIC, 0, 0) == str(uuid.uuid5(INSERT_ID_NAMESPACE, f"event_id:37:{long_id}#0"))
    assert insert_id_base("a b", TOPIC, 0, 0) == str(uuid.uuid5(INSERT_ID_NAMESPACE, "event_id:3:a b#0"))
    assert insert_id_base(12345, TOPIC, 0, 0) == "12345"
    # No usable event_id: from where the event sits in Kafka (the topic name length-prefixed).
    from_offset = str(uuid.uuid5(INSERT_ID_NAMESPACE, f"kafka:{len(TOPIC)}:{TOPIC}:3:99#0"))
    assert insert_id_base("", TOPIC, 3, 99) == from_offset
    assert insert_id_base(None, TOPIC, 3, 99) == from_offset
    assert insert_id_base(None, TOPIC, 3, 100) != from_offset
    # Later outputs of the same event: uuid5 of the event_id (length-prefixed) and the index.
    assert insert_id(EVENT_ID, TOPIC, 0, 0, 2) == str(uuid.uuid5(INSERT_ID_NAMESPACE, f"event_id:36:{EVENT_ID}#2"))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fast_uuid5_matches_uuid_module(name: str) -> None:
    text = name + " "
    expected = str(uuid.uuid5(INSERT_ID_NAMESPACE, f"event_id:{len(text)}:{text}#0"))
    assert insert_id_base(text, TOPIC, 0, 0) == expected


def test_insert_id_from_offset_in_compiled_mapping(default: CompiledMapping) -> None:
    assert default.freshpaint is not None
    out = default.freshpaint(event(event_id=""), TOPIC, 7, 42)
    assert out[0]["properties"]["$insert_id"] == str(uuid.uuid5(INSERT_ID_NAMESPACE,
                                                                f"kafka:{len(TOPIC)}:{TOPIC}:7:42#0"))


# ---------------------------------------------------------------------------------------------------------
# Any event through the default mapping: either a clean output or an EventError, never a crash


_maybe_text = st.one_of(st.none(), st.text(max_size=12))
_maybe_long = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
_string_map = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
_records = st.fixed_dictionaries({
    "event_id": st.text(max_size=40),
    "event_type": st.sampled_from(["feature_used", "module_ended", "session_synced", "user_identified",
                                   "account_identified", "page_viewed", "other"]),
    "occurred_at": st.integers(0, 2**53),
    "account_id": st.text(max_size=12), "user_id": st.text(max_size=12),
    "session_id": _maybe_text, "device_id": _maybe_text, "product": _maybe_text, "module": _maybe_text,
    "feature": _maybe_text, "duration_ms": _maybe_long, "count": _maybe_long,
    "user": st.one_of(st.none(), st.fixed_dictionaries({
        "email": _maybe_text, "name": _maybe_text, "role": _maybe_text, "created_at": _maybe_long,
        "attributes": _string_map})),
    "account": st.one_of(st.none(), st.fixed_dictionaries({
        "name": _maybe_text, "plan": _maybe_text,
        "mrr": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        "created_at": _maybe_long, "attributes": _string_map})),
    "properties": _string_map,
})


def _has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_none(v) for v in value.values())
    return False


@settings(max_examples=300, deadline=None)
@given(_records, st.integers(0, 2**31))
def test_any_event_maps_cleanly_or_raises_an_event_error(default: CompiledMapping, record: dict[str, Any],
                                                         offset: int) -> None:
    for fn in (default.freshsuccess, default.freshpaint):
        assert fn is not None
        try:
            outputs = fn(record, TOPIC, 0, offset)
        except EventError:
            continue
        for out in outputs:
            assert not _has_none(out)
            if "action" in out:
                assert out["createdAt"] == record["occurred_at"]
                assert {"accountId", "userId", "createdAt", "action", "sessionId"} <= set(out)
            else:
                assert "token" not in out["properties"]
                assert out["properties"]["time"] == record["occurred_at"] / 1000
                assert INSERT_ID_RE.fullmatch(out["properties"]["$insert_id"])
        json.dumps(outputs)


# ---------------------------------------------------------------------------------------------------------
# Validation at compile time


def test_validation_reports_every_problem_with_file_line_and_rule() -> None:
    problems = problems_of("""\
version: 1
defaults:
  freshsuccess:
    accountId: {field: acount_id}
    userId: {field: user_id}
    createdAt: {field: occurred_at, convert: epoch_ms}
  freshpaint:
    distinct_id: {field: user_id}
    time: {field: occurred_at, convert: epoch_ms_to_s}
rules:
  - name: features
    when: {event_type: feature_used}
    freshsuccess:
      - action: feature
        fields:
          feature: {field: feature, convert: epoch_ms_to_s}
          module: {field: user}
          total: {field: count, convert: percent}
  - name: identify
    freshsuccess:
      - action: identifyUsr
    freshpaint:
      - event: Identified
        properties:
          email: {field: user.emial}
""")
    assert problems == [
        "m.yaml:4: defaults.freshsuccess.accountId.field: unknown field 'acount_id' (did you mean 'account_id'?)",
        "m.yaml:14: rule 'features': freshsuccess[0]: action 'feature' requires 'sessionId', but neither this "
        "output's fields nor defaults.freshsuccess map it to a value",
        "m.yaml:16: rule 'features': freshsuccess[0].fields.feature.convert: convert 'epoch_ms_to_s' cannot "
        "apply to field 'feature' (null | string), which gives a string",
        "m.yaml:17: rule 'features': freshsuccess[0].fields.module: 'module' takes a string, but field 'user' "
        "(null | record UserProfile) gives an object",
        "m.yaml:18: rule 'features': freshsuccess[0].fields.total.convert: unknown convert 'percent' "
        "(one of: epoch_ms, epoch_ms_to_s, ms_to_s, s_to_ms, string, int, float, bool, base64, hex)",
        "m.yaml:21: rule 'identify': freshsuccess[0].action: unknown action 'identifyUsr' "
        "(did you mean 'identifyUser'?)",
        "m.yaml:25: rule 'identify': freshpaint[0].properties.email.field: unknown field 'user.emial' in "
        "'user' (did you mean 'user.email'?)",
    ]


def test_unknown_keys_are_rejected_everywhere() -> None:
    problems = problems_of("""\
version: 1
defualts: {}
rules:
  - name: r
    wen: {event_type: a}
    freshpaint:
      - evnt: X
        event: Y
        properties:
          p: {feild: feature}
          distinct_id: {field: user_id}
          time: {field: occurred_at, convert: epoch_ms_to_s, defualt: 0}
""")
    assert problems == [
        "m.yaml:2: defualts: unknown key 'defualts' (did you mean 'defaults'?)",
        "m.yaml:5: rule 'r': wen: unknown key 'wen' (did you mean 'when'?)",
        "m.yaml:7: rule 'r': freshpaint[0].evnt: unknown key 'evnt' (did you mean 'event'?)",
        "m.yaml:10: rule 'r': freshpaint[0].properties.p.feild: unknown key 'feild' (did you mean 'field'?)",
        "m.yaml:12: rule 'r': freshpaint[0].properties.time.defualt: unknown key 'defualt' "
        "(did you mean 'default'?)",
    ]


def test_required_fields_must_be_mapped() -> None:
    problems = problems_of("""\
version: 1
rules:
  - name: bare
    freshsuccess:
      - action: moduleEnd
        fields: {module: {field: module}}
    freshpaint:
      - event: E
""")
    assert problems == [
        "m.yaml:5: rule 'bare': freshsuccess[0]: action 'moduleEnd' requires 'accountId', but neither this "
        "output's fields nor defaults.freshsuccess map it to a value",
        "m.yaml:5: rule 'bare': freshsuccess[0]: action 'moduleEnd' requires 'userId', but neither this "
        "output's fields nor defaults.freshsuccess map it to a value",
        "m.yaml:5: rule 'bare': freshsuccess[0]: action 'moduleEnd' requires 'createdAt', but neither this "
        "output's fields nor defaults.freshsuccess map it to a value",
        "m.yaml:5: rule 'bare': freshsuccess[0]: action 'moduleEnd' requires 'sessionId', but neither this "
        "output's fields nor defaults.freshsuccess map it to a value",
        "m.yaml:5: rule 'bare': freshsuccess[0]: action 'moduleEnd' requires 'timeSpent', but this output's "
        "fields do not map it to a value",
        "m.yaml:8: rule 'bare': freshpaint[0]: Freshpaint requires property 'distinct_id', but neither this "
        "output's properties nor defaults.freshpaint map it to a value",
        "m.yaml:8: rule 'bare': freshpaint[0]: Freshpaint requires property 'time', but neither this "
        "output's properties nor defaults.freshpaint map it to a value",
    ]


def test_nullable_field_into_required_slot_compiles_and_is_checked_per_event() -> None:
    mapping = compile_text(HEADER + """\
  - name: spent
    freshsuccess:
      - action: moduleEnd
        fields:
          module: {field: module}
          timeSpent: {field: duration_ms}
""")
    assert mapping.freshsuccess is not None
    with pytest.raises(MissingRequiredField, match=r"rule 'spent'.*'module' is missing"):
        mapping.freshsuccess(event(module=None, duration_ms=5), TOPIC, PARTITION, OFFSET)


@pytest.mark.parametrize(("snippet", "message"), [
    ("time: {field: occurred_at}",
     "'time' is in epoch seconds, but field 'occurred_at' (long (timestamp-millis)) holds milliseconds; "
     "add 'convert: epoch_ms_to_s'"),
    ("n: {field: user}", None),  # an object is a fine custom property
    ("n: {field: count, convert: epoch_ms_to_s, default: soon}",
     "convert 'epoch_ms_to_s' cannot apply to its default (the text 'soon'), which gives a string"),
    ("token: abc", "'token' cannot be mapped: the Freshpaint sink adds the environment token itself"),
    ("n: 2024-01-01", "the constant is a date/time, which JSON cannot carry; quote it to make it a string"),
    ("n: {template: \"{feature\"}", "bad template '{feature': unclosed '{' at position 0"),
    ("n: {field: properties.plan.deeper}", "'properties.plan' is string; there is nothing inside it"),
    ("$device_id: {field: count}", "'$device_id' takes a string, but field 'count' (null | long) gives "
                                   "an integer; add 'convert: string'"),
    ("n: {const: x, convert: int}", "cannot apply convert 'int' to a str value: not a number"),
    ("n: {field: feature, template: x}", "a value takes exactly one of field, const, template, object, "
                                         "insert_id; this one has field, template"),
    ("n: [1, 2]", "a list is not a value expression"),
    ("n: {insert_id: true, default: x}", "insert_id takes neither 'default' nor 'convert'"),
])
def test_value_problems(snippet: str, message: str | None) -> None:
    text = HEADER + f"""\
  - name: r
    freshpaint:
      - event: E
        properties:
          {snippet}
"""
    if message is None:
        compile_text(text)
        return
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith("m.yaml:17: rule 'r': freshpaint[0].properties.")
    assert message in problems[0]


@pytest.mark.parametrize(("when", "message"), [
    ("{event_type: yes}", "field 'event_type' is string, but True is a boolean; this never matches "
                          "(quote it to compare text)"),
    ("{evnt_type: a}", "unknown field 'evnt_type' (did you mean 'event_type'?)"),
    ("{field: count, gt: a}", "field 'count' is null | long, but 'a' is a string; this never matches"),
    ("{field: user, eq: x}", "field 'user' is null | record UserProfile, which conditions cannot compare"),
    ("{field: account_id, eq: null}", "field 'account_id' is never null, so comparing it with null never matches"),
    ("{all: {event_type: a}}", "all must be a list"),
    ("{any: [], event_type: a}", "'any' must stand alone in its mapping"),
    ("{field: count, in: 5}", "'in' takes a non-empty list"),
    ("{field: count, gt: 1, lt: 5}", "a condition with 'field' takes exactly one of"),
    ("{field: product, exists: maybe}", "'exists' takes true or false"),
])
def test_predicate_problems(when: str, message: str) -> None:
    problems = problems_of(HEADER + f"""\
  - name: r
    when: {when}
    freshpaint: [{{event: E}}]
""")
    assert len(problems) == 1, problems
    assert problems[0].startswith("m.yaml:14: rule 'r': when")
    assert message in problems[0]


def test_structure_problems() -> None:
    assert problems_of("") == ["m.yaml: the mapping file is empty"]
    assert problems_of("version: 2\nrules: []\n") == [
        "m.yaml:1: version: unsupported version 2 (supported: (1,))",
        "m.yaml:2: rules: there are no rules: every event would be skipped",
    ]
    assert problems_of(HEADER + "  - name: a\n    freshpaint: {event: E}\n") == [
        "m.yaml:14: rule 'a': freshpaint: freshpaint must be a list (start each item with '- '), not a mapping",
    ]
    assert problems_of(HEADER + "  - name: a\n    when: {event_type: a}\n") == [
        "m.yaml:13: rule 'a': the rule has no outputs: give it 'freshsuccess:' and/or 'freshpaint:' items",
    ]
    duplicated = problems_of(HEADER + "  - name: a\n    freshpaint: [{event: E}]\n"
                                      "  - name: a\n    freshpaint: [{event: E}]\n")
    assert duplicated == ["m.yaml:15: rule 'a': name: another rule is already named 'a'; names must be unique"]
    unnamed = problems_of(HEADER + "  - freshpaint: [{event: E}]\n")
    assert unnamed == ["m.yaml:13: rule #1 (unnamed): every rule needs a 'name' (a non-empty string)"]


def test_identify_and_event_are_exclusive_and_user_props_needs_identify() -> None:
    problems = problems_of(HEADER + """\
  - name: r
    freshpaint:
      - identify: true
        event: X
      - event: Y
        user_props: {field: user}
""")
    assert problems == [
        "m.yaml:15: rule 'r': freshpaint[0]: 'identify: true' needs 'user_props:' (the user properties $identify "
        "attaches); without them Freshpaint has nothing to do",
        "m.yaml:16: rule 'r': freshpaint[0].event: give either 'event:' or 'identify: true', not both",
        "m.yaml:18: rule 'r': freshpaint[1].user_props: user_props only goes with 'identify: true'",
    ]


def test_unsafe_yaml_and_missing_files_are_mapping_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("version: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(MappingInvalid, match="could not determine a constructor"):
        load_mapping(bad, SCHEMA)
    with pytest.raises(MappingInvalid, match="cannot read file"):
        load_mapping(tmp_path / "absent.yaml", SCHEMA)
    dup = tmp_path / "dup.yaml"
    dup.write_text("version: 1\nversion: 1\n", encoding="utf-8")
    with pytest.raises(MappingInvalid) as caught:
        load_mapping(dup, SCHEMA)
    assert caught.value.problems == [f"{dup}:2: version: duplicate key 'version' (first defined on line 1)"]
