"""The two destinations as the lanes see them: a name, a batch shape, and how a batch is delivered."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.errors import Rejected
from consumer.pipeline.batcher import Batch
from consumer.sinks.freshpaint import FreshpaintSink
from consumer.sinks.freshsuccess import FreshsuccessSink


class FreshsuccessDestination:
    """One gzip NDJSON POST per batch; a 400 is fatal (wrong path or keys), never a per-event rejection."""

    name = "freshsuccess"
    serialize = True

    def __init__(self, sink: FreshsuccessSink) -> None:
        self.sink = sink

    @property
    def state(self) -> str:
        """``ok``, ``retrying`` or ``bad_credentials`` (the sink's, for health and metrics)."""
        return str(self.sink.state)

    async def deliver(self, batch: Batch) -> list[tuple[int, Rejected]]:
        await self.sink.deliver(bytes(batch.body), batch.events)
        return []

    async def aclose(self) -> None:
        await self.sink.aclose()


class FreshpaintDestination:
    """One request per event, many in flight; a non-retryable 4xx rejects that event only.

    ``ordered``: each partition's events are sent one after another in offset order (partitions still run
    concurrently), for destinations downstream of Freshpaint that care about arrival order.
    """

    name = "freshpaint"
    serialize = False

    def __init__(self, sink: FreshpaintSink, *, ordered: bool = False) -> None:
        self.sink = sink
        self.ordered = ordered

    @property
    def state(self) -> str:
        """``ok``, ``retrying`` or ``bad_credentials`` (the sink's, for health and metrics)."""
        return str(self.sink.state)

    async def deliver(self, batch: Batch) -> list[tuple[int, Rejected]]:
        if not self.ordered:
            rejected: list[tuple[int, Rejected]] = await self.sink.deliver(batch.outputs)
            return rejected
        lanes: dict[tuple[str, int], list[int]] = {}
        for index, source in enumerate(batch.sources):
            lanes.setdefault((source.topic(), source.partition()), []).append(index)
        results = await asyncio.gather(*(self._in_order(batch, indexes) for indexes in lanes.values()))
        return sorted((r for result in results for r in result), key=lambda r: r[0])

    async def _in_order(self, batch: Batch, indexes: list[int]) -> list[tuple[int, Rejected]]:
        rejected = []
        for index in indexes:
            try:
                await self.sink.deliver_one(batch.outputs[index])
            except Rejected as exc:
                rejected.append((index, exc))
        return rejected

    async def aclose(self) -> None:
        await self.sink.aclose()


def describe(destination: Any) -> str:
    return f"{destination.name} at {destination.sink.host}"
