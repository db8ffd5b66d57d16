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

Credentials (``auth`` or user-info in the URL) never appear in logs, errors or reprs: only the host does.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import structlog

from consumer.errors import FatalError, TransientError, UnknownSchema
from consumer.sinks.retry import parse_retry_after, status_kind

__all__ = ["REGISTRY_CONTENT_TYPE", "SchemaRegistryClient"]

log = structlog.get_logger(__name__)

REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = f"{REGISTRY_CONTENT_TYPE}, application/vnd.schemaregistry+json; q=0.9, application/json; q=0.5"
_SCHEMA_NOT_FOUND = 40403


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
        self._client = httpx.Client(
            base_url=base,
            timeout=timeout_s,
            auth=auth,
            transport=transport,
            headers={"Accept": _ACCEPT},
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
        body = self._json_object(response, f"fetching schema id {schema_id}")
        schema_text = body.get("schema")
        if not isinstance(schema_text, str):
            raise FatalError(
                f"schema registry at {self.host} answered schema id {schema_id} without a 'schema' string: "
                "is the registry URL right?"
            )
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise UnknownSchema(f"schema id {schema_id} is a {schema_type} schema, not Avro")
        if body.get("references"):
            raise UnknownSchema(f"schema id {schema_id} uses schema references, which are not supported")
        try:
            schema = json.loads(schema_text)
        except json.JSONDecodeError as exc:
            raise UnknownSchema(f"schema id {schema_id} is not valid JSON: {exc.msg}") from exc
        except RecursionError:
            raise UnknownSchema(f"schema id {schema_id} is JSON nested too deep to be a schema") from None
        if not isinstance(schema, dict):
            raise UnknownSchema(
                f"schema id {schema_id} is a bare {type(schema).__name__}, not an Avro named type (a record)"
            )
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
