"""The Schema Registry client sorts every registry answer into what the consumer should do, and the
emulator behaves like the Confluent registry for the REST subset the project uses."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastavro import schemaless_reader, schemaless_writer

from consumer.decoding.registry import REGISTRY_CONTENT_TYPE, RegisteredSchema, SchemaRegistryClient
from consumer.decoding.schemas import default_schema_dir, load_schema, parse
from consumer.errors import ConfigError, FatalError, TransientError, UnknownSchema
from consumer.sinks.retry import DEFAULT_MAX_RETRY_AFTER_S
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator, main

CURRENT = load_schema(default_schema_dir() / "usage_event.avsc")
V1 = load_schema(default_schema_dir() / "usage_event.v1.avsc")
REPO = Path(__file__).resolve().parents[2]


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
                ) -> tuple[SchemaRegistryClient, list[httpx.Request]]:
    """A client whose HTTP requests go to ``handler``; also returns the list of requests it received."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = SchemaRegistryClient("http://registry.test:8081", transport=httpx.MockTransport(record), **kwargs)
    return client, seen


def registry_json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"Content-Type": REGISTRY_CONTENT_TYPE, **(headers or {})})


# -------------------------------------------------------------------------------------------------- client


def test_get_schema_asks_once_per_id() -> None:
    client, seen = mock_client(lambda request: registry_json(200, {"schema": json.dumps(CURRENT)}))
    for _ in range(3):
        assert client.get_schema(7) == CURRENT
    assert [str(r.url) for r in seen] == ["http://registry.test:8081/schemas/ids/7"]
    assert "vnd.schemaregistry.v1+json" in seen[0].headers["accept"]


def test_schema_not_found_is_unknown_schema_and_remembered_for_a_while() -> None:
    client, seen = mock_client(lambda r: registry_json(404, {"error_code": 40403, "message": "Schema not found"}))
    for _ in range(3):
        with pytest.raises(UnknownSchema, match=r"schema id 9 is not known to the schema registry at registry\.test"):
            client.get_schema(9)
    assert len(seen) == 1  # a burst of events with a bad id costs one request


def test_unknown_ids_are_asked_again_after_the_ttl() -> None:
    client, seen = mock_client(lambda r: registry_json(404, {"error_code": 40403, "message": "Schema not found"}),
                               unknown_id_ttl_s=0.0)
    for _ in range(2):
        with pytest.raises(UnknownSchema):
            client.get_schema(9)
    assert len(seen) == 2


def test_a_404_that_is_not_from_a_registry_is_fatal_not_unknown_schema() -> None:
    """A wrong URL must stop the consumer, not dead-letter every event as 'unknown schema'."""
    client, _ = mock_client(lambda r: httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(FatalError, match="404"):
        client.get_schema(1)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_errors_and_throttling_are_transient(status: int) -> None:
    client, seen = mock_client(lambda r: registry_json(status, {"error_code": status * 100, "message": "busy"},
                                                       {"Retry-After": "3"}))
    with pytest.raises(TransientError, match=f"answered {status}") as caught:
        client.get_schema(1)
    assert caught.value.retry_after_s == 3.0
    with pytest.raises(TransientError):
        client.get_schema(1)
    assert len(seen) == 2  # failures are not cached


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow")])
def test_timeouts_are_transient(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = mock_client(handler)
    with pytest.raises(TransientError, match="timed out"):
        client.get_schema(1)


def test_connection_refused_is_transient() -> None:
    down = SchemaRegistryEmulator().start()
    url = down.url
    down.stop()
    with SchemaRegistryClient(url, timeout_s=2.0) as client, pytest.raises(TransientError, match="unreachable"):
        client.get_schema(1)


@pytest.mark.parametrize("status", [401, 403])
def test_bad_credentials_are_fatal_and_never_echoed(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return registry_json(status, {"error_code": status, "message": "Unauthorized"})

    client = SchemaRegistryClient("https://sr.example.com", auth=("key-id", "s3cret-value"),
                                  transport=httpx.MockTransport(handler))
    with pytest.raises(FatalError, match="credentials") as caught:
        client.get_schema(1)
    assert seen[0].headers["authorization"].startswith("Basic ")
    for text in (str(caught.value), repr(client)):
        assert "s3cret-value" not in text
        assert "key-id" not in text


def test_credentials_in_the_url_stay_out_of_messages() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"].startswith("Basic ")
        return registry_json(503, {"error_code": 50301, "message": "down"})

    client = SchemaRegistryClient("https://user:pa55word@sr.example.com/prefix",
                                  transport=httpx.MockTransport(handler))
    with pytest.raises(TransientError) as caught:
        client.get_schema(1)
    assert "pa55word" not in str(caught.value)
    assert "sr.example.com" in str(caught.value)
    assert "pa55word" not in repr(client)


def test_a_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return registry_json(200, {"schema": json.dumps(CURRENT)})

    SchemaRegistryClient("http://proxy.test/registry", transport=httpx.MockTransport(handler)).get_schema(3)
    assert seen == ["/registry/schemas/ids/3"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"schema": json.dumps(CURRENT), "schemaType": "PROTOBUF"}, "PROTOBUF"),
        ({"schema": "{not json"}, "not valid JSON"),
        ({"schema": '"string"'}, "not an Avro named type"),
        ({"schema": json.dumps(CURRENT), "references": "x"}, "references"),
    ],
)
def test_schemas_the_consumer_cannot_use_are_unknown_schema(body: dict[str, Any], error: str) -> None:
    client, _ = mock_client(lambda r: registry_json(200, body))
    with pytest.raises(UnknownSchema, match=error):
        client.get_schema(4)


# References: a schema naming types registered under other subjects (Confluent's schema references).
KIND: dict[str, Any] = {"type": "enum", "name": "Kind", "namespace": "com.example.common", "symbols": ["WEB", "APP"]}
ADDRESS: dict[str, Any] = {"type": "record", "name": "Address", "namespace": "com.example.common",
           "fields": [{"name": "city", "type": "string"}, {"name": "kind", "type": "Kind"}]}
ORDER: dict[str, Any] = {"type": "record", "name": "Order", "namespace": "com.example.shop",
         "fields": [{"name": "id", "type": "string"},
                    {"name": "ship_to", "type": "com.example.common.Address"},
                    {"name": "bill_to", "type": ["null", "com.example.common.Address"], "default": None},
                    {"name": "channel", "type": "com.example.common.Kind"}]}


def subjects_registry(versions: Versions) -> Callable[[httpx.Request], httpx.Response]:
    """A registry answering ids and subject versions from ``versions``: (subject, version) -> (id, schema,
    references); ``latest`` is each subject's highest version."""
    by_id = {schema_id: (schema, refs) for schema_id, schema, refs in versions.values()}

    def handler(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if parts[:2] == ["schemas", "ids"]:
            schema, refs = by_id[int(parts[2])]
            return registry_json(200, {"schema": json.dumps(schema), **({"references": refs} if refs else {})})
        subject, version = parts[1], parts[3]
        known = sorted(v for s, v in versions if s == subject)
        if not known:
            return registry_json(404, {"error_code": 40401, "message": f"Subject '{subject}' not found."})
        number = known[-1] if version == "latest" else int(version)
        if (subject, number) not in versions:
            return registry_json(404, {"error_code": 40402, "message": f"Version {version} not found."})
        schema_id, schema, refs = versions[(subject, number)]
        return registry_json(200, {"subject": subject, "version": number, "id": schema_id,
                                   "schema": json.dumps(schema), **({"references": refs} if refs else {})})

    return handler


Versions = dict[tuple[str, int], tuple[int, dict[str, Any], list[dict[str, Any]]]]
REFERENCES: Versions = {
    ("kind", 1): (1, KIND, []),
    ("address", 1): (2, ADDRESS, [{"name": "com.example.common.Kind", "subject": "kind", "version": 1}]),
    ("orders-value", 1): (3, ORDER, [{"name": "com.example.common.Address", "subject": "address", "version": 1},
                                     {"name": "com.example.common.Kind", "subject": "kind", "version": 1}]),
}


def test_a_schema_with_references_becomes_one_self_contained_schema_that_decodes() -> None:
    client, seen = mock_client(subjects_registry(REFERENCES))
    schema = client.get_schema(3)
    parsed = parse(schema)  # every named type defined once, before its first use
    order = {"id": "o-1", "ship_to": {"city": "Oslo", "kind": "WEB"}, "bill_to": None, "channel": "APP"}
    encoded = BytesIO()
    schemaless_writer(encoded, parsed.writer, order)
    assert schemaless_reader(BytesIO(encoded.getvalue()), parsed.writer, parsed.reader) == order
    assert parsed.name == "com.example.shop.Order"
    assert client.get_schema(3) is schema  # cached with its references
    assert sorted({r.url.path for r in seen}) == ["/schemas/ids/3", "/subjects/address/versions/1",
                                                   "/subjects/kind/versions/1"]


def test_a_reference_the_registry_does_not_have_is_unknown_schema_naming_it() -> None:
    broken: Versions = {("orders-value", 1): (3, ORDER, [{"name": "com.example.common.Address", "subject": "address",
                                                "version": 4}])}
    client, _ = mock_client(subjects_registry(broken))
    with pytest.raises(UnknownSchema, match=r"schema id 3: its reference com\.example\.common\.Address \(subject "
                                            r"'address' version 4\) is not in the schema registry"):
        client.get_schema(3)


def test_references_that_refer_back_are_each_fetched_once_not_followed_forever() -> None:
    loop: Versions = {("a", 1): (1, KIND, [{"name": "B", "subject": "b", "version": 1}]),
            ("b", 1): (2, KIND, [{"name": "A", "subject": "a", "version": 1}])}
    client, seen = mock_client(subjects_registry(loop))
    assert parse(client.get_schema(1)).name == "com.example.common.Kind"
    assert sorted(r.url.path for r in seen) == ["/schemas/ids/1", "/subjects/a/versions/1", "/subjects/b/versions/1"]


def test_a_subject_version_is_fetched_latest_or_pinned_with_its_references() -> None:
    versions: Versions = {**REFERENCES, ("orders-value", 2): (4, {**ORDER, "fields": [*ORDER["fields"], {
        "name": "note", "type": ["null", "string"], "default": None}]}, REFERENCES[("orders-value", 1)][2])}
    client, _ = mock_client(subjects_registry(versions))
    latest = client.get_version("orders-value", "latest")
    assert isinstance(latest, RegisteredSchema)
    assert (latest.subject, latest.version, latest.schema_id) == ("orders-value", 2, 4)
    assert [f["name"] for f in latest.schema["fields"]][-1] == "note"
    pinned = client.get_version("orders-value", 1)
    assert (pinned.version, pinned.schema_id) == (1, 3)
    assert parse(pinned.schema).name == "com.example.shop.Order"


@pytest.mark.parametrize(("subject", "version", "says"), [
    ("nope-value", "latest", "subject 'nope-value' is not in the schema registry at registry.test"),
    ("orders-value", 9, "subject 'orders-value' has no version 9 in the schema registry at registry.test"),
])
def test_a_subject_or_version_the_registry_lacks_is_a_configuration_error(subject: str, version: int | str,
                                                                          says: str) -> None:
    client, _ = mock_client(subjects_registry(REFERENCES))
    with pytest.raises(ConfigError, match=re.escape(says)):
        client.get_version(subject, version)  # type: ignore[arg-type]


@pytest.mark.parametrize("response", [httpx.Response(200, text="<html>hello</html>"),
                                      httpx.Response(200, json={"id": 1})])
def test_answers_that_are_not_from_a_registry_are_fatal(response: httpx.Response) -> None:
    client, _ = mock_client(lambda r: response)
    with pytest.raises(FatalError, match="registry URL"):
        client.get_schema(1)


def test_registry_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        SchemaRegistryClient("ftp://registry")


# ------------------------------------------------------------------------------------- client + emulator


@pytest.fixture
def emulator() -> Iterator[SchemaRegistryEmulator]:
    with SchemaRegistryEmulator() as em:
        yield em


def test_register_then_fetch_by_id(emulator: SchemaRegistryEmulator) -> None:
    with SchemaRegistryClient(emulator.url) as producer, SchemaRegistryClient(emulator.url) as consumer:
        v1_id = producer.register("usage-events-value", V1)
        current_id = producer.register("usage-events-value", CURRENT)
        assert v1_id != current_id
        assert consumer.get_schema(v1_id) == V1
        assert consumer.get_schema(current_id) == CURRENT


def test_same_schema_gets_the_same_id_across_subjects(emulator: SchemaRegistryEmulator) -> None:
    with SchemaRegistryClient(emulator.url) as client:
        first = client.register("a-value", CURRENT)
        assert client.register("a-value", CURRENT) == first
        reordered = dict(reversed(list(CURRENT.items())))  # key order and spacing do not matter
        assert client.register("b-value", reordered) == first
        assert client.register("a-value", V1) != first
    assert httpx.get(f"{emulator.url}/subjects/a-value/versions").json() == [1, 2]
    assert httpx.get(f"{emulator.url}/subjects/b-value/versions").json() == [1]


def test_register_an_invalid_schema_is_fatal_with_the_registry_message(emulator: SchemaRegistryEmulator) -> None:
    with SchemaRegistryClient(emulator.url) as client, pytest.raises(FatalError, match="42201"):
        client.register("bad-value", {"type": "record", "name": "R", "fields": [{"name": "a"}]})


def test_register_while_the_registry_fails_is_transient(emulator: SchemaRegistryEmulator) -> None:
    emulator.fail_with(503)
    with SchemaRegistryClient(emulator.url) as client, pytest.raises(TransientError, match="503"):
        client.register("usage-events-value", CURRENT)


# ----------------------------------------------------------------------------------------- emulator REST


def test_emulator_rest_subset(emulator: SchemaRegistryEmulator) -> None:
    url = emulator.url
    body = json.dumps({"schema": json.dumps(V1)})
    headers = {"Content-Type": REGISTRY_CONTENT_TYPE}
    registered = httpx.post(f"{url}/subjects/usage-events-value/versions", content=body, headers=headers)
    assert registered.status_code == 200
    assert registered.headers["content-type"] == REGISTRY_CONTENT_TYPE
    assert registered.json() == {"id": 1}
    httpx.post(f"{url}/subjects/usage-events-value/versions",
               content=json.dumps({"schema": json.dumps(CURRENT)}), headers=headers)

    assert json.loads(httpx.get(f"{url}/schemas/ids/1").json()["schema"]) == V1
    assert httpx.get(f"{url}/subjects").json() == ["usage-events-value"]
    assert httpx.get(f"{url}/subjects/usage-events-value/versions").json() == [1, 2]
    latest = httpx.get(f"{url}/subjects/usage-events-value/versions/latest").json()
    assert (latest["subject"], latest["version"], latest["id"]) == ("usage-events-value", 2, 2)
    assert json.loads(latest["schema"]) == CURRENT
    assert httpx.get(f"{url}/subjects/usage-events-value/versions/1").json()["id"] == 1
    found = httpx.post(f"{url}/subjects/usage-events-value", content=body, headers=headers).json()
    assert (found["version"], found["id"]) == (1, 1)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error_code"),
    [
        ("GET", "/schemas/ids/42", None, 404, 40403),
        ("GET", "/subjects/nope/versions", None, 404, 40401),
        ("GET", "/subjects/nope/versions/latest", None, 404, 40401),
        ("GET", "/subjects/usage-events-value/versions/9", None, 404, 40402),
        ("GET", "/subjects/usage-events-value/versions/first", None, 422, 42202),
        ("POST", "/subjects/x/versions", {"schema": '{"type": "nope"}'}, 422, 42201),
        ("POST", "/subjects/x/versions", {"schema": json.dumps(CURRENT), "schemaType": "JSON"}, 422, 42201),
        ("POST", "/subjects/x/versions", {"not": "a schema"}, 422, 42201),
        ("POST", "/subjects/usage-events-value", {"schema": json.dumps(V1)}, 404, 40403),
        ("GET", "/no/such/path", None, 404, 404),
    ],
)
def test_emulator_errors_use_confluent_codes(emulator: SchemaRegistryEmulator, method: str, path: str,
                                              body: Any, status: int, error_code: int) -> None:
    emulator.register("usage-events-value", CURRENT)
    response = httpx.request(method, emulator.url + path, json=body)
    assert response.status_code == status
    assert response.json()["error_code"] == error_code
    assert response.json()["message"]
    assert response.headers["content-type"] == REGISTRY_CONTENT_TYPE


def test_emulator_keeps_references_and_the_client_reads_them_back_as_one_schema(
        emulator: SchemaRegistryEmulator) -> None:
    headers = {"Content-Type": REGISTRY_CONTENT_TYPE}
    for subject, schema, refs in [("kind", KIND, []), ("address", ADDRESS, REFERENCES[("address", 1)][2]),
                                  ("orders-value", ORDER, REFERENCES[("orders-value", 1)][2])]:
        answer = httpx.post(f"{emulator.url}/subjects/{subject}/versions", headers=headers,
                            content=json.dumps({"schema": json.dumps(schema), "references": refs}))
        assert answer.status_code == 200, answer.text
    order_id = answer.json()["id"]
    assert httpx.get(f"{emulator.url}/schemas/ids/{order_id}").json()["references"] == REFERENCES[
        ("orders-value", 1)][2]
    with SchemaRegistryClient(emulator.url) as client:
        assert parse(client.get_schema(order_id)).name == "com.example.shop.Order"
        assert client.get_version("orders-value", "latest").schema_id == order_id
    # The same text without its references is another schema: it does not even parse on its own.
    refused = httpx.post(f"{emulator.url}/subjects/x/versions", headers=headers,
                         content=json.dumps({"schema": json.dumps(ORDER)}))
    assert (refused.status_code, refused.json()["error_code"]) == (422, 42201)
    dangling = httpx.post(f"{emulator.url}/subjects/x/versions", headers=headers, content=json.dumps(
        {"schema": json.dumps(ORDER), "references": [{"name": "com.example.common.Address", "subject": "address",
                                                      "version": 7}]}))
    assert (dangling.status_code, dangling.json()["error_code"]) == (422, 42201)
    assert "version 7, which is not registered" in dangling.json()["message"]


def test_emulator_failure_mode_answers_every_request_until_cleared(emulator: SchemaRegistryEmulator) -> None:
    schema_id = emulator.register("usage-events-value", CURRENT)
    emulator.fail_with(503)
    response = httpx.get(f"{emulator.url}/schemas/ids/{schema_id}")
    assert response.status_code == 503
    assert response.json()["error_code"] == 50301
    emulator.fail_with(None)
    assert httpx.get(f"{emulator.url}/schemas/ids/{schema_id}").status_code == 200
    assert emulator.request_count("GET", f"/schemas/ids/{schema_id}") == 2


def test_emulator_stop_closes_keep_alive_connections() -> None:
    emulator = SchemaRegistryEmulator().start()
    schema_id = emulator.register("usage-events-value", CURRENT)
    with httpx.Client(base_url=emulator.url) as client:
        assert client.get(f"/schemas/ids/{schema_id}").status_code == 200  # the connection is now pooled
        emulator.stop()
        with pytest.raises(httpx.TransportError):
            client.get(f"/schemas/ids/{schema_id}")


# ------------------------------------------------------------------------------------------- emulator CLI


def test_emulator_cli_rejects_a_bad_register_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--register", "no-equals-sign"]) == 2
    assert "SUBJECT=PATH" in capsys.readouterr().err


def test_retry_after_as_an_http_date_is_read_and_capped_like_the_sinks_read_it() -> None:
    """The registry reads Retry-After with the sinks' parser: an HTTP-date counts, and a far one is capped."""
    def busy_until(ahead_s: float) -> Callable[[httpx.Request], httpx.Response]:
        when = formatdate(time.time() + ahead_s, usegmt=True)
        return lambda _request: registry_json(503, {"error_code": 50300, "message": "busy"}, {"Retry-After": when})

    for ahead_s, expected_s in ((60, 60.0), (10 * 3600, DEFAULT_MAX_RETRY_AFTER_S)):
        client, _ = mock_client(busy_until(ahead_s))
        with pytest.raises(TransientError) as caught:
            client.get_schema(1)
        assert caught.value.retry_after_s == pytest.approx(expected_s, abs=2.0)
