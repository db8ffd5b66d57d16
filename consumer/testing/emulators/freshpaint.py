"""Emulator of the Freshpaint HTTP API ``POST /track`` (seed 003 and destinations.md).

The real API answers 200 first and validates later; the emulator validates at once and answers 400 (or
401 for a wrong token) with a JSON body naming the field, so a test sees exactly which event its sender
got wrong. ``$insert_id`` de-duplication is exact: a repeat answers 200 and is counted, not stored.
"""

from __future__ import annotations

import re
from typing import Any, Final, Unpack

import orjson
from aiohttp import web

from consumer.testing.emulators.common import (
    JSON_CT,
    BaseEmulator,
    EmulatorOptions,
    decode_body,
    json_response,
    media_type,
)

TRACK_PATH: Final = "/track"
MAX_TIME_S: Final = 1e11  # above this an epoch value is in milliseconds (1e11 s is year 5138)
MAX_INSERT_ID_CHARS: Final = 36
_INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_NUMBER: Final = frozenset({int, float})
_OK_BODY: Final = b"{}"
_FAULT_BODY: Final = orjson.dumps({"error": "injected fault"})


class _Invalid(Exception):
    """One request the emulator refuses: ``status``, a message, the field at fault and a reason code."""

    def __init__(self, status: int, message: str, field: str | None, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.reason = reason

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            out["field"] = self.field
        return out


def _bad(field: str, message: str, reason: str) -> _Invalid:
    return _Invalid(400, f"{field} {message}", field, reason)


class FreshpaintEmulator(BaseEmulator):
    """Serves ``POST /track``: one JSON event object per request."""

    name = "freshpaint"

    def event_time_s(self, event: dict[str, Any]) -> float | None:
        properties = event.get("properties")
        at = properties.get("time") if isinstance(properties, dict) else None
        return float(at) if isinstance(at, int | float) else None

    def __init__(self, *, token: str, bad_token_status: int = 401, **options: Unpack[EmulatorOptions]) -> None:
        super().__init__(**options)
        self._token = token
        self._bad_token_status = bad_token_status
        self._seen_insert_ids: set[str] = set()

    def _reset_extra(self) -> None:
        self._seen_insert_ids.clear()

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        if path != TRACK_PATH or request.method != "POST":
            status = 404 if path != TRACK_PATH else 405
            self.commit(self.record(request, path, body, body, status), counts={"rejected": 1})
            headers = {"Allow": "POST"} if status == 405 else None
            return json_response(status, {"error": "not found" if status == 404 else "method not allowed"},
                                 headers)
        fault = self.faults.take(ping=False)
        if fault is not None:
            faulted = await self.apply_fault(request, fault, path, body, _FAULT_BODY)
            if faulted is not None:
                return faulted
        violations: list[str] = []
        content_type = media_type(request)
        if content_type != JSON_CT:
            violations.append(f"POST {TRACK_PATH}: Content-Type is {content_type or 'missing'!r}, "
                              f"expected {JSON_CT!r}")
        decoded = body
        event: Any = None
        try:
            decoded = self._decode(request, body, violations)
            event = self._parse(decoded, violations)
            insert_id = self._validate(event)
        except _Invalid as exc:
            status = exc.status
            self.commit(self.record(request, path, body, decoded, status),
                        dropped=[(event if event is not None else decoded[:200].decode("utf-8", "replace"),
                                  exc.reason)],
                        violations=violations, counts={"rejected": 1})
            return json_response(status, exc.body())
        duplicate = False
        if insert_id is not None:
            with self._lock:
                duplicate = insert_id in self._seen_insert_ids
                self._seen_insert_ids.add(insert_id)
        record = self.record(request, path, body, decoded, 200)
        if duplicate:
            self.commit(record, violations=violations, counts={"duplicates": 1})
        else:
            lines = [orjson.dumps(event)] if self._recorder is not None else None
            self.commit(record, accepted=[event], accepted_lines=lines, violations=violations)
        return web.Response(status=200, body=_OK_BODY, content_type=JSON_CT)

    @staticmethod
    def _decode(request: web.BaseRequest, body: bytes, violations: list[str]) -> bytes:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding != "gzip":
            violations.append(f"POST {TRACK_PATH}: unsupported Content-Encoding {encoding!r}")
            raise _Invalid(400, f"unsupported Content-Encoding {encoding!r}", None, "unsupported_encoding")
        try:
            return decode_body(body, "gzip")
        except ValueError as exc:
            raise _Invalid(400, str(exc), None, "undecodable_body") from exc

    @staticmethod
    def _parse(decoded: bytes, violations: list[str]) -> Any:
        try:
            event = orjson.loads(decoded)
        except orjson.JSONDecodeError as exc:
            raise _Invalid(400, "body is not valid JSON", None, "invalid_json") from exc
        if isinstance(event, list):
            violations.append(f"POST {TRACK_PATH}: body is a JSON array; /track takes one event object")
            raise _Invalid(400, "body is a JSON array; /track takes exactly one event object", None,
                           "json_array_body")
        if not isinstance(event, dict):
            raise _Invalid(400, "body must be a JSON object", None, "not_an_object")
        return event

    def _validate(self, event: dict[str, Any]) -> str | None:
        """Raise ``_Invalid`` for the first problem found; return the ``$insert_id`` (or None)."""
        name = event.get("event")
        if type(name) is not str or not name:
            raise _bad("event", "must be a non-empty string", "invalid_field:event")
        props = event.get("properties")
        if type(props) is not dict:
            raise _bad("properties", "must be an object", "invalid_field:properties")
        token = props.get("token")
        if type(token) is not str:
            raise _bad("properties.token", "must be a string", "invalid_field:properties.token")
        if token != self._token:
            raise _Invalid(self._bad_token_status, "invalid token", "properties.token", "bad_token")
        distinct_id = props.get("distinct_id")
        if type(distinct_id) is not str or not distinct_id:
            raise _bad("properties.distinct_id", "must be a non-empty string",
                       "invalid_field:properties.distinct_id")
        when: Any = props.get("time")
        if type(when) not in _NUMBER:
            raise _bad("properties.time", "must be a number (epoch seconds)", "invalid_field:properties.time")
        if when > MAX_TIME_S:
            raise _bad("properties.time", "looks like epoch milliseconds; send epoch seconds",
                       "time_in_milliseconds")
        insert_id = props.get("$insert_id")
        if "$insert_id" in props and (type(insert_id) is not str or not _INSERT_ID.fullmatch(insert_id)):
            raise _bad("properties.$insert_id", f"must be 1-{MAX_INSERT_ID_CHARS} characters of [A-Za-z0-9-]",
                       "invalid_field:properties.$insert_id")
        if name == "$identify" and type(props.get("$user_props")) is not dict:
            raise _bad("properties.$user_props", "must be an object on $identify events",
                       "invalid_field:properties.$user_props")
        if "$options" in props:
            options = props["$options"]
            integrations = options.get("integrations") if type(options) is dict else None
            if type(integrations) is not dict or any(type(v) is not bool for v in integrations.values()):
                raise _bad("properties.$options", "must be an object whose integrations maps names to "
                           "booleans", "invalid_field:properties.$options")
        return insert_id
