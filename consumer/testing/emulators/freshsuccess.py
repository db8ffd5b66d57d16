"""Emulator of the Freshsuccess Event REST API (seed 000 and destinations.md).

``POST /v1/{authKey}/{apiKey}`` takes newline-delimited JSON events, optionally gzip- or deflate-encoded,
and answers 200 or 400 with no body. Like the real server it drops invalid events silently; unlike it,
the emulator remembers each dropped event with a reason and each protocol deviation as a violation, so
tests can prove the sender validated and framed its batches correctly.
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
    media_type,
)

PING_PATH: Final = "/v1/ping"
EVENT_PATH_LABEL: Final = "/v1/<authKey>/<apiKey>"
ACTIONS: Final = ("feature", "moduleEnd", "sessionSync", "identifyUser", "identifyAccount")
MIN_CREATED_AT_MS: Final = 1e11  # below this an epoch value is in seconds (1e11 ms is March 1973)

_STR: Final = frozenset({str})
_NUMBER: Final = frozenset({int, float})
_OBJECT: Final = frozenset({dict})

# Per action, the extra properties it needs and their JSON types.
_ACTION_FIELDS: Final[dict[str, tuple[tuple[str, frozenset[type]], ...]]] = {
    "feature": (("feature", _STR), ("module", _STR), ("total", _NUMBER)),
    "moduleEnd": (("module", _STR), ("timeSpent", _NUMBER)),
    "sessionSync": (("activeDuration", _NUMBER),),
    "identifyUser": (("details", _OBJECT),),
    "identifyAccount": (("details", _OBJECT),),
}
_BASE_STR_FIELDS: Final = ("accountId", "userId", "sessionId", "action")
_NON_EMPTY_FIELDS: Final = ("accountId", "userId")
_ARRAY_BODY = re.compile(rb"[ \t\r\n]*\[")
_PREVIEW_CHARS: Final = 200


def check_event(event: Any) -> str | None:
    """Return why Freshsuccess would drop ``event``, or None when it is valid.

    Reasons are stable codes: ``not_an_object``, ``missing_field:X``, ``wrong_type:X``, ``empty_field:X``,
    ``createdAt_in_seconds``, ``unknown_action:X``.
    """
    if type(event) is not dict:
        return "not_an_object"
    for name in _BASE_STR_FIELDS:
        value = event.get(name)
        if value is None:
            return f"missing_field:{name}"
        if type(value) is not str:
            return f"wrong_type:{name}"
    for name in _NON_EMPTY_FIELDS:
        if not event[name]:
            return f"empty_field:{name}"
    created_at = event.get("createdAt")
    if created_at is None:
        return "missing_field:createdAt"
    if type(created_at) not in _NUMBER:
        return "wrong_type:createdAt"
    if created_at < MIN_CREATED_AT_MS:
        return "createdAt_in_seconds"
    action = event["action"]
    fields = _ACTION_FIELDS.get(action)
    if fields is None:
        return f"unknown_action:{action}"
    for name, kinds in fields:
        value = event.get(name)
        if value is None:
            return f"missing_field:{name}"
        if type(value) not in kinds:
            return f"wrong_type:{name}"
    return None


def _preview(raw: bytes) -> str:
    return raw[:_PREVIEW_CHARS].decode("utf-8", "replace")


class FreshsuccessEmulator(BaseEmulator):
    """Serves ``/v1/ping`` and ``/v1/{authKey}/{apiKey}``; keys are kept out of reprs and records."""

    name = "freshsuccess"

    def event_time_s(self, event: dict[str, Any]) -> float | None:
        created = event.get("createdAt")
        return created / 1000 if isinstance(created, int | float) else None

    def __init__(self, *, auth_key: str, api_key: str, **options: Unpack[EmulatorOptions]) -> None:
        super().__init__(**options)
        self._auth_key = auth_key
        self._api_key = api_key
        self._event_path = f"/v1/{auth_key}/{api_key}"

    def event_path(self) -> str:
        """The path the sender must post to (contains both keys: do not log it)."""
        return self._event_path

    def _label(self, path: str) -> str:
        """The path as recorded: keys replaced by placeholders, saying which one was wrong."""
        if path == self._event_path:
            return EVENT_PATH_LABEL
        if path == PING_PATH or path == "/v1/":
            return path
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "v1":
            auth = "<authKey>" if parts[2] == self._auth_key else "<wrong authKey>"
            api = "<apiKey>" if parts[3] == self._api_key else "<wrong apiKey>"
            return f"/v1/{auth}/{api}"
        return f"<other path, {len(parts) - 1} segments>"

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        label = self._label(path)
        body = await request.read()
        if request.method != "POST":
            self.commit(self.record(request, label, body, body, 400), counts={"rejected": 1})
            return web.Response(status=400)
        is_ping = path == PING_PATH
        fault = self.faults.take(ping=is_ping)
        if fault is not None:
            faulted = await self.apply_fault(request, fault, label, body, b"")
            if faulted is not None:
                return faulted
        if is_ping:
            self.commit(self.record(request, label, body, body, 200))
            return web.Response(status=200)
        if path != self._event_path:
            self.commit(self.record(request, label, body, body, 400), counts={"rejected": 1})
            return web.Response(status=400)
        return self._ingest(request, body)

    def _ingest(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        violations: list[str] = []
        where = f"POST {EVENT_PATH_LABEL}"
        headers = request.headers
        if "Content-Length" not in headers:
            chunked = headers.get("Transfer-Encoding", "")
            violations.append(f"{where}: no Content-Length header"
                              + (f" (Transfer-Encoding: {chunked})" if chunked else ""))
        content_type = media_type(request)
        if content_type != JSON_CT:
            violations.append(f"{where}: Content-Type is {content_type or 'missing'!r}, "
                              f"expected {JSON_CT!r}")
        encoding = headers.get("Content-Encoding", "").strip().lower()
        try:
            decoded = decode_body(body, encoding)
        except ValueError as exc:
            violations.append(f"{where}: {exc}; every event in it was dropped")
            self.commit(self.record(request, EVENT_PATH_LABEL, body, b"", 200),
                        dropped=[(_preview(body), f"undecodable_body:{encoding}")], violations=violations)
            return web.Response(status=200)
        accepted: list[dict[str, Any]] = []
        lines: list[bytes] = []
        dropped: list[tuple[Any, str]] = []
        if _ARRAY_BODY.match(decoded) and self._drop_array(decoded, dropped):
            violations.append(f"{where}: body is a JSON array; events must be JSON objects separated "
                              f"by newlines, so all {len(dropped)} were dropped")
        else:
            self._parse_lines(decoded, accepted, lines, dropped)
        self.commit(self.record(request, EVENT_PATH_LABEL, body, decoded, 200), accepted=accepted,
                    accepted_lines=lines, dropped=dropped, violations=violations)
        return web.Response(status=200)

    @staticmethod
    def _drop_array(decoded: bytes, dropped: list[tuple[Any, str]]) -> bool:
        """If the whole body is one JSON array, drop its items and return True."""
        try:
            items = orjson.loads(decoded)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(items, list):
            return False
        dropped.extend((item, "json_array_body") for item in items)
        if not items:
            dropped.append(([], "json_array_body"))
        return True

    def _parse_lines(self, decoded: bytes, accepted: list[dict[str, Any]], lines: list[bytes],
                     dropped: list[tuple[Any, str]]) -> None:
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        check = check_event
        keep_lines = self._recorder is not None
        for line in decoded.split(b"\n"):
            if not line or line.isspace():
                continue
            try:
                event = loads(line)
            except decode_error:
                dropped.append((_preview(line), "invalid_json"))
                continue
            reason = check(event)
            if reason is None:
                accepted.append(event)
                if keep_lines:
                    lines.append(line.strip())
            else:
                dropped.append((event, reason))
