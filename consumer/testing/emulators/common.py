"""Shared machinery of the destination emulators: recorded state, fault injection and the control API (and
the ready file that every emulator process, the schema registry's included, writes once it listens).

Each emulator keeps its state behind one ``threading.Lock`` because its handlers run on an event loop in
another thread while tests read the state from their own thread. Handlers take the lock once per request
(never once per event) so that a 1 MiB Freshsuccess batch or a burst of Freshpaint requests stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypedDict, TypeVar

import orjson
import structlog
from aiohttp import web

_gunzip: Callable[[bytes], bytes]
_inflate: Callable[..., bytes]
try:  # isal inflates several times faster than zlib; both read the same streams
    from isal import igzip as _isal_gzip
    from isal import isal_zlib as _isal_zlib

    _gunzip = _isal_gzip.decompress  # handles multi-member gzip, like gzip.decompress
    _inflate = _isal_zlib.decompress
except ImportError:  # pragma: no cover - exercised only where isal is absent
    import gzip as _std_gzip

    _gunzip = _std_gzip.decompress
    _inflate = zlib.decompress

log = structlog.get_logger(__name__)

CONTROL_PREFIX: Final = "/_emulator/"
DEFAULT_MAX_RECORDED_REQUESTS: Final = 10_000
MAX_KEPT_VIOLATIONS: Final = 10_000
MAX_BODY_BYTES: Final = 256 * 1024 * 1024

JSON_CT: Final = "application/json"
NDJSON_CT: Final = "application/x-ndjson"

STAT_NAMES: Final = ("requests", "accepted", "dropped", "duplicates", "rejected", "faults_injected",
                     "violations")


# --------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour to inject into the next event-carrying requests.

    Effects: answer ``status`` (with a ``Retry-After: retry_after`` header when given), wait ``latency_s``
    first, or close the connection without answering (``drop_connection``). A fault with only a latency
    delays the request and then handles it normally, as a slow server would; any other fault means the
    request's events are not accepted.

    Scope: the next ``count`` requests, or every request for ``duration_s`` seconds from injection,
    whichever ends first when both are given; until ``clear_faults()`` when neither is. ``/v1/ping`` is
    only affected when ``include_ping`` is true.
    """

    status: int | None = None
    retry_after: str | None = None
    latency_s: float = 0.0
    drop_connection: bool = False
    count: int | None = None
    duration_s: float | None = None
    include_ping: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be 100-599, got {self.status}")
        if self.latency_s < 0:
            raise ValueError("fault latency_s must be >= 0")
        if self.status is not None and self.drop_connection:
            raise ValueError("a fault either answers a status or drops the connection, not both")
        if self.status is None and not self.drop_connection and self.latency_s == 0:
            raise ValueError("a fault needs a status, a latency_s or drop_connection")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after needs a status")
        if self.count is not None and self.count < 1:
            raise ValueError("fault count must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("fault duration_s must be > 0")

    @property
    def refuses(self) -> bool:
        """True when the faulted request is not handled normally (a status or a dropped connection)."""
        return self.status is not None or self.drop_connection

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from a JSON object (the control API's body); raise ``ValueError`` when invalid."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        values = {key: value for key, value in data.items() if value is not None}
        retry_after = values.get("retry_after")
        if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
            values["retry_after"] = str(retry_after)
        for name, value in values.items():
            kinds = _FAULT_FIELD_TYPES[name]
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                raise ValueError(f"fault field {name} must be {' or '.join(k.__name__ for k in kinds)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FAULT_FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "status": (int,), "retry_after": (str,), "latency_s": (int, float), "drop_connection": (bool,),
    "count": (int,), "duration_s": (int, float), "include_ping": (bool,),
}


@dataclass(slots=True)
class _ActiveFault:
    fault: Fault
    remaining: int | None
    expires_at: float | None  # time.monotonic()


class FaultPlan:
    """The injected faults, oldest first; the first one that applies to a request is used up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[_ActiveFault] = []

    def __bool__(self) -> bool:
        return bool(self._active)

    def inject(self, fault: Fault) -> None:
        expires_at = time.monotonic() + fault.duration_s if fault.duration_s is not None else None
        with self._lock:
            self._active.append(_ActiveFault(fault, fault.count, expires_at))

    def clear(self) -> None:
        with self._lock:
            self._active.clear()

    def active(self) -> list[Fault]:
        now = time.monotonic()
        with self._lock:
            return [a.fault for a in self._active if a.expires_at is None or a.expires_at > now]

    def take(self, *, ping: bool) -> Fault | None:
        """Return the fault for this request (using one of its ``count``), or None."""
        if not self._active:  # the common case, read without the lock
            return None
        now = time.monotonic()
        with self._lock:
            self._active = [a for a in self._active if a.expires_at is None or a.expires_at > now]
            for index, entry in enumerate(self._active):
                if ping and not entry.fault.include_ping:
                    continue
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        del self._active[index]
                return entry.fault
        return None


# ------------------------------------------------------------------------------------------------ recording


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received. ``path`` has the Freshsuccess keys replaced by placeholders.

    ``status`` is what was answered, 0 when the connection was dropped without an answer.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    decoded_body: bytes = field(repr=False)
    status: int
    received_at: float

    def __repr__(self) -> str:
        return (f"RecordedRequest({self.method} {self.path} -> {self.status}, body={len(self.body)} B, "
                f"decoded={len(self.decoded_body)} B)")


class JsonlRecorder:
    """Appends accepted events, one JSON line each, to a file through a large write buffer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[bytes] | None = path.open("ab", buffering=1 << 20)

    def write_lines(self, lines: list[bytes]) -> None:
        if self._file is not None and lines:
            self._file.write(b"\n".join(lines) + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def decode_body(body: bytes, encoding: str) -> bytes:
    """Undo ``Content-Encoding`` gzip or deflate (zlib-wrapped, else raw); raise ``ValueError`` if corrupt.

    Any other encoding name returns the body unchanged, as Freshsuccess treats it as plain JSON.
    """
    try:
        if encoding == "gzip":
            return bytes(_gunzip(body))
        if encoding == "deflate":
            try:
                return bytes(_inflate(body))
            except Exception:  # not zlib-wrapped: try raw deflate, which some clients send
                return bytes(_inflate(body, -15))
    except Exception as exc:  # zlib.error, isal's own error, OSError/EOFError from a truncated gzip
        raise ValueError(f"body is not valid {encoding}") from exc
    return body


def media_type(request: web.BaseRequest) -> str:
    """The Content-Type without parameters, lower-cased ('' when absent)."""
    raw = request.headers.get("Content-Type", "")
    return raw.split(";", 1)[0].strip().lower()


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON_CT, headers=headers)


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically, so a poller waiting for the process never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- the emulator


MAX_LATENCY_SAMPLES = 200_000

_T = TypeVar("_T")


class EmulatorOptions(TypedDict, total=False):
    """What every destination emulator takes besides its keys; :class:`BaseEmulator` gives the defaults."""

    record_dir: Path | None
    """Append accepted events to ``<record_dir>/<name>.jsonl``."""
    max_recorded_requests: int | None
    """Bound on ``requests()`` (bodies included); None keeps every one."""
    max_kept_events: int | None
    """Bound on ``events()`` and ``dropped()``; None keeps every one (the counters are always exact)."""


class BaseEmulator:
    """State, accessors, fault plan and control API shared by the Freshsuccess and Freshpaint emulators.

    Subclasses implement :meth:`serve` (the destination's own API) and call :meth:`commit` once per
    request to publish what it did.
    """

    name: str = "emulator"

    def __init__(self, *, record_dir: Path | None = None, max_recorded_requests: int | None =
                 DEFAULT_MAX_RECORDED_REQUESTS, max_kept_events: int | None = None) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._max_recorded_requests = max_recorded_requests
        self._max_kept_events = max_kept_events
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded_requests)
        self._events: deque[dict[str, Any]] = deque(maxlen=max_kept_events)
        self._dropped: deque[tuple[Any, str]] = deque(maxlen=max_kept_events)
        self._violations: deque[str] = deque(maxlen=MAX_KEPT_VIOLATIONS)
        self._stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._latencies_s: deque[float] = deque(maxlen=MAX_LATENCY_SAMPLES)
        self.faults = FaultPlan()
        self._recorder = JsonlRecorder(record_dir / f"{self.name}.jsonl") if record_dir is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stats={self.stats()})"

    # ---- accessors (any thread)

    def _copy(self, kept: deque[_T]) -> list[_T]:
        """A copy of ``kept`` taken under the lock, so a handler's update is seen whole or not at all."""
        with self._lock:
            return list(kept)

    def requests(self) -> list[RecordedRequest]:
        """The last ``max_recorded_requests`` requests to the destination API (control calls excluded)."""
        return self._copy(self._requests)

    def events(self) -> list[dict[str, Any]]:
        """Accepted events in arrival order (the last ``max_kept_events`` when that limit is set)."""
        return self._copy(self._events)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def latency(self) -> dict[str, float]:
        """Acceptance time minus each event's own time (for benchmarks that stamp events when producing)."""
        with self._lock:
            samples = sorted(self._latencies_s)
        if not samples:
            return {"count": 0}

        def quantile(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 2)

        return {"count": len(samples), "p50_ms": quantile(0.5), "p99_ms": quantile(0.99),
                "max_ms": round(samples[-1] * 1000, 2)}

    def event_time_s(self, event: dict[str, Any]) -> float | None:
        """The event's own epoch time in seconds; subclasses know where it is."""
        return None

    def violations(self) -> list[str]:
        """Protocol deviations seen, one readable line each (paths never contain keys)."""
        return self._copy(self._violations)

    def dropped(self) -> list[tuple[Any, str]]:
        """Events that were not accepted, each with a short stable reason code."""
        return self._copy(self._dropped)

    def inject(self, fault: Fault) -> None:
        self.faults.inject(fault)
        log.info("emulator_fault_injected", emulator=self.name, **fault.to_dict())

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        """Forget everything received, the counters and the faults (the record file is kept)."""
        self.faults.clear()
        with self._cond:
            self._requests.clear()
            self._events.clear()
            self._dropped.clear()
            self._violations.clear()
            self._stats = dict.fromkeys(STAT_NAMES, 0)
            self._latencies_s.clear()
            self._reset_extra()
            self._cond.notify_all()

    def wait_for_events(self, n: int, timeout_s: float) -> list[dict[str, Any]]:
        """Block until at least ``n`` events were accepted since the last reset, then return ``events()``.

        Raises ``TimeoutError`` (saying how many arrived) when the deadline passes first.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._stats["accepted"] >= n, timeout=timeout_s):
                raise TimeoutError(f"{self.name}: {self._stats['accepted']} of {n} events accepted "
                                   f"after {timeout_s} s")
            return list(self._events)

    def flush(self) -> None:
        with self._lock:
            if self._recorder is not None:
                self._recorder.flush()

    def close(self) -> None:
        with self._lock:
            if self._recorder is not None:
                self._recorder.close()

    # ---- used by handlers (loop thread)

    def _reset_extra(self) -> None:
        """Subclass hook, called under the lock by :meth:`reset`."""

    def commit(self, request: RecordedRequest | None, *, accepted: list[dict[str, Any]] | None = None,
               accepted_lines: list[bytes] | None = None, dropped: list[tuple[Any, str]] | None = None,
               violations: list[str] | None = None, counts: Mapping[str, int] | None = None) -> None:
        """Publish one request's outcome atomically (counting it) and wake waiters.

        ``accepted_lines`` are the same events as ``accepted`` already serialized, written to the record
        file.
        """
        with self._cond:
            stats = self._stats
            stats["requests"] += 1
            if request is not None:
                self._requests.append(request)
            if accepted:
                now = time.time()
                event_time = self.event_time_s
                for event in accepted:
                    at = event_time(event)
                    if at is not None:
                        self._latencies_s.append(now - at)
                self._events.extend(accepted)
                stats["accepted"] += len(accepted)
                if self._recorder is not None and accepted_lines:
                    self._recorder.write_lines(accepted_lines)
                self._cond.notify_all()
            if dropped:
                self._dropped.extend(dropped)
                stats["dropped"] += len(dropped)
            if violations:
                self._violations.extend(violations)
                stats["violations"] += len(violations)
            if counts:
                for key, value in counts.items():
                    stats[key] += value

    def record(self, request: web.BaseRequest, path: str, body: bytes, decoded: bytes, status: int
               ) -> RecordedRequest | None:
        """The request as it will appear in ``requests()``; None when none are kept (saves the copy)."""
        if self._max_recorded_requests == 0:
            return None
        return RecordedRequest(
            method=request.method, path=path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body, decoded_body=decoded, status=status, received_at=time.time(),
        )

    async def apply_fault(self, request: web.BaseRequest, fault: Fault, path: str, body: bytes,
                          error_body: bytes) -> web.StreamResponse | None:
        """Carry out ``fault``; return the response to send, or None to handle the request normally."""
        if fault.latency_s > 0:
            await asyncio.sleep(fault.latency_s)
        if fault.drop_connection:
            self.commit(self.record(request, path, body, b"", 0), counts={"faults_injected": 1})
            request.protocol.force_close()
            return web.Response(status=500)  # never written: the transport is already closed
        if fault.status is None:  # latency only: a slow server that then answers normally
            with self._lock:
                self._stats["faults_injected"] += 1
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        self.commit(self.record(request, path, body, b"", fault.status), counts={"faults_injected": 1})
        if error_body:
            return web.Response(status=fault.status, body=error_body, content_type=JSON_CT, headers=headers)
        return web.Response(status=fault.status, headers=headers)

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        raise NotImplementedError

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp low-level handler: control API under ``/_emulator/``, else the destination API."""
        if request.path.startswith(CONTROL_PREFIX):
            return await self.control(request)
        return await self.serve(request)

    # ---- control API

    async def control(self, request: web.BaseRequest) -> web.StreamResponse:
        what = request.path[len(CONTROL_PREFIX):].rstrip("/")
        method = request.method
        if what == "events" and method == "GET":
            self.flush()
            return web.Response(body=_jsonl(self.events()), content_type=NDJSON_CT)
        if what == "dropped" and method == "GET":
            rows = [{"event": event, "reason": reason} for event, reason in self.dropped()]
            return web.Response(body=_jsonl(rows), content_type=NDJSON_CT)
        if what == "stats" and method == "GET":
            return json_response(200, self.stats())
        if what == "latency" and method == "GET":
            return json_response(200, self.latency())
        if what == "violations" and method == "GET":
            return json_response(200, self.violations())
        if what == "faults":
            if method == "GET":
                return json_response(200, [f.to_dict() for f in self.faults.active()])
            if method == "DELETE":
                self.clear_faults()
                return json_response(200, {})
            if method == "POST":
                try:
                    data = orjson.loads(await request.read())
                    if not isinstance(data, dict):
                        raise ValueError("the body must be a JSON object describing one fault")
                    fault = Fault.from_mapping(data)
                except (ValueError, TypeError) as exc:
                    return json_response(400, {"error": str(exc)})
                self.inject(fault)
                return json_response(200, fault.to_dict())
        if what == "reset" and method == "POST":
            self.reset()
            return json_response(200, {})
        return json_response(404, {"error": f"no control endpoint {method} {request.path}"})


def _jsonl(rows: list[Any]) -> bytes:
    if not rows:
        return b""
    return b"\n".join(orjson.dumps(row) for row in rows) + b"\n"

