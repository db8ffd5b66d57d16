"""``usage-consumer map``: the exact requests each sample would become, and why others would not be sent.

The expected outputs are the worked examples of docs/mapping.md, written out, not computed by the mapping.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
import structlog

from consumer.cli import main
from consumer.decoding.schemas import default_reader_schema_path, load_schema
from consumer.sinks.compress import compress

AUTH_KEY = "auth-4f1d-secret"
API_KEY = "api-77c2-secret"
TOKEN = "token-9a0e-secret"

BASE = {"event_id": "3f1e7c52-8a4b-4c1e-9d2f-0a1b2c3d4e5f", "event_type": "feature_used",
        "occurred_at": 1700000000123, "account_id": "acct-1", "user_id": "user-1", "session_id": "sess-1",
        "device_id": "dev-1", "product": "app", "module": "reports", "feature": "export"}
FS_BASE = {"accountId": "acct-1", "userId": "user-1", "createdAt": 1700000000123}
INSERT_ID = BASE["event_id"]


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FRESHSUCCESS_AUTH_KEY", AUTH_KEY)
    monkeypatch.setenv("FRESHSUCCESS_API_KEY", API_KEY)
    monkeypatch.setenv("FRESHPAINT_TOKEN", TOKEN)
    yield
    structlog.reset_defaults()


def event(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def run_map(tmp_path: Path, capsys: pytest.CaptureFixture[str], events: list[dict[str, Any]],
            *extra: str, config: str = "") -> tuple[int, str]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(e) + "\n" for e in events))
    args = ["map", str(samples), *extra]
    if config:
        path = tmp_path / "config.yaml"
        path.write_text(config)
        args += ["--config", str(path)]
    code = main(args)
    out = capsys.readouterr().out
    assert AUTH_KEY not in out
    assert API_KEY not in out
    assert TOKEN not in out
    return code, out


def plan_of(tmp_path: Path, capsys: pytest.CaptureFixture[str], sample: dict[str, Any], *extra: str,
            config: str = "") -> dict[str, Any]:
    code, out = run_map(tmp_path, capsys, [sample], "--json", *extra, config=config)
    assert code == 0
    plans: list[dict[str, Any]] = json.loads(out)["events"]
    assert len(plans) == 1
    return plans[0]


def freshsuccess_lines(plan: dict[str, Any]) -> list[dict[str, Any]]:
    fs = plan["destinations"]["freshsuccess"]
    assert fs["outcome"] == "send"
    [request] = fs["requests"]
    assert request["method"] == "POST"
    assert request["url"] == "https://events-us.freshsuccess.com/v1/***/***"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Content-Encoding"] == "gzip"
    body = request["body"]
    assert body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


def freshpaint_bodies(plan: dict[str, Any]) -> list[dict[str, Any]]:
    fp = plan["destinations"]["freshpaint"]
    assert fp["outcome"] == "send"
    bodies = []
    for request in fp["requests"]:
        assert (request["method"], request["url"]) == ("POST", "https://api.perfalytics.com/track")
        assert request["headers"]["Content-Type"] == "application/json"
        body = json.loads(request["body"])
        assert body["properties"]["token"] == "***"
        # the real request carries the real token: its length is what Content-Length counts
        real = orjson.dumps({**body, "properties": {**body["properties"], "token": TOKEN}})
        assert request["headers"]["Content-Length"] == str(len(real))
        bodies.append(body)
    return bodies


def test_feature_used_becomes_a_feature_action_and_a_track_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_of(tmp_path, capsys, event(count=None, properties={"plan": "pro"}))
    assert plan["rules"] == ["feature-used"]
    assert freshsuccess_lines(plan) == [{**FS_BASE, "action": "feature", "sessionId": "sess-1", "feature": "export",
                                         "module": "reports", "total": 1, "product": "app"}]
    assert freshpaint_bodies(plan) == [{"event": "Feature Used", "properties": {
        "plan": "pro", "distinct_id": "user-1", "time": 1700000000.123, "$insert_id": INSERT_ID, "count": 1,
        "$device_id": "dev-1", "feature": "export", "module": "reports", "product": "app", "account_id": "acct-1",
        "token": "***"}}]
    fs_request = plan["destinations"]["freshsuccess"]["requests"][0]
    sent = compress(fs_request["body"].encode(), "gzip", 1)  # what the sink would put on the wire
    assert gzip.decompress(sent).decode() == fs_request["body"]
    assert fs_request["headers"]["Content-Length"] == str(len(sent))
    assert plan["destinations"]["freshsuccess"]["outputs"][0]["rule"] == "feature-used"


def test_module_ended_becomes_a_module_end_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(tmp_path, capsys, event(event_type="module_ended", duration_ms=45000, feature=None))
    assert freshsuccess_lines(plan) == [{**FS_BASE, "action": "moduleEnd", "sessionId": "sess-1",
                                         "module": "reports", "timeSpent": 45000}]
    assert freshpaint_bodies(plan)[0]["event"] == "Module Ended"


def test_session_synced_uses_the_user_id_when_there_is_no_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_of(tmp_path, capsys, event(event_type="session_synced", duration_ms=600000, session_id=None,
                                           product=None, module=None, feature=None))
    assert freshsuccess_lines(plan) == [{**FS_BASE, "action": "sessionSync", "sessionId": "user-1",
                                         "activeDuration": 600000}]


def test_user_identified_becomes_identify_user_and_a_freshpaint_identify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = {"email": "ada@example.com", "name": "Ada", "role": None, "created_at": 1600000000000,
            "attributes": {"tier": "gold"}}
    plan = plan_of(tmp_path, capsys, event(event_type="user_identified", product=None, module=None, feature=None,
                                           user=user))
    assert freshsuccess_lines(plan) == [{**FS_BASE, "action": "identifyUser", "sessionId": "sess-1", "details": {
        "tier": "gold", "name": "Ada", "email": "ada@example.com", "createdAt": 1600000000000}}]
    assert freshpaint_bodies(plan) == [{"event": "$identify", "properties": {
        "distinct_id": "user-1", "time": 1700000000.123, "$insert_id": INSERT_ID, "$device_id": "dev-1",
        "$user_props": {"tier": "gold", "name": "Ada", "email": "ada@example.com", "account_id": "acct-1",
                        "created_at": 1600000000.0},
        "token": "***"}}]


def test_account_identified_becomes_identify_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    account = {"name": "Acme", "plan": "enterprise", "mrr": 1234.5, "created_at": None,
               "attributes": {"region": "eu"}}
    plan = plan_of(tmp_path, capsys, event(event_type="account_identified", product=None, module=None,
                                           feature=None, account=account))
    assert freshsuccess_lines(plan) == [{**FS_BASE, "action": "identifyAccount", "sessionId": "sess-1", "details": {
        "region": "eu", "name": "Acme", "plan": "enterprise", "mrr": 1234.5}}]
    assert freshpaint_bodies(plan)[0]["event"] == "Account Identified"


def test_page_viewed_goes_to_freshpaint_only_with_an_insert_id_from_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = event(event_type="page_viewed", event_id="", device_id=None, module=None, feature=None,
                   properties={"url": "https://app.example.com/reports", "title": "Reports"})
    plan = plan_of(tmp_path, capsys, sample, "--partition", "3", "--offset", "12345")
    assert (plan["topic"], plan["partition"], plan["offset"]) == ("usage-events", 3, 12345)
    assert plan["destinations"]["freshsuccess"]["outcome"] == "skip"
    assert plan["destinations"]["freshsuccess"]["reason"] == "no_rule"
    assert freshpaint_bodies(plan) == [{"event": "Page Viewed", "properties": {
        "url": "https://app.example.com/reports", "title": "Reports", "distinct_id": "user-1",
        "time": 1700000000.123, "$insert_id": "e8934ee0-21d2-5225-a809-c1241e224c48", "product": "app",
        "account_id": "acct-1", "token": "***"}}]


def test_routing_and_several_outputs_name_their_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("""
version: 1
defaults:
  freshpaint:
    distinct_id: {field: user_id}
    time: {field: occurred_at, convert: epoch_ms_to_s}
    $insert_id: {insert_id: true}
    $device_id: {field: device_id}
rules:
  - name: exports-to-mixpanel
    when: {all: [{event_type: feature_used}, {field: feature, in: [export, export_pdf]}]}
    freshpaint:
      - event: {template: "{feature} Used"}
        integrations: {All: false, Mixpanel: true}
      - event: Export Audit
        properties:
          seats: {field: properties.seats, convert: int, default: 0}
""")
    plan = plan_of(tmp_path, capsys, event(properties={"seats": "12"}), config=f"mapping:\n  file: {mapping}\n")
    assert plan["destinations"]["freshsuccess"] == {
        "outcome": "off", "reason": "no_rules",
        "message": "the mapping has no freshsuccess outputs, so the freshsuccess lane does not run"}
    assert freshpaint_bodies(plan) == [
        {"event": "export Used", "properties": {"distinct_id": "user-1", "time": 1700000000.123,
                                                "$insert_id": INSERT_ID, "$device_id": "dev-1",
                                                "$options": {"integrations": {"All": False, "Mixpanel": True}},
                                                "token": "***"}},
        {"event": "Export Audit", "properties": {"distinct_id": "user-1", "time": 1700000000.123,
                                                 "$insert_id": "010c1efe-4474-5732-8fe0-64b5d73b226b",
                                                 "seats": 12, "$device_id": "dev-1", "token": "***"}}]
    rules = [r["rules"] for r in plan["destinations"]["freshpaint"]["requests"]]
    assert rules == [["exports-to-mixpanel"], ["exports-to-mixpanel"]]


def test_a_missing_required_field_dead_letters_one_destination_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_of(tmp_path, capsys, event(event_type="module_ended", duration_ms=None))
    fs = plan["destinations"]["freshsuccess"]
    assert fs["outcome"] == "dead_letter"
    assert fs["reason"] == "missing_required_field"
    assert "required field 'timeSpent' is missing (field 'duration_ms' is null)" in fs["message"]
    assert plan["destinations"]["freshpaint"]["outcome"] == "send"


def test_oversized_and_disabled_destinations_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = "decoding:\n  max_event_bytes: 64\nfreshpaint:\n  enabled: false\n"
    plan = plan_of(tmp_path, capsys, event(properties={"padding": "x" * 100}), config=config)
    assert plan["destinations"]["freshsuccess"]["outcome"] == "dead_letter"
    assert plan["destinations"]["freshsuccess"]["reason"] == "oversized"
    assert plan["destinations"]["freshpaint"] == {"outcome": "off", "reason": "disabled",
                                                  "message": "freshpaint.enabled is false"}


def test_the_human_output_shows_rules_requests_and_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_map(tmp_path, capsys, [event(), event(event_type="module_ended", duration_ms=None),
                                           event(event_type="something_else")])
    assert code == 0
    assert "rules matched: feature-used" in out
    assert "POST https://events-us.freshsuccess.com/v1/***/***" in out
    assert "POST https://api.perfalytics.com/track" in out
    assert "Content-Encoding: gzip" in out
    assert '| {"accountId":"acct-1","userId":"user-1","createdAt":1700000000123,"action":"feature"' in out
    assert '"token":"***"' in out
    assert "freshsuccess: dead-lettered [missing_required_field]: rule 'module-ended'" in out
    assert "freshpaint: skipped [no_rule]" in out
    assert "summary: 3 events" in out


def test_an_avro_container_file_gives_the_same_plan_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = load_schema(default_reader_schema_path())
    defaults = {f["name"]: f.get("default") for f in schema["fields"]}
    events = [event(properties={"plan": "pro"}), event(event_type="module_ended", duration_ms=5)]
    container = tmp_path / "events.avro"
    with container.open("wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(schema), [{**defaults, **e} for e in events], codec="deflate")
    assert main(["map", str(container), "--json"]) == 0
    from_avro = json.loads(capsys.readouterr().out)["events"]
    _code, out = run_map(tmp_path, capsys, events, "--json")
    from_json = json.loads(out)["events"]
    for plan in from_avro + from_json:
        del plan["source"]
    assert from_avro == from_json


def test_samples_that_are_not_events_are_reported_and_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = tmp_path / "bad.jsonl"
    samples.write_text('{"evnt_type": "x"}\nnot json\n{"event_id": 1}\n')
    assert main(["map", str(samples)]) == 1
    out = capsys.readouterr().out
    assert "not a usable sample: field(s) not in schema io.usageconsumer.events.UsageEvent: evnt_type" in out
    assert f"{samples}:2" in out
    assert "not JSON" in out
    assert "does not match schema" in out


def test_map_needs_samples_and_says_how(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["map"]) == 2
    assert "give sample files" in capsys.readouterr().err
