"""Collect mapped outputs into batches that close on event count, uncompressed bytes or age.

A batch carries the :class:`~consumer.pipeline.offsets.Work` its messages are tracked against, so the offsets it
makes committable travel with the data. All outputs of one message go into the same batch: a batch only
closes between messages.

Freshsuccess batches are built as the NDJSON body itself: the lines the verdict serialized
(:mod:`consumer.pipeline.verdict`) are appended to one ``bytearray``. Freshpaint batches keep the output objects,
because every event is its own request and the sink adds the token.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from consumer.pipeline.offsets import Work
from consumer.pipeline.verdict import Decision

_batch_ids = itertools.count(1)


@dataclass(eq=False)
class Batch:
    """Outputs bound for one destination, and the work their messages wait on."""

    destination: str
    work: Work
    opened_at: float
    submitted_at: float = 0.0
    batch_id: int = field(default_factory=lambda: next(_batch_ids))
    events: int = 0
    messages: int = 0
    source_bytes: int = 0
    """Freshpaint: the summed size of the records' values, the batch's byte bound (outputs are objects)."""
    body: bytearray = field(default_factory=bytearray)
    """Freshsuccess: the NDJSON request body (one JSON object per line)."""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Freshpaint: one event object per request, without the token."""
    sources: list[Any] = field(default_factory=list)
    """Freshpaint: the Kafka message each output came from, for dead-lettering a rejected event."""
    spans: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    """(topic, partition) -> [first offset, last offset] of the messages in the batch, for logs."""
    event_times_s: list[int] = field(default_factory=list)
    """When each event whose time is known happened (Unix seconds), for the age of events at delivery."""


@dataclass
class Batcher:
    """Fills one open batch at a time for one destination.

    ``max_bytes`` bounds the NDJSON body of a Freshsuccess batch (``ndjson``), and the summed record sizes of
    a Freshpaint batch, so a lane holds a bounded amount whatever the events look like.
    """

    destination: str
    _: KW_ONLY
    max_events: int
    max_bytes: int
    max_wait_s: float
    clock: Callable[[], float]
    ndjson: bool
    full: bool = field(default=False, init=False)
    """The open batch reached ``max_events`` or ``max_bytes`` (an attribute: read once per event)."""
    _open: Batch | None = field(default=None, init=False, repr=False)

    @classmethod
    def unbounded(cls, destination: str, *, ndjson: bool) -> Batcher:
        """A batcher that never closes a batch by itself: the tools (dry run, replay) add exactly what one
        request run carries, then :meth:`take` it."""
        never = 1 << 62
        return cls(destination, max_events=never, max_bytes=never, max_wait_s=float("inf"), clock=lambda: 0.0,
                   ndjson=ndjson)

    def _new(self) -> Batch:
        batch = Batch(self.destination, Work(), self.clock())
        batch.work.description = f"{self.destination} batch {batch.batch_id}"
        return batch

    def add(self, decision: Decision, message: Any, key: tuple[str, int], offset: int) -> Work:
        """Append one message's outputs (a ``send`` decision); returns the work the message is now tracked against."""
        batch = self._open
        if batch is None:
            batch = self._open = self._new()
        outputs = decision.outputs
        if self.ndjson:
            batch.body += decision.body
        else:
            batch.outputs.extend(outputs)
            batch.sources.extend([message] * len(outputs))
            value = message.value() if message is not None else None
            batch.source_bytes += len(value) if value else 0
        batch.events += len(outputs)
        batch.messages += 1
        if decision.event_time_s is not None:
            batch.event_times_s.append(decision.event_time_s)
        span = batch.spans.get(key)
        if span is None:
            batch.spans[key] = [offset, offset]
        else:
            span[1] = offset
        self.full = (batch.events >= self.max_events or len(batch.body) >= self.max_bytes
                     or batch.source_bytes >= self.max_bytes)
        return batch.work

    def is_due(self, now: float) -> bool:
        batch = self._open
        return batch is not None and (self.full or now - batch.opened_at >= self.max_wait_s)

    @property
    def open_events(self) -> int:
        return 0 if self._open is None else self._open.events

    def take(self) -> Batch | None:
        """Close the open batch and hand it over (None when nothing is open)."""
        batch, self._open = self._open, None
        self.full = False
        return batch
