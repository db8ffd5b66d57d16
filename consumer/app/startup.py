"""The start-up checks, shared by ``usage-consumer run`` and ``ping``: each fails with one clear message.

The mapping compiles against the reader schema, the broker answers and the topics exist (authentication and
TLS failures named), the schema registry answers, the health port is free, a CA bundle loads, and
Freshsuccess answers its ping.
"""

from __future__ import annotations

import errno
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from consumer.config import Settings, StreamConfig, default_mapping_file
from consumer.decoding.decoder import registry_client
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from consumer.errors import ConfigError, FatalError, MappingInvalid, TransientError, UnknownSchema
from consumer.kafka.failures import metadata_or_refusal
from consumer.mapping import CompiledMapping, load_mapping
from consumer.observability.health import HealthServer
from consumer.pipeline.delivery import DeliveryLoop
from consumer.sinks.freshsuccess import FreshsuccessSink

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PreparedStream:
    """One stream after the start-up checks: its configuration, its reader schema and its compiled mapping."""

    config: StreamConfig
    reader_schema: dict[str, Any]
    mapping: CompiledMapping
    mapping_file: Path
    schema_source: str = "file"
    """Where the reader schema came from, for ``check``: a file, ``inline``, or a registry subject's version."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def topics(self) -> tuple[str, ...]:
        return self.config.topics


@dataclass(frozen=True)
class Prepared:
    """What start-up checks produce: every stream's schema and compiled mapping."""

    streams: tuple[PreparedStream, ...]

    def has_rules_for(self, destination: str) -> bool:
        """Some stream's mapping has outputs for ``destination`` (else its lane has nothing to do)."""
        return any(destination in stream.mapping.functions for stream in self.streams)

    def named(self, name: str) -> PreparedStream:
        """The stream called ``name``; a ConfigError listing the streams when there is none."""
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise ConfigError(f"no stream is named {name!r} (streams: {', '.join(s.name for s in self.streams)})",
                          key="streams")

    def only(self, what: str) -> PreparedStream:
        """The one stream, for the parts that do not read several streams yet (``what`` names the part)."""
        if len(self.streams) != 1:
            raise ConfigError(f"{what} reads one stream; this configuration has {len(self.streams)} "
                              f"({', '.join(s.name for s in self.streams)})", key="streams")
        return self.streams[0]


def prepare(settings: Settings) -> Prepared:
    """Load each stream's reader schema and compile its mapping against it (``usage-consumer check`` stops
    here; it asks the schema registry only for streams whose schema is a subject's). With ``streams:`` every
    problem of every stream is listed, each starting ``stream 'NAME': ``."""
    with _SchemaSources(settings) as sources:
        return _prepare(settings, sources)


def _prepare(settings: Settings, sources: _SchemaSources) -> Prepared:
    named = bool(settings.streams)
    prepared: list[PreparedStream] = []
    problems: list[str] = []
    for stream in settings.stream_list():
        try:
            reader_schema, schema_source = sources.reader_schema(stream)
            mapping_file = stream.mapping or default_mapping_file()
            mapping = load_mapping(mapping_file, reader_schema)
        except MappingInvalid as exc:
            if not named:
                raise
            problems += [f"stream {stream.name!r}: {problem}" for problem in exc.problems]
        except ConfigError as exc:
            if not named:
                raise
            problems.append(f"stream {stream.name!r}: {exc}")
        else:
            prepared.append(PreparedStream(stream, reader_schema, mapping, mapping_file, schema_source))
    if problems:
        raise MappingInvalid(problems, title="invalid streams")
    return Prepared(tuple(prepared))


class _SchemaSources:
    """Each stream's reader schema from its file, the configuration, or the schema registry (one client, made
    only when a stream names a subject)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._registry: SchemaRegistryClient | None = None

    def reader_schema(self, stream: StreamConfig) -> tuple[dict[str, Any], str]:
        """The schema, and where it came from."""
        if stream.reader_schema_inline is not None:
            try:
                parse(stream.reader_schema_inline)
            except ConfigError as exc:
                raise ConfigError(f"reader_schema_inline: {exc}") from None
            return stream.reader_schema_inline, "inline"
        if stream.reader_schema_subject is not None:
            if self._registry is None:
                self._registry = registry_client(self._settings)
            try:
                found = self._registry.get_version(stream.reader_schema_subject, stream.reader_schema_version)
            except (TransientError, FatalError, UnknownSchema) as exc:
                raise FatalError(f"stream {stream.name!r}: cannot fetch its reader schema (subject "
                                 f"{stream.reader_schema_subject!r}): {exc}") from None
            return found.schema, (f"subject {found.subject!r} version {found.version} (id {found.schema_id}) "
                                  f"from {self._registry.host}")
        path = stream.reader_schema or default_reader_schema_path()
        return load_schema(path), f"file {path}"

    def __enter__(self) -> _SchemaSources:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._registry is not None:
            self._registry.close()


def check_kafka(settings: Settings, timeout_s: float | None = None) -> None:
    """The broker answers and every topic we read or write exists; else one clear error.

    ``timeout_s`` defaults to ``kafka.startup_timeout_s``.
    """
    if timeout_s is None:
        timeout_s = settings.kafka.startup_timeout_s
    # librdkafka would print a line per failed connection attempt; the one error below says it all.
    # Authentication and TLS failures reach only the error callback (list_topics just times out): the first
    # one stops the wait.
    seen: list[KafkaError] = []
    admin = AdminClient({"log_level": 0, "error_cb": seen.append, **settings.kafka_client_config()})
    metadata = metadata_or_refusal(admin, settings, seen, timeout_s)
    missing = [t for t in (*settings.named_topics(), settings.kafka.dead_letter_topic) if t not in metadata.topics]
    if missing:
        where = "streams[].topics" if settings.streams else "kafka.topics"
        raise ConfigError(f"topic(s) {', '.join(missing)} do not exist on {settings.kafka.bootstrap_servers}; "
                          f"create them or fix {where} / kafka.dead_letter_topic", key=where, file=settings.source)


def check_registry(registry: SchemaRegistryClient, attempts: int = 3) -> None:
    """The schema registry answers at start-up (later outages are retried, never dead-lettered)."""
    for attempt in range(1, attempts + 1):
        try:
            registry.check()
            return
        except TransientError as exc:
            if attempt == attempts:
                raise FatalError(f"{exc}; check decoding.schema_registry_url (or SCHEMA_REGISTRY_URL) and that "
                                 "the registry is up") from None
            log.warning("schema_registry_unreachable", registry_host=registry.host, attempt=attempt, error=str(exc))
            time.sleep(min(2.0 ** attempt, 5.0))


def start_health_server(settings: Settings, *, live: Callable[[], tuple[bool, str]],
                        ready: Callable[[], tuple[bool, str]], metrics: Callable[[], bytes]) -> HealthServer:
    """Serve /livez, /readyz and /metrics; a taken port is a configuration error naming ``health.port``."""
    health = settings.health
    try:
        server = HealthServer(health.host, health.port, live=live, ready=ready, metrics=metrics)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {health.port} on {health.host} is already in use (another usage-consumer, or "
                              "another server, on this host?); set health.port to a free port, or stop the other "
                              "process", key="health.port", file=settings.source) from None
        raise ConfigError(f"cannot listen on {health.host}:{health.port}: {exc.strerror or exc}",
                          key="health.port", file=settings.source) from None
    return server.start()


def tls_context(ca_bundle: Path | None, *, key: str, source: str | None = None) -> ssl.SSLContext | None:
    """A verifying TLS client context trusting only ``ca_bundle`` (None: the sink's default trust store).

    Certificate and host name verification stay on either way; there is no switch to turn them off.
    """
    if ca_bundle is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM CA bundle"
        raise ConfigError(f"cannot load {ca_bundle} ({why})", key=key, file=source) from None


def ping_freshsuccess(sink: FreshsuccessSink, delivery: DeliveryLoop, attempts: int = 3) -> None:
    """POST /v1/ping before consuming: a wrong base URL fails here, not after the first batch."""
    for attempt in range(1, attempts + 1):
        try:
            delivery.call(sink.ping, timeout_s=60)
            log.info("destination_pinged", destination=sink.name, host=sink.host)
            return
        except TransientError as exc:
            log.warning("destination_ping_failed", destination=sink.name, host=sink.host, attempt=attempt,
                        error=str(exc))
            time.sleep(min(2.0 ** attempt, 10.0))
    log.warning("destination_unreachable_at_start", destination=sink.name, host=sink.host)


