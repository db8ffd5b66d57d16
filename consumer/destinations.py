"""The two destinations as the lanes see them: a name, a batch shape, and how a batch is delivered."""

from __future__ import annotations

from typing import Any

from consumer.batcher import Batch
from consumer.errors import Rejected
from consumer.sinks.freshpaint import FreshpaintSink
from consumer.sinks.freshsuccess import FreshsuccessSink


class FreshsuccessDestination:
    """One gzip NDJSON POST per batch; a 400 is fatal (wrong path or keys), never a per-event rejection."""

    name = "freshsuccess"
    serialize = True

    def __init__(self, sink: FreshsuccessSink) -> None:
        self.sink = sink

    async def deliver(self, batch: Batch) -> list[tuple[int, Rejected]]:
        await self.sink.deliver(bytes(batch.body), batch.events)
        return []

    async def aclose(self) -> None:
        await self.sink.aclose()


class FreshpaintDestination:
    """One request per event, many in flight; a non-retryable 4xx rejects that event only."""

    name = "freshpaint"
    serialize = False

    def __init__(self, sink: FreshpaintSink) -> None:
        self.sink = sink

    async def deliver(self, batch: Batch) -> list[tuple[int, Rejected]]:
        rejected: list[tuple[int, Rejected]] = await self.sink.deliver(batch.outputs)
        return rejected

    async def aclose(self) -> None:
        await self.sink.aclose()


def describe(destination: Any) -> str:
    return f"{destination.name} at {destination.sink.host}"
