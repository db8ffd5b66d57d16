"""Peer (q) of ``make bench``: the same job as usage-consumer -> Freshsuccess, written with Quix Streams.

Written the way Quix Streams' documentation recommends (docs/connectors/sinks/custom-sinks.md and
docs/connectors/sinks/README.md "Performance Considerations"): an ``Application`` with its own consumer group
reading from the earliest offset, a custom ``Deserializer`` for the Confluent framing (the fastest plain path:
see ``common.ConfluentAvroDecoder``), ``sdf = app.dataframe(topic)``, ``sdf.apply(map)`` and ``sdf.filter`` for
the events that have no Freshsuccess rule, and a ``BatchingSink`` whose ``write(batch)`` POSTs gzip NDJSON in
chunks of usage-consumer's batch size and raises ``SinkBackpressureError`` on 429/5xx (Quix then pauses the
partitions, seeks back to the checkpoint and processes it again). Offsets are committed by Quix's checkpoint
only after every sink flushed (at-least-once, like usage-consumer).

``--commit-interval`` bounds how long a checkpoint stays open (Quix's default is 5 s; the benchmark passes
usage-consumer's ``batching.max_wait_s`` so both hold events for the same time at most) and ``--commit-every``
closes it after that many messages (the docs' knob for batch sizes; the benchmark passes 2,000 x the topic's
partitions, so each partition's batch is about one POST).

Runs in ``.venv-peers/quix`` (bench/requirements-peers-quix.txt) until SIGTERM; logs to stderr.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from typing import Any

from common import (
    BATCH_EVENTS,
    COMPRESS_LEVEL,
    ConfluentAvroDecoder,
    FreshsuccessPoster,
    Refused,
    freshsuccess_action,
    peer_arguments,
)
from quixstreams import Application
from quixstreams.models.serializers import Deserializer, SerializationContext
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch


class ConfluentAvro(Deserializer):
    """Confluent wire format (magic byte, 4-byte schema id, Avro body) -> dict, schema fetched once per id."""

    def __init__(self, registry_url: str) -> None:
        super().__init__()
        self._decode = ConfluentAvroDecoder(registry_url)

    def __call__(self, value: bytes, ctx: SerializationContext) -> Any:
        return self._decode(value)


class FreshsuccessSink(BatchingSink):
    """Freshsuccess Event API: each partition's batch goes out as gzip NDJSON POSTs of ``batch_events`` actions."""

    def __init__(self, base_url: str, auth_key: str, api_key: str, *, batch_events: int = BATCH_EVENTS,
                 level: int = COMPRESS_LEVEL) -> None:
        super().__init__()
        self._args = (base_url, auth_key, api_key)
        self._level = level
        self._batch_events = batch_events
        self._poster: FreshsuccessPoster | None = None

    def setup(self) -> None:
        self._poster = FreshsuccessPoster(*self._args, level=self._level)

    def write(self, batch: SinkBatch) -> None:
        assert self._poster is not None
        for chunk in batch.iter_chunks(self._batch_events):
            try:
                self._poster.post([item.value for item in chunk])
            except Refused as exc:
                if exc.retryable:
                    raise SinkBackpressureError(retry_after=exc.retry_after_s) from None
                raise


def main() -> int:
    parser = peer_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--commit-interval", type=float, default=5.0)
    parser.add_argument("--commit-every", type=int, default=0)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        state_dir=tempfile.mkdtemp(prefix="quix-peer-state-"),
        loglevel=logging.WARNING,
    )
    topic = app.topic(args.topic, value_deserializer=ConfluentAvro(args.registry))
    sdf = app.dataframe(topic)
    sdf = sdf.apply(freshsuccess_action)
    sdf = sdf.filter(lambda action: action is not None)
    sdf.sink(FreshsuccessSink(args.freshsuccess_url, args.auth_key, args.api_key,
                              batch_events=args.batch_events, level=args.compress_level))
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
