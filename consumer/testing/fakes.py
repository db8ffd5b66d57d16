"""Batches built by hand, for tests of the sinks (the lane builds its own with
:class:`~consumer.pipeline.batcher.Batcher`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumer.pipeline.batcher import Batch
from consumer.pipeline.offsets import Work


def ndjson_batch(body: bytes, events: int) -> Batch:
    """A Freshsuccess batch: ``body`` is the NDJSON request body holding ``events`` lines."""
    return Batch("freshsuccess", Work(), 0.0, events=events, body=bytearray(body))


def events_batch(outputs: Sequence[dict[str, Any]], sources: Sequence[Any] = ()) -> Batch:
    """A Freshpaint batch of ``outputs`` (one request each); ``sources`` are the messages they came from."""
    return Batch("freshpaint", Work(), 0.0, events=len(outputs), outputs=list(outputs), sources=list(sources))
