"""``usage-consumer status``: is each lane keeping up, is anything stuck, is anything being dropped, from Kafka alone.

Per destination (its consumer group): the group's state, its members and what each is assigned; per
partition the committed offset, the end offset, the lag in messages and the lag in seconds, which is how
long ago Kafka stamped the next record the group has not consumed (0 when there is none). Then the dead
letters parked within a window, counted by destination and reason from their ``dlq.*`` headers, read by
the code ``dlq inspect`` uses.

Nothing here joins a group or commits (:mod:`consumer.kafka.groups` says how), so running it next to a
live consumer, even in a ``--watch`` loop, never triggers a rebalance. No Prometheus is needed: this is
what an operator looks at first (docs/runbook.md starts with it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from consumer.config import Settings
from consumer.errors import ConfigError, FatalError
from consumer.kafka.groups import GroupDescription, GroupInspector, NextRecord
from consumer.kafka.reader import Reader, Record
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.tools.dlq import DeadLetterView, Selection, dlq_ranges
from consumer.tools.status_view import CLEAR_SCREEN, render_failure, render_json, render_screen


class Position(NamedTuple):
    """Where a group reads a partition next, and why there."""

    next_offset: int
    starts_from: str
    """``committed``, or ``earliest`` / ``latest`` when ``auto.offset.reset`` decides."""
    note: str | None


@dataclass(frozen=True)
class PartitionLag:
    """Where one group stands on one partition."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed next offset; None when it never committed on this partition."""
    earliest_offset: int
    end_offset: int
    next_offset: int
    """The offset the group reads next: the committed one, or where ``auto.offset.reset`` puts it."""
    starts_from: str
    """``committed``, or ``earliest`` / ``latest`` when ``auto.offset.reset`` decides (see ``note``)."""
    lag_messages: int
    lag_s: float | None
    """Now minus the Kafka timestamp of the next unconsumed record; 0 without lag; None when not read."""
    next_record_ms: int | None
    member: str | None
    """The client id of the member assigned this partition, None when no member holds it."""
    note: str | None = None


@dataclass(frozen=True)
class DestinationStatus:
    destination: str
    group: GroupDescription
    partitions: tuple[PartitionLag, ...]

    @property
    def lag_messages(self) -> int:
        return sum(p.lag_messages for p in self.partitions)

    @property
    def lag_s(self) -> float | None:
        """The oldest unconsumed record's age over the partitions (None only when lag exists and no age is
        known)."""
        known = [p.lag_s for p in self.partitions if p.lag_s is not None]
        if known:
            return max(known)
        return None if self.lag_messages else 0.0


@dataclass(frozen=True)
class DeadLetterCounts:
    """Dead letters parked within the window, by destination and reason (``dlq.failed_at_ms``, else the
    record's timestamp, at or after ``since_ms``)."""

    topic: str
    window_s: float
    since_ms: int
    by_destination: dict[str, Counter[str]] = field(default_factory=dict)
    error: str | None = None
    """Why the topic could not be read (it does not exist yet, say); the counts are then empty."""

    @property
    def total(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.by_destination.values())

    @property
    def by_reason(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for reasons in self.by_destination.values():
            totals.update(reasons)
        return totals


@dataclass(frozen=True)
class Status:
    at_ms: int
    bootstrap_servers: str
    destinations: tuple[DestinationStatus, ...]
    dead_letters: DeadLetterCounts


# ------------------------------------------------------------------------------------- the facts


def gather_status(settings: Settings, inspector: GroupInspector, dlq_reader: Reader, *, window_s: float,
                  clock: Callable[[], float] = time.time) -> Status:
    """Read everything once: partitions, end offsets, each group's description and committed offsets, the
    next record of each lagging partition, and the dead letters of the window."""
    keys = inspector.partitions(settings.topics())
    marks = inspector.watermarks(keys)
    groups = {destination: settings.group_for(destination) for destination in settings.destinations()}
    described = inspector.describe(groups.values())
    committed = {group: inspector.committed(group, keys) for group in dict.fromkeys(groups.values())}
    reset = settings.kafka.auto_offset_reset
    positions = {group: {key: next_position(offsets.get(key), *marks[key], reset) for key in keys}
                 for group, offsets in committed.items()}
    spans = {group: {key: (position.next_offset, marks[key][1]) for key, position in by_key.items()}
             for group, by_key in positions.items()}
    found = read_next_records(inspector, spans)
    now_ms = int(clock() * 1000)
    destinations = []
    for destination, group in groups.items():
        rows = []
        for key in keys:
            position = positions[group][key]
            rows.append(partition_lag(key, committed[group].get(key), marks[key], position,
                                      found.get((key, position.next_offset)), described[group], now_ms,
                                      inspector.timeout_s))
        destinations.append(DestinationStatus(destination, described[group], tuple(rows)))
    letters = count_dead_letters(settings, dlq_reader, window_s=window_s, now_ms=now_ms)
    return Status(now_ms, settings.kafka.bootstrap_servers, tuple(destinations), letters)


def next_position(committed: int | None, earliest: int, end: int, reset: str) -> Position:
    """The committed offset when the broker still holds it, else where ``auto.offset.reset`` sends the
    consumer (as the lanes' own consumers would do), saying so."""
    if committed is not None and earliest <= committed <= end:
        return Position(committed, "committed", None)
    start = earliest if reset == "earliest" else end
    if committed is None:
        return Position(start, reset, f"no committed offset: starts at the {reset} offset (kafka.auto_offset_reset)")
    where = f"before the earliest offset held ({earliest}; removed by retention)" if committed < earliest \
        else f"past the end offset ({end})"
    return Position(start, reset, f"committed offset {committed} is {where}: resets to the {reset} offset")


def read_next_records(inspector: GroupInspector,
                      spans_by_group: dict[str, dict[TopicPartitionKey, tuple[int, int]]],
                      ) -> dict[tuple[TopicPartitionKey, int], NextRecord]:
    """The next record of every (partition, next offset) any group needs, keyed by both. A partition can be
    assigned at one offset at a time, so groups at different offsets of one partition take one pass each
    (one pass when the groups agree, the usual case)."""
    wanted: dict[TopicPartitionKey, dict[int, int]] = {}
    for spans in spans_by_group.values():
        for key, (first, end) in spans.items():
            if first < end:
                wanted.setdefault(key, {})[first] = end
    found: dict[tuple[TopicPartitionKey, int], NextRecord] = {}
    while wanted:
        this_pass = {key: min(offsets.items()) for key, offsets in wanted.items()}
        for key, record in inspector.next_records(this_pass).items():
            found[(key, this_pass[key][0])] = record
        for key, (first, _end) in this_pass.items():
            del wanted[key][first]
            if not wanted[key]:
                del wanted[key]
    return found


def partition_lag(key: TopicPartitionKey, committed: int | None, marks: tuple[int, int],
                  position: Position, record: NextRecord | None, group: GroupDescription,
                  now_ms: int, timeout_s: float) -> PartitionLag:
    """One partition's row: lag in messages from the offsets, lag in seconds from the next record's time."""
    earliest, end = marks
    next_offset, starts_from, note = position
    lag_messages = max(0, end - next_offset)
    lag_s: float | None = 0.0
    stamp = record.timestamp_ms if record is not None else None
    if lag_messages:
        if stamp is not None:
            lag_s = round(max(0.0, (now_ms - stamp) / 1000), 3)
        elif record is not None:
            lag_s, note = None, _joined(note, f"the record at offset {record.offset} carries no timestamp")
        else:
            lag_s, note = None, _joined(note, f"the next record was not read within {timeout_s:g}s")
    owner = group.owner_of(key)
    return PartitionLag(topic=key[0], partition=key[1], committed=committed, earliest_offset=earliest,
                        end_offset=end, next_offset=next_offset, starts_from=starts_from,
                        lag_messages=lag_messages, lag_s=lag_s, next_record_ms=stamp if lag_messages else None,
                        member=owner.client_id if owner is not None else None, note=note)


def _joined(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def count_dead_letters(settings: Settings, reader: Reader, *, window_s: float, now_ms: int) -> DeadLetterCounts:
    """Dead letters parked in the last ``window_s``, by destination and reason, from their ``dlq.*`` headers
    (:class:`~consumer.tools.dlq.DeadLetterView`, as ``dlq inspect`` reads them); nothing is kept in memory
    but the counts. Every letter counts, replayed or not: this says what was parked, not what is left."""
    topic = settings.kafka.dead_letter_topic
    since_ms = now_ms - int(window_s * 1000)
    selection = Selection(since_ms=since_ms)
    counts: dict[str, Counter[str]] = {}

    def count(record: Record) -> bool:
        letter = DeadLetterView.of(record)
        if selection.matches(letter):
            counts.setdefault(letter.destination, Counter())[letter.reason] += 1
        return False

    try:
        ranges = dlq_ranges(reader, topic, since_ms=since_ms)
    except ConfigError as exc:  # the topic is missing: show the lanes anyway, and say so
        return DeadLetterCounts(topic, window_s, since_ms, error=str(exc))
    reader.read(ranges, keep=count)
    return DeadLetterCounts(topic, window_s, since_ms, dict(sorted(counts.items())))


# ------------------------------------------------------------------------------------- the command


def run_status(settings: Settings, *, as_json: bool, watch_s: float | None, window_s: float, out: Any,
               timeout_s: float | None = None) -> int:
    """Print the status once (or every ``watch_s`` seconds until Ctrl-C); 0, or an error for the CLI's exit
    code (3 when Kafka does not answer)."""
    if watch_s is not None and watch_s <= 0:
        raise ConfigError("--watch takes a positive number of seconds")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError("--timeout-s must be positive")
    wait_s = timeout_s or settings.kafka.startup_timeout_s
    with GroupInspector(settings, timeout_s=wait_s) as inspector, \
            Reader(settings, inspector.own_group, timeout_s=wait_s) as dlq_reader:

        def screen() -> str:
            status = gather_status(settings, inspector, dlq_reader, window_s=window_s)
            if as_json:
                return render_json(status, compact=watch_s is not None)
            return render_screen(status, watch_s=watch_s)

        first = screen()  # the first read fails loudly (exit 2 or 3); later failures are shown and retried
        if watch_s is None:
            out.write(first)
            return 0

        def refresh() -> str:
            try:
                return screen()
            except (FatalError, ConfigError) as exc:
                return render_failure(str(exc), as_json=as_json)

        clear = not as_json and _is_tty(out)
        between = CLEAR_SCREEN if clear else ("" if as_json else "\n")
        return watch(first, refresh, out, interval_s=watch_s, between=between)


def watch(first: str, refresh: Callable[[], str], out: Any, *, interval_s: float, between: str = "",
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Show ``first``, then ``refresh()`` every ``interval_s`` until Ctrl-C, which exits 0 (watching is
    stopped by Ctrl-C, so it is no failure). ``between`` goes before each later screen: on a terminal the
    escape that clears it, so each screen replaces the last."""
    try:
        out.write(between if between == CLEAR_SCREEN else "")
        out.write(first)
        out.flush()
        while True:
            sleep(interval_s)
            text = refresh()
            out.write(between + text)
            out.flush()
    except KeyboardInterrupt:
        return 0


def _is_tty(out: Any) -> bool:
    return bool(getattr(out, "isatty", lambda: False)())
