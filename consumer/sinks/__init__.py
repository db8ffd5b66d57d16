"""Destination sinks: async HTTP delivery to Freshsuccess (batched NDJSON) and Freshpaint (one event per request).

Their coroutines run on the delivery event loop; nothing in them blocks it (compression of large batches
runs in the loop's default executor).

:class:`FreshpaintSink` is imported on first use: its HTTP client pulls in aiohttp, about 0.1 s of start-up
that a pod delivering only to Freshsuccess need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumer.sinks.compress import Encoding, compress
from consumer.sinks.freshsuccess import FreshsuccessSink, datacenter_url
from consumer.sinks.retry import RetryPolicy, SinkState, backoff_delays, parse_retry_after

if TYPE_CHECKING:
    from consumer.sinks.freshpaint import FreshpaintSink

__all__ = [
    "Encoding",
    "FreshpaintSink",
    "FreshsuccessSink",
    "RetryPolicy",
    "SinkState",
    "backoff_delays",
    "compress",
    "datacenter_url",
    "parse_retry_after",
]


def __getattr__(name: str) -> Any:
    if name == "FreshpaintSink":
        from consumer.sinks.freshpaint import FreshpaintSink

        return FreshpaintSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
