"""Ordered Freshpaint delivery: each partition's events leave in offset order, partitions in parallel."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from consumer.errors import Rejected
from consumer.pipeline.batcher import Batch
from consumer.pipeline.offsets import Work
from consumer.sinks.destinations import FreshpaintDestination


@dataclass
class Source:
    _partition: int

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition


class SlowSink:
    """Takes a random time per event, so unordered sending would reorder; rejects event 7."""

    host = "http://sink"

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.concurrent = 0
        self.max_concurrent = 0

    async def deliver_one(self, event: dict[str, Any]) -> None:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        await asyncio.sleep(random.uniform(0, 0.003))
        self.concurrent -= 1
        if event["n"] == 7:
            raise Rejected("no", status=400)
        self.sent.append((event["partition"], event["n"]))


def test_ordered_delivery_keeps_offset_order_per_partition_and_reports_rejections() -> None:
    batch = Batch("freshpaint", Work(), 0.0)
    for n in range(40):
        partition = n % 3
        batch.outputs.append({"n": n, "partition": partition})
        batch.sources.append(Source(partition))
    sink = SlowSink()
    destination = FreshpaintDestination(sink, ordered=True)  # type: ignore[arg-type]
    rejected = asyncio.run(destination.deliver(batch))
    assert [index for index, _ in rejected] == [7]
    for partition in range(3):
        sent = [n for p, n in sink.sent if p == partition]
        assert sent == sorted(sent)
        assert len(sent) == len([n for n in range(40) if n % 3 == partition and n != 7])
    assert sink.max_concurrent > 1  # partitions still go in parallel
