"""The replay ledger: which dead letters were already replayed, per letter, whatever the filters or the group.

``dlq replay`` used to remember only one offset per dead-letter partition (its consumer group's progress). That
cannot say "the letters of reason A are done, the letters of reason B before them are not": either the
progress stays behind the B letters (and a second replay of A sends the A letters again), or it moves past
them (and the B letters are stranded). So every dead letter that a replay finished is written to a compacted
ledger topic (``kafka.replay_ledger_topic``, default ``<dead_letter_topic>.replayed``), keyed by the letter's
own position in the dead-letter topic, right after its destination accepted it (or the broker took it back on
its source topic, or it was parked anew). Each replay reads the whole ledger first and never sends a letter
that is in it. The ledger is compacted, so it holds one small record per replayed letter.

The replay group's committed offsets remain, as an optimisation only: they move past the contiguous prefix of
letters that are in the ledger, never past a letter that a filter left out, and never backwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.config import Settings
from consumer.errors import FatalError
from consumer.kafka.reader import Reader, Record

log = structlog.get_logger(__name__)

LEDGER_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


@dataclass(frozen=True)
class Entry:
    """What happened to one dead letter in a replay."""

    outcome: str
    """``delivered``, ``skipped``, ``replayed`` (to its source topic), ``copy`` (of a letter replayed for the
    same source record) or ``reparked:<reason>``."""
    destination: str
    source: str
    """The source record as ``topic/partition/offset``."""
    at_ms: int
    group: str

    @property
    def settled(self) -> bool:
        """The letter's event reached its destination (or was skipped there on purpose); a re-parked one did not."""
        return not self.outcome.startswith("reparked")

    def as_bytes(self) -> bytes:
        return orjson.dumps({"outcome": self.outcome, "destination": self.destination, "source": self.source,
                             "at_ms": self.at_ms, "group": self.group})


def letter_key(record: Record) -> str:
    """The ledger key of a dead letter: its own position in the dead-letter topic."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def ledger_topic(settings: Settings) -> str:
    return settings.kafka.replay_ledger_topic or f"{settings.kafka.dead_letter_topic}.replayed"


class Ledger:
    """Reads the replayed letters once, and writes each newly finished one before progress moves past it."""

    def __init__(self, settings: Settings, *, group: str, create: bool) -> None:
        self.settings = settings
        self.topic = ledger_topic(settings)
        self.group = group
        self.entries: dict[str, Entry] = {}
        self._settled: set[tuple[str, str]] | None = None
        self._producer: Any = None
        self._create = create

    def _ensure(self, create: bool) -> bool:
        """Whether the topic exists with entries to read; with ``create``, make it (compacted) when it does not
        (a topic created now holds nothing yet, and its partition may not have a leader for a moment)."""
        admin = AdminClient({"log_level": 0, **self.settings.kafka_client_config()})
        timeout_s = self.settings.kafka.startup_timeout_s
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except Exception as exc:  # the broker check happened before; say what we were doing
            raise FatalError(f"could not look up the replay ledger topic {self.topic!r}: {exc}") from None
        if self.topic in metadata.topics:
            return True
        if not create:
            return False
        replicas = min(3, len(metadata.brokers))
        future = admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=replicas,
                                               config=LEDGER_TOPIC_CONFIG)])[self.topic]
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            error = exc.args[0] if exc.args else exc
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return True  # another replay made it just now
            raise FatalError(f"the replay ledger topic {self.topic!r} does not exist and could not be created "
                             f"({error}); create it (cleanup.policy=compact) or set kafka.replay_ledger_topic "
                             "to one that exists") from None
        log.info("replay_ledger_created", topic=self.topic, replicas=replicas)
        return False

    def load(self, reader: Reader) -> None:
        """Read every entry (the topic is compacted: one per replayed letter); create the topic first when
        this ledger may write and it is missing. Call it once the broker is known to answer."""
        if not self._ensure(self._create):
            return
        ranges = {}
        for partition in reader.partitions(self.topic):
            ranges[(self.topic, partition)] = reader.watermarks(self.topic, partition)
        for record in reader.read(ranges):
            if record.key is None or record.value is None:
                continue
            try:
                data = orjson.loads(record.value)
                entry = Entry(str(data["outcome"]), str(data.get("destination", "")), str(data.get("source", "")),
                              int(data.get("at_ms", 0)), str(data.get("group", "")))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("replay_ledger_entry_unreadable", position=record.position)
                continue
            self.entries[record.key.decode("utf-8", "replace")] = entry
        self._settled = None

    def done(self, record: Record) -> Entry | None:
        """The entry of this very letter, if a replay finished it."""
        return self.entries.get(letter_key(record))

    def settled(self, source: str, destination: str) -> bool:
        """Whether the event of ``source`` already reached ``destination`` through a replay of any of its
        letters (re-produced to the source topic counts for every destination)."""
        if self._settled is None:
            self._settled = {(e.source, e.destination) for e in self.entries.values() if e.settled and e.source}
            self._settled |= {(e.source, "*") for e in self.entries.values() if e.outcome == "replayed"}
        return (source, destination) in self._settled or (source, "*") in self._settled

    def record(self, finished: list[tuple[Record, str, str, str]], timeout_s: float) -> None:
        """Write ``(letter, outcome, destination, source)`` for each newly finished letter; returns once the
        broker has them all, or raises (progress is not committed past letters the ledger does not hold)."""
        if not finished:
            return
        if self._producer is None:
            self._producer = Producer({"log_level": 0, **self.settings.kafka_client_config(), "acks": "all",
                                       "enable.idempotence": True, "linger.ms": 5,
                                       "message.timeout.ms": int(max(timeout_s, 1) * 1000)})
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failures.append(err.str())

        now_ms = int(time.time() * 1000)
        written = []
        for letter, outcome, destination, source in finished:
            entry = Entry(outcome, destination, source, now_ms, self.group)
            key = letter_key(letter)
            while True:
                try:
                    self._producer.produce(self.topic, key=key.encode(), value=entry.as_bytes(), on_delivery=delivered)
                    break
                except BufferError:
                    self._producer.poll(0.1)
            written.append((key, entry))
        remaining = self._producer.flush(timeout_s)
        if remaining or failures:
            raise FatalError(f"the replay ledger topic {self.topic!r} did not take {remaining or len(failures)} "
                             f"entr(y/ies): {failures[0] if failures else 'timed out'}; the letters were "
                             "replayed, but a rerun may send them again")
        self.entries.update(written)
        self._settled = None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5.0)
            self._producer = None
