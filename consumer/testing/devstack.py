"""Everything the pipeline talks to, on loopback: Kafka, a schema registry and both destination emulators.

Shared by the integration tests, ``make demo`` and the benchmarks, so all three exercise the same parts.
The broker is started here unless a bootstrap address is given (the tests' session broker, or
``KAFKA_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.config import Settings, load_settings
from consumer.decoding.encoding import encode_confluent
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from consumer.testing.emulators import Emulators
from consumer.testing.emulators.schema_registry import SchemaRegistryEmulator
from consumer.testing.local_kafka import LocalKafka

AUTH_KEY = "dev-auth-key-0f3c"
API_KEY = "dev-api-key-9b21"
TOKEN = "dev-token-5e7a"
SUBJECT_SUFFIX = "-value"
_RETRIABLE_CODES = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                    KafkaError.NOT_COORDINATOR, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError.UNKNOWN_TOPIC_OR_PART}


def retrying(action: Any, *, attempts: int = 100, delay_s: float = 0.2) -> Any:
    """Run ``action()`` until it stops raising retriable Kafka errors (a young broker or topic raises some)."""
    for attempt in range(attempts):
        try:
            return action()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retry = isinstance(error, KafkaError) and (error.retriable() or error.code() in _RETRIABLE_CODES)
            if attempt == attempts - 1 or not retry:
                raise
            time.sleep(delay_s)
    raise AssertionError("unreachable")


class DevStack:
    """Start with ``with DevStack() as stack:``; everything stops on exit."""

    def __init__(self, bootstrap: str | None = None, *, record_dir: Path | None = None,
                 emulators: bool = True) -> None:
        self._own_broker = LocalKafka() if bootstrap is None else None
        self.bootstrap = bootstrap or ""
        self.registry = SchemaRegistryEmulator()
        self._emulators = Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, record_dir=record_dir) \
            if emulators else None
        self.schema = load_schema(default_reader_schema_path())
        self.parsed = parse(self.schema)
        self.admin: AdminClient | None = None
        self._producer: Producer | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> DevStack:
        if self._own_broker is not None:
            self.bootstrap = self._own_broker.start()
        self.registry.start()
        if self._emulators is not None:
            self._emulators.start()
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self

    def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.flush(10)
            producer.close()  # before the broker goes: no reconnect attempts logged after the summary
        if self._emulators is not None:
            self._emulators.stop()
        self.registry.stop()
        if self._own_broker is not None:
            self._own_broker.stop()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def emulators(self) -> Emulators:
        if self._emulators is None:
            raise RuntimeError("this DevStack runs without in-process emulators")
        return self._emulators

    # ---------------------------------------------------------------------------- topics, data

    def create_topic(self, name: str, partitions: int) -> str:
        assert self.admin is not None
        futures = self.admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        return name

    def topics(self, partitions: int = 4, prefix: str = "usage") -> tuple[str, str]:
        """A fresh source topic and its dead-letter topic."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        return self.create_topic(name, partitions), self.create_topic(f"{name}.dlq", 1)

    def register(self, topic: str) -> int:
        return self.registry.register(topic + SUBJECT_SUFFIX, self.schema)

    def encode(self, schema_id: int, record: dict[str, Any]) -> bytes:
        return encode_confluent(schema_id, record, self.parsed)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                                       "linger.ms": 20, "batch.num.messages": 10000})
        return self._producer

    def produce(self, topic: str, values: Iterable[tuple[bytes | None, bytes]], *,
                partition: int | None = None) -> int:
        count = 0
        for key, value in values:
            while True:
                try:
                    if partition is None:
                        self.producer.produce(topic, key=key, value=value)
                    else:
                        self.producer.produce(topic, key=key, value=value, partition=partition)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            count += 1
            if count % 10000 == 0:
                self.producer.poll(0)
        remaining = self.producer.flush(60)
        if remaining:
            raise RuntimeError(f"{remaining} records were not acknowledged by the broker")
        return count

    def produce_events(self, topic: str, schema_id: int, events: Iterable[dict[str, Any]]) -> int:
        return self.produce(topic, ((e["account_id"].encode(), self.encode(schema_id, e)) for e in events))

    # ------------------------------------------------------------------------------- settings

    def config_file(self, topic: str, dead_letter_topic: str, *, group: str | None = None,
                    **sections: Any) -> Path:
        """A config file pointing at this stack; ``sections`` override config sections (e.g. batching={...}).
        With ``streams=[...]`` the topics are the streams' (``topic`` is then ignored)."""
        config: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "topics": [topic], "dead_letter_topic": dead_letter_topic,
                      "group_id": group or f"uc-{uuid.uuid4().hex[:8]}", "consume_timeout_s": 0.05},
            "decoding": {"framing": "confluent", "schema_registry_url": self.registry.url},
            "batching": {"max_wait_s": 0.2},
            "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "credentials_backoff_s": 0.5},
            "freshsuccess": {"base_url": self.emulators.freshsuccess_url},
            "freshpaint": {"base_url": self.emulators.freshpaint_url},
            "health": {"host": "127.0.0.1", "port": 0},
        }
        for section, values in sections.items():
            if section == "streams":
                config["streams"] = values
                del config["kafka"]["topics"]
            else:
                config.setdefault(section, {}).update(values)
        path = Path(self._config_dir()) / f"config-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def settings(self, topic: str, dead_letter_topic: str, *, group: str | None = None,
                 **sections: Any) -> Settings:
        """Settings pointing at this stack, as ``usage-consumer run --config`` would load them."""
        path = self.config_file(topic, dead_letter_topic, group=group, **sections)
        return load_settings(path, environ=self.secrets_env())

    def _config_dir(self) -> Path:
        import tempfile

        directory = Path(tempfile.gettempdir()) / "usage-consumer-devstack"
        directory.mkdir(exist_ok=True)
        return directory

    @staticmethod
    def secrets_env() -> dict[str, str]:
        return {"FRESHSUCCESS_AUTH_KEY": AUTH_KEY, "FRESHSUCCESS_API_KEY": API_KEY, "FRESHPAINT_TOKEN": TOKEN}

    # --------------------------------------------------------------------------- observations

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "devstack-watermarks"})
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions
            return {p: retrying(lambda p=p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10))[1]
                    for p in partitions}
        finally:
            consumer.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed next offsets, read from the broker (absent partitions: nothing committed).

        Read with a consumer of the group that never subscribes, not with the admin API: librdkafka's
        admin ListConsumerGroupOffsets crashes the process on a COORDINATOR_LOAD_IN_PROGRESS answer,
        which a young broker gives.
        """
        partitions = self.end_offsets(topic)
        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            wanted = [TopicPartition(topic, p) for p in partitions]
            result = retrying(lambda: reader.committed(wanted, timeout=30))
        finally:
            reader.close()
        return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

    def read_all(self, topic: str, timeout_s: float = 10.0) -> list[Any]:
        """Every record of ``topic`` from the beginning (for dead-letter checks)."""
        expected = sum(self.end_offsets(topic).values())
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topic])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(records) < expected and time.monotonic() < deadline:
                records.extend(m for m in consumer.consume(1000, 0.2) if m.error() is None)
        finally:
            consumer.close()
        return records


class RunningService:
    """A ``Service`` running in a background thread, as ``usage-consumer run`` would run it."""

    def __init__(self, settings: Settings, *, destinations: list[str] | None = None,
                 shutdown_timeout_s: float = 20.0) -> None:
        import threading

        from consumer.app.service import Service

        self.service = Service(settings, destinations=destinations)
        self.exit_code: int | None = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self._thread = threading.Thread(target=self._run, name="service", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.service.run(shutdown_timeout_s=self._shutdown_timeout_s)

    def __enter__(self) -> RunningService:
        self.service.start()
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.service.stop_event.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the service did not stop within {timeout_s:.0f}s")
        return self.exit_code

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread.is_alive() or self.exit_code is None:
            self.stop()

    def lane(self, name: str) -> Any:
        return next(lane for lane in self.service.lanes if lane.name == name)
