"""A small Confluent-compatible Schema Registry emulator, for tests, the demo and the benchmarks.

It speaks the documented REST subset the consumer and producers use:

- ``POST /subjects/{subject}/versions`` ``{"schema": "<json>", "references": [...]}`` -> ``{"id": n}``; the
  same schema (with the same references) gets the same id under every subject (ids are global, as in
  Confluent's registry), and registering it again under a subject returns the existing version. References
  (``{"name", "subject", "version"}``) must name registered versions, and the schema must be valid with them;
- ``POST /subjects/{subject}`` ``{"schema": "<json>"}`` -> the version of that schema under the subject;
- ``GET /schemas/ids/{id}`` -> ``{"schema": "<json>"}`` (and ``"references"`` when it has any);
- ``GET /subjects``, ``GET /subjects/{subject}/versions``,
  ``GET /subjects/{subject}/versions/{version|latest}`` -> ``{"subject", "version", "id", "schema"}`` (and
  ``"references"``).

Answers use ``Content-Type: application/vnd.schemaregistry.v1+json``; errors are Confluent's
``{"error_code": 40403, "message": ...}`` shapes. Compatibility checks are not emulated: every valid
Avro schema is accepted. ``fail_with(503)`` makes every request fail until ``fail_with(None)``, to test
the consumer's transient-error path.

Runs on stdlib ``ThreadingHTTPServer`` in a daemon thread (:class:`SchemaRegistryEmulator`) or as a
process (:func:`main`, ``python -m consumer.testing.emulators.schema_registry --port 8081``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import structlog
from fastavro import parse_schema

from consumer.decoding.schemas import with_references
from consumer.testing.emulators.common import write_ready_file

log = structlog.get_logger(__name__)

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
STOP_TIMEOUT_S: Final = 10.0

# Confluent's error codes (https://docs.confluent.io/platform/current/schema-registry/develop/api.html)
SUBJECT_NOT_FOUND: Final = 40401
VERSION_NOT_FOUND: Final = 40402
SCHEMA_NOT_FOUND: Final = 40403
INVALID_SCHEMA: Final = 42201
INVALID_VERSION: Final = 42202

_SCHEMA_BY_ID = re.compile(r"/schemas/ids/(\d+)")
_SUBJECT_VERSIONS = re.compile(r"/subjects/([^/]+)/versions")
_SUBJECT_VERSION = re.compile(r"/subjects/([^/]+)/versions/([^/]+)")
_SUBJECT = re.compile(r"/subjects/([^/]+)")


class RegistryError(Exception):
    """An error answer: HTTP ``status`` with Confluent's ``error_code`` and message."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


Reference = dict[str, Any]
"""One schema reference as the REST API spells it: ``{"name", "subject", "version"}``."""


@dataclass(frozen=True, slots=True)
class _Schema:
    text: str
    references: tuple[tuple[str, str, int], ...] = ()

    def answer(self) -> dict[str, Any]:
        refs = [{"name": n, "subject": s, "version": v} for n, s, v in self.references]
        return {"schema": self.text, **({"references": refs} if refs else {})}


@dataclass(frozen=True, slots=True)
class _Version:
    version: int
    schema_id: int


class _State:
    """Schemas by id and subjects' versions, behind one lock (handlers run on many threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[int, _Schema] = {}  # id -> schema text as first registered, and its references
        self._ids: dict[tuple[str, tuple[tuple[str, str, int], ...]], int] = {}  # (normalized, refs) -> id
        self._subjects: dict[str, list[_Version]] = {}
        self._request_counts: Counter[str] = Counter()
        self.failure_status: int | None = None

    def count(self, key: str) -> None:
        with self._lock:
            self._request_counts[key] += 1

    def request_count(self, key: str) -> int:
        with self._lock:
            return self._request_counts[key]

    def register(self, subject: str, schema_text: str, references: list[Reference] | None = None) -> int:
        refs = _references(references or [])
        normalized = _normalize(schema_text, self._named(refs))
        with self._lock:
            schema_id = self._ids.get((normalized, refs))
            if schema_id is None:
                schema_id = len(self._schemas) + 1
                self._schemas[schema_id] = _Schema(schema_text, refs)
                self._ids[(normalized, refs)] = schema_id
            versions = self._subjects.setdefault(subject, [])
            if all(v.schema_id != schema_id for v in versions):
                versions.append(_Version(len(versions) + 1, schema_id))
            return schema_id

    def _named(self, refs: tuple[tuple[str, str, int], ...]) -> dict[str, dict[str, Any]]:
        """Each referenced schema by its reference name, and theirs in turn (what validating needs)."""
        named: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        while pending:
            name, subject, version = pending.pop()
            if name in named:
                continue
            try:
                schema = self._schemas[self.version(subject, str(version))["id"]]
            except RegistryError:
                raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: reference {name} names subject "
                                    f"'{subject}' version {version}, which is not registered") from None
            named[name] = json.loads(schema.text)
            pending += schema.references
        return named

    def lookup(self, subject: str, schema_text: str, references: list[Reference] | None = None) -> dict[str, Any]:
        refs = _references(references or [])
        normalized = _normalize(schema_text, self._named(refs))
        with self._lock:
            versions = self._subjects.get(subject)
            if versions is None:
                raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            schema_id = self._ids.get((normalized, refs))
            for v in versions:
                if v.schema_id == schema_id:
                    return self._describe(subject, v)
        raise RegistryError(404, SCHEMA_NOT_FOUND, "Schema not found")

    def schema(self, schema_id: int) -> dict[str, Any]:
        with self._lock:
            schema = self._schemas.get(schema_id)
        if schema is None:
            raise RegistryError(404, SCHEMA_NOT_FOUND, "Schema not found")
        return schema.answer()

    def subjects(self) -> list[str]:
        with self._lock:
            return sorted(self._subjects)

    def versions(self, subject: str) -> list[int]:
        with self._lock:
            versions = self._subjects.get(subject)
            if versions is None:
                raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            return [v.version for v in versions]

    def version(self, subject: str, version: str) -> dict[str, Any]:
        with self._lock:
            versions = self._subjects.get(subject)
            if versions is None:
                raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            if version in ("latest", "-1"):
                return self._describe(subject, versions[-1])
            if not version.isdigit() or int(version) < 1:
                raise RegistryError(
                    422, INVALID_VERSION,
                    f"The specified version '{version}' is not a valid version id. Allowed values are "
                    "between [1, 2^31-1] and the string \"latest\"",
                )
            for v in versions:
                if v.version == int(version):
                    return self._describe(subject, v)
        raise RegistryError(404, VERSION_NOT_FOUND, f"Version {version} not found.")

    def _describe(self, subject: str, v: _Version) -> dict[str, Any]:
        return {"subject": subject, "version": v.version, "id": v.schema_id, **self._schemas[v.schema_id].answer()}


def _references(references: list[Reference]) -> tuple[tuple[str, str, int], ...]:
    if not isinstance(references, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("subject"), str)
            and isinstance(r.get("version"), int) for r in references):
        raise RegistryError(422, INVALID_SCHEMA, "Invalid schema: references must be a list of "
                            "{\"name\", \"subject\", \"version\"}")
    return tuple((r["name"], r["subject"], r["version"]) for r in references)


def _normalize(schema_text: str, named: dict[str, dict[str, Any]]) -> str:
    """Validate an Avro schema (with the schemas it references) and return the form ids are assigned by (key
    order and spacing ignored)."""
    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as exc:
        raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: not JSON ({exc.msg})") from exc
    try:
        if named:
            with_references(schema, named)
        else:
            parse_schema(schema)
    except Exception as exc:  # fastavro raises many types for an invalid schema
        raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: {exc}") from exc
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the real registry and httpx expect

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        path = urlsplit(self.path).path.rstrip("/") or "/"
        state.count(f"{method} {path}")
        body = self._read_body()
        if body is None:
            return
        failure = state.failure_status
        if failure is not None:
            self._send(failure, {"error_code": failure * 100 + 1, "message": "injected failure"})
            return
        try:
            status, payload = _route(state, method, path, body)
        except RegistryError as exc:
            self._send(exc.status, {"error_code": exc.error_code, "message": str(exc)})
            return
        self._send(status, payload)

    def _read_body(self) -> bytes | None:
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(400, {"error_code": 400, "message": "bad Content-Length"})
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _route(state: _State, method: str, path: str, body: bytes) -> tuple[int, Any]:
    if method == "GET":
        if match := _SCHEMA_BY_ID.fullmatch(path):
            return 200, state.schema(int(match.group(1)))
        if path == "/subjects":
            return 200, state.subjects()
        if match := _SUBJECT_VERSIONS.fullmatch(path):
            return 200, state.versions(unquote(match.group(1)))
        if match := _SUBJECT_VERSION.fullmatch(path):
            return 200, state.version(unquote(match.group(1)), unquote(match.group(2)))
    elif method == "POST":
        if match := _SUBJECT_VERSIONS.fullmatch(path):
            return 200, {"id": state.register(unquote(match.group(1)), *_schema_and_references(body))}
        if match := _SUBJECT.fullmatch(path):
            return 200, state.lookup(unquote(match.group(1)), *_schema_and_references(body))
    raise RegistryError(404, 404, "HTTP 404 Not Found")


def _schema_and_references(body: bytes) -> tuple[str, list[Reference]]:
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(400, 400, "the body must be JSON: {\"schema\": \"...\"}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("schema"), str):
        raise RegistryError(422, INVALID_SCHEMA, "the body must be {\"schema\": \"<schema as a JSON string>\"}")
    schema_type = request.get("schemaType", "AVRO")
    if schema_type != "AVRO":
        raise RegistryError(422, INVALID_SCHEMA, f"only AVRO schemas are emulated, not {schema_type}")
    schema: str = request["schema"]
    return schema, request.get("references") or []


class _Server(ThreadingHTTPServer):
    """Tracks open connections so :meth:`close_connections` can end keep-alive ones on stop: otherwise a
    pooled client connection would keep being served by its handler thread after the server stopped."""

    daemon_threads = True
    state: _State

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SchemaRegistryEmulator:
    """The emulator served from a daemon thread on ``host`` (127.0.0.1) and ``port`` (0 = a free one).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``url`` is valid once started.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> SchemaRegistryEmulator:
        if self._server is not None:
            raise RuntimeError("schema registry emulator already started")
        server = _Server((self._host, self._port))
        server.state = self._state
        self._server = server
        self.url = f"http://{self._host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="schema-registry-emulator",
            daemon=True,
        )
        self._thread.start()
        log.info("schema_registry_emulator_started", url=self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
        log.info("schema_registry_emulator_stopped", url=self.url)

    def __enter__(self) -> SchemaRegistryEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("schema registry emulator not started")
        return int(self._server.server_address[1])

    def fail_with(self, status: int | None = 503) -> None:
        """Answer every request with ``status`` (and a registry error body) until ``fail_with(None)``."""
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"failure status must be 400-599, got {status}")
        self._state.failure_status = status

    def register(self, subject: str, schema: dict[str, Any] | str, references: list[Reference] | None = None) -> int:
        """Register directly (no HTTP), as ``POST /subjects/{subject}/versions`` would; return the id."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return self._state.register(subject, text, references)

    def request_count(self, method: str, path: str) -> int:
        """How many ``method path`` requests arrived, failed ones included, e.g. ``("GET", "/schemas/ids/1")``."""
        return self._state.request_count(f"{method} {path}")

    def __repr__(self) -> str:
        return f"SchemaRegistryEmulator(url={self.url!r})"


# ---------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.testing.emulators.schema_registry",
        description="Run a small Confluent-compatible Schema Registry emulator until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--ready-file", type=Path, default=None,
                        help='write {"schema_registry_url", "pid"} as JSON here once listening')
    parser.add_argument("--register", action="append", default=[], metavar="SUBJECT=PATH",
                        help="register the .avsc at PATH under SUBJECT at start-up (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the emulator as a process; returns the exit code."""
    args = _parser().parse_args(argv)
    preload: list[tuple[str, str]] = []
    for item in args.register:
        subject, sep, path = item.partition("=")
        if not sep or not subject or not path:
            print(f"schema registry emulator: --register wants SUBJECT=PATH, got {item!r}", file=sys.stderr)
            return 2
        try:
            preload.append((subject, Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            print(f"schema registry emulator: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    emulator = SchemaRegistryEmulator(host=args.host, port=args.port)
    for subject, text in preload:
        try:
            schema_id = emulator.register(subject, text)
        except RegistryError as exc:
            print(f"schema registry emulator: cannot register {subject}: {exc}", file=sys.stderr)
            return 2
        print(f"registered {subject} as schema id {schema_id}", flush=True)
    try:
        emulator.start()
    except OSError as exc:
        print(f"schema registry emulator: could not listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, {"schema_registry_url": emulator.url, "pid": os.getpid()})
        print(f"schema registry emulator ready at {emulator.url}", flush=True)
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
