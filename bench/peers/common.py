"""What both peers of ``make bench`` share: the Confluent-framed Avro decoder, the Freshsuccess mapping and the
gzip NDJSON POST, written the way a user of Quix Streams or sentry-arroyo would write them by hand.

It runs in the peers' own virtual environments (``.venv-peers/*``, built from ``bench/requirements-peers-*.txt``),
so it imports nothing from usage-consumer: only the standard library, fastavro, orjson and httpx.

- :class:`ConfluentAvroDecoder`: the fastest plain path: check the magic byte, read the 4-byte schema id, fetch
  that schema from the registry once (``GET /schemas/ids/{id}``), parse it once (logical types stripped, so
  ``timestamp-millis`` stays an ``int`` of epoch milliseconds, as usage-consumer reads it) and call
  ``fastavro.schemaless_reader`` with no reader schema (no resolution). Every field is decoded.
- :func:`freshsuccess_action`: the Freshsuccess action usage-consumer's packaged mapping
  (``consumer/defaults/mapping.yaml``) makes of a ``UsageEvent``, written out by hand: the same dict for the
  five mapped event types, None for the rest (page views have no Freshsuccess rule) and for events the
  consumer would dead-letter (a required field null).
- :class:`FreshsuccessPoster`: one gzip NDJSON POST per batch (``orjson`` per line, ``gzip`` level 1 as
  usage-consumer's ``freshsuccess.compress_level`` default, stdlib zlib: what a user has without extra
  packages) to ``/v1/{authKey}/{apiKey}``; says whether the answer was a success, a retryable refusal (429,
  5xx, connection errors) or a fatal one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import urllib.request
from io import BytesIO
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from fastavro import parse_schema, schemaless_reader

BATCH_EVENTS = 2000
"""usage-consumer's ``batching.max_events`` default: Freshsuccess actions per POST."""
COMPRESS_LEVEL = 1
"""usage-consumer's ``freshsuccess.compress_level`` default."""

_MAGIC = 0
_ID = struct.Struct(">I")


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: (v if k == "default" else _strip_logical_types(v)) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(item) for item in schema]
    return schema


class ConfluentAvroDecoder:
    """``value bytes -> dict`` for Confluent-framed Avro; one registry request per schema id, ever."""

    def __init__(self, registry_url: str) -> None:
        self.registry_url = registry_url.rstrip("/")
        self._schemas: dict[int, Any] = {}

    def schema(self, schema_id: int) -> Any:
        parsed = self._schemas.get(schema_id)
        if parsed is None:
            with urllib.request.urlopen(f"{self.registry_url}/schemas/ids/{schema_id}", timeout=10) as answer:
                text = json.loads(answer.read())["schema"]
            parsed = self._schemas[schema_id] = parse_schema(_strip_logical_types(json.loads(text)))
        return parsed

    def __call__(self, value: bytes) -> dict[str, Any]:
        if len(value) < 5 or value[0] != _MAGIC:
            raise ValueError("not Confluent-framed Avro (magic byte 0 + 4-byte schema id)")
        schema_id = _ID.unpack_from(value, 1)[0]
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema = self.schema(schema_id)
        fo = BytesIO(value)
        fo.seek(5)
        record: dict[str, Any] = schemaless_reader(fo, schema, None)
        return record


def freshsuccess_action(event: dict[str, Any]) -> dict[str, Any] | None:
    """The Freshsuccess action of ``event`` (a decoded UsageEvent), or None when it has none."""
    kind = event["event_type"]
    session = event["session_id"]
    action: dict[str, Any] = {"accountId": event["account_id"], "userId": event["user_id"],
                              "createdAt": event["occurred_at"]}
    if kind == "feature_used":
        feature = event["feature"]
        if feature is None:
            return None
        action["action"] = "feature"
        action["sessionId"] = event["user_id"] if session is None else session
        action["feature"] = feature
        module = event["module"]
        action["module"] = "core" if module is None else module
        count = event["count"]
        action["total"] = 1 if count is None else count
        product = event["product"]
        if product is not None:
            action["product"] = product
        return action
    if kind == "module_ended":
        duration = event["duration_ms"]
        if duration is None:
            return None
        action["action"] = "moduleEnd"
        action["sessionId"] = event["user_id"] if session is None else session
        module = event["module"]
        action["module"] = "core" if module is None else module
        action["timeSpent"] = duration
        return action
    if kind == "session_synced":
        duration = event["duration_ms"]
        if duration is None:
            return None
        action["action"] = "sessionSync"
        action["sessionId"] = event["user_id"] if session is None else session
        action["activeDuration"] = duration
        return action
    if kind == "user_identified":
        user = event["user"]
        if user is None:
            return None
        action["action"] = "identifyUser"
        action["sessionId"] = event["user_id"] if session is None else session
        details = _details(user["attributes"], (("name", user["name"]), ("email", user["email"]),
                                                ("role", user["role"]), ("createdAt", user["created_at"])))
        if not details:
            return None
        action["details"] = details
        return action
    if kind == "account_identified":
        account = event["account"]
        if account is None:
            return None
        action["action"] = "identifyAccount"
        action["sessionId"] = event["user_id"] if session is None else session
        details = _details(account["attributes"], (("name", account["name"]), ("plan", account["plan"]),
                                                   ("mrr", account["mrr"]), ("createdAt", account["created_at"])))
        if not details:
            return None
        action["details"] = details
        return action
    return None


def _details(attributes: dict[str, str], named: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The free-form attributes first, then the named fields (which win on a clash); nulls left out (an empty
    result is no details: usage-consumer dead-letters such an event, the peers skip it)."""
    details: dict[str, Any] = {k: v for k, v in attributes.items() if v is not None}
    for key, value in named:
        if value is not None:
            details[key] = value
    return details


class Refused(Exception):
    """Freshsuccess did not take the batch; ``retryable`` says whether sending it again can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class FreshsuccessPoster:
    """POSTs batches of actions as gzip NDJSON to the Freshsuccess Event API (a sync httpx client)."""

    def __init__(self, base_url: str, auth_key: str, api_key: str, *, level: int = COMPRESS_LEVEL,
                 timeout_s: float = 30.0) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/{quote(auth_key, safe='')}/{quote(api_key, safe='')}"
        self.level = level
        self.client = httpx.Client(timeout=timeout_s)
        self.headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    def body(self, actions: Any) -> bytes:
        """The gzip NDJSON body of ``actions`` (an iterable of dicts)."""
        dumps = orjson.dumps
        ndjson = b"\n".join([dumps(action) for action in actions]) + b"\n"
        return gzip.compress(ndjson, self.level, mtime=0)

    def post(self, actions: Any) -> None:
        """Send one batch; raise :class:`Refused` unless Freshsuccess answered 2xx."""
        try:
            response = self.client.post(self.url, content=self.body(actions), headers=self.headers)
        except httpx.TransportError as exc:
            raise Refused(f"Freshsuccess unreachable: {type(exc).__name__}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        retry_after = response.headers.get("retry-after", "")
        wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 1.0
        if status == 429 or status >= 500 or status == 408:
            raise Refused(f"Freshsuccess answered HTTP {status}", retryable=True, retry_after_s=wait)
        raise Refused(f"Freshsuccess answered HTTP {status}", retryable=False)

    def close(self) -> None:
        self.client.close()


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The options every peer takes: where to read, where to post, and the batch shape usage-consumer uses."""
    parser = argparse.ArgumentParser(description=description)
    for option in ("--bootstrap", "--topic", "--group", "--registry", "--freshsuccess-url", "--auth-key",
                   "--api-key"):
        parser.add_argument(option, required=True)
    parser.add_argument("--batch-events", type=int, default=BATCH_EVENTS)
    parser.add_argument("--compress-level", type=int, default=COMPRESS_LEVEL)
    return parser
