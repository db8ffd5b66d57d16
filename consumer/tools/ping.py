"""``usage-consumer ping``: can this configuration reach everything it needs, with the configured keys?

By default nothing is created in either destination. Checks, each independent of the others, one row each
(the CHECK column names the check that ran):

- **kafka**: the brokers answer a metadata request within ``kafka.startup_timeout_s`` and every configured
  topic and the dead-letter topic exist.
- **schema registry** (``confluent`` framing): one ``GET /subjects``.
- **freshsuccess ping**: ``POST /v1/ping`` through the sink's own client and trust (DNS, TCP, TLS with
  certificate verification); documented: 200 when the server is reachable, no keys, nothing recorded.
- **freshsuccess keys**: ``POST /v1/{authKey}/{apiKey}`` with an **empty body**. The documented answers are 200,
  or 400 for a wrong path (that is, wrong keys); what the API records is the events in the body (JSON objects,
  one per line), and an empty body holds none, so nothing is recorded.
- **freshpaint connect** (default): DNS, TCP connect and the TLS handshake with certificate and host name
  verification, with the Freshpaint sink's trust; no HTTP request. Freshpaint documents only ``POST /track``,
  which records what it receives and validates it only after answering 200, so no documented request both
  creates nothing and proves anything about the token or the path: this check proves the route and TLS trust
  only.
- **freshpaint event** (``--freshpaint-check event``, explicit): posts one test event exactly like the
  consumer's requests, which creates the event ``usage-consumer ping`` for the user ``usage-consumer-ping``,
  routed to no Freshpaint destination (``$options.integrations = {"All": false}``, documented), with a fixed
  ``$insert_id`` per UTC day (documented de-duplication: repeats that day add nothing). A 2xx proves the URL,
  network, TLS and request shape; the event shows in Live View under the configured environment when the
  token is right.

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
from consumer.errors import FatalError, UsageConsumerError
from consumer.kafka.failures import kafka_error_text, metadata_or_refusal
from consumer.sinks.freshpaint import TRACK_PATH
from consumer.sinks.freshsuccess import MASKED_EVENT_PATH, PING_PATH, datacenter_url, event_path
from consumer.sinks.retry import redactor, split_base_url

FreshpaintCheck = Literal["connect", "event"]
PING_EVENT = "usage-consumer ping"
PING_DISTINCT_ID = "usage-consumer-ping"

# The CHECK column: which check ran.
FRESHSUCCESS_PING = "freshsuccess ping"
FRESHSUCCESS_KEYS = "freshsuccess keys"
FRESHPAINT_CONNECT = "freshpaint connect"
FRESHPAINT_EVENT = "freshpaint event"


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
    try:  # a refused login or certificate ends the wait at once
        metadata = metadata_or_refusal(admin, settings, seen, timeout_s)
    except FatalError as exc:
        return CheckResult("kafka", target, False, str(exc))
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


def network_failure(exc: BaseException, host: str) -> str | None:
    """The step that failed behind a connection error (DNS, TCP connect or TLS), read off the exception chain."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> socket/ssl: a short chain
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return f"DNS: {host} does not resolve ({seen.strerror or seen})"
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: certificate verification failed ({seen.verify_message or seen.reason or seen})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: handshake failed ({seen.reason or seen})"
        if isinstance(seen, TimeoutError | httpx.TimeoutException):
            return "timed out"
        if isinstance(seen, ConnectionRefusedError):
            return "TCP: connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return f"TCP: {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return None


def _failed(what: str, exc: BaseException, host: str, hint: str) -> str:
    step = network_failure(exc, host)
    return f"{what} failed: {type(exc).__name__}{f', {step}' if step else ''}; {hint}"


def _address(sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_connection(host_url: str, timeout_s: float, verify: ssl.SSLContext | bool) -> tuple[bool, str]:
    """DNS, TCP connect and, for ``https``, a TLS handshake verifying the certificate and the host name, with
    the trust the Freshpaint sink uses. No byte of HTTP is sent. Returns (ok, what was proved or what failed).
    """
    url = httpx.URL(host_url)
    host = url.host.rstrip(".")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return False, f"DNS: {host} does not resolve ({exc.strerror or exc})"
    dns = f"DNS: {len({a[4][0] for a in found})} address(es)"
    sock: socket.socket | None = None
    refused: list[str] = []
    for family, kind, proto, _name, sockaddr in found:
        candidate = socket.socket(family, kind, proto)
        candidate.settimeout(timeout_s)
        try:
            candidate.connect(sockaddr)
        except OSError as exc:
            candidate.close()
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
            refused.append(f"{_address(sockaddr)} {why}")
            continue
        sock, peer = candidate, _address(sockaddr)
        break
    if sock is None:
        return False, f"{dns}; TCP: could not connect ({', '.join(refused)})"
    with sock:
        if url.scheme != "https":
            return True, f"{dns}; TCP: {peer} connected; plain http, no TLS to check"
        context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            return False, (f"{dns}; TCP: {peer} connected; TLS: certificate verification failed "
                           f"({exc.verify_message or exc.reason or exc})")
        except TimeoutError:
            return False, f"{dns}; TCP: {peer} connected; TLS: handshake timed out"
        except (ssl.SSLError, OSError) as exc:
            why = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else exc.strerror or str(exc)
            return False, f"{dns}; TCP: {peer} connected; TLS: handshake failed ({why})"
    return True, f"{dns}; TCP: {peer} connected; TLS: {version}, certificate verified for {host}"


def _tls_note(response: httpx.Response) -> str:
    """How the answered request was carried: every https answer went through a verified certificate."""
    if response.url.scheme != "https":
        return "plain http, no TLS"
    stream = response.extensions.get("network_stream")
    tls = stream.get_extra_info("ssl_object") if stream is not None else None
    version = getattr(tls, "version", None)  # an ssl object (its type differs between httpcore's backends)
    name = version() if callable(version) else None
    return f"TLS{f' {name}' if isinstance(name, str) else ''}, certificate verified"


def check_freshsuccess(settings: Settings, timeout_s: float | None) -> list[CheckResult]:
    """``POST /v1/ping`` (reachability, TLS), then the keys with an empty-body ``POST /v1/{authKey}/{apiKey}``.
    Neither creates anything: the ping carries no keys, and the empty body holds no event."""
    fs = settings.freshsuccess
    base, host = split_base_url(fs.base_url or datacenter_url(fs.datacenter), key="freshsuccess.base_url")
    hostname = httpx.URL(host).host
    timeout = timeout_s or fs.timeout_s
    results = []
    with httpx.Client(timeout=timeout, verify=_verify(fs.ca_bundle, "freshsuccess.ca_bundle", settings)) as client:
        try:
            response = client.post(base + PING_PATH, content=b"")
            status = response.status_code
            ok = 200 <= status < 300
            detail = (f"POST /v1/ping answered {status} ({_tls_note(response)})"
                      + ("" if ok else "; check freshsuccess.base_url/datacenter"))
        except httpx.HTTPError as exc:
            ok, detail = False, _failed("POST /v1/ping", exc, hostname, "check the network, freshsuccess.base_url "
                                        "and freshsuccess.ca_bundle")
        results.append(CheckResult(FRESHSUCCESS_PING, host, ok, detail))
        if fs.auth_key is None or fs.api_key is None:
            results.append(CheckResult(FRESHSUCCESS_KEYS, host, False,
                                       "FRESHSUCCESS_AUTH_KEY and FRESHSUCCESS_API_KEY must both be set"))
            return results
        auth, api = fs.auth_key.get_secret_value(), fs.api_key.get_secret_value()
        redact = redactor((auth, api))

        url = base + event_path(auth, api)
        what = f"POST {MASKED_EVENT_PATH} with an empty body (no events)"
        try:
            status = client.post(url, content=b"", headers={"Content-Type": "application/json"}).status_code
        except httpx.HTTPError as exc:
            results.append(CheckResult(FRESHSUCCESS_KEYS, host, False,
                                       redact(_failed(what, exc, hostname, "check the network"))))
            return results
        if 200 <= status < 300:
            results.append(CheckResult(FRESHSUCCESS_KEYS, host, True, f"{what} answered {status}"))
        elif status in (400, 401, 403, 404):
            results.append(CheckResult(FRESHSUCCESS_KEYS, host, False,
                                       f"{what} answered {status}: the auth key or the API key is wrong (400 is "
                                       "Freshsuccess's answer to a wrong path); check FRESHSUCCESS_AUTH_KEY, "
                                       "FRESHSUCCESS_API_KEY and freshsuccess.datacenter"))
        else:
            results.append(CheckResult(FRESHSUCCESS_KEYS, host, False, f"{what} answered {status}"))
    return results


def ping_insert_id(now_s: float) -> str:
    """The test event's ``$insert_id``: one per UTC day, so repeats that day are de-duplicated."""
    return f"usage-consumer-ping-{time.strftime('%Y%m%d', time.gmtime(now_s))}"


def freshpaint_ping_event(token: str, now_s: float) -> dict[str, Any]:
    """The test event: routed to no destination, one ``$insert_id`` per UTC day (repeats de-duplicate)."""
    return {"event": PING_EVENT, "properties": {
        "distinct_id": PING_DISTINCT_ID, "time": round(now_s, 3), "$insert_id": ping_insert_id(now_s),
        "$options": {"integrations": {"All": False}}, "token": token}}


def ping_event_description(now_s: float) -> str:
    """What ``--freshpaint-check event`` creates, as the result line says it."""
    return (f"the event '{PING_EVENT}' for the user (distinct_id) '{PING_DISTINCT_ID}', routed to no "
            f"destination ($options.integrations {{\"All\": false}}), $insert_id {ping_insert_id(now_s)} "
            "(one per UTC day: repeats that day are de-duplicated)")


def check_freshpaint(settings: Settings, timeout_s: float | None, mode: FreshpaintCheck) -> CheckResult:
    fp = settings.freshpaint
    base, host = split_base_url(fp.base_url, key="freshpaint.base_url")
    timeout = timeout_s or fp.timeout_s
    verify = _verify(fp.ca_bundle, "freshpaint.ca_bundle", settings)
    if mode == "connect":
        return _connect(host, timeout, verify, token_set=fp.token is not None)
    if fp.token is None:
        return CheckResult(FRESHPAINT_EVENT, host, False, "FRESHPAINT_TOKEN is not set; nothing sent")
    token = fp.token.get_secret_value()
    redact = redactor((token,))
    now_s = time.time()
    body = orjson.dumps(freshpaint_ping_event(token, now_s))
    what = f"POST /track '{PING_EVENT}' (user '{PING_DISTINCT_ID}', routed to no destination)"
    try:
        with httpx.Client(timeout=timeout, verify=verify) as client:
            response = client.post(base + TRACK_PATH, content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return CheckResult(FRESHPAINT_EVENT, host, False,
                           redact(_failed(what, exc, httpx.URL(host).host, "check the network, "
                                          "freshpaint.base_url and freshpaint.ca_bundle")))
    status = response.status_code
    if 200 <= status < 300:
        return CheckResult(FRESHPAINT_EVENT, host, True,
                           f"POST /track answered {status} ({_tls_note(response)}); this creates "
                           f"{ping_event_description(now_s)}. Freshpaint checks the token after answering: "
                           "the event shows in Live View only if the token is right")
    text = redact(response.text)[:200].strip()
    if status in (401, 403):
        return CheckResult(FRESHPAINT_EVENT, host, False, f"{what} answered {status}: the token was refused; "
                                                          f"check FRESHPAINT_TOKEN{f' ({text})' if text else ''}")
    return CheckResult(FRESHPAINT_EVENT, host, False, f"{what} answered {status}{f': {text}' if text else ''}")


def _connect(host_url: str, timeout_s: float, verify: ssl.SSLContext | bool, *, token_set: bool) -> CheckResult:
    ok, detail = probe_connection(host_url, timeout_s, verify)
    if not ok:
        return CheckResult(FRESHPAINT_CONNECT, host_url, False, f"{detail}; nothing sent")
    if not token_set:
        return CheckResult(FRESHPAINT_CONNECT, host_url, False, f"FRESHPAINT_TOKEN is not set ({detail}; "
                                                                "nothing sent)")
    proves = "the route and TLS trust" if host_url.startswith("https:") else "the route"
    return CheckResult(FRESHPAINT_CONNECT, host_url, True,
                       f"{detail}; nothing sent: proves {proves}, not the token or the /track path (Freshpaint "
                       "documents no request that creates nothing; --freshpaint-check event sends a test event)")


def run_checks(settings: Settings, *, timeout_s: float | None = None,
               freshpaint_check: FreshpaintCheck = "connect") -> list[CheckResult]:
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
