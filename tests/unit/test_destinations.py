"""Ordered Freshpaint delivery: each partition's events leave in offset order, partitions in parallel."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from consumer.sinks.freshpaint import FreshpaintSink
from consumer.testing.fakes import events_batch


@dataclass
class Source:
    _partition: int

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition


class SlowServer:
    """Answers each request after a random number of loop turns (so unordered sending would reorder);
    rejects event 7."""

    def __init__(self, seed: int) -> None:
        self.sent: list[tuple[int, int]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.rng = random.Random(seed)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        event = orjson.loads(request.content)["properties"]
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        for _ in range(self.rng.randrange(5)):
            await asyncio.sleep(0)
        self.concurrent -= 1
        if event["n"] == 7:
            return httpx.Response(400, content=b"no")
        self.sent.append((event["partition"], event["n"]))
        return httpx.Response(200)


def sink_for(server: SlowServer, *, ordered: bool) -> FreshpaintSink:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handle))
    return FreshpaintSink(base_url="https://fp.example", token="t", client=client, ordered=ordered)


def batch_of(count: int, partitions: int) -> tuple[list[dict[str, Any]], list[Source]]:
    outputs = [{"event": "e", "properties": {"n": n, "partition": n % partitions, "distinct_id": "d"}}
               for n in range(count)]
    return outputs, [Source(n % partitions) for n in range(count)]


def test_ordered_delivery_keeps_offset_order_per_partition_and_reports_rejections() -> None:
    server = SlowServer(seed=1)
    outputs, sources = batch_of(40, 3)
    rejected = asyncio.run(sink_for(server, ordered=True).write(events_batch(outputs, sources)))
    assert [index for index, _ in rejected] == [7]
    for partition in range(3):
        sent = [n for p, n in server.sent if p == partition]
        assert sent == sorted(sent)
        assert len(sent) == len([n for n in range(40) if n % 3 == partition and n != 7])
    assert server.max_concurrent > 1  # partitions still go in parallel


def test_unordered_delivery_does_reorder_under_the_same_server() -> None:
    """The check above can fail: the same server, unordered, delivers some partition out of order."""
    server = SlowServer(seed=1)
    outputs, sources = batch_of(40, 3)
    asyncio.run(sink_for(server, ordered=False).write(events_batch(outputs, sources)))
    assert any([n for p, n in server.sent if p == partition] != sorted(n for p, n in server.sent if p == partition)
               for partition in range(3))
