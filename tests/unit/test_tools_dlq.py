"""The dead-letter tools' decisions, without a broker: selection, replay classification, what gets committed.

Runs against the real broker are in tests/integration/test_tools_dlq.py.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import ConfigError
from consumer.kafka.reader import Record
from consumer.tools.common import format_time_ms, parse_time_ms
from consumer.tools.dlq import (
    DeadLetterView,
    Item,
    ReplayReport,
    Selection,
    _classify,
    _commit,
    _Progress,
    reason_codes,
)
from consumer.tools.progress import Progress

NOW_MS = 1_750_000_000_000


def letter(offset: int, *, reason: str = "mapping_failed", destination: str = "freshsuccess",
           source_offset: int | None = None, failed_at_ms: int = NOW_MS, partition: int = 0,
           extra: tuple[tuple[str, bytes], ...] = ()) -> Record:
    headers = [*extra, ("dlq.reason", reason.encode()), ("dlq.destination", destination.encode()),
               ("dlq.source_topic", b"usage-events"), ("dlq.source_partition", b"3"),
               ("dlq.source_offset", str(offset if source_offset is None else source_offset).encode()),
               ("dlq.failed_at_ms", str(failed_at_ms).encode()), ("dlq.error_message", b"boom")]
    return Record("usage-events.dlq", partition, offset, b"key", b"value", tuple(headers), failed_at_ms - 5)


class FakeReader:
    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []

    def commit(self, topic: str, offsets: dict[int, int]) -> None:
        assert topic == "usage-events.dlq"
        self.commits.append(dict(offsets))


def commit(items: list[Item], ranges: dict[tuple[str, int], tuple[int, int]]) -> tuple[FakeReader, ReplayReport]:
    reader = FakeReader()
    report = ReplayReport("g", "usage-events.dlq", "to destinations", dry_run=False)
    _commit(reader, report, items, ranges)  # type: ignore[arg-type]
    return reader, report


def test_a_dead_letter_view_reads_its_headers_and_keeps_the_original_ones() -> None:
    view = DeadLetterView.of(letter(7, extra=(("trace-id", b"abc"),)))
    assert (view.reason, view.destination, view.message) == ("mapping_failed", "freshsuccess", "boom")
    assert view.source_key == ("usage-events", 3, 7)
    assert view.source == "usage-events[3]@7"
    assert view.failed_at_ms == NOW_MS
    assert view.original_headers() == [("trace-id", b"abc")]


def test_a_record_without_dlq_headers_is_shown_as_unknown() -> None:
    view = DeadLetterView.of(Record("t.dlq", 0, 1, None, b"x", (), 123))
    assert (view.reason, view.destination, view.source_key, view.failed_at_ms) == ("unknown", "unknown", None, 123)


def test_selection_filters_by_reason_destination_and_time() -> None:
    chosen = Selection.from_options(reasons=["mapping_failed"], destinations=["freshpaint"], since=str(NOW_MS - 10),
                                    until=str(NOW_MS + 10), limit=None)
    assert chosen.matches(DeadLetterView.of(letter(1, destination="freshpaint")))
    assert not chosen.matches(DeadLetterView.of(letter(1, destination="freshsuccess")))
    assert not chosen.matches(DeadLetterView.of(letter(1, destination="freshpaint", reason="undecodable")))
    assert not chosen.matches(DeadLetterView.of(letter(1, destination="freshpaint", failed_at_ms=NOW_MS - 11)))
    assert chosen.beyond(DeadLetterView.of(letter(1, failed_at_ms=NOW_MS + 10)))


def test_unknown_reasons_and_inverted_windows_are_refused() -> None:
    assert "missing_required_field" in reason_codes()
    assert {"undecodable", "unknown_schema", "oversized", "rejected", "mapping_failed"} <= reason_codes()
    with pytest.raises(ConfigError, match="did you mean 'undecodable'"):
        Selection.from_options(reasons=["undecodeable"], destinations=None, since=None, until=None, limit=None)
    with pytest.raises(ConfigError, match="--until must be later than --since"):
        Selection.from_options(reasons=None, destinations=None, since="1h", until="2h", limit=None)


def test_times_parse_from_iso_dates_epoch_ms_and_durations_ago() -> None:
    now_s = NOW_MS / 1000
    assert parse_time_ms("2025-01-31T10:00:00Z") == int(datetime(2025, 1, 31, 10, tzinfo=UTC).timestamp() * 1000)
    assert parse_time_ms("2025-01-31 10:00") == parse_time_ms("2025-01-31T10:00:00+00:00")
    assert parse_time_ms("2025-01-31") == int(datetime(2025, 1, 31, tzinfo=UTC).timestamp() * 1000)
    assert parse_time_ms("1700000000123") == 1700000000123
    assert parse_time_ms("90s", now_s=now_s) == NOW_MS - 90_000
    assert parse_time_ms("2h", now_s=now_s) == NOW_MS - 7_200_000
    assert parse_time_ms("7d", now_s=now_s) == NOW_MS - 7 * 86_400_000
    with pytest.raises(ConfigError, match="expected a time like"):
        parse_time_ms("yesterday")
    assert format_time_ms(1700000000123) == "2023-11-14T22:13:20.123Z"


def test_classify_passes_over_unselected_records_and_replays_one_copy_per_source() -> None:
    records = [letter(0, reason="undecodable", source_offset=5),
               letter(1, reason="undecodable", source_offset=5, destination="freshpaint"),
               letter(2, reason="oversized"),
               letter(3, reason="undecodable", source_offset=9)]
    selection = Selection.from_options(reasons=["undecodable"], destinations=None, since=None, until=None, limit=None)
    items = _classify(records, selection, to_destinations=False)
    assert [i.status for i in items] == ["selected", "copy", "passed", "selected"]
    assert items[1].twin is items[0]
    # replayed to the destinations, each destination's copy is its own dead letter
    items = _classify(records, selection, to_destinations=True)
    assert [i.status for i in items] == ["selected", "selected", "passed", "selected"]


def test_classify_stops_a_partition_at_until_and_at_the_limit() -> None:
    records = [letter(0), letter(1), letter(2, failed_at_ms=NOW_MS + 100), letter(3)]
    until = Selection(until_ms=NOW_MS + 50)
    assert [i.status for i in _classify(records, until, to_destinations=True)] == [
        "selected", "selected", "beyond", "beyond"]
    limited = Selection(limit=1)
    assert [i.status for i in _classify(records, limited, to_destinations=True)] == [
        "selected", "beyond", "beyond", "beyond"]


def test_progress_stops_at_a_letter_a_filter_left_out_and_never_moves_backwards() -> None:
    records = [letter(10), letter(11, reason="oversized"), letter(12), letter(13), letter(14, reason="oversized")]
    selection = Selection(reasons=frozenset({"mapping_failed"}))
    items = _classify(records, selection, to_destinations=True)
    ranges = {("usage-events.dlq", 0): (10, 15)}
    reader, _ = commit(items, ranges)
    assert reader.commits == []  # nothing replayed yet
    items[0].recorded = True
    reader, _ = commit(items, ranges)
    assert reader.commits == [{0: 11}]
    items[2].recorded = items[3].recorded = True
    reader, _ = commit(items, ranges)
    assert reader.commits == [{0: 11}]  # the oversized letter at 11 is not done: progress waits before it
    behind = FakeReader()
    _commit(behind, ReplayReport("g", "usage-events.dlq", "x", dry_run=False), items, ranges,  # type: ignore[arg-type]
            committed={0: 40})
    assert behind.commits == []  # --from-beginning re-reads, but never commits below what the group held


class FakeLedger:
    def __init__(self) -> None:
        self.written: list[tuple[int, str, str, str]] = []

    def record(self, finished: list[tuple[Record, str, str, str]], timeout_s: float) -> None:
        self.written += [(r.offset, outcome, destination, source) for r, outcome, destination, source in finished]


def test_a_copy_is_recorded_and_finished_only_with_its_twin() -> None:
    records = [letter(0, reason="undecodable", source_offset=5, partition=0),
               letter(0, reason="undecodable", source_offset=5, partition=1, destination="freshpaint")]
    items = _classify(records, Selection(), to_destinations=False)
    ranges = {("usage-events.dlq", 0): (0, 1), ("usage-events.dlq", 1): (0, 1)}
    ledger, reader = FakeLedger(), FakeReader()
    report = ReplayReport("g", "usage-events.dlq", "to source topics", dry_run=False)
    progress = _Progress(reader, ledger, report, items, ranges, {}, 5.0)  # type: ignore[arg-type]
    progress.settle()
    assert (ledger.written, reader.commits) == ([], [])
    items[0].done, items[0].outcome = True, "replayed"
    progress.settle()
    assert ledger.written == [(0, "replayed", "freshsuccess", "usage-events/3/5"),
                              (0, "copy", "freshpaint", "usage-events/3/5")]
    assert reader.commits == [{0: 1, 1: 1}]


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_committed_offsets_never_pass_a_letter_not_recorded(flags: list[tuple[bool, bool]]) -> None:
    """Whatever finished in whatever pattern, progress never passes a letter the ledger does not hold."""
    records = [letter(i, reason="mapping_failed" if selected else "oversized") for i, (selected, _) in enumerate(flags)]
    items = _classify(records, Selection(reasons=frozenset({"mapping_failed"})), to_destinations=True)
    for item, (_selected, done) in zip(items, flags, strict=True):
        if item.status == "selected":
            item.recorded = done
    reader, _ = commit(items, {("usage-events.dlq", 0): (0, len(records))})
    committed = reader.commits[0][0] if reader.commits else 0
    assert all(i.recorded for i in items if i.letter.record.offset < committed)


def test_the_progress_bar_prints_a_line_per_tenth_off_a_terminal() -> None:
    stream = io.StringIO()
    bar = Progress(20, stream, label="replay", width=10)
    for _ in range(20):
        bar.advance()
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "replay [----------] 1/20   5%"
    assert lines[-1] == "replay [##########] 20/20 100%"
    assert len(lines) == 11


def test_the_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream: Any = Terminal()
    bar = Progress(3, stream, label="replay", width=3, min_interval_s=0)
    bar.advance(note="2 failed again")
    bar.finish()
    assert stream.getvalue().count("\r") == 2
    assert stream.getvalue().endswith("replay [#--] 1/3  33% 2 failed again\n")


def test_a_since_in_the_future_is_refused_in_one_clear_line() -> None:
    with pytest.raises(ConfigError, match=r"--since 2999-01-01 is in the future \(2999-01-01T00:00:00.000Z\)"):
        Selection.from_options(reasons=None, destinations=None, since="2999-01-01", until=None, limit=None)


def test_letters_without_their_dlq_headers_are_left_untouched_and_hold_progress_back() -> None:
    bare = Record("usage-events.dlq", 0, 0, None, b"x", (), NOW_MS)
    no_source = Record("usage-events.dlq", 0, 1, None, b"x",
                       (("dlq.reason", b"mapping_failed"), ("dlq.destination", b"freshpaint")), NOW_MS)
    items = _classify([bare, no_source, letter(2)], Selection(), to_destinations=True)
    assert [i.status for i in items] == ["unusable", "unusable", "selected"]
    assert DeadLetterView.of(bare).unusable == ("no dlq.reason, dlq.destination, dlq.source_topic/partition/offset "
                                                "header(s): not a dead letter this tool can replay; left untouched")
    items[2].recorded = True
    reader, _ = commit(items, {("usage-events.dlq", 0): (0, 3)})
    assert reader.commits == []


class DoneLedger:
    """Holds letter 1 itself, and says source offset 7 already reached freshpaint through another letter."""

    def done(self, record: Record) -> object | None:
        return object() if record.offset == 1 else None

    def settled(self, source: str, destination: str) -> bool:
        return (source, destination) == ("usage-events/3/7", "freshpaint")


def test_letters_a_replay_already_finished_are_never_selected_again_whatever_the_filters() -> None:
    records = [letter(0), letter(1), letter(2, source_offset=7, destination="freshpaint"),
               letter(3, source_offset=7, destination="freshsuccess")]
    items = _classify(records, Selection(), to_destinations=True, ledger=DoneLedger())  # type: ignore[arg-type]
    assert [i.status for i in items] == ["selected", "done_before", "done_before", "selected"]
    items[0].recorded = True
    reader, _ = commit(items, {("usage-events.dlq", 0): (0, 4)})
    assert reader.commits == [{0: 3}]
