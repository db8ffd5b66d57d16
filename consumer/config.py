"""Service configuration: one YAML file plus environment variables, parsed once into frozen objects.

Secrets come only from the environment and are held as ``pydantic.SecretStr``, so no ``repr``, log line or
error message shows them. They are listed once, in :data:`SECRETS`: the environment variables, the librdkafka
properties they set, the start-up check that names a missing one, the log scrubber and the refusal of a secret
written in the file (``kafka.client_properties`` included) all come from that table. A few non-secret settings
can also come from the environment (``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``) because that is how
platforms hand them out.

Every key is documented in ``docs/configuration.md``. Unknown keys are rejected; a bad value stops
start-up with a :class:`~consumer.errors.ConfigError` naming the file, the line and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from consumer.errors import ConfigError
from consumer.yamlsource import Located, closest, load_yaml, load_yaml_text

PACKAGE_DEFAULTS = Path(__file__).resolve().parent / "defaults"
_ABSENT = object()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0)]
"""A timeout, wait or backoff: positive, since zero would turn a wait into a busy loop and a timeout into an
instant failure. Stated once here rather than as ``Field(..., gt=0)`` on every such setting."""


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    """The password comes from ``KAFKA_SASL_PASSWORD``."""
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    """The key's password, if any, comes from ``KAFKA_SSL_KEY_PASSWORD``."""
    group_protocol: Literal["classic", "consumer"] = "classic"
    """``classic`` with cooperative-sticky assignment, or ``consumer`` (KIP-848, brokers 4.0+)."""
    topics: tuple[str, ...] = ("usage-events",)
    group_id: str = "usage-consumer"
    group_per_destination: bool = True
    """Each destination consumes with its own group ``<group_id>.<destination>``: its own offsets and backpressure."""
    dead_letter_topic: str = "usage-events.dlq"
    replay_ledger_topic: str | None = None
    """Compacted topic where ``dlq replay`` records each letter it replayed; default ``<dead_letter_topic>.replayed``
    (created by the first replay when missing)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    consume_batch_size: int = Field(1000, ge=1, le=100_000)
    consume_timeout_s: float = Field(0.1, gt=0, le=10)
    session_timeout_ms: int = Field(45_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    revocation_timeout_s: Seconds = 15.0
    """How long a revoked partition's in-flight work may take to finish before it is abandoned (uncommitted)."""
    prefetch_max_kbytes: int = Field(16_384, ge=1024)
    """librdkafka's ``queued.max.messages.kbytes``: the bound on fetched-but-unprocessed data in memory."""
    client_properties: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka settings of every Kafka client, e.g. ``fetch.max.bytes``; those that carry a secret are
    refused (:data:`SECRETS`)."""
    startup_timeout_s: float = Field(15.0, gt=0, le=600)
    metadata_refresh_interval_s: Seconds = 30.0
    """How often the consumers look for new topics matching a stream's topic pattern (and for new partitions)."""
    """How long start-up (and ``usage-consumer ping``, ``map``, ``dlq``) waits for the broker's first answer."""


class DecodingConfig(_Section):
    framing: Literal["confluent", "single-object", "raw"] = "confluent"
    reader_schema: Path | None = None
    """Reader schema (.avsc); default: the shipped ``usage_event.avsc``."""
    schema_dir: Path | None = None
    """Directory of .avsc files searched by fingerprint (single-object framing); default: the shipped schemas."""
    writer_schema: Path | None = None
    """Writer schema for raw framing; default: the reader schema."""
    schema_registry_url: str | None = None
    schema_registry_user: str | None = None
    schema_registry_timeout_s: Seconds = 5.0
    max_event_bytes: int = Field(1_048_576, ge=64)
    reader: Literal["generated", "fastavro"] = "generated"
    """``generated``: a reader written once per writer schema reads each body (about twice as fast);
    ``fastavro``: fastavro's schemaless reader, for every record. Resolution always uses fastavro."""


class MappingConfig(_Section):
    file: Path | None = None
    """The mapping YAML (rendered by Helm); default: the shipped ``consumer/defaults/mapping.yaml``."""


class BatchingConfig(_Section):
    """Together these bound what a lane holds in memory: (max_in_flight_batches + 1) batches."""

    max_events: int = Field(2000, ge=1)
    max_bytes: int = Field(1_048_576, ge=1024)
    """Uncompressed body bytes at which a Freshsuccess batch closes."""
    max_wait_s: Seconds = 1.0
    max_in_flight_batches: int = Field(4, ge=1)


class CommitConfig(_Section):
    """Commits follow delivery: each lane commits as soon as a partition's finished prefix advances (one
    request at a time, later advances coalesced) and counts a commit only once the broker confirmed it."""

    retry_initial_backoff_s: Seconds = 0.2
    """Wait before a refused commit (rebalance, coordinator moving) is sent again; doubles per refusal."""
    retry_max_backoff_s: Seconds = 5.0
    answer_timeout_s: Seconds = 60.0
    """A commit the broker has not answered for this long is sent again (librdkafka keeps retrying a commit to
    an unresponsive coordinator by itself; this bounds how long progress waits on one such request)."""


class ShutdownConfig(_Section):
    timeout_s: Seconds = 25.0
    """SIGTERM: flush in-flight batches and commit within this deadline (keep it below Kubernetes'
    terminationGracePeriodSeconds); past it, exit without committing undelivered work."""


class HealthConfig(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    """0 picks a free port (tests)."""
    liveness_stall_s: Seconds = 120.0
    """/livez fails when a lane's poll loop has not iterated for this long."""


class RetryConfig(_Section):
    initial_backoff_s: Seconds = 0.5
    max_backoff_s: Seconds = 30.0
    credentials_backoff_s: Seconds = 60.0
    max_retry_after_s: Seconds = 300.0
    """Cap on a destination's ``Retry-After`` (independent of ``max_backoff_s``)."""


class FreshsuccessConfig(_Section):
    enabled: bool = True
    datacenter: Literal["us", "eu"] = "us"
    base_url: str | None = None
    """Overrides ``datacenter`` (e.g. an emulator, a proxy, or the instrumentation viewer)."""
    encoding: Literal["gzip", "deflate", "none"] = "gzip"
    ordered: bool = False
    """Keep each partition's events in order: one batch in flight at a time."""
    compress_level: int = Field(1, ge=0, le=9)
    timeout_s: Seconds = 30.0
    ping_at_start: bool = True
    ca_bundle: Path | None = None
    """PEM CA bundle that verifies the server's certificate instead of the default trust store."""
    auth_key: SecretStr | None = None
    api_key: SecretStr | None = None


class FreshpaintConfig(_Section):
    enabled: bool = True
    base_url: str = "https://api.perfalytics.com"
    max_in_flight_requests: int = Field(64, ge=1, le=4096)
    ordered: bool = False
    """Send each partition's events one after another, in offset order (partitions still run concurrently)."""
    max_requests_per_s: float | None = Field(None, gt=0)
    """This process's cap on requests per second (Freshpaint's burst limit of 5,000/s is per account: keep
    replicas x this under it); None: only ``max_in_flight_requests`` bounds the rate."""
    max_properties_per_event: int = Field(255, ge=1)
    """Events with more properties are dead-lettered ``too_large`` (Mixpanel's limit, the model Freshpaint
    follows: Freshpaint answers 200 before validating, so a refusal would never be seen)."""
    max_request_bytes: int = Field(1_000_000, ge=256)
    """Events whose JSON body is larger are dead-lettered ``too_large`` (Mixpanel's 1 MB per event)."""
    http_client: Literal["http1", "aiohttp"] = "http1"
    """``http1``: the sink's own lean HTTP/1.1 client (~40 CPU-µs per request); ``aiohttp``: aiohttp's request
    path (~130 µs), which sends the same bytes and fails the same way, kept as a switch back."""
    timeout_s: Seconds = 10.0
    ca_bundle: Path | None = None
    """PEM CA bundle that verifies the server's certificate instead of the default trust store."""
    token: SecretStr | None = None


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def is_topic_pattern(topic: str) -> bool:
    """``^...`` is a regular expression of topic names (librdkafka's convention for subscriptions)."""
    return topic.startswith("^")


class StreamConfig(_Section):
    """One stream: topics that carry one kind of record, its reader schema and its mapping.

    Without ``streams:`` the configuration is one stream named ``default`` made of ``kafka.topics``,
    ``decoding.reader_schema`` and ``mapping.file`` (see :meth:`Settings.stream_list`).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    topics: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)
    """Topic names, or regular expressions starting with ``^`` (librdkafka's convention): topics created later
    that match join the subscription within ``kafka.metadata_refresh_interval_s``."""
    reader_schema: Path | None = None
    """The ``.avsc`` file of this stream's reader schema (default: the packaged ``UsageEvent`` schema)."""
    reader_schema_inline: dict[str, Any] | None = None
    """The reader schema written out in the configuration (a YAML or JSON object), instead of a file."""
    reader_schema_subject: str | None = Field(None, min_length=1)
    """The reader schema from the schema registry: this subject's ``reader_schema_version``, fetched at
    start-up (schema references included)."""
    reader_schema_version: Annotated[int, Field(ge=1)] | Literal["latest"] = "latest"
    """Which version of ``reader_schema_subject``: ``latest`` (at start-up) or a pinned version number."""
    mapping: Path | None = None
    """This stream's mapping file (default: the packaged mapping, written for ``UsageEvent``)."""
    record_names: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """Writer schema full names this stream takes (empty: every record of its topics). Streams that share a
    topic each list theirs: the record's writer schema picks the stream (``RecordNameStrategy`` topics)."""
    other_records: Literal["dead_letter", "skip"] = "dead_letter"
    """A record on this stream's topics whose type no stream lists: dead-lettered ``no_stream``, or skipped."""

    @model_validator(mode="after")
    def _one_reader_schema(self) -> StreamConfig:
        given = [key for key in ("reader_schema", "reader_schema_inline", "reader_schema_subject")
                 if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"stream {self.name!r}: give one of {', '.join(given)}, not several")
        if "reader_schema_version" in self.model_fields_set and self.reader_schema_subject is None:
            raise ValueError(f"stream {self.name!r}: reader_schema_version needs reader_schema_subject")
        return self


class Settings(_Section):
    streams: tuple[StreamConfig, ...] = ()
    """Several topics with their own schemas and mappings; empty: one stream from kafka.topics and friends."""
    kafka: KafkaConfig = KafkaConfig()
    decoding: DecodingConfig = DecodingConfig()
    mapping: MappingConfig = MappingConfig()
    batching: BatchingConfig = BatchingConfig()
    commit: CommitConfig = CommitConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    health: HealthConfig = HealthConfig()
    retry: RetryConfig = RetryConfig()
    freshsuccess: FreshsuccessConfig = FreshsuccessConfig()
    freshpaint: FreshpaintConfig = FreshpaintConfig()
    logging: LoggingConfig = LoggingConfig()
    source: str = Field("<defaults>", exclude=True)
    schema_registry_password: SecretStr | None = Field(None, exclude=True)
    kafka_sasl_password: SecretStr | None = Field(None, exclude=True)
    kafka_ssl_key_password: SecretStr | None = Field(None, exclude=True)
    kafka_ssl_key_pem: SecretStr | None = Field(None, exclude=True)
    kafka_ssl_keystore_password: SecretStr | None = Field(None, exclude=True)
    kafka_sasl_oauthbearer_client_secret: SecretStr | None = Field(None, exclude=True)
    kafka_sasl_oauthbearer_config: SecretStr | None = Field(None, exclude=True)
    kafka_sasl_oauthbearer_assertion_private_key_passphrase: SecretStr | None = Field(None, exclude=True)
    kafka_sasl_oauthbearer_assertion_private_key_pem: SecretStr | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _something_enabled(self) -> Settings:
        if not (self.freshsuccess.enabled or self.freshpaint.enabled):
            raise ValueError("at least one of freshsuccess.enabled and freshpaint.enabled must be true")
        return self

    @model_validator(mode="after")
    def _streams_are_distinct(self) -> Settings:
        """Stream names are unique, a topic belongs to one stream, and ``streams:`` replaces the single-stream
        keys instead of being combined with them (which would leave it unclear what those mean)."""
        if not self.streams:
            return self
        names = [stream.name for stream in self.streams]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"streams: the name(s) {', '.join(repeated)} are used more than once")
        for topic, streams in self.streams_by_topic().items():
            if len(streams) < 2:
                continue
            first, second = streams[0], streams[1]
            if not all(stream.record_names for stream in streams):
                raise ValueError(f"streams: topic {topic!r} is in both stream {first.name!r} and stream "
                                 f"{second.name!r}; a topic belongs to one stream, unless each stream on it lists "
                                 "its record_names")
            names = [name for stream in streams for name in stream.record_names]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"streams: record type(s) {', '.join(twice)} on topic {topic!r} are listed by more "
                                 "than one stream")
        replaced = [f"{section}.{key}" for section, key in (("kafka", "topics"), ("decoding", "reader_schema"),
                                                           ("mapping", "file"))
                    if key in getattr(self, section).model_fields_set]
        if replaced:
            raise ValueError(f"streams: replaces {', '.join(replaced)}; give each stream its topics, reader_schema "
                             "and mapping instead")
        return self

    @model_validator(mode="after")
    def _patterns_compile_and_spare_our_own_topics(self) -> Settings:
        """A topic pattern must be a valid regular expression and must not match the topics this service writes
        (it would read its own dead letters)."""
        ours = [t for t in (self.kafka.dead_letter_topic, self.kafka.replay_ledger_topic) if t]
        for stream in self.streams:
            for pattern in (topic for topic in stream.topics if is_topic_pattern(topic)):
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"streams: stream {stream.name!r}: topic pattern {pattern!r} is not a regular "
                                     f"expression ({exc})") from None
                caught = [topic for topic in ours if compiled.search(topic)]
                if caught:
                    raise ValueError(f"streams: stream {stream.name!r}: topic pattern {pattern!r} also matches "
                                     f"{', '.join(caught)}, which this service writes; narrow the pattern")
        return self

    def stream_list(self) -> tuple[StreamConfig, ...]:
        """The streams to consume: ``streams:``, or the single stream ``default`` of the single-stream keys."""
        if self.streams:
            return self.streams
        return (StreamConfig(name="default", topics=self.kafka.topics, reader_schema=self.decoding.reader_schema,
                             mapping=self.mapping.file),)

    def streams_by_topic(self) -> dict[str, list[StreamConfig]]:
        """Each topic (or topic pattern), in configuration order, with the streams that read it: one, or several
        that each take their own ``record_names``."""
        by_topic: dict[str, list[StreamConfig]] = {}
        for stream in self.stream_list():
            for topic in stream.topics:
                by_topic.setdefault(topic, []).append(stream)
        return by_topic

    def streams_for_topic(self, topic: str) -> list[StreamConfig]:
        """The streams that read ``topic``: those naming it, else those of the first pattern matching it (the
        order the lanes route in); several when they share it by record type, none when no stream reads it."""
        by_topic = self.streams_by_topic()
        if topic in by_topic and not is_topic_pattern(topic):
            return by_topic[topic]
        return next((streams for pattern, streams in by_topic.items()
                     if is_topic_pattern(pattern) and re.search(pattern, topic)), [])

    def topics(self) -> tuple[str, ...]:
        """Every topic and topic pattern of every stream, once each, in configuration order (what the lanes
        subscribe to; librdkafka refuses a subscription that names a topic twice)."""
        return tuple(self.streams_by_topic())

    def named_topics(self) -> tuple[str, ...]:
        """The topics named outright (not patterns): these must exist at start-up."""
        return tuple(topic for topic in self.topics() if not is_topic_pattern(topic))


    def secret(self, secret: Secret) -> SecretStr | None:
        holder = getattr(self, secret.section) if secret.section else self
        value: SecretStr | None = getattr(holder, secret.key)
        return value

    def secret_values(self) -> list[str]:
        """Every secret's value, for the log scrubber; never print these."""
        held = (self.secret(secret) for secret in SECRETS)
        return [s.get_secret_value() for s in held if s is not None]

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every client: brokers, security, and ``client_properties``."""
        kafka = self.kafka
        config: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers,
                                  "security.protocol": kafka.security_protocol}
        optional = {"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                    "ssl.ca.location": kafka.ssl_ca_location,
                    "ssl.certificate.location": kafka.ssl_certificate_location,
                    "ssl.key.location": kafka.ssl_key_location}
        config.update({k: str(v) for k, v in optional.items() if v is not None})
        self.require_secrets()
        refused = next((name for name in kafka.client_properties if name in CLIENT_PROPERTY_SECRETS), None)
        if refused is not None:  # settings built in code; a file's are refused when loaded
            raise ConfigError(secret_refusal(CLIENT_PROPERTY_SECRETS[refused]), file=self.source,
                              key=f"kafka.client_properties.{refused}")
        config.update(kafka.client_properties)
        for secret in SECRETS:
            value = self.secret(secret)
            if secret.client_properties and value is not None:
                config[secret.client_properties[0]] = value.get_secret_value()
        return config

    def kafka_sasl_mechanism(self) -> str | None:
        """The SASL mechanism of the Kafka clients (``client_properties`` may set it), None without SASL."""
        kafka = self.kafka
        if not kafka.security_protocol.startswith("SASL_"):
            return None
        properties = kafka.client_properties
        return (properties.get("sasl.mechanism") or properties.get("sasl.mechanisms") or kafka.sasl_mechanism
                or "GSSAPI")  # librdkafka's default

    def destination(self, name: str) -> FreshsuccessConfig | FreshpaintConfig:
        """The section of destination ``name`` (``freshsuccess`` or ``freshpaint``)."""
        sections: dict[str, FreshsuccessConfig | FreshpaintConfig] = {
            "freshsuccess": self.freshsuccess, "freshpaint": self.freshpaint}
        return sections[name]

    def destinations(self) -> list[str]:
        """The enabled destinations, in lane order."""
        return [name for name in ("freshsuccess", "freshpaint") if self.destination(name).enabled]

    def group_for(self, destination: str) -> str:
        return f"{self.kafka.group_id}.{destination}" if self.kafka.group_per_destination else self.kafka.group_id

    def require_secrets(self, destinations: Iterable[str] = ()) -> None:
        """Fail, naming the environment variable, when a secret that is needed is missing: those of the
        ``destinations``, and the SASL password when the Kafka settings use a mechanism that needs one (``check``,
        ``run`` and every Kafka client ask; the client's own complaint would point at ``client_properties``)."""
        needs = set(destinations)
        mechanism = self.kafka_sasl_mechanism()
        if mechanism in SASL_PASSWORD_MECHANISMS:
            needs.add(SASL)
            if self.kafka.sasl_username is None and "sasl.username" not in self.kafka.client_properties:
                raise ConfigError(f"must be set when kafka.security_protocol is {self.kafka.security_protocol} with "
                                  f"SASL mechanism {mechanism} (the password comes from KAFKA_SASL_PASSWORD)",
                                  file=self.source, key="kafka.sasl_username")
        missing = [secret for secret in SECRETS if secret.needed_by in needs and self.secret(secret) is None]
        if not missing:
            return
        message = f"missing secret environment variable(s): {', '.join(secret.variable for secret in missing)}"
        if any(secret.needed_by == SASL for secret in missing):
            message += (f" (kafka.security_protocol {self.kafka.security_protocol} with SASL mechanism {mechanism} "
                        "needs the SASL password)")
        raise ConfigError(message, file=self.source)


SASL = "sasl"
"""``Secret.needed_by`` of the SASL password: needed when the Kafka clients log in with a password mechanism."""
SASL_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Secret:
    """One secret: where it comes from (only ever the environment) and where the settings hold it."""

    variable: str
    section: str | None
    """The settings section that holds it, or None for a top-level ``Settings`` field."""
    key: str
    what: str
    """What it is, in messages: "the SASL password"."""
    needed_by: str | None = None
    """The destination whose lane cannot run without it, or :data:`SASL` (start-up names a missing one)."""
    yaml_keys: tuple[tuple[str, ...], ...] = ()
    """Spellings in the YAML (key paths) that are refused with a pointer to ``variable``; ``(section, key)``
    (or ``(key,)`` for a top-level field) and ``client_properties`` are refused too."""
    client_properties: tuple[str, ...] = ()
    """The librdkafka properties that carry it: the first is set on every Kafka client (the consumers, the
    dead-letter producer, the tools') from ``variable``; each, written in ``kafka.client_properties`` (or
    directly under ``kafka``), is refused."""

    @property
    def refused_keys(self) -> tuple[tuple[str, ...], ...]:
        own = (self.section, self.key) if self.section else (self.key,)
        return (own, *self.yaml_keys, *(("kafka", "client_properties", name) for name in self.client_properties),
                *(("kafka", name) for name in self.client_properties))


SECRETS: tuple[Secret, ...] = (
    Secret("FRESHSUCCESS_AUTH_KEY", "freshsuccess", "auth_key", "the Freshsuccess auth key",
           needed_by="freshsuccess"),
    Secret("FRESHSUCCESS_API_KEY", "freshsuccess", "api_key", "the Freshsuccess API key", needed_by="freshsuccess"),
    Secret("FRESHPAINT_TOKEN", "freshpaint", "token", "the Freshpaint token", needed_by="freshpaint"),
    Secret("SCHEMA_REGISTRY_PASSWORD", None, "schema_registry_password", "the schema registry password",
           yaml_keys=(("decoding", "schema_registry_password"),)),
    Secret("KAFKA_SASL_PASSWORD", None, "kafka_sasl_password", "the SASL password", needed_by=SASL,
           yaml_keys=(("kafka", "sasl_password"),), client_properties=("sasl.password",)),
    Secret("KAFKA_SSL_KEY_PASSWORD", None, "kafka_ssl_key_password", "the TLS client key's password",
           yaml_keys=(("kafka", "ssl_key_password"),), client_properties=("ssl.key.password",)),
    Secret("KAFKA_SSL_KEY_PEM", None, "kafka_ssl_key_pem", "the TLS client key (PEM)",
           yaml_keys=(("kafka", "ssl_key_pem"),), client_properties=("ssl.key.pem", "ssl_key")),
    Secret("KAFKA_SSL_KEYSTORE_PASSWORD", None, "kafka_ssl_keystore_password", "the PKCS#12 keystore's password",
           yaml_keys=(("kafka", "ssl_keystore_password"),), client_properties=("ssl.keystore.password",)),
    Secret("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", None, "kafka_sasl_oauthbearer_client_secret",
           "the OAUTHBEARER (OIDC) client secret",
           client_properties=("sasl.oauthbearer.client.secret", "sasl.oauthbearer.client.credentials.client.secret")),
    Secret("KAFKA_SASL_OAUTHBEARER_CONFIG", None, "kafka_sasl_oauthbearer_config", "the OAUTHBEARER configuration",
           client_properties=("sasl.oauthbearer.config",)),
    Secret("KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PASSPHRASE", None,
           "kafka_sasl_oauthbearer_assertion_private_key_passphrase", "the OAUTHBEARER assertion key's passphrase",
           client_properties=("sasl.oauthbearer.assertion.private.key.passphrase",)),
    Secret("KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PEM", None, "kafka_sasl_oauthbearer_assertion_private_key_pem",
           "the OAUTHBEARER assertion key (PEM)", client_properties=("sasl.oauthbearer.assertion.private.key.pem",)),
)
"""Every secret, once: the environment variables, ``require_secrets``, the librdkafka properties they set, the log
scrubber and the refusal of a secret written in the file are all derived from this table.

The Kafka rows are librdkafka's secret-carrying properties (those its CONFIGURATION.md flags sensitive, less
the paths ``ssl.key.location`` and ``sasl.oauthbearer.assertion.private.key.file``, the public ``ssl.ca.pem``
and the ``sasl.username`` identity, which ``client_properties`` may set); each has the variable
``KAFKA_`` + its name in capitals with ``_`` for ``.``."""
REFUSED_KEYS: dict[tuple[str, ...], Secret] = {key: secret for secret in SECRETS for key in secret.refused_keys}
CLIENT_PROPERTY_SECRETS: dict[str, Secret] = {name: secret for secret in SECRETS for name in secret.client_properties}
_SECRET_LOOKING = re.compile(r"pass(word|wd|phrase)?|secret|token|api_?key|auth_?key|private_?key|credential|"
                             r"(^|[._])pem$", re.IGNORECASE)


def secret_refusal(secret: Secret) -> str:
    """The message for a secret written in the file (never its value)."""
    return (f"secrets are read from the environment only: {secret.what} comes from the environment variable "
            f"{secret.variable}; remove this key")


def secret_looked_for(path: tuple[Any, ...]) -> list[Secret]:
    """The secret(s) an unknown, secret-looking key at ``path`` most likely meant (none if it does not look like a
    secret or its section holds none): the closest spelling, else every secret of that section."""
    name = str(path[-1])
    if not _SECRET_LOOKING.search(name):
        return []
    section = tuple(str(part) for part in path[:-1])
    spellings: dict[str, Secret] = {}
    for secret in SECRETS:
        for key in secret.refused_keys:
            if key[:-1] == section:
                spellings[key[-1].replace(".", "_")] = secret
            elif not section:  # top level: "freshpaint_token", "kafka_sasl_password"
                spellings["_".join(key).replace(".", "_")] = secret
    hint = closest(name.replace(".", "_"), spellings)
    if hint is not None:
        return [spellings[hint]]
    return list(dict.fromkeys(spellings.values()))


ENV_SETTINGS: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "SCHEMA_REGISTRY_URL": ("decoding", "schema_registry_url"),
}
"""The non-secret settings platforms hand out as environment variables (they override the file)."""


def load_settings(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse the config file (or defaults when ``path`` is None) and the environment into ``Settings``."""
    env = os.environ if environ is None else environ
    located = load_yaml(path) if path is not None else load_yaml_text("{}", source="<defaults>")
    return settings_from(located, env)


def settings_from(located: Located, environ: Mapping[str, str]) -> Settings:
    data = located.value if located.value is not None else {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of sections", file=located.source, line=1)
    written = sorted(((located.line_of(path) or 0, path, secret) for path, secret in REFUSED_KEYS.items()
                      if located.get(path, _ABSENT) is not _ABSENT), key=lambda found: found[0])
    if written:
        line, path, secret = written[0]
        raise ConfigError(secret_refusal(secret), file=located.source, line=line or None, key=".".join(path))
    merged: dict[str, Any] = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    top_level: dict[str, str | None] = {}
    from_environment: list[tuple[str, str | None, str]] = [
        (variable, section, key) for variable, (section, key) in ENV_SETTINGS.items()]
    from_environment += [(secret.variable, secret.section, secret.key) for secret in SECRETS]
    for variable, section_name, key in from_environment:
        value = environ.get(variable) or None
        if section_name is None:
            top_level[key] = value
        elif value:
            section_data = merged.setdefault(section_name, {})
            if isinstance(section_data, dict):
                section_data[key] = value
    try:
        settings = Settings.model_validate({**merged, "source": located.source, **top_level})
    except ValidationError as exc:
        raise _config_error(exc, located) from None
    config_file = Path(located.source)
    return relative_to(settings, config_file.parent) if config_file.is_file() else settings


def relative_to(settings: Settings, base: Path) -> Settings:
    """``settings`` with every relative path (schemas, mapping, CA bundles, TLS files) taken from ``base``, the
    config file's directory, so that a config means the same files whatever directory it is run from."""
    sections: dict[str, Any] = {}
    for name in type(settings).model_fields:
        section = getattr(settings, name)
        if not isinstance(section, BaseModel):
            continue
        updates = {key: base / value for key, value in section if isinstance(value, Path) and not value.is_absolute()}
        if updates:
            sections[name] = section.model_copy(update=updates)
    streams = tuple(stream.model_copy(update={key: base / value for key, value in stream
                                              if isinstance(value, Path) and not value.is_absolute()})
                    for stream in settings.streams)
    if streams != settings.streams:
        sections["streams"] = streams
    return settings.model_copy(update=sections) if sections else settings


def _config_error(exc: ValidationError, located: Located) -> ConfigError:
    """The first problem as one ConfigError (file, line, key); the rest listed in its message."""
    problems: list[tuple[str, int | None, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            section_model = _model_at(loc[:-1])
            known = list(section_model.model_fields) if section_model is not None else []
            hint = closest(str(loc[-1]), known)
            message = "unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
            meant = secret_looked_for(loc)
            if len(meant) == 1:
                message = secret_refusal(meant[0])
            elif meant:
                message = ("looks like a secret; secrets are read from the environment only ("
                           f"{', '.join(secret.variable for secret in meant)}); remove this key")
        if tuple(loc[:2]) in REFUSED_KEYS or tuple(loc[:1]) in REFUSED_KEYS or "secret" in error["type"]:
            message = "invalid value (not shown: secret)"
        elif "input" in error and error["type"] != "extra_forbidden" and not isinstance(error["input"], dict):
            message = f"{message} (got {error['input']!r})"
        problems.append((key, located.nearest_line(loc), message))
    key, line, message = problems[0]
    if len(problems) > 1:
        message += "".join(f"\n  also {k}{f' (line {ln})' if ln else ''}: {m}" for k, ln, m in problems[1:])
    return ConfigError(message, file=located.source, line=line, key=key)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def default_mapping_file() -> Path:
    return PACKAGE_DEFAULTS / "mapping.yaml"
