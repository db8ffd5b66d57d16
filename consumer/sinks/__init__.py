"""Destination sinks: async HTTP delivery to Freshsuccess (batched NDJSON) and Freshpaint (one event per request).

Their coroutines run on the delivery event loop; nothing in them blocks it (compression of large batches
runs in the loop's default executor).
"""

from consumer.sinks.compress import Encoding, compress
from consumer.sinks.freshpaint import FreshpaintSink
from consumer.sinks.freshsuccess import FreshsuccessSink, datacenter_url
from consumer.sinks.retry import RetryPolicy, SinkState, backoff_delays, parse_retry_after

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
