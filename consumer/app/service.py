"""Assemble the service from ``Settings`` and run one lane per enabled destination.

Start-up checks everything that can be checked before consuming, and fails with one clear message:
the mapping compiles against the reader schema, the broker answers and the topics exist, the secrets
are set, and Freshsuccess answers its ping. Then each lane runs in its own thread with its own consumer
(group ``<group_id>.<destination>`` by default), sharing one delivery event loop.
"""

from __future__ import annotations

import errno
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from consumer.config import Settings, default_mapping_file
from consumer.decoding.decoder import decoder_for
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import default_reader_schema_path, load_schema
from consumer.errors import ConfigError, FatalError, TransientError
from consumer.kafka.deadletter import DeadLetter, DeadLetterProducer
from consumer.kafka.source import KafkaSource, SourceCallbacks, consumer_config
from consumer.mapping import CompiledMapping, load_mapping
from consumer.observability.health import HealthServer
from consumer.observability.metrics import Metrics
from consumer.pipeline.delivery import DeliveryLoop
from consumer.pipeline.lane import Destination, Lane, LaneSettings
from consumer.pipeline.verdict import Decoder, Judge, MapFn
from consumer.sinks.destinations import FreshpaintDestination, FreshsuccessDestination
from consumer.sinks.freshpaint import FreshpaintSink
from consumer.sinks.freshsuccess import FreshsuccessSink, datacenter_url
from consumer.sinks.retry import RetryPolicy

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FATAL = 3


@dataclass(frozen=True)
class Prepared:
    """What start-up checks produce: the schema and the compiled mapping."""

    reader_schema: dict[str, Any]
    mapping: CompiledMapping
    mapping_file: Path


def prepare(settings: Settings) -> Prepared:
    """Load the reader schema and compile the mapping against it (``usage-consumer check`` stops here)."""
    schema_path = settings.decoding.reader_schema or default_reader_schema_path()
    reader_schema = load_schema(schema_path)
    mapping_file = settings.mapping.file or default_mapping_file()
    mapping = load_mapping(mapping_file, reader_schema)
    return Prepared(reader_schema, mapping, mapping_file)


def check_kafka(settings: Settings, timeout_s: float | None = None) -> None:
    """The broker answers and every topic we read or write exists; else one clear error.

    ``timeout_s`` defaults to ``kafka.startup_timeout_s``.
    """
    if timeout_s is None:
        timeout_s = settings.kafka.startup_timeout_s
    # librdkafka would print a line per failed connection attempt; the one error below says it all.
    # Authentication and TLS failures reach only the error callback (list_topics just times out).
    seen: list[KafkaError] = []
    admin = AdminClient({"log_level": 0, "error_cb": seen.append, **settings.kafka_client_config()})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:
        error = exc.args[0] if exc.args else exc
        detail = error.str() if hasattr(error, "str") else str(error)  # a KafkaError's own text
        admin.poll(0)  # serves error_cb
        cause = kafka_failure_cause(settings, seen)
        if cause is not None:
            raise FatalError(f"Kafka at {settings.kafka.bootstrap_servers}: {cause}") from None
        raise FatalError(f"Kafka at {settings.kafka.bootstrap_servers} did not answer within {timeout_s:g}s "
                         f"({detail}); check kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS), the network "
                         "and the security settings") from None
    missing = [t for t in (*settings.kafka.topics, settings.kafka.dead_letter_topic) if t not in metadata.topics]
    if missing:
        raise ConfigError(f"topic(s) {', '.join(missing)} do not exist on {settings.kafka.bootstrap_servers}; "
                          "create them or fix kafka.topics / kafka.dead_letter_topic", key="kafka.topics",
                          file=settings.source)


# librdkafka error texts that name a TLS problem, and what the operator should check for each.
_TLS_CAUSES = (
    ("certificate verify failed", "the broker's TLS certificate could not be verified",
     "check kafka.ssl_ca_location (the CA that signed the broker's certificate) and the broker's host name"),
    ("alert bad certificate", "the broker refused our TLS client certificate",
     "check kafka.ssl_certificate_location and kafka.ssl_key_location (a certificate signed by a CA the broker "
     "trusts)"),
    ("alert certificate required", "the broker requires a TLS client certificate",
     "set kafka.ssl_certificate_location and kafka.ssl_key_location"),
    ("alert unknown ca", "the broker does not trust the CA of our TLS client certificate",
     "check kafka.ssl_certificate_location and kafka.ssl_key_location"),
    ("connecting to a PLAINTEXT broker listener", "the broker's listener does not speak TLS",
     "check kafka.security_protocol and the port in kafka.bootstrap_servers"),
    ("wrong version number", "the broker's listener does not speak TLS",
     "check kafka.security_protocol and the port in kafka.bootstrap_servers"),
)


def kafka_failure_cause(settings: Settings, errors: list[KafkaError]) -> str | None:
    """Why the broker did not answer, from the client's error callbacks: authentication or TLS; None if
    neither (then the address or the network is the likely cause). Never contains a secret."""
    texts = [error.str() for error in errors]
    cause = None
    for error, text in zip(errors, texts, strict=True):
        if error.code() == KafkaError._AUTHENTICATION:
            kafka = settings.kafka
            cause = (f"authentication failed ({_without_timing(text)}); check kafka.sasl_mechanism "
                     f"({kafka.sasl_mechanism}), kafka.sasl_username ({kafka.sasl_username}) and "
                     "KAFKA_SASL_PASSWORD")
            break
    if cause is None:
        for needle, what, hint in _TLS_CAUSES:
            found = next((text for text in texts if needle in text), None)
            if found is not None:
                cause = f"{what} ({_without_timing(found)}); {hint}"
                break
    if cause is None:
        return None
    for secret in settings.secret_values():  # librdkafka never echoes them; belt and braces
        cause = cause.replace(secret, "***")
    return cause


def _without_timing(text: str) -> str:
    """librdkafka's text without the trailing ``(after 3ms in state X)`` and the endpoint prefix."""
    text = text.split(" (after ", 1)[0]
    _, sep, rest = text.partition("/bootstrap: ")
    return rest if sep else text


def build_decoder(settings: Settings, reader_schema: dict[str, Any]) -> Decoder:
    """A lane's decoder; a registry that does not answer at start-up stops it (later outages are retried)."""
    return decoder_for(settings, reader_schema, check_registry=check_registry)


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


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(initial_backoff_s=settings.retry.initial_backoff_s, max_backoff_s=settings.retry.max_backoff_s,
                       credentials_backoff_s=settings.retry.credentials_backoff_s,
                       max_retry_after_s=settings.retry.max_retry_after_s)


def build_destination(settings: Settings, name: str, *, on_retry: Callable[[str, float], None] | None = None,
                      ) -> FreshsuccessDestination | FreshpaintDestination:
    if name == "freshsuccess":
        fs = settings.freshsuccess
        assert fs.auth_key is not None
        assert fs.api_key is not None
        return FreshsuccessDestination(FreshsuccessSink(
            base_url=fs.base_url or datacenter_url(fs.datacenter), auth_key=fs.auth_key.get_secret_value(),
            api_key=fs.api_key.get_secret_value(), encoding=fs.encoding, compress_level=fs.compress_level,
            timeout_s=fs.timeout_s, retry=retry_policy(settings), on_retry=on_retry,
            ssl_context=tls_context(fs.ca_bundle, key="freshsuccess.ca_bundle", source=settings.source)))
    fp = settings.freshpaint
    assert fp.token is not None
    return FreshpaintDestination(FreshpaintSink(
        base_url=fp.base_url, token=fp.token.get_secret_value(), max_in_flight=fp.max_in_flight_requests,
        timeout_s=fp.timeout_s, retry=retry_policy(settings), on_retry=on_retry,
        ssl_context=tls_context(fp.ca_bundle, key="freshpaint.ca_bundle", source=settings.source)),
        ordered=fp.ordered)


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


def ping_freshsuccess(destination: FreshsuccessDestination, delivery: DeliveryLoop, attempts: int = 3) -> None:
    """POST /v1/ping before consuming: a wrong base URL fails here, not after the first batch."""
    for attempt in range(1, attempts + 1):
        try:
            delivery.call(destination.sink.ping, timeout_s=60)
            log.info("destination_pinged", destination="freshsuccess", host=destination.sink.host)
            return
        except TransientError as exc:
            log.warning("destination_ping_failed", destination="freshsuccess", host=destination.sink.host,
                        attempt=attempt, error=str(exc))
            time.sleep(min(2.0 ** attempt, 10.0))
    log.warning("destination_unreachable_at_start", destination="freshsuccess", host=destination.sink.host)


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


def judge_for(settings: Settings, name: str, decoder: Decoder, map_fn: MapFn) -> Judge:
    """The verdict on each event for destination ``name`` (the lane's, the dry run's and the replay's)."""
    return Judge(decoder=decoder, map_fn=map_fn, max_event_bytes=settings.decoding.max_event_bytes,
                 ndjson=name == "freshsuccess")


class Service:
    """One lane per destination, one delivery loop, one stop event."""

    def __init__(self, settings: Settings, *, destinations: list[str] | None = None,
                 on_parked: Callable[[DeadLetter], None] | None = None) -> None:
        self.settings = settings
        self.destinations = destinations or settings.destinations()
        self.on_parked = on_parked
        self.stop_event = threading.Event()
        self.lanes: list[Lane] = []
        self.delivery = DeliveryLoop()
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self.started = False
        self._threads: list[threading.Thread] = []
        self._sinks: list[FreshsuccessDestination | FreshpaintDestination] = []

    def start(self) -> None:
        """Check everything and build the lanes; on any failure, close what was opened and raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        settings = self.settings
        if settings.health.enabled:
            self.health = start_health_server(settings, live=self.live, ready=self.ready,
                                              metrics=self.metrics.exposition)
        settings.require_secrets(self.destinations)
        prepared = prepare(settings)
        check_kafka(settings)
        self.delivery.start()
        base = settings.kafka_client_config()
        for name in self.destinations:
            map_fn: MapFn | None = prepared.mapping.functions.get(name)
            if map_fn is None:
                log.warning("destination_has_no_rules", destination=name, mapping=str(prepared.mapping_file))
                continue
            destination = build_destination(settings, name, on_retry=self.metrics.on_retry(name))
            self._sinks.append(destination)
            if isinstance(destination, FreshsuccessDestination) and settings.freshsuccess.ping_at_start:
                ping_freshsuccess(destination, self.delivery)
            self.lanes.append(self._lane(name, destination, map_fn, prepared, base))
        if not self.lanes:
            raise ConfigError("no destination has any mapping rule: nothing to do", file=str(prepared.mapping_file))
        self.started = True

    def live(self) -> tuple[bool, str]:
        """Every lane's poll loop iterated recently (a stuck loop is worth a restart; a Kafka outage is not)."""
        now = time.monotonic()
        stalled = [lane.name for lane in self.lanes
                   if now - lane.last_step_at > self.settings.health.liveness_stall_s and not lane.fatal]
        if stalled:
            return False, f"poll loop stalled: {', '.join(stalled)}"
        return True, "poll loops iterating"

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        failed = [f"{lane.name}: {lane.fatal}" for lane in self.lanes if lane.fatal]
        if failed:
            return False, "; ".join(failed)
        return True, ", ".join(f"{lane.name} {len(lane.tracker.owned())} partitions" for lane in self.lanes)

    def _lane(self, name: str, destination: Destination, map_fn: MapFn, prepared: Prepared,
              base: dict[str, Any]) -> Lane:
        settings = self.settings
        group = settings.group_for(name)
        config = consumer_config(base, settings.kafka, group_id=group)
        topics = settings.kafka.topics

        def source_factory(callbacks: SourceCallbacks) -> KafkaSource:
            return KafkaSource(config, topics, callbacks, destination=name)

        judge = judge_for(settings, name, build_decoder(settings, prepared.reader_schema), map_fn)
        dead_letters = DeadLetterProducer(settings.kafka.dead_letter_topic, base, on_parked=self.on_parked)
        try:
            lane = Lane(destination=destination, source_factory=source_factory, judge=judge,
                        dead_letters=dead_letters, delivery=self.delivery,
                        settings=lane_settings(settings, ordered=settings.destination(name).ordered),
                        metrics=self.metrics)
        except BaseException:
            dead_letters.close()
            raise
        log.info("lane_started", destination=name, group=group, topics=list(topics))
        self.metrics.add_lane(lane)
        return lane

    def run(self, *, shutdown_timeout_s: float = 30.0) -> int:
        """Run every lane until ``stop_event`` is set or one of them fails; returns the exit code."""
        for lane in self.lanes:
            thread = threading.Thread(target=self._run_lane, args=(lane, shutdown_timeout_s),
                                      name=f"lane-{lane.name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        while any(t.is_alive() for t in self._threads):
            if any(lane.fatal for lane in self.lanes):
                self.stop_event.set()
            for thread in self._threads:
                thread.join(0.1)
        self.close()
        failures = [f"{lane.name}: {lane.fatal}" for lane in self.lanes if lane.fatal]
        for failure in failures:
            log.error("service_stopped_on_error", reason=failure)
        return EXIT_FATAL if failures else EXIT_OK

    def _run_lane(self, lane: Lane, shutdown_timeout_s: float) -> None:
        try:
            lane.run(self.stop_event, shutdown_timeout_s=shutdown_timeout_s)
        except Exception as exc:  # a bug: stop everything and say so, rather than die silently in a thread
            log.exception("lane_crashed", destination=lane.name)
            lane.fatal = lane.fatal or f"internal error: {type(exc).__name__}: {exc}"
            self.stop_event.set()

    def close(self) -> None:
        """Release everything, once: lanes that never ran are closed here (a failed start); the others closed
        themselves when they stopped."""
        for lane in self.lanes:
            if not any(t.name == f"lane-{lane.name}" for t in self._threads):
                lane.close()
        if self.health is not None:
            self.health.stop()
            self.health = None
        sinks, self._sinks = self._sinks, []
        for destination in sinks:
            try:
                self.delivery.call(destination.aclose, timeout_s=5)
            except Exception as exc:  # closing is best effort at exit
                log.warning("destination_close_failed", destination=destination.name, error=str(exc))
        self.delivery.stop()
