"""Peer (r) of ``make bench``: the same job as usage-consumer -> Freshsuccess, written with sentry-arroyo.

As arroyo's documentation and examples build a consumer (docs/source/getstarted.rst,
examples/transform_and_produce/batched.py): a ``StreamProcessor`` around a ``KafkaConsumer`` (its own group,
earliest offset, ``build_kafka_consumer_configuration``'s defaults) and a strategy chain made per assignment:

    RunTask(decode + map)  ->  Reduce(up to 2,000 actions or max_batch_time)  ->  RunTaskInThreads(gzip NDJSON
    POST, retried while Freshsuccess answers 429/5xx)  ->  CommitOffsets

``RunTask`` returns None for an event with no Freshsuccess rule; ``Reduce`` keeps it out of the batch but keeps
its offset in the batch's committable offsets, so it is committed with the batch it arrived in (a
``FilteredPayload`` would overtake the batch still open before it and commit offsets not yet delivered).
Offsets are committed only once the POST carrying them succeeded (at-least-once, like usage-consumer).

Runs in ``.venv-peers/arroyo`` (bench/requirements-peers-arroyo.txt) until SIGTERM; logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import (
    CommitOffsets,
    ProcessingStrategy,
    ProcessingStrategyFactory,
    Reduce,
    RunTask,
    RunTaskInThreads,
)
from arroyo.types import BaseValue, Commit, Message, Partition, Topic
from common import (
    ConfluentAvroDecoder,
    FreshsuccessPoster,
    Refused,
    freshsuccess_action,
    peer_arguments,
)

Actions = list[dict[str, Any]]


class FreshsuccessFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, args: argparse.Namespace) -> None:
        self.decode = ConfluentAvroDecoder(args.registry)
        self.poster = FreshsuccessPoster(args.freshsuccess_url, args.auth_key, args.api_key,
                                         level=args.compress_level)
        self.batch_events = args.batch_events
        self.batch_time_s = args.batch_time
        self.threads = args.threads

    def decode_and_map(self, message: Message[KafkaPayload]) -> dict[str, Any] | None:
        return freshsuccess_action(self.decode(message.payload.value))

    def post(self, message: Message[Actions]) -> None:
        """One batch, sent until Freshsuccess takes it (429/5xx/unreachable: wait and send again)."""
        while True:
            try:
                self.poster.post(message.payload)
                return
            except Refused as exc:
                if not exc.retryable:
                    raise
                time.sleep(exc.retry_after_s)

    def create_with_partitions(self, commit: Commit,
                               partitions: Mapping[Partition, int]) -> ProcessingStrategy[KafkaPayload]:
        def accumulate(batch: Actions, value: BaseValue[dict[str, Any] | None]) -> Actions:
            if value.payload is not None:
                batch.append(value.payload)
            return batch

        post: RunTaskInThreads[Actions, None] = RunTaskInThreads(
            processing_function=self.post, concurrency=self.threads, max_pending_futures=self.threads,
            next_step=CommitOffsets(commit))
        batch: Reduce[dict[str, Any] | None, Actions] = Reduce(
            max_batch_size=self.batch_events, max_batch_time=self.batch_time_s, accumulator=accumulate,
            initial_value=list, next_step=post,
            compute_batch_size=lambda value: 0 if value.payload is None else 1)
        return RunTask(self.decode_and_map, batch)


def main() -> int:
    parser = peer_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-time", type=float, default=1.0, help="seconds a batch stays open at most")
    parser.add_argument("--threads", type=int, default=4, help="POSTs in flight (usage-consumer: 4 batches)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    consumer = KafkaConsumer(build_kafka_consumer_configuration(
        default_config={}, bootstrap_servers=[args.bootstrap], auto_offset_reset="earliest", group_id=args.group))
    processor = StreamProcessor(consumer=consumer, topic=Topic(args.topic),
                                processor_factory=FreshsuccessFactory(args), commit_policy=ONCE_PER_SECOND)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: processor.signal_shutdown())
    processor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
