"""``usage-consumer ping``: can this configuration reach everything it needs, with the configured keys?

Checks, each independent of the others:

- **kafka**: the brokers answer a metadata request within ``kafka.startup_timeout_s`` and every configured
  topic and the dead-letter topic exist.
- **schema registry** (``confluent`` framing): one ``GET /subjects``.
- **freshsuccess**: ``POST /v1/ping`` (documented: 200 when the server is reachable; it carries no keys),
  then ``POST /v1/{authKey}/{apiKey}`` with an **empty body**: the documented answers are 200, or 400 for a
  wrong path (that is, wrong keys); an empty body holds no event, so nothing is recorded.
- **freshpaint**: the API validates events only after answering 200, so no request can prove the token
  right. ``event`` (default) posts one test event exactly like the consumer's requests, routed to no
  Freshpaint destination (``$options.integrations = {"All": false}``, documented), with a fixed
  ``$insert_id`` per day (documented de-duplication); a 2xx proves the URL, network and request shape, and
  the event shows in Freshpaint's Live View under the configured environment when the token is right.
  ``connect`` only opens a TCP (and TLS) connection and sends nothing.

Secrets never appear in the output: URLs are shown with the keys as ``***``, and error texts are redacted.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from consumer.app.startup import tls_context
from consumer.config import Settings
from consumer.decoding.decoder import registry_client
from consumer.errors import UsageConsumerError
from consumer.kafka.failures import kafka_error_text, kafka_failure_cause
from consumer.sinks.freshpaint import TRACK_PATH
from consumer.sinks.freshsuccess import MASKED_EVENT_PATH, PING_PATH, datacenter_url, event_path
from consumer.sinks.retry import redactor, split_base_url

FreshpaintCheck = Literal["event", "connect"]
PING_EVENT = "usage-consumer ping"
PING_DISTINCT_ID = "usage-consumer-ping"


@dataclass(frozen=True)
class CheckResult:
    check: str
    target: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "target": self.target, "ok": self.ok, "detail": self.detail}


def check_kafka(settings: Settings, timeout_s: float) -> CheckResult:
    target = settings.kafka.bootstrap_servers
    seen: list[KafkaError] = []  # authentication and TLS failures only reach the error callback
    try:
        admin = AdminClient({"log_level": 0, "error_cb": seen.append, **settings.kafka_client_config()})
    except KafkaException as exc:
        return CheckResult("kafka", target, False, f"the Kafka client refused its settings: "
                           f"{kafka_error_text(exc)}; check kafka.client_properties and the security settings")
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)
        cause = kafka_failure_cause(settings, seen)
        return CheckResult("kafka", target, False, cause or (
            f"no answer within {timeout_s:g}s ({kafka_error_text(exc)}); check kafka.bootstrap_servers, the "
            "network and the security settings"))
    wanted = (*settings.named_topics(), settings.kafka.dead_letter_topic)
    missing = [t for t in wanted if t not in metadata.topics or metadata.topics[t].error is not None]
    brokers = len(metadata.brokers)
    if missing:
        return CheckResult("kafka", target, False, f"{brokers} broker(s) answered, but topic(s) "
                           f"{', '.join(missing)} do not exist; create them or fix "
                           f"{'streams[].topics' if settings.streams else 'kafka.topics'} / "
                           "kafka.dead_letter_topic")
    topics = ", ".join(f"{t} ({len(metadata.topics[t].partitions)} partitions)" for t in wanted)
    return CheckResult("kafka", target, True, f"{brokers} broker(s); topics {topics}")


def check_registry(settings: Settings) -> list[CheckResult]:
    """The registry answers, and each stream's ``reader_schema_subject`` has the version it names."""
    try:
        client = registry_client(settings)
    except UsageConsumerError as exc:
        return [CheckResult("schema registry", settings.decoding.schema_registry_url or "-", False, str(exc))]
    with client:
        try:
            client.check()
        except UsageConsumerError as exc:
            return [CheckResult("schema registry", client.host, False,
                                f"{exc}; check decoding.schema_registry_url and that the registry is up")]
        results = [CheckResult("schema registry", client.host, True, "GET /subjects answered 200")]
        for stream in settings.stream_list():
            if stream.reader_schema_subject is None:
                continue
            target = f"stream {stream.name!r}: subject {stream.reader_schema_subject!r}"
            try:
                found = client.get_version(stream.reader_schema_subject, stream.reader_schema_version)
            except UsageConsumerError as exc:
                results.append(CheckResult("reader schema", target, False, str(exc)))
            else:
                results.append(CheckResult("reader schema", target, True,
                                           f"version {found.version} (id {found.schema_id})"))
    return results


def _verify(ca_bundle: Path | None, key: str, settings: Settings) -> ssl.SSLContext | bool:
    """The destination's TLS trust, as the sinks use it (``*.ca_bundle``, else the default store)."""
    return tls_context(ca_bundle, key=key, source=settings.source) or True


def check_freshsuccess(settings: Settings, timeout_s: float | None) -> list[CheckResult]:
    fs = settings.freshsuccess
    base, host = split_base_url(fs.base_url or datacenter_url(fs.datacenter), key="freshsuccess.base_url")
    timeout = timeout_s or fs.timeout_s
    results = []
    with httpx.Client(timeout=timeout, verify=_verify(fs.ca_bundle, "freshsuccess.ca_bundle", settings)) as client:
        try:
            status = client.post(base + PING_PATH, content=b"").status_code
            ok = 200 <= status < 300
            detail = f"POST /v1/ping answered {status}" + ("" if ok else "; check freshsuccess.base_url/datacenter")
        except httpx.HTTPError as exc:
            ok, detail = False, f"POST /v1/ping failed: {type(exc).__name__}; check the network and the base URL"
        results.append(CheckResult("freshsuccess", host, ok, detail))
        if fs.auth_key is None or fs.api_key is None:
            results.append(CheckResult("freshsuccess keys", host, False,
                                       "FRESHSUCCESS_AUTH_KEY and FRESHSUCCESS_API_KEY must both be set"))
            return results
        auth, api = fs.auth_key.get_secret_value(), fs.api_key.get_secret_value()
        redact = redactor((auth, api))

        url = base + event_path(auth, api)
        what = f"POST {MASKED_EVENT_PATH} with an empty body (no events)"
        try:
            status = client.post(url, content=b"", headers={"Content-Type": "application/json"}).status_code
        except httpx.HTTPError as exc:
            results.append(CheckResult("freshsuccess keys", host, False,
                                       f"{what} failed: {type(exc).__name__}: {redact(str(exc))}"))
            return results
        if 200 <= status < 300:
            results.append(CheckResult("freshsuccess keys", host, True, f"{what} answered {status}"))
        elif status in (400, 401, 403, 404):
            results.append(CheckResult("freshsuccess keys", host, False,
                                       f"{what} answered {status}: the auth key or the API key is wrong (400 is "
                                       "Freshsuccess's answer to a wrong path); check FRESHSUCCESS_AUTH_KEY, "
                                       "FRESHSUCCESS_API_KEY and freshsuccess.datacenter"))
        else:
            results.append(CheckResult("freshsuccess keys", host, False, f"{what} answered {status}"))
    return results


def freshpaint_ping_event(token: str, now_s: float) -> dict[str, Any]:
    """The test event: routed to no destination, one ``$insert_id`` per UTC day (repeats de-duplicate)."""
    day = time.strftime("%Y%m%d", time.gmtime(now_s))
    return {"event": PING_EVENT, "properties": {
        "distinct_id": PING_DISTINCT_ID, "time": round(now_s, 3), "$insert_id": f"usage-consumer-ping-{day}",
        "$options": {"integrations": {"All": False}}, "token": token}}


def check_freshpaint(settings: Settings, timeout_s: float | None, mode: FreshpaintCheck) -> CheckResult:
    fp = settings.freshpaint
    base, host = split_base_url(fp.base_url, key="freshpaint.base_url")
    timeout = timeout_s or fp.timeout_s
    verify = _verify(fp.ca_bundle, "freshpaint.ca_bundle", settings)
    if mode == "connect":
        return _connect(host, timeout, verify)
    if fp.token is None:
        return CheckResult("freshpaint", host, False, "FRESHPAINT_TOKEN is not set")
    token = fp.token.get_secret_value()
    redact = redactor((token,))
    body = orjson.dumps(freshpaint_ping_event(token, time.time()))
    what = f"POST /track '{PING_EVENT}' (routed to no destination)"
    try:
        with httpx.Client(timeout=timeout, verify=verify) as client:
            response = client.post(base + TRACK_PATH, content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return CheckResult("freshpaint", host, False, f"{what} failed: {type(exc).__name__}; check the network "
                                                      "and freshpaint.base_url")
    status = response.status_code
    if 200 <= status < 300:
        return CheckResult("freshpaint", host, True, f"{what} answered {status}; Freshpaint checks the token "
                                                     "after accepting: look for the event in Live View")
    text = redact(response.text)[:200].strip()
    if status in (401, 403):
        return CheckResult("freshpaint", host, False, f"{what} answered {status}: the token was refused; "
                                                      f"check FRESHPAINT_TOKEN{f' ({text})' if text else ''}")
    return CheckResult("freshpaint", host, False, f"{what} answered {status}{f': {text}' if text else ''}")


def _connect(host_url: str, timeout_s: float, verify: ssl.SSLContext | bool) -> CheckResult:
    url = httpx.URL(host_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    try:
        with socket.create_connection((url.host, port), timeout=timeout_s) as sock:
            if url.scheme == "https":
                with context.wrap_socket(sock, server_hostname=url.host):
                    pass
    except (OSError, ssl.SSLError) as exc:
        return CheckResult("freshpaint", host_url, False, f"could not connect: {exc}")
    return CheckResult("freshpaint", host_url, True,
                       "connected" + (" (TLS verified)" if url.scheme == "https" else "") + "; nothing sent")


def run_checks(settings: Settings, *, timeout_s: float | None = None,
               freshpaint_check: FreshpaintCheck = "event") -> list[CheckResult]:
    results = [check_kafka(settings, timeout_s or settings.kafka.startup_timeout_s)]
    if settings.decoding.framing == "confluent" or any(s.reader_schema_subject for s in settings.stream_list()):
        results.extend(check_registry(settings))
    if settings.freshsuccess.enabled:
        results.extend(check_freshsuccess(settings, timeout_s))
    if settings.freshpaint.enabled:
        results.append(check_freshpaint(settings, timeout_s, freshpaint_check))
    return results


def render_table(results: list[CheckResult]) -> str:
    rows = [("CHECK", "TARGET", "RESULT", "DETAIL")]
    rows.extend((r.check, r.target, "ok" if r.ok else "FAILED", r.detail) for r in results)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
             for row in rows]
    failed = sum(1 for r in results if not r.ok)
    lines.append("all checks passed" if not failed else f"{failed} of {len(results)} checks failed")
    return "\n".join(lines) + "\n"


def run_ping(settings: Settings, *, timeout_s: float | None, freshpaint_check: FreshpaintCheck, as_json: bool,
             out: Any) -> int:
    """Run every check, print one table (or JSON); 0 only when every check passed, else 1."""
    results = run_checks(settings, timeout_s=timeout_s, freshpaint_check=freshpaint_check)
    ok = all(r.ok for r in results)
    if as_json:
        out.write(orjson.dumps({"ok": ok, "checks": [r.as_json() for r in results]},
                               option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_table(results))
    return 0 if ok else 1
