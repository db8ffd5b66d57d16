"""Builders: each part of a lane made from ``Settings``, for the service and for the tools.

The dry run, ``dlq replay`` and the lanes build their sinks, decoders and verdicts here, so the three
cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from consumer.app.startup import Prepared, PreparedStream, tls_context
from consumer.config import Settings, StreamConfig, is_topic_pattern
from consumer.decoding.decoder import Decoder, checked_registry, decoder_for
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import event_time_field
from consumer.mapping.compiler import CompiledMapping
from consumer.pipeline.lane import LaneSettings
from consumer.pipeline.verdict import Decides, Judge, OutputCaps, RecordTypeJudges, StreamJudges
from consumer.sinks.freshsuccess import FreshsuccessSink, datacenter_url
from consumer.sinks.preview import MASK
from consumer.sinks.retry import RetryPolicy

if TYPE_CHECKING:
    from consumer.sinks.freshpaint import FreshpaintSink

DESTINATIONS = ("freshsuccess", "freshpaint")
"""The destinations, by the name the configuration and the mapping use."""

Sink: TypeAlias = "FreshsuccessSink | FreshpaintSink"


def sink_class(name: str) -> type[FreshsuccessSink] | type[FreshpaintSink]:
    """Destination ``name``'s sink class."""
    return FreshsuccessSink if name == "freshsuccess" else _freshpaint_sink()


def _freshpaint_sink() -> type[FreshpaintSink]:
    """Imported here, on first use: Freshpaint's HTTP client pulls in aiohttp, about 0.1 s of start-up that a
    pod delivering only to Freshsuccess need not pay."""
    from consumer.sinks.freshpaint import FreshpaintSink

    return FreshpaintSink


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(initial_backoff_s=settings.retry.initial_backoff_s, max_backoff_s=settings.retry.max_backoff_s,
                       credentials_backoff_s=settings.retry.credentials_backoff_s,
                       max_retry_after_s=settings.retry.max_retry_after_s)


def build_sink(settings: Settings, name: str, *, on_retry: Callable[[str, float], None] | None = None,
               for_preview: bool = False) -> Sink:
    """Destination ``name``'s sink. ``for_preview`` (the dry run): unset secrets stand as ``***``, since
    :meth:`preview` masks them anyway."""

    def secret(value: Any) -> str:
        if value is None:
            assert for_preview, "require_secrets runs before any sink is built"
            return MASK
        return str(value.get_secret_value())

    if name == "freshsuccess":
        fs = settings.freshsuccess
        return FreshsuccessSink(
            base_url=fs.base_url or datacenter_url(fs.datacenter), auth_key=secret(fs.auth_key),
            api_key=secret(fs.api_key), encoding=fs.encoding, compress_level=fs.compress_level,
            timeout_s=fs.timeout_s, retry=retry_policy(settings), on_retry=on_retry,
            ssl_context=tls_context(fs.ca_bundle, key="freshsuccess.ca_bundle", source=settings.source))
    fp = settings.freshpaint
    return _freshpaint_sink()(
        base_url=fp.base_url, token=secret(fp.token), max_in_flight=fp.max_in_flight_requests,
        timeout_s=fp.timeout_s, retry=retry_policy(settings), on_retry=on_retry,
        ssl_context=tls_context(fp.ca_bundle, key="freshpaint.ca_bundle", source=settings.source),
        ordered=fp.ordered, transport=fp.http_client, max_requests_per_s=fp.max_requests_per_s)


def lane_settings(settings: Settings, *, ordered: bool = False) -> LaneSettings:
    return LaneSettings(
        consume_batch_size=settings.kafka.consume_batch_size, consume_timeout_s=settings.kafka.consume_timeout_s,
        max_events=settings.batching.max_events, max_bytes=settings.batching.max_bytes,
        max_wait_s=settings.batching.max_wait_s,
        max_in_flight_batches=1 if ordered else settings.batching.max_in_flight_batches,
        revoke_timeout_s=settings.kafka.revocation_timeout_s,
        rejoin_timeout_s=settings.kafka.session_timeout_ms / 1000,
        transient_backoff_s=(settings.retry.initial_backoff_s, settings.retry.max_backoff_s),
        commit_retry_backoff_s=(settings.commit.retry_initial_backoff_s, settings.commit.retry_max_backoff_s),
        commit_answer_timeout_s=settings.commit.answer_timeout_s,
    )


def judge_for(settings: Settings, name: str, decoder: Decoder, mapping: CompiledMapping, *, stream: str = "",
              ) -> Judge:
    """The verdict on each event of one stream for destination ``name`` (the lane's, the dry run's and the
    replay's): ``decoder`` with the stream's reader schema, and its ``mapping``'s function for ``name``."""
    return Judge(decoder=decoder, map_fn=mapping.functions.get(name, no_outputs),
                 max_event_bytes=settings.decoding.max_event_bytes, ndjson=sink_class(name).ndjson,
                 record_name=decoder.writer_name if mapping.reads_record_name else None, stream=stream,
                 event_time=event_time_field(decoder.reader.source), caps=output_caps(settings, name))


def output_caps(settings: Settings, name: str) -> OutputCaps | None:
    """The limits on one output of destination ``name`` (Freshpaint: every event is a request), if it has any."""
    if name != "freshpaint":
        return None
    freshpaint = settings.freshpaint
    return OutputCaps(max_properties=freshpaint.max_properties_per_event, max_bytes=freshpaint.max_request_bytes)


def no_outputs(record: dict[str, Any], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    """The mapping of a stream that has no rules for a destination: its records are skipped there (counted)."""
    return []


def _needed(stream: PreparedStream, name: str) -> frozenset[str]:
    """The top-level fields a lane decodes: those its rules read, and the event time (for the event-age metric)."""
    when = event_time_field(stream.reader_schema)
    return stream.mapping.fields_read[name] | ({when[0]} if when else set())


def judges_for(settings: Settings, name: str, prepared: Prepared,
               check_registry: Callable[[SchemaRegistryClient], None] | None, *, whole_records: bool = False,
               ) -> Decides:
    """The verdict of destination ``name``'s lane: the one stream's :class:`Judge`, or one per stream picked by
    the record's topic (:class:`StreamJudges`) and, on a topic several streams share, by the writer schema's
    record name (:class:`RecordTypeJudges`). Each decodes with its stream's reader schema; all share one
    registry client, checked once by ``check_registry``. Each decoder reads a record only as far as the fields
    the stream's rules for ``name`` read (``whole_records``: every field, for tools that show the record)."""
    registry = checked_registry(settings, check_registry)
    decoders = {stream.name: decoder_for(settings, stream.reader_schema, registry=registry,
                                         needed=None if whole_records else _needed(stream, name))
                for stream in prepared.streams}
    judges = {stream.name: judge_for(settings, name, decoders[stream.name], stream.mapping, stream=stream.name)
              for stream in prepared.streams}

    def for_topic(streams: list[StreamConfig]) -> Decides:
        if not any(stream.record_names for stream in streams):
            return judges[streams[0].name]
        by_name = {record: judges[stream.name] for stream in streams for record in stream.record_names}
        skip = any(stream.other_records == "skip" for stream in streams)
        return RecordTypeJudges(decoders[streams[0].name].writer_name, by_name, skip_others=skip)

    by_topic = settings.streams_by_topic()
    if len(judges) == 1 and not prepared.streams[0].config.record_names:
        return judges[prepared.streams[0].name]
    return StreamJudges({topic: for_topic(s) for topic, s in by_topic.items() if not is_topic_pattern(topic)},
                        [(re.compile(topic), for_topic(s)) for topic, s in by_topic.items() if is_topic_pattern(topic)])
