"""``usage-consumer dlq inspect`` and ``dlq replay``: look at dead letters, and send them on after a fix.

A dead letter is the original record (key, value, headers) plus ``dlq.*`` headers saying why, where it came
from and which destination's lane parked it (:mod:`consumer.kafka.deadletter`). Each lane parks its own: a
record no lane could decode is parked once per destination.

``inspect`` reads the dead-letter topic from the start (or ``--since``), leaves out the letters a replay
already finished (``--all`` shows them) and commits nothing.

``replay`` reads it with its own consumer group (``<group_id>.dlq-replay`` by default) from that group's
committed progress, up to the end offsets seen when it started, and for each selected dead letter either

- produces it back to its source topic and partition (key, value, original headers without ``dlq.*``),
  with ``acks=all`` and idempotence, once per source record even when several lanes parked it; refused
  when some destination never parked that record, judged over every letter the topic holds (that
  destination would receive it twice) unless ``--allow-duplicates``;
- or (``--to-destinations``) decodes and maps it with the *current* config and mapping, with its original
  topic/partition/offset (so Freshpaint's ``$insert_id`` is the one it would have had), and delivers it to
  the destination that parked it. One that fails again is parked anew (a fresh dead letter with the new
  reason), exactly as the consumer would.

Each finished letter (accepted by the broker or answered 2xx, parked anew, or a duplicate copy of one that
was) is written to the replay ledger (:mod:`consumer.tools.ledger`) right after its run was accepted, and no
replay ever sends a letter the ledger holds, whatever its filters or group. Letters the filters leave out are
never marked done. Records of one destination are sent in runs no larger than the requests in flight (one
Freshsuccess request, or ``freshpaint.max_in_flight_requests`` Freshpaint ones), so a replay killed mid-run
sends at most that run again. The replay group's committed progress only says where to start reading: it
moves past the contiguous prefix of finished letters, and never backwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import structlog
from confluent_kafka import KafkaError, Producer

from consumer.app.build import DESTINATIONS, Sink, build_sink, judges_for
from consumer.app.startup import Prepared, prepare
from consumer.config import Settings
from consumer.errors import (
    ConfigError,
    EventError,
    FatalError,
    Rejected,
    TransientError,
)
from consumer.kafka.deadletter import DeadLetterProducer
from consumer.kafka.reader import Reader, Record
from consumer.pipeline.batcher import Batcher
from consumer.pipeline.delivery import DeliveryLoop
from consumer.pipeline.offsets import Work
from consumer.pipeline.verdict import PARK, SEND, STOP, WAIT, Decides, Decision, Judge, RecordDecoder
from consumer.tools.common import check_once, format_time_ms, parse_time_ms
from consumer.tools.dryrun import DryRun
from consumer.tools.ledger import Ledger
from consumer.tools.progress import Progress
from consumer.tools.samples import Sample
from consumer.yamlsource import closest

log = structlog.get_logger(__name__)

DLQ_PREFIX = "dlq."
PREVIEW_CHARS = 300
SourceKey = tuple[str, int, int]


# ------------------------------------------------------------------------------------- dead letters


@dataclass(frozen=True)
class DeadLetterView:
    """A dead-letter record with its ``dlq.*`` headers read out (absent ones as None / ``unknown``)."""

    record: Record
    reason: str
    destination: str
    error_class: str
    message: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    failed_at_ms: int | None
    response_status: int | None
    response_body: str | None

    @classmethod
    def of(cls, record: Record) -> DeadLetterView:
        def text(name: str) -> str | None:
            raw = record.header(DLQ_PREFIX + name)
            return raw.decode("utf-8", "replace") if raw is not None else None

        def number(name: str) -> int | None:
            raw = text(name)
            try:
                return int(raw) if raw is not None else None
            except ValueError:
                return None

        return cls(record=record, reason=text("reason") or "unknown", destination=text("destination") or "unknown",
                   error_class=text("error_class") or "", message=text("error_message") or "",
                   source_topic=text("source_topic"), source_partition=number("source_partition"),
                   source_offset=number("source_offset"),
                   failed_at_ms=number("failed_at_ms") or record.timestamp_ms,
                   response_status=number("response_status"), response_body=text("response_body"))

    @property
    def source_key(self) -> SourceKey | None:
        if self.source_topic is None or self.source_partition is None or self.source_offset is None:
            return None
        return self.source_topic, self.source_partition, self.source_offset

    @property
    def source(self) -> str:
        key = self.source_key
        return f"{key[0]}[{key[1]}]@{key[2]}" if key else "unknown source"

    @property
    def source_id(self) -> str:
        """The source record as the ledger names it (``topic/partition/offset``; empty when unknown)."""
        key = self.source_key
        return f"{key[0]}/{key[1]}/{key[2]}" if key else ""

    @property
    def unusable(self) -> str | None:
        """Why this record cannot be replayed (its ``dlq.*`` headers do not say enough), or None."""
        missing = [name for name, value in (("dlq.reason", self.reason), ("dlq.destination", self.destination))
                   if value == "unknown"]
        if self.source_key is None:
            missing.append("dlq.source_topic/partition/offset")
        if not missing:
            return None
        return f"no {', '.join(missing)} header(s): not a dead letter this tool can replay; left untouched"

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was parked (every ``dlq.*`` header removed)."""
        return [(k, v) for k, v in self.record.headers if not k.startswith(DLQ_PREFIX)]


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command takes: reason codes, destinations, a time window, a count."""

    reasons: frozenset[str] | None = None
    destinations: frozenset[str] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    @classmethod
    def from_options(cls, *, reasons: Sequence[str] | None, destinations: Sequence[str] | None,
                     since: str | None, until: str | None, limit: int | None) -> Selection:
        if limit is not None and limit < 1:
            raise ConfigError("--limit must be at least 1")
        known = reason_codes()
        for reason in reasons or ():
            if reason not in known:
                hint = closest(reason, known)
                raise ConfigError(f"--reason {reason!r} is not a dead-letter reason"
                                  + (f" (did you mean {hint!r}?)" if hint else "")
                                  + f"; the reasons are: {', '.join(sorted(known))}")
        since_ms = parse_time_ms(since, option="--since") if since else None
        until_ms = parse_time_ms(until, option="--until") if until else None
        if since_ms is not None and since_ms > time.time() * 1000:
            raise ConfigError(f"--since {since} is in the future ({format_time_ms(since_ms)}): no dead letter "
                              "was parked after it; give an earlier time, or a duration such as 2h for two hours "
                              "ago")
        if since_ms is not None and until_ms is not None and until_ms <= since_ms:
            raise ConfigError("--until must be later than --since")
        return cls(frozenset(reasons) if reasons else None, frozenset(destinations) if destinations else None,
                   since_ms, until_ms, limit)

    def matches(self, letter: DeadLetterView) -> bool:
        if self.reasons is not None and letter.reason not in self.reasons:
            return False
        if self.destinations is not None and letter.destination not in self.destinations:
            return False
        at = letter.failed_at_ms
        if self.since_ms is not None and (at is None or at < self.since_ms):
            return False
        return not (self.until_ms is not None and (at is None or at >= self.until_ms))

    def beyond(self, letter: DeadLetterView) -> bool:
        """Parked at or after ``--until``: replay stops there (later ones are not passed over)."""
        return self.until_ms is not None and letter.failed_at_ms is not None and letter.failed_at_ms >= self.until_ms


def reason_codes() -> set[str]:
    """Every ``dlq.reason`` the consumer writes: the ``reason`` of each EventError class."""
    codes: set[str] = set()
    pending: list[type[EventError]] = [EventError]
    while pending:
        cls = pending.pop()
        codes.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return codes


def dlq_ranges(reader: Reader, topic: str, *, since_ms: int | None, committed: dict[int, int] | None = None,
               ) -> dict[tuple[str, int], tuple[int, int]]:
    """Per partition ``(first, end)``: from the committed progress (or the oldest record), not before
    ``since_ms``, to the end offset now."""
    ranges = {}
    for partition in reader.partitions(topic):
        low, high = reader.watermarks(topic, partition)
        start = max(low, (committed or {}).get(partition, low))
        if since_ms is not None:
            at = reader.offset_at(topic, partition, since_ms)
            start = max(start, high if at is None else at)
        ranges[(topic, partition)] = (min(start, high), high)
    return ranges


def preview(letter: DeadLetterView, decoder: RecordDecoder | None, *, full: bool) -> tuple[str, dict[str, Any] | None]:
    """``(text, decoded event or None)``: the event as JSON when it decodes, else why and its first bytes."""
    value = letter.record.value
    if value is None:
        return "no value (a tombstone)", None
    if decoder is not None:
        try:
            event = decoder.decode(value)
        except EventError as exc:
            return f"does not decode ({exc.reason}): {exc}; starts {value[:16].hex(' ')}", None
        text = orjson.dumps({k: v for k, v in event.items() if v is not None and v != {}}).decode()
        return (text if full or len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."), event
    return f"{len(value)} bytes, starts {value[:16].hex(' ')}", None


class _Previewer:
    """Decodes previews as the lanes decode (each dead letter with its source topic's stream); gives up (once,
    saying why) if the registry is down."""

    def __init__(self, settings: Settings, prepared: Prepared) -> None:
        self.note = ""
        self.route: Decides | None
        try:
            lane = next((name for name in DESTINATIONS if prepared.has_rules_for(name)), DESTINATIONS[0])
            self.route = judges_for(settings, lane, prepared, None, whole_records=True)  # the record as a whole
        except Exception as exc:  # previews are a convenience: never fail the listing for them
            self.route, self.note = None, f"values not decoded: {exc}"

    def __call__(self, letter: DeadLetterView, full: bool) -> tuple[str, dict[str, Any] | None]:
        judge = None
        if self.route is not None and letter.record.value is not None:
            judge = self.route.route(letter.record.value, letter.source_topic or "")
        try:
            return preview(letter, judge.decoder if isinstance(judge, Judge) else None, full=full)
        except (TransientError, FatalError) as exc:
            self.close()
            self.note = f"values not decoded: {exc}"
            return preview(letter, None, full=full)

    def close(self) -> None:
        if self.route is not None:
            self.route.close()
        self.route = None


# ------------------------------------------------------------------------------------------ inspect


def run_inspect(settings: Settings, selection: Selection, *, full: bool, as_json: bool, out: Any,
                include_replayed: bool = False) -> int:
    """List the dead letters still to deal with (``include_replayed``: also those a replay already finished)."""
    topic = settings.kafka.dead_letter_topic
    previewer = _Previewer(settings, prepare(settings))
    ledger = Ledger(settings, group="", create=False)
    replayed = 0
    with Reader(settings, f"{settings.kafka.group_id}.dlq-inspect") as reader:
        ranges = dlq_ranges(reader, topic, since_ms=selection.since_ms)
        ledger.load(reader)
        total = sum(end - first for first, end in ranges.values())

        def keep(record: Record) -> bool:
            nonlocal replayed
            if not selection.matches(DeadLetterView.of(record)):
                return False
            if ledger.done(record) is not None and not include_replayed:
                replayed += 1
                return False
            return True

        kept = reader.read(ranges, keep=keep, limit=selection.limit)
    shown = [DeadLetterView.of(record) for record in sorted(kept, key=lambda r: (r.partition, r.offset))]
    rows = []
    try:
        for letter in shown:
            text, event = previewer(letter, full)
            rows.append((letter, text, event))
    finally:
        previewer.close()
    by_reason = dict(Counter(letter.reason for letter in shown).most_common())
    by_destination = dict(Counter(letter.destination for letter in shown).most_common())
    counts = {"records_in_range": total, "shown": len(shown), "already_replayed_not_shown": replayed,
              "by_reason": by_reason, "by_destination": by_destination}
    if as_json:
        document = {"topic": topic, "dead_letters": [_letter_json(letter, text, event) for letter, text, event in rows],
                    "summary": counts}
        if previewer.note:
            document["note"] = previewer.note
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for letter, text, _event in rows:
        lines = _letter_lines(letter, text, full)
        entry = ledger.done(letter.record)
        if entry is not None:
            lines.insert(1, f"  replayed {entry.outcome} at {format_time_ms(entry.at_ms)} (group {entry.group})")
        out.write("\n".join(lines) + "\n\n")
    out.write(f"{len(shown)} dead letter(s) shown of {total} in {topic}")
    if shown:
        out.write("; by reason: " + ", ".join(f"{k} {v}" for k, v in by_reason.items()))
        out.write("; by destination: " + ", ".join(f"{k} {v}" for k, v in by_destination.items()))
    out.write("\n")
    if replayed:
        out.write(f"{replayed} already replayed, not shown (dlq inspect --all shows them too)\n")
    if previewer.note:
        out.write(f"note: {previewer.note}\n")
    return 0


def _letter_json(letter: DeadLetterView, text: str, event: dict[str, Any] | None) -> dict[str, Any]:
    record = letter.record
    out: dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "reason": letter.reason, "destination": letter.destination, "error_class": letter.error_class,
        "message": letter.message, "source_topic": letter.source_topic, "source_partition": letter.source_partition,
        "source_offset": letter.source_offset, "failed_at_ms": letter.failed_at_ms,
        "failed_at": format_time_ms(letter.failed_at_ms),
    }
    if letter.response_status is not None:
        out["response_status"] = letter.response_status
        out["response_body"] = letter.response_body
    if event is not None:
        out["event"] = event
    else:
        out["value"] = text
    return out


def _letter_lines(letter: DeadLetterView, text: str, full: bool) -> list[str]:
    record = letter.record
    message = letter.message if full or len(letter.message) <= PREVIEW_CHARS else letter.message[:PREVIEW_CHARS] + "..."
    lines = [f"{record.position}  {format_time_ms(letter.failed_at_ms)}  {letter.destination}  {letter.reason}",
             f"  source   {letter.source}" + (f"  ({letter.error_class})" if letter.error_class else ""),
             f"  error    {message}"]
    if letter.response_status is not None:
        lines.append(f"  response HTTP {letter.response_status}" +
                     (f": {letter.response_body}" if letter.response_body else ""))
    lines.append(f"  value    {text}")
    return lines


# ------------------------------------------------------------------------------------------- replay

Status = Literal["selected", "passed", "copy", "beyond", "done_before", "unusable"]
"""What a dead letter is to this replay: ``selected`` (to replay now), ``passed`` (a filter left it out: left
for a later replay, never marked done), ``copy`` (another letter of the same source record and destination,
done with its twin), ``beyond`` (after ``--until`` or ``--limit``), ``done_before`` (the ledger says a replay
finished it, or its event already reached that destination through another letter), ``unusable`` (its headers
do not say where it came from or who parked it: left untouched)."""


@dataclass(eq=False)
class Item:
    letter: DeadLetterView
    status: Status
    done: bool = False
    outcome: str = ""
    """What happened: ``replayed``, ``delivered``, ``skipped``, ``reparked:<reason>``."""
    twin: Item | None = None
    """For a duplicate copy: the item that is replayed for both."""
    recorded: bool = False
    """Written to the ledger (or found there)."""

    @property
    def finished(self) -> bool:
        """Progress may move past it: the ledger holds it (now or from an earlier replay)."""
        return self.status == "done_before" or self.recorded


@dataclass
class ReplayReport:
    group: str
    topic: str
    mode: str
    dry_run: bool
    read: int = 0
    passed: int = 0
    copies: int = 0
    beyond: int = 0
    done_before: int = 0
    unusable: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    committed: dict[int, int] = field(default_factory=dict)
    stopped: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "mode": self.mode, "dry_run": self.dry_run,
                "read": self.read, "passed_over": self.passed, "duplicate_copies": self.copies,
                "not_reached": self.beyond, "replayed_before": self.done_before, "left_untouched": self.unusable,
                "outcomes": dict(self.outcomes), "committed": {str(p): o for p, o in self.committed.items()},
                "stopped": self.stopped}

    def lines(self) -> list[str]:
        texts = _OUTCOME_DRY_TEXT if self.dry_run else _OUTCOME_TEXT
        title = f"replay of {self.topic} {self.mode}, progress group {self.group}"
        lines = [f"{title}{' (dry run: nothing sent or committed)' if self.dry_run else ''}:",
                 f"  dead letters read: {self.read}"]
        for outcome, count in sorted(self.outcomes.items()):
            name, _, detail = outcome.partition(":")
            lines.append(f"  {texts.get(name, name)}{f' ({detail})' if detail else ''}: {count}")
        if self.done_before:
            lines.append(f"  already replayed by an earlier replay (not sent again): {self.done_before}")
        if self.passed:
            lines.append(f"  not selected by the filters, left for a later replay: {self.passed}")
        if self.copies:
            lines.append(f"  duplicate copies of a replayed record: {self.copies}")
        if self.beyond:
            lines.append(f"  not reached (after --until or --limit), left for a later replay: {self.beyond}")
        lines.extend(f"  {line}" for line in self.unusable)
        if self.committed:
            lines.append("  progress committed: " + ", ".join(f"{self.topic}[{p}] -> offset {o}"
                                                                 for p, o in sorted(self.committed.items())))
        elif not self.dry_run:
            lines.append("  progress committed: nothing new")
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}")
        return lines


_OUTCOME_TEXT = {"replayed": "produced to the source topic", "delivered": "delivered to the destination",
                 "skipped": "skipped (no rule selects it now)", "reparked": "failed again and parked anew"}
_OUTCOME_DRY_TEXT = {"replayed": "would be produced to the source topic",
                     "delivered": "would be delivered to the destination",
                     "skipped": "would be skipped (no rule selects it now)",
                     "reparked": "would fail again and be parked anew"}


def run_replay(settings: Settings, selection: Selection, *, to_destinations: bool, dry_run: bool, group: str | None,
               from_beginning: bool, allow_duplicates: bool, timeout_s: float, as_json: bool, out: Any,
               progress: Any) -> int:
    """Replay selected dead letters; 0 when all were replayed, 1 when some failed again (parked anew)."""
    if timeout_s <= 0:
        raise ConfigError("--timeout-s must be positive")
    group_id = group or f"{settings.kafka.group_id}.dlq-replay"
    topic = settings.kafka.dead_letter_topic
    prepared = prepare(settings)
    running = [d for d in settings.destinations() if prepared.has_rules_for(d)]
    mode = "to destinations" if to_destinations else "to source topics"
    report = ReplayReport(group_id, topic, mode, dry_run)
    ledger = Ledger(settings, group=group_id, create=not dry_run)
    try:
        with Reader(settings, group_id) as reader:
            partitions = reader.partitions(topic)  # the broker answers and the topic exists, or one clear error
            ledger.load(reader)
            committed = reader.committed(topic, partitions)
            ranges = dlq_ranges(reader, topic, since_ms=selection.since_ms,
                                committed=None if from_beginning else committed)
            records = reader.read(ranges)
            items = _classify(records, selection, to_destinations=to_destinations, ledger=ledger)
            report.read = len(records)
            report.passed = sum(1 for i in items if i.status == "passed")
            report.copies = sum(1 for i in items if i.status == "copy")
            report.beyond = sum(1 for i in items if i.status == "beyond")
            report.done_before = sum(1 for i in items if i.status == "done_before")
            report.unusable = [f"{i.letter.record.position}: {i.letter.unusable}" for i in items
                               if i.status == "unusable"]
            selected = [i for i in items if i.status == "selected"]
            if to_destinations:
                _check_destinations(settings, selected, running, secrets=not dry_run)
            else:
                _check_sources(reader, selected, running, allow_duplicates, records, ranges)
            if dry_run:
                _plan(settings, prepared, selected, to_destinations, report, out, as_json)
                return 0
            progress_of = _Progress(reader, ledger, report, items, ranges, committed, timeout_s)
            bar = Progress(len(selected), progress, label="replay")
            try:
                if to_destinations:
                    _DestinationReplay(settings, prepared, timeout_s, bar).run(items, progress_of)
                else:
                    _SourceReplay(settings, timeout_s, bar).run(items, progress_of)
            except FatalError as exc:
                report.stopped = str(exc)
            except KeyboardInterrupt:
                report.stopped = "interrupted"
            finally:
                bar.finish()
                for item in items:
                    if item.recorded and item.status == "selected":
                        report.outcomes[item.outcome] += 1
    finally:
        ledger.close()
    _print_report(report, out, as_json)
    if report.stopped == "interrupted":
        raise KeyboardInterrupt
    if report.stopped:
        raise FatalError(f"replay stopped: {report.stopped}; finished dead letters are recorded, run the same "
                         "command again to continue")
    return 1 if any(k.startswith("reparked") for k in report.outcomes) else 0


def _print_report(report: ReplayReport, out: Any, as_json: bool) -> None:
    if as_json:
        out.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write("\n".join(report.lines()) + "\n")


def _classify(records: list[Record], selection: Selection, *, to_destinations: bool,
              ledger: Ledger | None = None) -> list[Item]:
    """Decide, in offset order per partition, what each dead letter is to this replay."""
    items: list[Item] = []
    taken = 0
    seen: dict[Any, Item] = {}
    stopped: set[int] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        letter = DeadLetterView.of(record)
        if ledger is not None and (ledger.done(record) is not None or (
                letter.unusable is None and ledger.settled(letter.source_id, letter.destination))):
            items.append(Item(letter, "done_before", recorded=True))
            continue
        if letter.unusable is not None:
            items.append(Item(letter, "unusable"))
            continue
        if record.partition in stopped or selection.beyond(letter) or \
                (selection.limit is not None and taken >= selection.limit and selection.matches(letter)):
            stopped.add(record.partition)
            items.append(Item(letter, "beyond"))
            continue
        if not selection.matches(letter):
            items.append(Item(letter, "passed"))
            continue
        identity = (letter.source_key, letter.destination) if to_destinations else letter.source_key
        if identity in seen:
            items.append(Item(letter, "copy", twin=seen[identity]))
            continue
        item = Item(letter, "selected")
        seen[identity] = item
        taken += 1
        items.append(item)
    return items


def parked_by(reader: Reader, sources: set[SourceKey], read: list[Record],
              ranges: dict[tuple[str, int], tuple[int, int]]) -> dict[SourceKey, set[str]]:
    """Which destinations parked each of ``sources``, over every dead letter the topic still holds: the letters
    this replay already ``read`` (its ``ranges``), plus those before them, read now (nothing kept in memory)."""
    found: dict[SourceKey, set[str]] = {}

    def note(record: Record) -> bool:
        letter = DeadLetterView.of(record)
        key = letter.source_key
        if key in sources:
            found.setdefault(key, set()).add(letter.destination)
        return False

    for record in read:
        note(record)
    before = {key: (reader.watermarks(*key)[0], first) for key, (first, _end) in ranges.items()}
    reader.read(before, keep=note)
    return found


def _check_sources(reader: Reader, selected: list[Item], running: list[str], allow_duplicates: bool,
                   read: list[Record], ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Every selected dead letter names a source that exists, and replaying it duplicates nothing."""
    partitions: dict[str, list[int]] = {}
    for item in selected:
        key = item.letter.source_key
        assert key is not None
        if key[0] not in partitions:
            partitions[key[0]] = reader.partitions(key[0])
        if key[1] not in partitions[key[0]]:
            raise FatalError(f"source topic {key[0]} has no partition {key[1]} any more "
                             f"(dead letter {item.letter.record.position})")
    if allow_duplicates or not selected:
        return
    sources = {i.letter.source_key for i in selected if i.letter.source_key is not None}
    everywhere = parked_by(reader, sources, read, ranges)
    partial = [(i, sorted(set(running) - everywhere.get(i.letter.source_key or ("", 0, 0), set())))
               for i in selected]
    partial = [(i, others) for i, others in partial if others]
    if partial:
        example, others = partial[0]
        raise FatalError(
            f"{len(partial)} selected dead letter(s) were parked by some destinations only (e.g. "
            f"{example.letter.record.position}, from {example.letter.source}, parked by "
            f"{', '.join(sorted(everywhere.get(example.letter.source_key or ('', 0, 0), set())))} and never by "
            f"{', '.join(others)}); producing them to the source topic would deliver them again to "
            f"{', '.join(others)}. Use --to-destinations (each goes only to the destination that parked it), or "
            "--allow-duplicates if that is really wanted")

def _check_destinations(settings: Settings, selected: list[Item], running: list[str], *, secrets: bool) -> None:
    needed = sorted({i.letter.destination for i in selected})
    not_running = [d for d in needed if d not in running]
    if not_running:
        raise FatalError(f"selected dead letters were parked by {', '.join(not_running)}, which is not enabled or "
                         "has no mapping rules in this configuration; enable it or leave those out with "
                         "--destination")
    if secrets:
        settings.require_secrets(needed)


def _plan(settings: Settings, prepared: Prepared, selected: list[Item], to_destinations: bool, report: ReplayReport,
          out: Any, as_json: bool) -> None:
    """The dry run: what each selected dead letter would become; nothing is produced, sent or committed."""
    planner = DryRun.for_records(settings, prepared) if to_destinations else None
    entries: list[dict[str, Any]] = []
    try:
        _plan_items(selected, planner, report, entries)
    finally:
        if planner is not None:
            planner.close()
    _render_plan(entries, report, out, as_json)


def _plan_items(selected: list[Item], planner: Any, report: ReplayReport, entries: list[dict[str, Any]]) -> None:
    for item in selected:
        letter = item.letter
        entry: dict[str, Any] = {"dead_letter": letter.record.position, "reason": letter.reason,
                                 "destination": letter.destination, "source": letter.source}
        if planner is None:
            entry["action"] = f"produce to {letter.source_topic}[{letter.source_partition}]"
            report.outcomes["replayed"] += 1
        else:
            topic, partition, offset = letter.source_key or (letter.source_topic or "", 0, 0)
            value = letter.record.value
            sample = Sample(letter.source, topic, partition, offset, value, None, len(value or b""))
            plan = planner.plan(sample).destinations.get(letter.destination)
            outcome = plan.outcome if plan is not None else "off"
            entry["plan"] = plan.as_json() if plan is not None else None
            entry["action"] = {"send": "deliver", "skip": "skip", "dead_letter": "park anew"}.get(outcome, outcome)
            report.outcomes[{"send": "delivered", "skip": "skipped", "dead_letter": f"reparked:"
                             f"{plan.reason if plan else ''}"}.get(outcome, outcome)] += 1
        entries.append(entry)


def _render_plan(entries: list[dict[str, Any]], report: ReplayReport, out: Any, as_json: bool) -> None:
    if as_json:
        out.write(orjson.dumps({"plan": entries, "summary": report.as_json()},
                               option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for entry in entries:
        line = f"{entry['dead_letter']}  {entry['destination']}  {entry['reason']}  from {entry['source']}: "
        plan = entry.get("plan")
        if plan is None:
            line += f"would {entry['action']}"
        elif plan["outcome"] == "send":
            line += f"would deliver {len(plan.get('outputs', []))} output(s)"
        else:
            line += f"would {entry['action']}: [{plan.get('reason')}] {plan.get('message', '')}"
        out.write(line + "\n")
    out.write("\n".join(report.lines()) + "\n")


class _SourceReplay:
    """Produces each selected dead letter back to its source topic and partition; commits what the broker took."""

    def __init__(self, settings: Settings, timeout_s: float, bar: Progress) -> None:
        self.timeout_s = timeout_s
        self.bar = bar
        self.chunk = settings.batching.max_events
        self.producer = Producer({"log_level": 0, **settings.kafka_client_config(), "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 5,
                                  "message.timeout.ms": int(timeout_s * 1000)})

    def run(self, items: list[Item], progress: _Progress) -> None:
        failures: list[str] = []
        chunk: list[Item] = []

        def settle() -> None:
            remaining = self.producer.flush(self.timeout_s + 5)
            if remaining:
                failures.append(f"{remaining} record(s) not acknowledged within {self.timeout_s:g}s")
            progress.settle()  # what the broker took is in the ledger before anything else is produced
            chunk.clear()
            if failures:
                raise FatalError(failures[0])

        for item in items:
            if item.status != "selected":
                continue
            self._produce(item, failures)
            chunk.append(item)
            if len(chunk) >= self.chunk:
                settle()
        settle()

    def _produce(self, item: Item, failures: list[str]) -> None:
        letter = item.letter
        key = letter.source_key
        assert key is not None

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failures.append(f"producing {letter.record.position} to {key[0]}[{key[1]}] failed: {err.str()}")
                return
            item.done = True
            item.outcome = "replayed"
            self.bar.advance()

        while True:
            try:
                self.producer.produce(key[0], value=letter.record.value, key=letter.record.key,
                                      headers=letter.original_headers(), partition=key[1], on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)


class _ParkedAgain:
    """A dead letter as the message it was, for :class:`DeadLetterProducer` (source position, original headers)."""

    def __init__(self, letter: DeadLetterView) -> None:
        self._letter = letter

    def topic(self) -> str | None:
        return self._letter.source_topic

    def partition(self) -> int | None:
        return self._letter.source_partition

    def offset(self) -> int | None:
        return self._letter.source_offset

    def key(self) -> bytes | None:
        return self._letter.record.key

    def value(self) -> bytes | None:
        return self._letter.record.value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._letter.original_headers()


class _DestinationReplay:
    """Decodes, maps and delivers each dead letter to the destination that parked it, in same-destination runs."""

    def __init__(self, settings: Settings, prepared: Prepared, timeout_s: float, bar: Progress) -> None:
        self.settings = settings
        self.prepared = prepared
        self.timeout_s = timeout_s
        self.bar = bar
        self.max_run = settings.batching.max_events
        self.delivery = DeliveryLoop(name="replay-delivery").start()
        self.sinks: dict[str, Sink] = {}
        self.judges: dict[str, Decides] = {}
        """Per destination, the lane's own verdict: each letter decoded and mapped by its source topic's stream."""
        self.parker = DeadLetterProducer(settings.kafka.dead_letter_topic,
                                         {"log_level": 0, **settings.kafka_client_config()})

    def run(self, items: list[Item], progress: _Progress) -> None:
        try:
            run: list[Item] = []
            for item in items:
                if item.status != "selected":
                    continue
                if run and (item.letter.destination != run[0].letter.destination or len(run) >= self._max_run(run)
                            or item.letter.record.partition != run[0].letter.record.partition):
                    self._deliver_run(run)
                    progress.settle()  # in the ledger right after acceptance, before the next run is sent
                    run = []
                run.append(item)
            if run:
                self._deliver_run(run)
            progress.settle()
        finally:
            for sink in self.sinks.values():
                try:
                    self.delivery.call(sink.aclose, timeout_s=5)
                except Exception as exc:  # closing is best effort at the end of a run
                    log.warning("destination_close_failed", destination=sink.name, error=str(exc))
            self.delivery.stop()
            self.parker.close(5.0)
            for judge in self.judges.values():
                judge.close()

    def _max_run(self, run: list[Item]) -> int:
        """Freshsuccess: one request carries the run (up to ``batching.max_events``). Freshpaint: one request per
        event, so a run is at most the requests in flight at once; a crash re-sends at most one run."""
        if run[0].letter.destination == "freshpaint":
            return min(self.max_run, self.settings.freshpaint.max_in_flight_requests)
        return self.max_run

    def _judge(self, name: str) -> Decides:
        if name not in self.judges:
            self.judges[name] = judges_for(self.settings, name, self.prepared, check_once)
        return self.judges[name]

    def _sink(self, name: str) -> Sink:
        if name not in self.sinks:
            self.sinks[name] = build_sink(self.settings, name)
        return self.sinks[name]

    def _deliver_run(self, run: list[Item]) -> None:
        """Map every item of the run, deliver the outputs, park anew what fails; all or nothing is done."""
        name = run[0].letter.destination
        judge = self._judge(name)
        mapped: list[tuple[Item, Decision]] = []
        reparks: list[tuple[Item, EventError]] = []
        stop: str | None = None
        for item in run:
            letter = item.letter
            topic, partition, offset = letter.source_key or (letter.source_topic or "", 0, 0)
            decision = judge.decide(letter.record.value, topic, partition, offset)
            if decision.kind in (WAIT, STOP):
                stop = f"{letter.record.position} could not be decoded now: {decision.error}"
                break
            if decision.kind == PARK:
                assert isinstance(decision.error, EventError)
                reparks.append((item, decision.error))
                continue
            mapped.append((item, decision))
        if stop is not None:  # deliver nothing of this run: the next replay starts at its first item
            raise FatalError(stop)
        sink = self._sink(name)
        batcher = Batcher.unbounded(name, ndjson=sink.ndjson)  # a run is one batch: _max_run bounds it
        sent: list[Item] = []  # the item behind each output, in batch order
        for item, decision in mapped:
            if decision.kind == SEND:
                record = item.letter.record
                batcher.add(decision, _ParkedAgain(item.letter), (record.topic, record.partition), record.offset)
                sent += [item] * len(decision.outputs)
        batch = batcher.take()
        if batch is not None:
            rejected: list[tuple[int, Rejected]] = self._call(lambda: sink.write(batch), name)
            seen: set[int] = set()
            for index, error in rejected:
                item = sent[index]
                if id(item) not in seen:
                    seen.add(id(item))
                    reparks.append((item, error))
        reparked = {id(item) for item, _ in reparks}
        self._park(reparks, name)
        for item, decision in mapped:
            if id(item) in reparked:
                continue
            item.done = True
            item.outcome = "delivered" if decision.kind == SEND else "skipped"
        self.bar.advance(len(run))

    def _call(self, factory: Callable[[], Any], name: str) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(factory(), self.timeout_s)

        try:
            return self.delivery.call(bounded, timeout_s=self.timeout_s + 10)
        except TimeoutError:
            raise FatalError(f"{name} did not accept the replayed events within {self.timeout_s:g}s "
                             "(see the retry warnings above); nothing of that run is committed") from None

    def _park(self, reparks: list[tuple[Item, EventError]], name: str) -> None:
        works = []
        for item, error in reparks:
            work = Work(f"park {item.letter.record.position} anew", holds=0)
            self.parker.park(_ParkedAgain(item.letter), error, name, work)
            works.append((item, error, work))
        if not works:
            return
        remaining = self.parker.flush(self.timeout_s)
        if remaining or self.parker.failure:
            raise FatalError(self.parker.failure or f"{remaining} dead letter(s) not acknowledged within "
                             f"{self.timeout_s:g}s")
        for item, error, work in works:
            if work.done:
                item.done = True
                item.outcome = f"reparked:{error.reason}"


class _Progress:
    """After each accepted run: write its letters (and their copies) to the ledger, then commit the group's
    progress past the contiguous prefix of finished letters (never backwards, never past one left out)."""

    def __init__(self, reader: Reader, ledger: Ledger, report: ReplayReport, items: list[Item],
                 ranges: dict[tuple[str, int], tuple[int, int]], committed: dict[int, int], timeout_s: float) -> None:
        self.reader = reader
        self.ledger = ledger
        self.report = report
        self.items = items
        self.ranges = ranges
        self.committed = dict(committed)
        self.timeout_s = timeout_s

    def settle(self) -> None:
        newly: list[tuple[Record, str, str, str]] = []
        for item in self.items:
            if item.recorded:
                continue
            if item.status == "selected" and item.done:
                newly.append((item.letter.record, item.outcome, item.letter.destination, item.letter.source_id))
            elif item.status == "copy" and item.twin is not None and item.twin.done:
                newly.append((item.letter.record, "copy", item.letter.destination, item.letter.source_id))
        self.ledger.record(newly, self.timeout_s)
        for item in self.items:
            if (item.status == "selected" and item.done) or \
                    (item.status == "copy" and item.twin is not None and item.twin.done):
                item.recorded = True
        _commit(self.reader, self.report, self.items, self.ranges, self.committed)


def _commit(reader: Reader, report: ReplayReport, items: list[Item],
            ranges: dict[tuple[str, int], tuple[int, int]], committed: dict[int, int] | None = None) -> None:
    """Commit, per partition, past the longest prefix of finished letters (recorded in the ledger, now or
    before), and only forward of what the group held: a letter left out by a filter stops the prefix."""
    by_partition: dict[int, list[Item]] = {}
    for item in items:
        by_partition.setdefault(item.letter.record.partition, []).append(item)
    held = dict(committed or {})
    offsets = {}
    for (_topic, partition), (first, _end) in ranges.items():
        next_offset = None
        for item in by_partition.get(partition, []):
            if not item.finished:
                break
            next_offset = item.letter.record.offset + 1
        floor = max(report.committed.get(partition, first), held.get(partition, -1))
        if next_offset is not None and next_offset > floor:
            offsets[partition] = next_offset
    if offsets:
        reader.commit(report.topic, offsets)
        report.committed.update(offsets)
