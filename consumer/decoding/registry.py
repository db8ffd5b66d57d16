"""A small client for a Confluent-compatible Schema Registry (the subset the consumer needs).

The decoder asks for a writer schema only when it meets a schema id for the first time, from the poll
thread, so a sync ``httpx.Client`` is enough; answers are cached for the life of the client (a schema id
never changes meaning). Errors are sorted so the caller knows what to do:

- 404 with error code 40403 ("schema not found") -> UnknownSchema (the event is dead-lettered);
  remembered for ``unknown_id_ttl_s`` so a burst of events with a bad id does not cost one HTTP request
  each. A 404 without that code means the URL does not point at a registry: FatalError, so a wrong URL
  cannot dead-letter every event;
- unreachable, timeout, 408, 429, 5xx -> TransientError (retry later, never dead-letter);
- 401/403, other 4xx, or an answer that is not a registry answer -> FatalError (retrying will not help
  and dead-lettering would throw good events away).

Schema references (a schema naming types registered under other subjects) are followed and inlined, so
every schema handed out is self-contained: each named type defined once, before its first use.

A reader schema can also come from a subject (:meth:`SchemaRegistryClient.get_version`); a subject or
version the registry lacks is a ConfigError, since it can only come from the configuration.

Credentials (``auth`` or user-info in the URL) never appear in logs, errors or reprs: only the host does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import httpx
import structlog

from consumer.decoding.schemas import with_references
from consumer.errors import ConfigError, FatalError, TransientError, UnknownSchema
from consumer.sinks.base import tls_verify
from consumer.sinks.retry import parse_retry_after, status_kind

__all__ = ["REGISTRY_CONTENT_TYPE", "RegisteredSchema", "SchemaRegistryClient"]

log = structlog.get_logger(__name__)

REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = f"{REGISTRY_CONTENT_TYPE}, application/vnd.schemaregistry+json; q=0.9, application/json; q=0.5"
_SCHEMA_NOT_FOUND = 40403
_SUBJECT_NOT_FOUND = 40401
_VERSION_NOT_FOUND = 40402
_MAX_REFERENCES = 256
"""More named types than this behind one schema is taken for a runaway graph, not a schema."""


@dataclass(frozen=True)
class RegisteredSchema:
    """One version of a subject, its references inlined."""

    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any]


@dataclass(frozen=True)
class _Answer:
    """A registry answer's schema text and its references, not yet resolved."""

    text: str
    references: tuple[tuple[str, str, int | str], ...]
    """(name, subject, version) of each reference."""


class SchemaRegistryClient:
    """Fetches (and caches) writer schemas by id; registers schemas for producers, tests and the demo."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        auth: tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        unknown_id_ttl_s: float = 60.0,
    ) -> None:
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("schema registry URL must be http(s)://host[:port][/path]")
        self.host = base.host if base.port is None else f"{base.host}:{base.port}"
        self._unknown_id_ttl_s = unknown_id_ttl_s
        self._schemas: dict[int, dict[str, Any]] = {}
        self._unknown_until: dict[int, float] = {}
        self._references: dict[tuple[str, str], dict[str, Any]] = {}
        self._client = httpx.Client(
            base_url=base,
            timeout=timeout_s,
            auth=auth,
            transport=transport,
            headers={"Accept": _ACCEPT},
            verify=tls_verify(url),
        )

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (parsed JSON) registered under ``schema_id``; the registry is asked once per id."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        until = self._unknown_until.get(schema_id)
        if until is not None and time.monotonic() < until:
            raise UnknownSchema(f"schema id {schema_id} is not known to the schema registry at {self.host}")
        started = time.perf_counter()
        response = self._request("GET", f"schemas/ids/{schema_id}")
        if response.status_code == 404 and _error_code(response) == _SCHEMA_NOT_FOUND:
            self._unknown_until[schema_id] = time.monotonic() + self._unknown_id_ttl_s
            log.warning("schema_id_unknown", schema_id=schema_id, registry_host=self.host)
            raise UnknownSchema(f"schema id {schema_id} is not known to the schema registry at {self.host}")
        if response.status_code != 200:
            self._raise_for_status(response, f"fetching schema id {schema_id}")
        what = f"schema id {schema_id}"
        schema = self._resolved(self._answer(self._json_object(response, f"fetching {what}"), what), what)
        self._schemas[schema_id] = schema
        self._unknown_until.pop(schema_id, None)
        log.info(
            "schema_fetched",
            schema_id=schema_id,
            schema_name=".".join(str(part) for part in (schema.get("namespace"), schema.get("name")) if part),
            registry_host=self.host,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return schema

    def get_version(self, subject: str, version: int | Literal["latest"]) -> RegisteredSchema:
        """One version of ``subject`` (``latest``: the newest now), references inlined; a subject or version the
        registry lacks is a ConfigError (only the configuration names them)."""
        body = self._subject_version(subject, version)
        number, schema_id = body.get("version"), body.get("id")
        if not isinstance(number, int) or not isinstance(schema_id, int):
            raise FatalError(f"schema registry at {self.host} answered subject {subject!r} version {version} "
                             "without an integer version and id: is the registry URL right?")
        what = f"subject {subject!r} version {number}"
        schema = self._resolved(self._answer(body, what), what)
        log.info("schema_fetched", subject=subject, version=number, schema_id=schema_id, registry_host=self.host)
        return RegisteredSchema(subject, number, schema_id, schema)

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (POST /subjects/{subject}/versions) and return its id.

        Registering a schema that is already registered returns the existing id.
        """
        what = f"registering a schema under subject {subject!r}"
        response = self._request(
            "POST",
            f"subjects/{quote(subject, safe='')}/versions",
            content=json.dumps({"schema": json.dumps(schema)}).encode(),
            headers={"Content-Type": REGISTRY_CONTENT_TYPE},
        )
        if response.status_code != 200:
            self._raise_for_status(response, what)
        schema_id = self._json_object(response, what).get("id")
        if not isinstance(schema_id, int):
            raise FatalError(f"schema registry at {self.host} answered {what} without an integer id")
        self._schemas.setdefault(schema_id, schema)
        log.info("schema_registered", subject=subject, schema_id=schema_id, registry_host=self.host)
        return schema_id

    def _subject_version(self, subject: str, version: int | str) -> dict[str, Any]:
        what = f"fetching subject {subject!r} version {version}"
        response = self._request("GET", f"subjects/{quote(subject, safe='')}/versions/{version}")
        if response.status_code == 404 and _error_code(response) == _SUBJECT_NOT_FOUND:
            raise ConfigError(f"subject {subject!r} is not in the schema registry at {self.host}")
        if response.status_code == 404 and _error_code(response) == _VERSION_NOT_FOUND:
            raise ConfigError(f"subject {subject!r} has no version {version} in the schema registry at {self.host}")
        if response.status_code != 200:
            self._raise_for_status(response, what)
        return self._json_object(response, what)

    def _resolved(self, answer: _Answer, what: str) -> dict[str, Any]:
        """The schema with every reference, and theirs, inlined (each fetched once per client)."""
        named: dict[str, dict[str, Any]] = {}
        pending = list(answer.references)
        while pending:  # each name once: references that refer back (a cycle) end here too
            name, subject, version = pending.pop()
            if name in named:
                continue
            if len(named) >= _MAX_REFERENCES:
                raise UnknownSchema(f"{what}: more than {_MAX_REFERENCES} schema references")
            where = f"{name} (subject {subject!r} version {version})"
            try:
                body = self._referenced(subject, version)
            except ConfigError:
                raise UnknownSchema(f"{what}: its reference {where} is not in the schema registry at "
                                    f"{self.host}") from None
            referenced = self._answer(body, f"{what}: reference {where}")
            named[name] = _schema_object(referenced.text, f"{what}: reference {where}")
            pending += referenced.references
        main = _schema_object(answer.text, what)
        if not named:
            return main
        try:
            return with_references(main, named)
        except ValueError as exc:
            raise UnknownSchema(f"{what}: {exc}") from None

    def _answer(self, body: dict[str, Any], what: str) -> _Answer:
        """The schema text and references of a registry answer; UnknownSchema for what the consumer cannot use."""
        text = body.get("schema")
        if not isinstance(text, str):
            raise FatalError(f"schema registry at {self.host} answered {what} without a 'schema' string: "
                             "is the registry URL right?")
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise UnknownSchema(f"{what} is a {schema_type} schema, not Avro")
        references = body.get("references") or []
        if not isinstance(references, list) or not all(
                isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("subject"), str)
                and isinstance(r.get("version"), int | str) for r in references):
            raise UnknownSchema(f"{what} has references that are not a list of name, subject and version")
        return _Answer(text, tuple((r["name"], r["subject"], r["version"]) for r in references))

    def _referenced(self, subject: str, version: int | str) -> dict[str, Any]:
        key = (subject, str(version))
        cached = self._references.get(key)
        if cached is None:
            cached = self._references[key] = self._subject_version(subject, version)
        return cached

    def check(self) -> None:
        """One cheap request (GET /subjects) proving the URL serves a registry; errors as for get_schema."""
        response = self._request("GET", "subjects")
        if response.status_code != 200:
            self._raise_for_status(response, "listing subjects")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            raise FatalError(f"{self.host} does not answer like a schema registry: is the registry URL right?")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SchemaRegistryClient(host={self.host!r}, cached_schemas={len(self._schemas)})"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientError(f"schema registry at {self.host} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"schema registry at {self.host} is unreachable ({type(exc).__name__})"
            ) from exc

    def _raise_for_status(self, response: httpx.Response, what: str) -> NoReturn:
        status = response.status_code
        detail = _error_message(response)
        kind = status_kind(status)  # the sinks' ladder: 408/429/5xx are worth retrying
        if kind == "retry":
            raise TransientError(
                f"schema registry at {self.host} answered {status} {what}{detail}",
                retry_after_s=_retry_after_s(response),
            )
        if kind == "credentials":
            raise FatalError(
                f"schema registry at {self.host} answered {status} {what}: check the registry credentials"
            )
        raise FatalError(f"schema registry at {self.host} answered {status} {what}{detail}")

    def _json_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise FatalError(
                f"schema registry at {self.host} answered {what} with something that is not JSON: "
                "is the registry URL right?"
            ) from exc
        if not isinstance(body, dict):
            raise FatalError(f"schema registry at {self.host} answered {what} with JSON that is not an object")
        return body


def _error_code(response: httpx.Response) -> object:
    """The registry's ``error_code`` in an error body, or None when the body is not a registry error."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def _error_message(response: httpx.Response) -> str:
    """``: <registry message> (error_code n)`` when the body is a registry error, else empty."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or "message" not in body:
        return ""
    code = body.get("error_code")
    message = str(body["message"])[:300]
    return f": {message} (error_code {code})" if code is not None else f": {message}"


def _retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` (seconds or an HTTP-date), read like the destination sinks read it."""
    return parse_retry_after(response.headers.get("Retry-After"), time.time())


def _schema_object(text: str, what: str) -> dict[str, Any]:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnknownSchema(f"{what} is not valid JSON: {exc.msg}") from exc
    except RecursionError:
        raise UnknownSchema(f"{what} is JSON nested too deep to be a schema") from None
    if not isinstance(schema, dict):
        raise UnknownSchema(f"{what} is a bare {type(schema).__name__}, not an Avro named type (a record)")
    return schema
