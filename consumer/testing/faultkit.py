"""Fault-injection kit: the consumer as a real OS process, a steady producer, and delivery ledgers.

Used by ``tests/faults``. Everything a fault scenario needs that is not an assertion lives here:

* :class:`ConsumerProcess` runs ``python -m consumer.cli run --config FILE`` with the dev secrets, kills it
  with SIGKILL or stops it with SIGTERM (timing the exit), reads its memory from ``/proc/PID/status`` and
  scrapes its ``/metrics`` (the port it logged at start: every process picks a free one);
* :class:`StreamProducer` writes realistic events (and optionally malformed records) to a topic from a
  background thread at a steady rate (it can pause: the stream ends for now, every record acknowledged), and
  remembers where each one landed (partition, offset);
* :class:`Expected`, :func:`delivery_report` and :func:`commit_violations` say, by event identity, what a
  destination must receive, what it did receive, and whether a committed offset passed an undelivered event.

Identity: Freshpaint events carry ``$insert_id`` (the event's ``event_id``). Freshsuccess events carry no
id, so the producer gives every event a unique ``occurred_at`` (a per-seed base + index) and a
Freshsuccess action is identified by ``(userId, createdAt, action)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from consumer.testing.devstack import DevStack
from consumer.testing.emulators import Emulators
from consumer.testing.eventgen import BASE_TIME_MS, make_event, malformed_values
from consumer.testing.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

Placement = tuple[int, int]
"""(partition, offset) of a record in its topic."""

FRESHSUCCESS_ACTIONS = {"feature_used": "feature", "module_ended": "moduleEnd", "session_synced": "sessionSync",
                        "user_identified": "identifyUser", "account_identified": "identifyAccount"}
"""What the default mapping sends Freshsuccess per event type; page views go to Freshpaint only."""

COMMITTED_OFFSET_METRIC = "usage_consumer_committed_offset"
"""Per destination, topic and partition: the next offset this process committed (consumer/observability/metrics.py)."""

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork: the child only makes the call


def _die_with_parent() -> None:
    """Runs in the forked child: SIGKILL it when the test process dies, so no consumer outlives a run."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ waiting


# ----------------------------------------------------------------------------------------- the process


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ConsumerProcess:
    """``usage-consumer run`` as a separate OS process, its stdout and stderr in ``log_path``."""

    def __init__(self, config: Path, *, name: str, log_dir: Path, env: Mapping[str, str],
                 shutdown_timeout_s: float | None = None) -> None:
        self.config = config
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.args = [sys.executable, "-m", "consumer.cli", "run", "--config", str(config)]
        if shutdown_timeout_s is not None:
            self.args += ["--shutdown-timeout-s", str(shutdown_timeout_s)]
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0
        """The largest resident set seen (``VmHWM``), read before every stop."""
        self._health_port: int | None = None

    def start(self) -> ConsumerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log_file, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent)
        return self

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"ConsumerProcess({self.name!r}, pid={pid}, returncode={self.returncode})"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmRSS") if self.alive() else None

    def _note_peak(self) -> None:
        if self.alive():
            peak = proc_status_kib(self.pid, "VmHWM")
            if peak is not None:
                self.peak_rss_kib = max(self.peak_rss_kib, peak)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group (a crash, an OOM kill, a node loss)."""
        assert self.process is not None, "not started"
        self._note_peak()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> tuple[int, float]:
        """SIGTERM and wait; returns ``(exit code, seconds from the signal to the exit)``.

        A process still running after ``timeout_s`` is killed and the call fails with its log tail.
        """
        assert self.process is not None, "not started"
        self._note_peak()
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout_s:.0f}s of SIGTERM\n"
                                 f"{self.log_tail()}") from None
        return code, time.monotonic() - started

    def stop(self) -> None:
        """Teardown: make sure the process is gone (SIGKILL if it still runs)."""
        if self.alive():
            self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines; librdkafka's own lines are skipped."""
        events: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    parsed = orjson.loads(line)
                    if isinstance(parsed, dict):
                        events.append(parsed)
        return events

    # ---- its own /metrics

    def health_port(self, timeout_s: float = 30.0) -> int:
        """The port of the process's health server, from its ``health_server_started`` log line
        (the scenarios configure ``health.port: 0``, so each process picks a free one)."""
        if self._health_port is not None:
            return self._health_port

        def logged() -> int | None:
            for event in self.log_events():
                if event.get("event") == "health_server_started" and isinstance(event.get("port"), int):
                    return int(event["port"])
            assert self.alive(), f"{self.name} exited before its health server started\n{self.log_tail()}"
            return None

        self._health_port = wait_until(logged, timeout_s=timeout_s, what=f"{self.name}'s health server to start",
                                       diagnose=self.log_tail)
        return self._health_port

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        """The Prometheus exposition of ``/metrics`` (one scrape)."""
        url = f"http://127.0.0.1:{self.health_port()}/metrics"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """One scrape of ``/metrics``: sample name -> ``[(labels, value)]`` (parsed with prometheus_client)."""
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
        return samples

    def committed_offsets(self, topic: str) -> dict[str, dict[int, int]]:
        """What this process reports as committed for ``topic``: destination -> partition -> next offset
        (``usage_consumer_committed_offset{destination,topic,partition}``)."""
        reported: dict[str, dict[int, int]] = {}
        for labels, value in self.metrics().get(COMMITTED_OFFSET_METRIC, []):
            if labels.get("topic") == topic:
                reported.setdefault(labels["destination"], {})[int(labels["partition"])] = int(value)
        return reported

    def log_tail(self, lines: int = 40) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- {self.name} (pid {self.process.pid if self.process else '-'}, exit {self.returncode}), " \
               f"{self.log_path} ---\n{tail}"


# ---------------------------------------------------------------------------------------- the producer


@dataclass
class Record:
    """One record written by :class:`StreamProducer`; ``partition``/``offset`` are set once acknowledged."""

    index: int
    event: dict[str, Any] | None
    """The event, or None for a malformed record."""
    reason: str | None = None
    """For a malformed record: the dead-letter reason it must get."""
    value: bytes = field(default=b"", repr=False)
    partition: int = -1
    offset: int = -1

    @property
    def acked(self) -> bool:
        return self.offset >= 0


@dataclass(eq=False)
class StreamProducer:
    """Writes events to ``topic`` at ``rate_per_s`` from a background thread until :meth:`stop`.

    Events are :func:`eventgen.make_event` with ``occurred_at = time_base_ms + index``: unique, so that
    Freshsuccess actions can be told apart, and in a range of its own per seed, so that two scenarios
    sharing the emulators never produce the same identity. With ``malformed_every=n`` every n-th record is one of
    :func:`eventgen.malformed_values` instead, in turn. Produced with idempotence, keyed by account.
    """

    bootstrap: InitVar[str]
    topic: str
    _: KW_ONLY
    schema_id: int
    encode: Callable[[int, dict[str, Any]], bytes]
    seed: InitVar[int]
    rate_per_s: float
    malformed_every: int = 0
    limit: int | None = None
    records: list[Record] = field(default_factory=list, init=False)
    errors: list[str] = field(default_factory=list, init=False)

    def __post_init__(self, bootstrap: str, seed: int) -> None:
        self._rng = random.Random(seed)
        self.time_base_ms = BASE_TIME_MS + (seed % 100_000) * 1_000_000
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._tick = threading.Lock()
        """Held by the thread while it writes one tick's records: :meth:`pause` waits for the tick under way."""
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                                   "message.timeout.ms": 300_000})
        self._thread = threading.Thread(target=self._run, name=f"producer-{self.topic}", daemon=True)
        self._malformed: list[tuple[str, bytes]] = []
        self._acked = 0

    # ---- control (test thread)

    def start(self) -> StreamProducer:
        self._thread.start()
        return self

    def pause(self, timeout_s: float = 60.0) -> None:
        """Stop writing for a while (the stream ends, for now): returns once the thread writes nothing more and the
        broker acknowledged every record, so the end offsets are final until :meth:`resume`."""
        self._pause.set()
        with self._tick:  # the tick under way, if any, is written; the next ones see the pause
            pass
        wait_until(lambda: self._acked >= len(self.records) or self.errors, timeout_s=timeout_s,
                   what=f"every record on {self.topic} acknowledged ({self._acked} of {len(self.records)})")
        if self.errors:
            raise AssertionError(f"producer of {self.topic}: errors {self.errors[:5]}")

    def resume(self) -> None:
        """Write again at the same rate (no burst for the pause)."""
        self._pause.clear()

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop writing, wait until the broker acknowledged everything; fail on any delivery error."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the producer of {self.topic} did not stop within {timeout_s:.0f}s")
        unacked = sum(1 for r in self.records if not r.acked)
        if self.errors or unacked:
            raise AssertionError(f"producer of {self.topic}: {unacked} unacknowledged, errors {self.errors[:5]}")

    @property
    def produced(self) -> int:
        return len(self.records)

    @property
    def acked(self) -> int:
        return self._acked

    def snapshot(self) -> list[Record]:
        """The records acknowledged so far (their placement is known)."""
        with self._lock:
            return [r for r in self.records if r.acked]

    def wait_acked(self, count: int, timeout_s: float) -> None:
        wait_until(lambda: self._acked >= count, timeout_s=timeout_s,
                   what=f"{count} records acknowledged on {self.topic} (have {self._acked})")

    # ---- the thread

    def _ack(self, record: Record, error: Any, message: Any) -> None:
        if error is not None:
            self.errors.append(str(error))
            return
        with self._lock:
            record.partition, record.offset = message.partition(), message.offset()
            self._acked += 1

    def _next(self, index: int) -> Record:
        if self.malformed_every and index % self.malformed_every == self.malformed_every - 1 and self._malformed:
            reason, value = self._malformed[(index // self.malformed_every) % len(self._malformed)]
            return Record(index, None, reason, value)
        event = make_event(self._rng, index)
        event["occurred_at"] = self.time_base_ms + index
        value = self.encode(self.schema_id, event)
        if not self._malformed:
            self._malformed = malformed_values(self.schema_id, value)
        return Record(index, event, None, value)

    def _run(self) -> None:
        tick_s = 0.02
        per_tick = self.rate_per_s * tick_s
        owed = 0.0
        next_tick = time.monotonic()
        index = 0
        producer = self._producer
        while not self._stop.is_set() and (self.limit is None or index < self.limit):
            with self._tick:
                paused = self._pause.is_set()
                if not paused:
                    owed += per_tick
                while not paused and owed >= 1 and (self.limit is None or index < self.limit):
                    owed -= 1
                    record = self._next(index)
                    key = record.event["account_id"].encode() if record.event is not None else f"bad-{index}".encode()
                    with self._lock:
                        self.records.append(record)
                    while True:
                        try:
                            producer.produce(self.topic, key=key, value=record.value,
                                             on_delivery=functools.partial(self._ack, record))
                            break
                        except BufferError:
                            producer.poll(0.05)
                    index += 1
            if paused:
                producer.poll(0)  # serve the acknowledgements while paused
                self._stop.wait(tick_s)
                owed, next_tick = 0.0, time.monotonic()
                continue
            producer.poll(0)
            next_tick += tick_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # pacing of the stream, not synchronisation
            else:
                next_tick = time.monotonic()
        remaining = producer.flush(120)
        if remaining:
            self.errors.append(f"{remaining} records not acknowledged at stop")


# ----------------------------------------------------------------------------------------- identities


def freshsuccess_key(output: Mapping[str, Any]) -> Hashable:
    return (output["userId"], output["createdAt"], output["action"])


def freshpaint_key(output: Mapping[str, Any]) -> Hashable:
    return str(output["properties"]["$insert_id"])


def freshsuccess_key_of(event: Mapping[str, Any]) -> Hashable | None:
    action = FRESHSUCCESS_ACTIONS.get(event["event_type"])
    return None if action is None else (event["user_id"], event["occurred_at"], action)


def freshpaint_key_of(event: Mapping[str, Any]) -> Hashable:
    return str(event["event_id"])


@dataclass(frozen=True)
class Expected:
    """Per destination: what must arrive (by identity) and where its source record sits (partition, offset)."""

    freshsuccess: dict[Hashable, Placement]
    freshpaint: dict[Hashable, Placement]
    malformed: dict[Placement, str]
    """Malformed records: placement -> the dead-letter reason each destination's lane must give."""

    @classmethod
    def of(cls, records: Iterable[Record]) -> Expected:
        fs: dict[Hashable, Placement] = {}
        fp: dict[Hashable, Placement] = {}
        bad: dict[Placement, str] = {}
        for record in records:
            placement = (record.partition, record.offset)
            if record.event is None:
                assert record.reason is not None
                bad[placement] = record.reason
                continue
            key = freshsuccess_key_of(record.event)
            if key is not None:
                fs[key] = placement
            fp[freshpaint_key_of(record.event)] = placement
        return cls(fs, fp, bad)

    def of_destination(self, name: str) -> dict[Hashable, Placement]:
        placements: dict[Hashable, Placement] = getattr(self, name)
        return placements


def received(emulators: Emulators, destination: str) -> Counter[Hashable]:
    """Accepted copies per identity. Freshpaint's emulator keeps one copy per ``$insert_id`` (de-duplicated)."""
    if destination == "freshsuccess":
        return Counter(freshsuccess_key(e) for e in emulators.freshsuccess.events())
    return Counter(freshpaint_key(e) for e in emulators.freshpaint.events())


def freshpaint_copies(emulators: Emulators) -> Counter[Hashable]:
    """Every copy Freshpaint answered 200 for, duplicates included (before ``$insert_id`` de-duplication).

    Needs every request recorded (``Emulators(max_recorded_requests=None)``); fails otherwise.
    """
    emulator = emulators.freshpaint
    stats = emulator.stats()
    requests = emulator.requests()
    if len(requests) != stats["requests"]:
        raise AssertionError(f"only {len(requests)} of {stats['requests']} Freshpaint requests were recorded")
    return Counter(freshpaint_key(orjson.loads(r.decoded_body)) for r in requests
                   if r.status == 200 and r.path == "/track")


@dataclass
class DeliveryReport:
    """What one destination got, compared with what it had to get."""

    destination: str
    expected: int
    delivered: int
    """Distinct expected items received at least once."""
    received: int
    """Copies received before de-duplication."""
    duplicates: int
    """Extra copies before de-duplication (Freshpaint: repeats of an ``$insert_id``)."""
    duplicates_after_dedup: int
    """Extra copies kept after de-duplication (Freshpaint de-duplicates; Freshsuccess cannot)."""
    lost: list[Hashable]
    unexpected: int
    """Received items that were never produced (must be 0)."""

    def figures(self) -> dict[str, int]:
        return {"expected": self.expected, "delivered": self.delivered, "received": self.received,
                "duplicates": self.duplicates, "duplicates_after_dedup": self.duplicates_after_dedup,
                "lost": len(self.lost), "unexpected": self.unexpected}


def delivery_report(emulators: Emulators, expected: Expected, destination: str) -> DeliveryReport:
    want = expected.of_destination(destination)
    kept = received(emulators, destination)
    if destination == "freshpaint":
        repeats = emulators.freshpaint.stats()["duplicates"]
        total = sum(kept.values()) + repeats
    else:
        repeats = 0
        total = sum(kept.values())
    delivered = sum(1 for key in want if kept[key] > 0)
    after = sum(n - 1 for n in kept.values() if n > 1)
    return DeliveryReport(destination=destination, expected=len(want), delivered=delivered, received=total,
                          duplicates=after + repeats, duplicates_after_dedup=after,
                          lost=[key for key in want if kept[key] == 0],
                          unexpected=sum(1 for key in kept if key not in want))


def missing(emulators: Emulators, expected: Expected, destination: str) -> int:
    """How many expected items the destination has not received yet (cheap enough to poll)."""
    want = expected.of_destination(destination)
    emulator = emulators.freshsuccess if destination == "freshsuccess" else emulators.freshpaint
    if emulator.stats()["accepted"] < len(want):
        return len(want) - emulator.stats()["accepted"]
    kept = received(emulators, destination)
    return sum(1 for key in want if key not in kept)


def commit_violations(committed: Mapping[int, int], placements: Mapping[Hashable, Placement],
                      delivered: Iterable[Hashable]) -> list[str]:
    """Committed offsets that passed an undelivered item: ``committed[p] > offset`` of something not received.

    Read ``committed`` *before* ``delivered``: delivery comes before its commit, so anything committed
    must already be in a later snapshot of what the destination received.
    """
    have = set(delivered)
    problems = []
    for key, (partition, offset) in placements.items():
        if offset < committed.get(partition, 0) and key not in have:
            problems.append(f"partition {partition} committed to {committed[partition]} past undelivered "
                            f"offset {offset} ({key!r})")
    return sorted(problems)


def windows_violations(copies: Mapping[Hashable, int], placements: Mapping[Hashable, Placement],
                       windows: list[tuple[dict[int, int], dict[int, int]]]) -> list[str]:
    """Duplicates that did not come from an uncommitted window.

    ``windows`` holds, per kill, ``(committed, end)`` offsets read after the process died: only records in
    ``[committed, end)`` of some kill may be redelivered, once per such kill.
    """
    problems = []
    for key, count in copies.items():
        if count <= 1 or key not in placements:
            continue
        partition, offset = placements[key]
        allowed = sum(1 for committed, end in windows if committed.get(partition, 0) <= offset < end.get(partition, 0))
        if count - 1 > allowed:
            problems.append(f"{key!r} at {partition}@{offset} arrived {count} times; it was in the uncommitted "
                            f"window of {allowed} kill(s)")
    return sorted(problems)


def window_size(windows: list[tuple[dict[int, int], dict[int, int]]],
                placements: Mapping[Hashable, Placement]) -> int:
    """How many of ``placements`` lay in some uncommitted window (summed over kills): the most that may repeat."""
    return sum(1 for committed, end in windows for partition, offset in placements.values()
               if committed.get(partition, 0) <= offset < end.get(partition, 0))


# -------------------------------------------------------------------------------------------- the group


def group_members(admin: AdminClient, group: str, timeout_s: float = 10.0) -> tuple[str, dict[str, list[int]]]:
    """The group's state and its members as ``client.id -> assigned partitions`` (from the broker)."""
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result()
    except KafkaException as exc:
        return f"unknown ({exc})", {}
    members: dict[str, list[int]] = {}
    for member in description.members:
        partitions = member.assignment.topic_partitions if member.assignment is not None else []
        members.setdefault(member.client_id, []).extend(sorted(tp.partition for tp in partitions))
    state = getattr(description.state, "name", str(description.state))
    return state, members


# ------------------------------------------------------------------------------------------- scenario

DESTINATIONS = ("freshsuccess", "freshpaint")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class Scenario:
    """One fault scenario on a :class:`~devstack.DevStack`: a fresh topic and group, a producer, consumer
    processes, and the checks every scenario shares (delivery by identity, commits never past a gap).

    Consumers use a 6 s session (the broker's minimum) so that a SIGKILLed member leaves the group quickly,
    and name themselves with ``client.id`` so that group membership can be read from the broker.
    """

    def __init__(self, stack: DevStack, *, name: str, log_dir: Path, partitions: int = 4,
                 emulators: Emulators | None = None, sections: Mapping[str, Any] | None = None) -> None:
        self.stack = stack
        self.name = name
        self.log_dir = log_dir
        self.emulators = emulators if emulators is not None else stack.emulators
        self.topic, self.dlq = stack.topics(partitions=partitions, prefix=f"faults-{name}")
        self.schema_id = stack.register(self.topic)
        self.group = f"{self.topic}-group"
        self.processes: list[ConsumerProcess] = []
        self.producer: StreamProducer | None = None
        self._sections = _merge(self._base_sections(), sections or {})

    def _base_sections(self) -> dict[str, Any]:
        from consumer.config import Settings

        sections: dict[str, Any] = {
            "kafka": {"session_timeout_ms": 6000,
                      "client_properties": {"heartbeat.interval.ms": "1000", "topic.metadata.refresh.interval.ms":
                                            "5000"}},
            "freshsuccess": {"base_url": self.emulators.freshsuccess_url},
            "freshpaint": {"base_url": self.emulators.freshpaint_url},
            "logging": {"format": "json"},
        }
        if "health" in Settings.model_fields:  # one probe port per process: pick a free one, loopback only
            sections["health"] = {"host": "127.0.0.1", "port": 0}
        return sections

    # ---- parts

    @property
    def groups(self) -> dict[str, str]:
        return {destination: f"{self.group}.{destination}" for destination in DESTINATIONS}

    def config(self, client_id: str, **sections: Mapping[str, Any]) -> Path:
        merged = _merge(self._sections, {"kafka": {"client_properties": {"client.id": client_id}}})
        merged = _merge(merged, sections)
        return self.stack.config_file(self.topic, self.dlq, group=self.group, **merged)

    def start_producer(self, *, rate_per_s: float, seed: int, malformed_every: int = 0,
                       limit: int | None = None) -> StreamProducer:
        assert self.producer is None, "one producer per scenario"
        self.producer = StreamProducer(self.stack.bootstrap, self.topic, schema_id=self.schema_id,
                                       encode=self.stack.encode, seed=seed, rate_per_s=rate_per_s,
                                       malformed_every=malformed_every, limit=limit).start()
        return self.producer

    def start_consumer(self, name: str, *, shutdown_timeout_s: float | None = None,
                       **sections: Mapping[str, Any]) -> ConsumerProcess:
        process = ConsumerProcess(self.config(name, **sections), name=name, log_dir=self.log_dir,
                                  env=self.stack.secrets_env(), shutdown_timeout_s=shutdown_timeout_s)
        self.processes.append(process.start())
        return process

    def close(self) -> None:
        """Teardown: stop the producer and every consumer still running; never raises."""
        for process in self.processes:
            process.stop()
        if self.producer is not None:
            with contextlib.suppress(AssertionError):
                self.producer.stop()

    # ---- observations

    def expected(self) -> Expected:
        assert self.producer is not None
        return Expected.of(self.producer.snapshot())

    def committed(self, destination: str) -> dict[int, int]:
        return self.stack.committed(self.groups[destination], self.topic)

    def end_offsets(self) -> dict[int, int]:
        return self.stack.end_offsets(self.topic)

    def accepted(self, destination: str) -> int:
        emulator = self.emulators.freshsuccess if destination == "freshsuccess" else self.emulators.freshpaint
        return emulator.stats()["accepted"]

    def check_commits(self) -> dict[str, int]:
        """Fail if a committed offset passed an undelivered event; returns how many events each
        destination's committed offsets still leave behind the end of the topic (its uncommitted lag)."""
        lag: dict[str, int] = {}
        for destination in DESTINATIONS:
            committed = self.committed(destination)  # first, then what was delivered (see commit_violations)
            delivered = received(self.emulators, destination)
            expected = self.expected()
            problems = commit_violations(committed, expected.of_destination(destination), delivered)
            assert not problems, f"{destination}: committed past undelivered events: {problems[:5]}"
            end = self.end_offsets()
            lag[destination] = sum(max(0, end[p] - committed.get(p, 0)) for p in end)
        return lag

    def diagnose(self) -> str:
        lines = [f"topic {self.topic}, group {self.group}"]
        if self.producer is not None:
            lines.append(f"producer: {self.producer.produced} produced, {self.producer.acked} acked")
        for destination in DESTINATIONS:
            emulator = self.emulators.freshsuccess if destination == "freshsuccess" else self.emulators.freshpaint
            lines.append(f"{destination}: {emulator.stats()}")
            with contextlib.suppress(Exception):
                lines.append(f"  committed {self.committed(destination)}")
        with contextlib.suppress(Exception):
            lines.append(f"end offsets {self.end_offsets()}")
        lines += [process.log_tail(25) for process in self.processes if process.process is not None]
        return "\n".join(lines)

    def wait_progress(self, events: int, *, timeout_s: float) -> None:
        """Wait until both destinations accepted ``events`` more events than now."""
        targets = {d: self.accepted(d) + events for d in DESTINATIONS}
        wait_until(lambda: all(self.accepted(d) >= n for d, n in targets.items()), timeout_s=timeout_s,
                   what=f"{events} more events at both destinations", diagnose=self.diagnose, interval_s=0.05)

    def wait_all_delivered(self, *, timeout_s: float) -> None:
        """After the producer stopped: every event at every destination (dead letters aside)."""
        expected = self.expected()
        wait_until(lambda: all(missing(self.emulators, expected, d) == 0 for d in DESTINATIONS),
                   timeout_s=timeout_s, interval_s=0.25, diagnose=self.diagnose,
                   what="every produced event at both destinations")

    def wait_committed_to_end(self, *, timeout_s: float) -> None:
        end = {p: o for p, o in self.end_offsets().items() if o > 0}
        wait_until(lambda: all(self.committed(d) == end for d in DESTINATIONS), timeout_s=timeout_s,
                   interval_s=0.25, diagnose=self.diagnose, what=f"both groups committed to the end {end}")

    def drain(self, producer: StreamProducer, *, deliver_timeout_s: float = 120,
              commit_timeout_s: float = 60) -> None:
        """End a scenario's stream: stop the producer, wait until every event reached both destinations and both
        groups committed to the end, and check no committed offset ever passed an undelivered event."""
        producer.stop()
        self.wait_all_delivered(timeout_s=deliver_timeout_s)
        self.wait_committed_to_end(timeout_s=commit_timeout_s)
        self.check_commits()

    def owners(self, admin: AdminClient) -> dict[str, dict[int, str]]:
        """Per destination: partition -> ``client.id`` of the member the broker says owns it now."""
        owned: dict[str, dict[int, str]] = {}
        for destination, group in self.groups.items():
            _, members = group_members(admin, group)
            owned[destination] = {p: member for member, partitions in members.items() for p in partitions}
        return owned

    def wait_members(self, admin: AdminClient, names: set[str], *, partitions: int,
                     timeout_s: float = 90.0) -> dict[str, dict[str, list[int]]]:
        """Both groups stable with exactly ``names`` as members, each owning a partition, all partitions
        owned; returns each group's ``client.id -> partitions``."""
        seen: dict[str, dict[str, list[int]]] = {}

        def settled() -> bool:
            for destination, group in self.groups.items():
                state, members = group_members(admin, group)
                seen[destination] = members
                owned = sorted(p for assigned in members.values() for p in assigned)
                if state != "STABLE" or set(members) != names or owned != list(range(partitions)) \
                        or not all(members.values()):
                    return False
            return True

        wait_until(settled, timeout_s=timeout_s, interval_s=0.25, what=f"both groups to settle on {sorted(names)}",
                   diagnose=lambda: f"last seen {seen}\n{self.diagnose()}")
        return seen

    def dead_letters(self) -> list[Any]:
        return self.stack.read_all(self.dlq, timeout_s=30)

    def figures(self, **extra: Any) -> dict[str, Any]:
        """The scenario's figures for the suite summary (call after everything settled)."""
        expected = self.expected()
        letters: Counter[str] = Counter()
        for letter in self.dead_letters():
            headers = {k: v.decode() for k, v in letter.headers()}
            letters[f"{headers['dlq.destination']}:{headers['dlq.reason']}"] += 1
        peaks = [p.peak_rss_kib for p in self.processes if p.peak_rss_kib]
        out: dict[str, Any] = {
            "events_produced": len(expected.freshpaint),
            "malformed_produced": len(expected.malformed),
            "consumer_processes": len(self.processes),
            "freshsuccess": delivery_report(self.emulators, expected, "freshsuccess").figures(),
            "freshpaint": delivery_report(self.emulators, expected, "freshpaint").figures(),
            "dead_lettered": dict(sorted(letters.items())),
            "peak_rss_mib": round(max(peaks) / 1024, 1) if peaks else None,
        }
        out.update(extra)
        return out
