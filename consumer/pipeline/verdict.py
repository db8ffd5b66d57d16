"""The decision on one event, made in one place: send these outputs, skip it, park it, wait, or stop.

A record read from Kafka goes through four stages, and :meth:`Judge.decide` runs them in this order for
one destination::

    size       larger than decoding.max_event_bytes  -> park   (oversized)
    decode     Avro framing and schema               -> park   (undecodable, unknown_schema, ...)
                                                        wait   (the schema registry is down)
                                                        stop   (the registry is not a registry)
    map        the compiled mapping                  -> park   (missing_required_field, mapping_failed, ...)
                                                        skip   (no rule selects it)
    serialize  each output as JSON                   -> park   (mapping_failed: a value JSON cannot carry;
                                                                too_large: over the destination's caps)
                                                        send   (the outputs, and for NDJSON the body lines)

The lane, ``usage-consumer map`` and ``dlq replay`` all call it, so they cannot disagree. Nothing that one
event holds can raise out of it: any failure after the record was read is a dead letter with a reason code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import orjson

from consumer.errors import (
    DecodeError,
    EventError,
    FatalError,
    MappingFailed,
    NoStream,
    OversizedEvent,
    TooLarge,
    TransientError,
)
from consumer.mapping.compiler import MapFn
from consumer.mapping.model import RECORD_NAME_FIELD
from consumer.observability.metrics import Tally

Kind = Literal["send", "skip", "park", "wait", "stop"]
SEND: Final = "send"
SKIP: Final = "skip"
PARK: Final = "park"
WAIT: Final = "wait"
STOP: Final = "stop"

_dumps = orjson.dumps
_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE


class RecordDecoder(Protocol):
    """What the verdict needs of a decoder (:class:`consumer.decoding.decoder.Decoder` and test doubles):
    the bytes of one record to the record as a dict."""

    def decode(self, value: bytes | None) -> dict[str, Any]: ...


def close_decoder(decoder: RecordDecoder | None) -> None:
    """Close a decoder that holds connections (the registry's); test doubles need not have ``close``."""
    close = getattr(decoder, "close", None)
    if close is not None:
        close()


class _Closed:
    """The decoder of a closed :class:`Judge`: deciding after close is a bug, and says so."""

    def decode(self, value: bytes | None) -> dict[str, Any]:
        raise RuntimeError("this judge was closed")


_CLOSED: RecordDecoder = _Closed()


class Decision:
    """What to do with one event. ``outputs`` and ``body`` are set for ``send``, ``error`` otherwise
    (``park``: an :class:`EventError` whose ``reason`` goes to the dead-letter headers)."""

    __slots__ = ("body", "error", "event_time_s", "kind", "outputs", "record")

    def __init__(self, kind: Kind, outputs: list[dict[str, Any]] | None = None, body: bytes = b"",
                 error: Exception | None = None, record: dict[str, Any] | None = None,
                 event_time_s: int | None = None) -> None:
        self.kind = kind
        self.outputs = outputs or []
        self.body = body
        """NDJSON destinations: the outputs' lines, ready to append to a batch body."""
        self.error = error
        self.record = record
        """The decoded record, when decoding got that far (dry runs show it)."""
        self.event_time_s = event_time_s
        """``send``: when the event happened (Unix seconds, from the stream's event-time field), if known."""

    @property
    def reason(self) -> str | None:
        """The dead-letter reason code of a ``park``."""
        return self.error.reason if isinstance(self.error, EventError) else None

    def __repr__(self) -> str:
        detail = f"{len(self.outputs)} outputs" if self.kind == SEND else repr(self.error)
        return f"Decision({self.kind}, {detail})"


NO_STREAM = "(none)"
"""The stream label of records that no stream takes."""


def tallies_by_stream(verdict: Decides) -> dict[str, Tally]:
    """A verdict's tallies summed by stream (a copy), each judge's once however many routes lead to it."""
    found: dict[str, Tally] = {}
    seen: set[int] = set()
    for stream, tally in verdict.tallies():
        if id(tally) in seen:
            continue
        seen.add(id(tally))
        total = found.setdefault(stream, Tally())
        total.sent += tally.sent
        total.skipped += tally.skipped
        total.parked.update(tally.parked)
    return found


class Decides(Protocol):
    """What a lane asks of its verdict: :class:`Judge` for one stream, :class:`StreamJudges` for several."""

    def decide(self, value: bytes | None, topic: str, partition: int, offset: int, *,
               size_bytes: int | None = None) -> Decision: ...

    def route(self, value: bytes | None, topic: str) -> Judge | Decision:
        """The stream's judge that decides this record, or the decision when no stream takes it (what
        :meth:`decide` does first; dry runs ask it to say which stream a record belongs to)."""
        ...

    def tallies(self) -> list[tuple[str, Tally]]:
        """Each judge's verdicts so far with its stream, repeated where routes share a judge (read them with
        :func:`tallies_by_stream`)."""
        ...

    def close(self) -> None: ...


class Judge:
    """Decides events of one stream for one destination: its decoder (the stream's reader schema), its mapping
    function, and whether its requests carry NDJSON."""

    def __init__(self, *, decoder: RecordDecoder, map_fn: MapFn, max_event_bytes: int, ndjson: bool,
                 record_name: Callable[[bytes | None], str] | None = None, stream: str = "",
                 event_time: tuple[str, int] | None = None, caps: OutputCaps | None = None) -> None:
        """``record_name``: where the mapping reads ``$record_name``, the writer schema's full name of a value
        (the decoder's ``writer_name``); ``stream``: the stream's name, for dry runs and logs; ``event_time``:
        the record field that says when the event happened and its units per second
        (:func:`~consumer.decoding.schemas.event_time_field`), for the age of events at delivery; ``caps``: the
        destination's limits on one output (one-event-per-request destinations)."""
        self.decoder = decoder
        self.map_fn = map_fn
        self.max_event_bytes = max_event_bytes
        self.ndjson = ndjson
        self.record_name = record_name
        self.stream = stream
        self.tally = Tally()
        self._time_field, self._time_units = event_time or ("", 1)
        self.caps = caps

    def route(self, value: bytes | None, topic: str) -> Judge:
        return self

    def tallies(self) -> list[tuple[str, Tally]]:
        return [(self.stream, self.tally)]

    def decide(self, value: bytes | None, topic: str, partition: int, offset: int, *,
               size_bytes: int | None = None) -> Decision:
        """The decision on the record ``value`` read at ``topic[partition]@offset``.

        ``size_bytes`` stands in for ``len(value)`` where the value is shown without its framing (dry runs
        of sample files).
        """
        size = (0 if value is None else len(value)) if size_bytes is None else size_bytes
        if size > self.max_event_bytes:
            self.tally.parked[OversizedEvent.reason] += 1
            return Decision(PARK, error=OversizedEvent(
                f"event of {size} bytes exceeds max_event_bytes={self.max_event_bytes}"))
        stage = "decoding"
        record = None
        try:
            record = self.decoder.decode(value)
            if self.record_name is not None:
                record[RECORD_NAME_FIELD] = self.record_name(value)
            stage = "mapping"
            outputs = self.map_fn(record, topic, partition, offset)
            if not outputs:
                self.tally.skipped += 1
                return Decision(SKIP, record=record)
            stage = "serializing"
            if self.ndjson:  # most events make one output: no list and no join for it
                body = _dumps(outputs[0], option=_APPEND_NEWLINE) if len(outputs) == 1 else \
                    b"".join([_dumps(output, option=_APPEND_NEWLINE) for output in outputs])
            else:
                body = b""
                for output in outputs:
                    # The sink serializes it again with the token: refuse here what it could not send
                    size = len(_dumps(output))
                    if self.caps is not None:
                        self.caps.check(output, size)
            self.tally.sent += 1
            when = record.get(self._time_field) if self._time_field else None
            # Positional: half the cost of keywords, once per event
            return Decision(SEND, outputs, body, None, record,
                            when // self._time_units if type(when) is int else None)
        except Exception as exc:  # one event's value must never stop its partition
            decision = _failed(exc, stage, record)
            if decision.kind is PARK:
                self.tally.parked[decision.reason or ""] += 1
            return decision

    def close(self) -> None:
        """Close the decoder's connections (the schema registry's); once, however many routes share this judge."""
        decoder, self.decoder = self.decoder, _CLOSED
        if decoder is not _CLOSED:
            close_decoder(decoder)


class _Router:
    """A verdict that first picks the stream's :class:`Judge` for a record (:meth:`route`), then lets it decide;
    records no stream takes are tallied in ``unrouted``."""

    def __init__(self) -> None:
        self.unrouted = Tally()

    def decide(self, value: bytes | None, topic: str, partition: int, offset: int, *,
               size_bytes: int | None = None) -> Decision:
        judge = self.route(value, topic)
        if isinstance(judge, Decision):
            return judge
        return judge.decide(value, topic, partition, offset, size_bytes=size_bytes)

    def route(self, value: bytes | None, topic: str) -> Judge | Decision:
        raise NotImplementedError

    def tallies(self) -> list[tuple[str, Tally]]:
        return [(NO_STREAM, self.unrouted), *(part for judge in self._routes() for part in judge.tallies())]

    def close(self) -> None:
        for judge in self._routes():  # a judge on several routes closes once (Judge.close)
            judge.close()

    def _routes(self) -> list[Decides]:
        raise NotImplementedError


class StreamJudges(_Router):
    """Each topic's :class:`Judge`, for a lane that reads several streams: the record's topic picks its stream
    (one dict lookup per event). A topic first seen matches the streams' topic patterns in configuration order
    (names listed outright come first), and the answer is kept; a topic of no stream is parked ``no_stream``."""

    def __init__(self, by_topic: Mapping[str, Decides],
                 patterns: Sequence[tuple[re.Pattern[str], Decides]] = ()) -> None:
        super().__init__()
        self.by_topic = dict(by_topic)
        self.patterns = list(patterns)
        self._judges = [*by_topic.values(), *(judge for _, judge in patterns)]

    def route(self, value: bytes | None, topic: str) -> Judge | Decision:
        judge = self.by_topic.get(topic)
        if judge is None:
            judge = self._matching(topic)
            if judge is None:
                self.unrouted.parked[NoStream.reason] += 1
                return Decision(PARK, error=NoStream(f"topic {topic!r} belongs to no stream; add it to a stream's "
                                                     "topics (streams[].topics)"))
        return judge.route(value, topic)

    def _routes(self) -> list[Decides]:
        return self._judges

    def _matching(self, topic: str) -> Decides | None:
        for pattern, judge in self.patterns:
            if pattern.search(topic):
                self.by_topic[topic] = judge
                return judge
        return None


class RecordTypeJudges(_Router):
    """The judges of the streams that share a topic, picked by the record's writer schema full name (topics
    written with Confluent's ``RecordNameStrategy`` carry several record types). A record of a type that no
    stream takes is parked ``no_stream``, or skipped where a stream says ``other_records: skip``."""

    def __init__(self, writer_name: Callable[[bytes | None], str], by_name: Mapping[str, Judge], *,
                 skip_others: bool) -> None:
        super().__init__()
        self.writer_name = writer_name
        self.by_name = dict(by_name)
        self.skip_others = skip_others

    def route(self, value: bytes | None, topic: str) -> Judge | Decision:
        try:
            name = self.writer_name(value)
        except Exception as exc:  # one event's header must never stop its partition
            return _failed(exc, "decoding")
        judge = self.by_name.get(name)
        if judge is not None:
            return judge
        if self.skip_others:
            self.unrouted.skipped += 1
            return Decision(SKIP)
        self.unrouted.parked[NoStream.reason] += 1
        return Decision(PARK, error=NoStream(f"record type {name} on topic {topic!r} belongs to no stream; list it "
                                             "in a stream's record_names (or set other_records: skip)"))

    def _routes(self) -> list[Decides]:
        return list(self.by_name.values())


@dataclass(frozen=True)
class OutputCaps:
    """A destination's limits on one output sent as its own request: the number of ``properties`` and the
    size of the serialized body. An output over either is parked ``too_large``: Freshpaint answers 200 before
    it validates, so what it drops later would otherwise vanish without a trace."""

    max_properties: int
    max_bytes: int

    def check(self, output: dict[str, Any], size_bytes: int) -> None:
        properties = output.get("properties")
        count = len(properties) if isinstance(properties, dict) else 0
        if count > self.max_properties:
            raise TooLarge(f"the event has {count} properties, more than max_properties_per_event="
                           f"{self.max_properties}")
        if size_bytes > self.max_bytes:
            raise TooLarge(f"the event's request body is {size_bytes} bytes, more than max_request_bytes="
                           f"{self.max_bytes}")


def _failed(exc: Exception, stage: str, record: dict[str, Any] | None = None) -> Decision:
    """The decision on an event whose ``stage`` raised: park it (a bad event, or an unexpected error, which
    is the event's too), wait (the registry is down) or stop (the registry is not a registry)."""
    if isinstance(exc, EventError):
        return Decision(PARK, error=exc, record=record)
    if isinstance(exc, TransientError):
        return Decision(WAIT, error=exc)
    if isinstance(exc, FatalError):
        return Decision(STOP, error=exc)
    return Decision(PARK, error=_unexpected(stage, exc), record=record)


def _unexpected(stage: str, exc: Exception) -> EventError:
    if stage == "serializing":
        return MappingFailed(f"an output holds a value JSON cannot carry ({exc}); convert it in the mapping "
                             "(convert: base64, hex, string or float; see docs/mapping.md, Values)")
    if stage == "decoding":
        return DecodeError(f"decoder raised {type(exc).__name__}: {exc}")
    return MappingFailed(f"mapping raised {type(exc).__name__}: {exc}")
