"""The destination emulators, exercised over real HTTP on loopback as the sinks will use them."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.testing.emulators import Emulators, Fault, check_event

AUTH_KEY = "auth-7f3c9e"
API_KEY = "api-19b2d4"
TOKEN = "2ce2b45b-af44-4426-a3ef-a314abce9c85"
REPO_ROOT = Path(__file__).resolve().parents[2]
NOW_MS = 1_700_000_000_123
NOW_S = 1_700_000_000.123


def fs_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"accountId": "acct-1", "userId": f"user-{i}", "createdAt": NOW_MS + i,
                             "action": "feature", "sessionId": "sess-1", "feature": "export", "module": "reports",
                             "total": 1}
    event.update(overrides)
    return event


def fp_event(**prop_overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"distinct_id": "user-1", "token": TOKEN, "time": NOW_S}
    props.update(prop_overrides)
    return {"event": "Feature Used", "properties": props}


def ndjson(events: list[Any], sep: bytes = b"\n") -> bytes:
    return sep.join(orjson.dumps(e) for e in events) + sep


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulators]:
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, record_dir=tmp_path / "rec") as emulators:
        yield emulators


@pytest.fixture(scope="module")
def shared_emu() -> Iterator[Emulators]:
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN) as emulators:
        yield emulators


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def post_fs(http: httpx.Client, emu: Emulators, body: bytes, headers: dict[str, str] | None = None,
            path: str | None = None) -> httpx.Response:
    url = emu.freshsuccess_url + (path or f"/v1/{AUTH_KEY}/{API_KEY}")
    return http.post(url, content=body, headers=headers if headers is not None else JSON_HEADERS)


def post_fp(http: httpx.Client, emu: Emulators, event: Any, headers: dict[str, str] | None = None
            ) -> httpx.Response:
    return http.post(emu.freshpaint_url + "/track", content=orjson.dumps(event),
                     headers=headers if headers is not None else JSON_HEADERS)


# ------------------------------------------------------------------------------------------ Freshsuccess


@pytest.mark.parametrize(("encoding", "encode"), [
    (None, lambda b: b),
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", raw_deflate),
    ("br", lambda b: b),  # any other value is plain JSON, as the seed says
])
@pytest.mark.parametrize("sep", [b"\n", b"\r\n"])
def test_freshsuccess_accepts_ndjson_and_records_it_exactly(emu, http, encoding, encode, sep):
    events = [fs_event(i) for i in range(5)]
    plain = ndjson(events, sep)
    body = encode(plain)
    headers = dict(JSON_HEADERS)
    if encoding:
        headers["Content-Encoding"] = encoding

    response = post_fs(http, emu, body, headers)

    assert response.status_code == 200
    assert response.content == b""
    assert emu.freshsuccess.events() == events
    [req] = emu.freshsuccess.requests()
    assert (req.method, req.path, req.status) == ("POST", "/v1/<authKey>/<apiKey>", 200)
    assert req.body == body
    assert req.decoded_body == plain
    assert req.headers["content-type"] == "application/json"
    assert emu.freshsuccess.violations() == []
    assert emu.freshsuccess.stats()["accepted"] == 5


def test_freshsuccess_ignores_blank_lines(emu, http):
    body = b"\n" + orjson.dumps(fs_event(1)) + b"\n   \n\r\n" + orjson.dumps(fs_event(2))
    assert post_fs(http, emu, body).status_code == 200
    assert emu.freshsuccess.events() == [fs_event(1), fs_event(2)]
    assert emu.freshsuccess.dropped() == []


def test_freshsuccess_json_array_body_is_a_violation_and_its_events_are_dropped(emu, http):
    events = [fs_event(1), fs_event(2)]
    response = post_fs(http, emu, orjson.dumps(events))
    assert response.status_code == 200  # the real server drops silently
    assert emu.freshsuccess.events() == []
    assert emu.freshsuccess.dropped() == [(events[0], "json_array_body"), (events[1], "json_array_body")]
    [violation] = emu.freshsuccess.violations()
    assert "JSON array" in violation
    assert emu.freshsuccess.stats()["violations"] == 1


@pytest.mark.parametrize("path", [
    f"/v1/{AUTH_KEY}/wrong", f"/v1/wrong/{API_KEY}", f"/v1/{API_KEY}/{AUTH_KEY}", f"/v2/{AUTH_KEY}/{API_KEY}",
    f"/v1/{AUTH_KEY}", "/"])
def test_freshsuccess_wrong_keys_or_path_answer_400_without_body(emu, http, path):
    response = post_fs(http, emu, ndjson([fs_event()]), path=path)
    assert response.status_code == 400
    assert response.content == b""
    assert emu.freshsuccess.events() == []
    assert emu.freshsuccess.stats()["rejected"] == 1
    [req] = emu.freshsuccess.requests()
    assert AUTH_KEY not in req.path
    assert API_KEY not in req.path


def test_freshsuccess_names_the_wrong_key_without_showing_it(emu, http):
    post_fs(http, emu, b"", path=f"/v1/{AUTH_KEY}/nope")
    assert emu.freshsuccess.requests()[0].path == "/v1/<authKey>/<wrong apiKey>"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/ping", f"/v1/{AUTH_KEY}/{API_KEY}"])
def test_freshsuccess_non_post_answers_400(emu, http, method, path):
    response = http.request(method, emu.freshsuccess_url + path)
    assert response.status_code == 400
    assert response.content == b""


def test_freshsuccess_ping(emu, http):
    response = http.post(emu.freshsuccess_url + "/v1/ping")
    assert response.status_code == 200
    assert response.content == b""
    assert emu.freshsuccess.requests()[0].path == "/v1/ping"


@pytest.mark.parametrize(("event", "reason"), [
    ([1, 2], "not_an_object"),
    ("text", "not_an_object"),
    ({k: v for k, v in fs_event().items() if k != "accountId"}, "missing_field:accountId"),
    (fs_event(userId=7), "wrong_type:userId"),
    (fs_event(accountId=""), "empty_field:accountId"),
    (fs_event(sessionId=None), "missing_field:sessionId"),
    ({k: v for k, v in fs_event().items() if k != "createdAt"}, "missing_field:createdAt"),
    (fs_event(createdAt="1700000000000"), "wrong_type:createdAt"),
    (fs_event(createdAt=True), "wrong_type:createdAt"),
    (fs_event(createdAt=1_700_000_000), "createdAt_in_seconds"),
    (fs_event(createdAt=1_700_000_000.5), "createdAt_in_seconds"),
    (fs_event(action="click"), "unknown_action:click"),
    (fs_event(action="Feature"), "unknown_action:Feature"),
    (fs_event(feature=None), "missing_field:feature"),
    (fs_event(module=3), "wrong_type:module"),
    (fs_event(total="1"), "wrong_type:total"),
    (fs_event(total=False), "wrong_type:total"),
    (fs_event(action="moduleEnd"), "missing_field:timeSpent"),
    (fs_event(action="sessionSync"), "missing_field:activeDuration"),
    (fs_event(action="sessionSync", activeDuration="5"), "wrong_type:activeDuration"),
    (fs_event(action="identifyUser"), "missing_field:details"),
    (fs_event(action="identifyAccount", details=[1]), "wrong_type:details"),
])
def test_freshsuccess_drops_invalid_events_with_a_reason(emu, http, event, reason):
    good = [fs_event(1), fs_event(2)]
    body = b"\n".join([orjson.dumps(good[0]), orjson.dumps(event), orjson.dumps(good[1])])
    response = post_fs(http, emu, body)
    assert response.status_code == 200
    assert emu.freshsuccess.events() == good
    assert emu.freshsuccess.dropped() == [(event, reason)]
    assert emu.freshsuccess.stats()["dropped"] == 1


@pytest.mark.parametrize("event", [
    fs_event(createdAt=NOW_MS + 0.5),
    fs_event(total=2.5, product="analytics"),
    fs_event(action="moduleEnd", timeSpent=1234),
    fs_event(action="sessionSync", activeDuration=60_000),
    fs_event(action="identifyUser", details={"name": "Ann", "email": "a@example.com"}),
    fs_event(action="identifyAccount", details={}),
])
def test_freshsuccess_accepts_each_action(emu, http, event):
    post_fs(http, emu, orjson.dumps(event))
    assert emu.freshsuccess.events() == [event]


def test_freshsuccess_drops_lines_that_are_not_json(emu, http):
    response = post_fs(http, emu, b'{"accountId": \n' + orjson.dumps(fs_event(1)))
    assert response.status_code == 200
    assert emu.freshsuccess.events() == [fs_event(1)]
    assert [reason for _, reason in emu.freshsuccess.dropped()] == ["invalid_json"]


def test_freshsuccess_corrupt_gzip_drops_the_batch_and_is_a_violation(emu, http):
    response = post_fs(http, emu, b"not gzip at all", {**JSON_HEADERS, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert emu.freshsuccess.events() == []
    assert [reason for _, reason in emu.freshsuccess.dropped()] == ["undecodable_body:gzip"]
    assert "gzip" in emu.freshsuccess.violations()[0]


def test_freshsuccess_missing_content_length_is_a_violation_but_still_processed(emu, http):
    body = ndjson([fs_event(1)])
    response = http.post(f"{emu.freshsuccess_url}/v1/{AUTH_KEY}/{API_KEY}", content=iter([body]),
                         headers=JSON_HEADERS)  # an iterator makes httpx send it chunked
    assert response.status_code == 200
    assert emu.freshsuccess.events() == [fs_event(1)]
    [violation] = emu.freshsuccess.violations()
    assert "Content-Length" in violation
    assert "chunked" in violation


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-ndjson"])
def test_freshsuccess_wrong_content_type_is_a_violation_but_still_processed(emu, http, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    post_fs(http, emu, ndjson([fs_event(1)]), headers)
    assert emu.freshsuccess.events() == [fs_event(1)]
    [violation] = emu.freshsuccess.violations()
    assert "Content-Type" in violation


def test_freshsuccess_accepts_content_type_with_charset(emu, http):
    post_fs(http, emu, ndjson([fs_event(1)]), {"Content-Type": "application/json; charset=utf-8"})
    assert emu.freshsuccess.violations() == []


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_details = st.dictionaries(st.text(max_size=10), _json_leaf, max_size=4)
_ids = st.text(min_size=1, max_size=30)
_valid_fs_events = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries({"accountId": _ids, "userId": _ids, "sessionId": st.text(max_size=30),
                           "createdAt": st.integers(10**11, 10**13)}),
    st.one_of(
        st.fixed_dictionaries({"action": st.just("feature"), "feature": st.text(), "module": st.text(),
                               "total": st.integers(0, 10**6)}),
        st.fixed_dictionaries({"action": st.just("moduleEnd"), "module": st.text(),
                               "timeSpent": st.floats(0, 1e9)}),
        st.fixed_dictionaries({"action": st.just("sessionSync"), "activeDuration": st.integers(0, 10**9)}),
        st.fixed_dictionaries({"action": st.sampled_from(["identifyUser", "identifyAccount"]),
                               "details": _details}),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_valid_fs_events, min_size=1, max_size=20),
       encoding=st.sampled_from(["gzip", "deflate", "identity"]))
def test_freshsuccess_property_valid_batches_arrive_exactly(shared_emu, events, encoding):
    shared_emu.freshsuccess.reset()
    plain = ndjson(events)
    body = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": lambda b: b}[encoding](plain)
    with httpx.Client() as client:
        response = client.post(f"{shared_emu.freshsuccess_url}/v1/{AUTH_KEY}/{API_KEY}", content=body,
                               headers={**JSON_HEADERS, "Content-Encoding": encoding})
    assert response.status_code == 200
    assert shared_emu.freshsuccess.events() == events
    assert shared_emu.freshsuccess.dropped() == []


@given(event=_valid_fs_events, data=st.data())
def test_check_event_property_every_base_and_action_field_is_required(event, data):
    assert check_event(event) is None
    field = data.draw(st.sampled_from(sorted(event)))
    broken = {k: v for k, v in event.items() if k != field}
    assert check_event(broken) == f"missing_field:{field}"


# ------------------------------------------------------------------------------------------- Freshpaint


def test_freshpaint_accepts_one_event(emu, http):
    event = fp_event(**{"$insert_id": "abc-123", "plan": "pro"})
    response = post_fp(http, emu, event)
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["content-type"].startswith("application/json")
    assert emu.freshpaint.events() == [event]
    [req] = emu.freshpaint.requests()
    assert (req.path, req.status, req.body) == ("/track", 200, orjson.dumps(event))


def test_freshpaint_accepts_gzip(emu, http):
    event = fp_event()
    response = http.post(emu.freshpaint_url + "/track", content=gzip.compress(orjson.dumps(event)),
                         headers={**JSON_HEADERS, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert emu.freshpaint.events() == [event]


@pytest.mark.parametrize(("event", "field"), [
    ({"properties": fp_event()["properties"]}, "event"),
    ({"event": "", "properties": fp_event()["properties"]}, "event"),
    ({"event": 5, "properties": fp_event()["properties"]}, "event"),
    ({"event": "x"}, "properties"),
    ({"event": "x", "properties": []}, "properties"),
    (fp_event(distinct_id=None), "properties.distinct_id"),
    (fp_event(distinct_id=42), "properties.distinct_id"),
    (fp_event(token=None), "properties.token"),
    (fp_event(time=None), "properties.time"),
    (fp_event(time="1577836800"), "properties.time"),
    (fp_event(time=True), "properties.time"),
])
def test_freshpaint_missing_or_invalid_required_field_answers_400_naming_it(emu, http, event, field):
    response = post_fp(http, emu, event)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert emu.freshpaint.events() == []
    assert emu.freshpaint.stats()["rejected"] == 1
    assert len(emu.freshpaint.dropped()) == 1


def test_freshpaint_wrong_token_answers_401(emu, http):
    response = post_fp(http, emu, fp_event(token="someone-else"))
    assert response.status_code == 401
    assert response.json()["field"] == "properties.token"
    assert emu.freshpaint.dropped()[0][1] == "bad_token"


def test_freshpaint_bad_token_status_is_configurable(http):
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, freshpaint_bad_token_status=403) as emu:
        assert post_fp(http, emu, fp_event(token="nope")).status_code == 403


def test_freshpaint_time_in_milliseconds_answers_400(emu, http):
    response = post_fp(http, emu, fp_event(time=1_700_000_000_123))
    assert response.status_code == 400
    assert response.json()["field"] == "properties.time"
    assert "milliseconds" in response.json()["error"]


def test_freshpaint_duplicate_insert_id_is_counted_not_stored(emu, http):
    first = fp_event(**{"$insert_id": "evt-1"})
    again = fp_event(**{"$insert_id": "evt-1", "time": NOW_S + 1})
    other = fp_event(**{"$insert_id": "evt-2"})
    for event in (first, again, other, first):
        assert post_fp(http, emu, event).status_code == 200
    assert emu.freshpaint.events() == [first, other]
    assert emu.freshpaint.stats()["duplicates"] == 2
    emu.freshpaint.reset()
    post_fp(http, emu, first)
    assert emu.freshpaint.events() == [first]  # reset forgets the ids seen


@pytest.mark.parametrize("insert_id", ["x" * 37, "has space", "under_score", "", 123, None, "é"])
def test_freshpaint_malformed_insert_id_answers_400(emu, http, insert_id):
    response = post_fp(http, emu, fp_event(**{"$insert_id": insert_id}))
    assert response.status_code == 400
    assert response.json()["field"] == "properties.$insert_id"


def test_freshpaint_insert_id_of_36_chars_is_fine(emu, http):
    assert post_fp(http, emu, fp_event(**{"$insert_id": "a" * 35 + "-"})).status_code == 200


def test_freshpaint_identify_needs_user_props_object(emu, http):
    bad = {"event": "$identify", "properties": fp_event()["properties"]}
    response = post_fp(http, emu, bad)
    assert response.status_code == 400
    assert response.json()["field"] == "properties.$user_props"
    good = {"event": "$identify", "properties": {**fp_event()["properties"], "$user_props": {"plan": "pro"}}}
    assert post_fp(http, emu, good).status_code == 200
    assert emu.freshpaint.events() == [good]


@pytest.mark.parametrize(("options", "status"), [
    ({"integrations": {"All": False, "Mixpanel": True}}, 200),
    ({"integrations": {}}, 200),
    ({"integrations": {"Mixpanel": "yes"}}, 400),
    ({"integrations": ["Mixpanel"]}, 400),
    ({}, 400),
    ("Mixpanel", 400),
])
def test_freshpaint_options_integrations_must_map_names_to_booleans(emu, http, options, status):
    response = post_fp(http, emu, fp_event(**{"$options": options}))
    assert response.status_code == status
    if status == 400:
        assert response.json()["field"] == "properties.$options"


def test_freshpaint_json_array_answers_400_and_is_a_violation(emu, http):
    response = post_fp(http, emu, [fp_event(), fp_event()])
    assert response.status_code == 400
    assert "array" in response.json()["error"]
    assert emu.freshpaint.events() == []
    assert len(emu.freshpaint.violations()) == 1


def test_freshpaint_invalid_json_answers_400(emu, http):
    response = http.post(emu.freshpaint_url + "/track", content=b"{nope", headers=JSON_HEADERS)
    assert response.status_code == 400
    assert "error" in response.json()


def test_freshpaint_wrong_content_type_is_a_violation(emu, http):
    assert post_fp(http, emu, fp_event(), {"Content-Type": "text/plain"}).status_code == 200
    assert "Content-Type" in emu.freshpaint.violations()[0]


def test_freshpaint_other_paths_and_methods(emu, http):
    assert http.get(emu.freshpaint_url + "/track").status_code == 405
    assert http.post(emu.freshpaint_url + "/import", json=[fp_event()]).status_code == 404
    assert emu.freshpaint.stats()["rejected"] == 2


# ------------------------------------------------------------------------------------------------ faults


def send_one(http: httpx.Client, emu: Emulators, target: str) -> httpx.Response:
    """One valid event-carrying request to the named emulator."""
    if target == "freshsuccess":
        return post_fs(http, emu, ndjson([fs_event(1)]))
    return post_fp(http, emu, fp_event())


@pytest.mark.parametrize("target", ["freshsuccess", "freshpaint"])
def test_fault_status_with_retry_after_then_recovers(emu, http, target):
    emulator = getattr(emu, target)
    emulator.inject(Fault(status=503, retry_after="7", count=1))
    faulted = send_one(http, emu, target)
    assert faulted.status_code == 503
    assert faulted.headers["retry-after"] == "7"
    assert emulator.events() == []
    assert send_one(http, emu, target).status_code == 200
    assert len(emulator.events()) == 1
    stats = emulator.stats()
    assert (stats["faults_injected"], stats["requests"], stats["accepted"]) == (1, 2, 1)
    assert [r.status for r in emulator.requests()] == [503, 200]


@pytest.mark.parametrize("status", [429, 500, 400, 401])
def test_fault_statuses_without_retry_after(emu, http, status):
    emu.freshpaint.inject(Fault(status=status, count=1))
    response = post_fp(http, emu, fp_event())
    assert response.status_code == status
    assert "retry-after" not in response.headers
    assert emu.freshpaint.events() == []


def test_fault_count_applies_to_exactly_that_many_requests(emu, http):
    emu.freshsuccess.inject(Fault(status=500, count=3))
    statuses = [post_fs(http, emu, ndjson([fs_event(i)])).status_code for i in range(5)]
    assert statuses == [500, 500, 500, 200, 200]
    assert [e["userId"] for e in emu.freshsuccess.events()] == ["user-3", "user-4"]


def test_fault_duration_applies_until_its_deadline(emu, http):
    duration_s = 0.4
    injected_at = time.monotonic()
    emu.freshpaint.inject(Fault(status=429, duration_s=duration_s))
    assert post_fp(http, emu, fp_event()).status_code == 429
    deadline = injected_at + 10
    while (status := post_fp(http, emu, fp_event()).status_code) == 429:
        assert time.monotonic() < deadline, "the fault never expired"
    assert status == 200
    assert time.monotonic() - injected_at >= duration_s


def test_fault_without_count_or_duration_lasts_until_cleared(emu, http):
    emu.freshpaint.inject(Fault(status=503))
    assert [post_fp(http, emu, fp_event()).status_code for _ in range(3)] == [503] * 3
    emu.freshpaint.clear_faults()
    assert post_fp(http, emu, fp_event()).status_code == 200


def test_fault_latency_delays_then_answers_normally(emu, http):
    latency_s = 0.3
    emu.freshsuccess.inject(Fault(latency_s=latency_s, count=1))
    started = time.monotonic()
    response = post_fs(http, emu, ndjson([fs_event(1)]))
    assert time.monotonic() - started >= latency_s
    assert response.status_code == 200
    assert emu.freshsuccess.events() == [fs_event(1)]
    assert emu.freshsuccess.stats()["faults_injected"] == 1


def test_fault_latency_makes_a_client_time_out(emu):
    emu.freshpaint.inject(Fault(latency_s=0.5, status=503, count=1))
    with httpx.Client(timeout=0.1) as client, pytest.raises(httpx.TimeoutException):
        client.post(emu.freshpaint_url + "/track", json=fp_event())


@pytest.mark.parametrize("target", ["freshsuccess", "freshpaint"])
def test_fault_drop_connection_closes_without_a_response(emu, http, target):
    emulator = getattr(emu, target)
    emulator.inject(Fault(drop_connection=True, count=1))
    with pytest.raises(httpx.TransportError):
        send_one(http, emu, target)
    assert emulator.events() == []
    assert emulator.requests()[0].status == 0
    assert emulator.stats()["faults_injected"] == 1
    # The server keeps serving new connections.
    assert post_fp(http, emu, fp_event()).status_code == 200


def test_fault_skips_ping_unless_asked(emu, http):
    emu.freshsuccess.inject(Fault(status=503, count=1))
    assert http.post(emu.freshsuccess_url + "/v1/ping").status_code == 200
    assert post_fs(http, emu, ndjson([fs_event()])).status_code == 503
    emu.freshsuccess.inject(Fault(status=503, count=1, include_ping=True))
    assert http.post(emu.freshsuccess_url + "/v1/ping").status_code == 503
    assert http.post(emu.freshsuccess_url + "/v1/ping").status_code == 200


@pytest.mark.parametrize("kwargs", [
    {}, {"status": 99}, {"status": 503, "drop_connection": True}, {"latency_s": -1}, {"status": 503, "count": 0},
    {"status": 503, "duration_s": 0}, {"retry_after": "5", "latency_s": 1},
])
def test_fault_rejects_contradictory_or_empty_settings(kwargs):
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the problem
        Fault(**kwargs)


def test_fault_from_mapping_checks_types_and_names():
    assert Fault.from_mapping({"status": 429, "retry_after": 2}) == Fault(status=429, retry_after="2")
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_mapping({"status": 503, "colour": "red"})
    with pytest.raises(ValueError, match="status"):
        Fault.from_mapping({"status": "503"})
    with pytest.raises(ValueError, match="count"):
        Fault.from_mapping({"status": 503, "count": True})


# ------------------------------------------------------------------------------------------ control API


def test_control_api_over_http(emu, http):
    base = emu.freshsuccess_url + "/_emulator"
    injected = http.post(base + "/faults", json={"status": 503, "retry_after": "1", "count": 1})
    assert injected.status_code == 200
    assert injected.json()["status"] == 503
    assert http.get(base + "/faults").json()[0]["retry_after"] == "1"
    assert post_fs(http, emu, ndjson([fs_event(0)])).status_code == 503
    assert http.get(base + "/faults").json() == []

    assert http.post(base + "/faults", json={"status": 500}).status_code == 200
    assert http.delete(base + "/faults").status_code == 200
    post_fs(http, emu, ndjson([fs_event(1), fs_event(2, createdAt=5)]), {"Content-Type": "text/plain"})

    events = http.get(base + "/events")
    assert events.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in events.text.splitlines()] == [fs_event(1)]
    stats = http.get(base + "/stats").json()
    assert stats == {"requests": 2, "accepted": 1, "dropped": 1, "duplicates": 0, "rejected": 0,
                     "faults_injected": 1, "violations": 1}
    assert "Content-Type" in http.get(base + "/violations").json()[0]
    dropped = [json.loads(line) for line in http.get(base + "/dropped").text.splitlines()]
    assert dropped == [{"event": fs_event(2, createdAt=5), "reason": "createdAt_in_seconds"}]

    assert http.post(base + "/reset").status_code == 200
    assert http.get(base + "/events").text == ""
    assert http.get(base + "/stats").json()["requests"] == 0
    # Control calls are not destination traffic.
    assert emu.freshsuccess.requests() == []


def test_control_api_rejects_bad_faults_and_unknown_endpoints(emu, http):
    base = emu.freshpaint_url + "/_emulator"
    assert http.post(base + "/faults", content=b"[1]").status_code == 400
    assert http.post(base + "/faults", content=b"{bad").status_code == 400
    assert "unknown fault fields" in http.post(base + "/faults", json={"nope": 1}).json()["error"]
    assert http.get(base + "/nothing").status_code == 404
    assert http.get(base + "/faults").json() == []


# ------------------------------------------------------------------------------------ recording, waiting


def test_record_dir_gets_one_json_line_per_accepted_event(tmp_path, http):
    record_dir = tmp_path / "rec"
    fs_events = [fs_event(i) for i in range(3)]
    fp_events = [fp_event(**{"$insert_id": f"id-{i}"}) for i in range(2)]
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, record_dir=record_dir) as emu:
        post_fs(http, emu, ndjson([*fs_events, fs_event(9, createdAt=1)], b"\r\n"))
        for event in [*fp_events, fp_events[0], fp_event(token="bad")]:
            post_fp(http, emu, event)
        http.get(emu.freshpaint_url + "/_emulator/events")  # flushes
        recorded = (record_dir / "freshpaint.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line) for line in recorded] == fp_events
    lines = (record_dir / "freshsuccess.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == fs_events


def test_wait_for_events_wakes_when_they_arrive(emu, http):
    sender = threading.Thread(target=lambda: [post_fp(http, emu, fp_event()) for _ in range(3)])
    sender.start()
    try:
        events = emu.freshpaint.wait_for_events(3, timeout_s=10)
    finally:
        sender.join()
    assert len(events) == 3


def test_wait_for_events_times_out_saying_how_many_came(emu, http):
    post_fp(http, emu, fp_event())
    with pytest.raises(TimeoutError, match="1 of 2"):
        emu.freshpaint.wait_for_events(2, timeout_s=0.1)


def test_max_kept_events_bounds_memory_but_not_counters(http):
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, max_kept_events=2,
                   max_recorded_requests=1) as emu:
        post_fs(http, emu, ndjson([fs_event(i) for i in range(5)]))
        post_fs(http, emu, ndjson([fs_event(5)]))
        assert [e["userId"] for e in emu.freshsuccess.events()] == ["user-4", "user-5"]
        assert emu.freshsuccess.stats()["accepted"] == 6
        assert len(emu.freshsuccess.requests()) == 1


def test_max_recorded_requests_0_keeps_none_but_counts_all(http):
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, max_recorded_requests=0) as emu:
        post_fp(http, emu, fp_event())
        post_fp(http, emu, fp_event(token="bad"))
        assert emu.freshpaint.requests() == []
        assert emu.freshpaint.stats()["requests"] == 2
        assert len(emu.freshpaint.events()) == 1


def test_reprs_never_show_keys(emu, http):
    post_fs(http, emu, ndjson([fs_event()]))
    text = repr(emu) + repr(emu.freshsuccess) + repr(emu.freshsuccess.requests())
    text += "".join(emu.freshsuccess.violations())
    assert AUTH_KEY not in text
    assert API_KEY not in text


def test_stop_is_idempotent_and_frees_the_ports(http):
    emu = Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN).start()
    url = emu.freshpaint_url
    emu.stop()
    emu.stop()
    with pytest.raises(httpx.ConnectError):
        http.post(url + "/track", json=fp_event())
