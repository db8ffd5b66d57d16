"""``usage-consumer status`` without a broker: durations, the lag arithmetic, the screen, the JSON, ``--watch``
and the exit codes. Against the real broker and a running lane: tests/integration/test_tools_status.py."""

from __future__ import annotations

import io
import json
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException

from consumer.cli import main
from consumer.errors import ConfigError
from consumer.kafka.groups import (
    GroupDescription,
    GroupMember,
    NextRecord,
    coordinator_busy,
    error_name_and_text,
)
from consumer.tools.durations import format_duration_s, parse_duration_s
from consumer.tools.status import (
    DeadLetterCounts,
    DestinationStatus,
    PartitionLag,
    Position,
    Status,
    next_position,
    partition_lag,
    read_next_records,
    watch,
)
from consumer.tools.status_view import CLEAR_SCREEN, render_json, render_screen, runs

NOW_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    yield
    structlog.reset_defaults()


# ----------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("7d", 604_800), ("1w", 604_800), ("2H", 7200),
    ("0.5h", 1800), ("45", 45), (" 10m ", 600), ("1h 30m", 5400),
])
def test_durations_parse_in_the_units_of_since(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "abc", "1h-", "0m", "0", "-5m", "1.2.3h"])
def test_a_duration_that_is_not_one_is_a_usage_error_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--window"):
        parse_duration_s(text, option="--window")


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (0.9, "0s"), (-3, "0s"), (45, "45s"), (60, "1m"), (185.7, "3m05s"), (900, "15m"),
    (3600, "1h"), (7380, "2h03m"), (86_400, "1d"), (273_600, "3d04h"), (float("nan"), "-"),
])
def test_durations_format_in_two_units_at_most(seconds: float | None, text: str) -> None:
    assert format_duration_s(seconds) == text


# ------------------------------------------------------------------------------------ lag arithmetic


def test_the_next_offset_is_the_committed_one_while_the_broker_holds_it() -> None:
    assert next_position(7, 0, 10, "earliest") == (7, "committed", None)
    assert next_position(10, 0, 10, "latest") == (10, "committed", None)  # caught up


def test_without_a_committed_offset_auto_offset_reset_decides_and_says_so() -> None:
    offset, starts_from, note = next_position(None, 4, 10, "earliest")
    assert (offset, starts_from) == (4, "earliest")
    assert note == "no committed offset: starts at the earliest offset (kafka.auto_offset_reset)"
    assert next_position(None, 4, 10, "latest")[:2] == (10, "latest")


def test_a_committed_offset_the_broker_no_longer_holds_resets_like_the_consumer_would() -> None:
    offset, starts_from, note = next_position(2, 5, 10, "earliest")
    assert (offset, starts_from) == (5, "earliest")
    assert note is not None
    assert "before the earliest offset held (5; removed by retention)" in note
    offset, _, note = next_position(12, 5, 10, "latest")
    assert offset == 10
    assert note is not None
    assert "past the end offset (10)" in note


def group(*members: GroupMember, state: str = "stable") -> GroupDescription:
    return GroupDescription("g", state, members, "kafka-1:9092")


def test_lag_in_seconds_is_the_age_of_the_next_unconsumed_record() -> None:
    owner = GroupMember("pod-a", "/10.0.0.5", "pod-a-1", (("t", 0),))
    row = partition_lag(("t", 0), 7, (0, 10), Position(7, "committed", None), NextRecord(7, NOW_MS - 185_250),
                        group(owner), NOW_MS, 15)
    assert (row.lag_messages, row.lag_s, row.next_record_ms, row.member) == (3, 185.25, NOW_MS - 185_250, "pod-a")


def test_no_lag_means_zero_seconds_whatever_was_read() -> None:
    row = partition_lag(("t", 0), 10, (0, 10), Position(10, "committed", None), None, group(), NOW_MS, 15)
    assert (row.lag_messages, row.lag_s, row.next_record_ms, row.member, row.note) == (0, 0.0, None, None, None)


def test_a_next_record_that_was_not_read_leaves_the_age_unknown_and_says_why() -> None:
    row = partition_lag(("t", 0), 3, (0, 10), Position(3, "committed", None), None, group(), NOW_MS, 15)
    assert row.lag_s is None
    assert row.note == "the next record was not read within 15s"
    stampless = partition_lag(("t", 0), None, (0, 10), next_position(None, 0, 10, "earliest"), NextRecord(0, None),
                              group(), NOW_MS, 15)
    assert stampless.lag_s is None
    assert stampless.note is not None
    assert stampless.note.endswith("the record at offset 0 carries no timestamp")


def test_a_record_stamped_in_the_future_counts_as_no_age() -> None:
    row = partition_lag(("t", 0), 3, (0, 10), Position(3, "committed", None), NextRecord(3, NOW_MS + 5000), group(),
                        NOW_MS, 15)
    assert row.lag_s == 0.0


def test_a_moving_or_loading_coordinator_is_asked_again_and_named_when_it_never_answers() -> None:
    moving = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "ConsumerGroupDescribe: "))
    assert coordinator_busy(moving)
    assert coordinator_busy(KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)))
    assert not coordinator_busy(KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)))
    assert error_name_and_text(moving) == "NOT_COORDINATOR: ConsumerGroupDescribe"
    assert error_name_and_text(KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "denied"))) == \
        "GROUP_AUTHORIZATION_FAILED: denied"


class FakeInspector:
    """Answers ``next_records`` from a table and remembers each pass (one assignment per partition)."""

    def __init__(self) -> None:
        self.passes: list[dict[tuple[str, int], tuple[int, int]]] = []

    def next_records(self, spans: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], NextRecord]:
        self.passes.append(dict(spans))
        return {key: NextRecord(first, 1000 + first) for key, (first, _end) in spans.items()}


def test_groups_at_the_same_offsets_share_one_pass_and_different_offsets_take_one_more() -> None:
    inspector = FakeInspector()
    found = read_next_records(inspector, {  # type: ignore[arg-type]
        "a": {("t", 0): (3, 10), ("t", 1): (5, 5)},
        "b": {("t", 0): (3, 10), ("t", 1): (2, 5)},
    })
    assert inspector.passes == [{("t", 0): (3, 10), ("t", 1): (2, 5)}]  # t[1] of group a has nothing to read
    assert found == {(("t", 0), 3): NextRecord(3, 1003), (("t", 1), 2): NextRecord(2, 1002)}

    inspector = FakeInspector()
    found = read_next_records(inspector, {"a": {("t", 0): (3, 10)}, "b": {("t", 0): (8, 10)}})  # type: ignore[arg-type]
    assert inspector.passes == [{("t", 0): (3, 10)}, {("t", 0): (8, 10)}]
    assert set(found) == {(("t", 0), 3), (("t", 0), 8)}


def lag_row(partition: int, committed: int | None, end: int, lag_s: float | None, member: str | None,
            note: str | None = None) -> PartitionLag:
    next_offset = committed if committed is not None else 0
    return PartitionLag(topic="usage-events", partition=partition, committed=committed, earliest_offset=0,
                        end_offset=end, next_offset=next_offset,
                        starts_from="committed" if committed is not None else "earliest",
                        lag_messages=end - next_offset, lag_s=lag_s,
                        next_record_ms=None if lag_s in (None, 0) else NOW_MS - int((lag_s or 0) * 1000),
                        member=member, note=note)


def test_a_destination_lags_by_the_sum_of_messages_and_the_oldest_record() -> None:
    rows = (lag_row(0, 10, 12, 30.0, None), lag_row(1, 5, 5, 0.0, None), lag_row(2, 1, 4, 95.5, None))
    destination = DestinationStatus("freshsuccess", group(), rows)
    assert (destination.lag_messages, destination.lag_s) == (5, 95.5)
    assert DestinationStatus("freshsuccess", group(), (lag_row(0, 1, 4, None, None),)).lag_s is None
    assert DestinationStatus("freshsuccess", group(), ()).lag_s == 0.0


# --------------------------------------------------------------------------------------- screen, JSON


def example_status() -> Status:
    pod_a = GroupMember("usage-consumer-7d9f-abcde", "/10.1.4.17", "m-1",
                        (("usage-events", 0), ("usage-events", 1), ("usage-events", 2)))
    pod_b = GroupMember("usage-consumer-7d9f-fghij", "/10.1.5.3", "m-2", (("usage-events", 3),))
    freshsuccess = DestinationStatus("freshsuccess", GroupDescription("usage-consumer.freshsuccess", "stable",
                                                                      (pod_a, pod_b), "kafka-1:9092"), (
        lag_row(0, 1200, 1200, 0.0, pod_a.client_id), lag_row(1, 1190, 1214, 185.25, pod_a.client_id),
        lag_row(2, 1187, 1187, 0.0, pod_a.client_id), lag_row(3, 1201, 1203, 2.5, pod_b.client_id)))
    freshpaint = DestinationStatus("freshpaint", GroupDescription("usage-consumer.freshpaint", "empty", (),
                                                                  "kafka-1:9092"), (
        lag_row(0, 1200, 1200, 0.0, None), lag_row(1, 1214, 1214, 0.0, None), lag_row(2, 1187, 1187, 0.0, None),
        lag_row(3, None, 1203, 7322.0, None,
                "no committed offset: starts at the earliest offset (kafka.auto_offset_reset)")))
    letters = DeadLetterCounts("usage-events.dlq", 3600, NOW_MS - 3_600_000, {
        "freshpaint": Counter({"undecodable": 1}),
        "freshsuccess": Counter({"missing_required_field": 3, "undecodable": 1})})
    return Status(NOW_MS, "kafka-1:9092", (freshsuccess, freshpaint), letters)


SCREEN = """\
usage-consumer status at 2026-01-01T12:00:00.000Z, Kafka kafka-1:9092

freshsuccess: group usage-consumer.freshsuccess, stable, 2 members; lag 26 messages, 3m05s
  MEMBER                     HOST        ASSIGNED
  usage-consumer-7d9f-abcde  /10.1.4.17  usage-events[0-2]
  usage-consumer-7d9f-fghij  /10.1.5.3   usage-events[3]
  PARTITION        COMMITTED  END   LAG  LAG_S  MEMBER                     NOTE
  usage-events[0]  1200       1200  0    0s     usage-consumer-7d9f-abcde
  usage-events[1]  1190       1214  24   3m05s  usage-consumer-7d9f-abcde
  usage-events[2]  1187       1187  0    0s     usage-consumer-7d9f-abcde
  usage-events[3]  1201       1203  2    2s     usage-consumer-7d9f-fghij

freshpaint: group usage-consumer.freshpaint, empty, no member; lag 1203 messages, 2h02m
  PARTITION        COMMITTED  END   LAG   LAG_S  MEMBER  NOTE
  usage-events[0]  1200       1200  0     0s     -
  usage-events[1]  1214       1214  0     0s     -
  usage-events[2]  1187       1187  0     0s     -
  usage-events[3]  -          1203  1203  2h02m  -       no committed offset: starts at the earliest offset \
(kafka.auto_offset_reset)

dead letters in usage-events.dlq over the last 1h (since 2026-01-01T11:00:00.000Z): 5
  REASON                  FRESHSUCCESS  FRESHPAINT  TOTAL
  missing_required_field  3             0           3
  undecodable             1             1           2
"""


def test_the_screen_shows_groups_members_partitions_and_dead_letters() -> None:
    assert render_screen(example_status()) == SCREEN


def test_the_screen_says_when_a_group_does_not_exist_or_no_letter_was_parked() -> None:
    status = example_status()
    dead = DestinationStatus("freshpaint", GroupDescription("usage-consumer.freshpaint", "dead"), ())
    unknown = DestinationStatus("freshsuccess", GroupDescription("usage-consumer.freshsuccess", "unknown",
                                                                 error="Broker: Coordinator not available"), ())
    none = DeadLetterCounts("usage-events.dlq", 900, NOW_MS - 900_000)
    missing = DeadLetterCounts("usage-events.dlq", 900, NOW_MS - 900_000, error="topic 'x' does not exist")
    screen = render_screen(Status(NOW_MS, status.bootstrap_servers, (unknown, dead), none), watch_s=5)
    assert screen.splitlines()[0].endswith("(every 5s; Ctrl-C stops)")
    assert ("freshpaint: group usage-consumer.freshpaint, no such group (no member, nothing committed), no member; "
            "lag 0 messages, 0s") in screen
    assert "freshsuccess: group usage-consumer.freshsuccess, state unknown (Broker: Coordinator not available)" \
        in screen
    assert screen.endswith("over the last 15m (since 2026-01-01T11:45:00.000Z): none\n")
    assert render_screen(Status(NOW_MS, "k", (), missing)).endswith(": not read: topic 'x' does not exist\n")


def test_the_json_holds_the_same_facts_under_stable_keys() -> None:
    document = json.loads(render_json(example_status()))
    assert list(document) == ["at_ms", "at", "bootstrap_servers", "destinations", "dead_letters"]
    assert document["at"] == "2026-01-01T12:00:00.000Z"
    fs = document["destinations"][0]
    assert list(fs) == ["destination", "group", "state", "coordinator", "error", "members", "lag_messages", "lag_s",
                        "partitions"]
    assert (fs["destination"], fs["group"], fs["state"], fs["lag_messages"], fs["lag_s"]) == (
        "freshsuccess", "usage-consumer.freshsuccess", "stable", 26, 185.25)
    assert fs["members"][1] == {"client_id": "usage-consumer-7d9f-fghij", "host": "/10.1.5.3", "member_id": "m-2",
                                "assigned": [{"topic": "usage-events", "partition": 3}]}
    assert fs["partitions"][1] == {
        "topic": "usage-events", "partition": 1, "committed": 1190, "earliest_offset": 0, "end_offset": 1214,
        "next_offset": 1190, "starts_from": "committed", "lag_messages": 24, "lag_s": 185.25,
        "next_record_ms": NOW_MS - 185_250, "member": "usage-consumer-7d9f-abcde", "note": None}
    assert document["destinations"][1]["partitions"][3]["committed"] is None
    assert document["dead_letters"] == {
        "topic": "usage-events.dlq", "window_s": 3600, "since_ms": NOW_MS - 3_600_000,
        "since": "2026-01-01T11:00:00.000Z", "total": 5,
        "by_reason": {"missing_required_field": 3, "undecodable": 2},
        "by_destination": {"freshpaint": {"total": 1, "by_reason": {"undecodable": 1}},
                           "freshsuccess": {"total": 4, "by_reason": {"missing_required_field": 3,
                                                                       "undecodable": 1}}},
        "error": None}
    compact = render_json(example_status(), compact=True)
    assert compact.count("\n") == 1
    assert json.loads(compact) == document


@pytest.mark.parametrize(("numbers", "text"), [
    ([], ""), ([4], "4"), ([0, 1, 2, 3], "0-3"), ([0, 1, 2, 3, 7], "0-3,7"), ([1, 3, 4, 6], "1,3-4,6"),
])
def test_partition_runs_are_shortened(numbers: list[int], text: str) -> None:
    assert runs(numbers) == text


# --------------------------------------------------------------------------------------------- watch


class Ticks:
    """A ``sleep`` that lets ``count`` refreshes happen, then is interrupted like Ctrl-C."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waited: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)
        if len(self.waited) > self.count:
            raise KeyboardInterrupt


def test_watch_refreshes_every_interval_until_ctrl_c_which_exits_0() -> None:
    out = io.StringIO()
    screens = iter(["second\n", "third\n"])
    ticks = Ticks(2)
    assert watch("first\n", lambda: next(screens), out, interval_s=2.5, between="\n", sleep=ticks) == 0
    assert out.getvalue() == "first\n\nsecond\n\nthird\n"
    assert ticks.waited == [2.5, 2.5, 2.5]


def test_watch_on_a_terminal_replaces_the_screen() -> None:
    out = io.StringIO()
    assert watch("first\n", lambda: "next\n", out, interval_s=1, between=CLEAR_SCREEN, sleep=Ticks(1)) == 0
    assert out.getvalue() == f"{CLEAR_SCREEN}first\n{CLEAR_SCREEN}next\n"


def test_ctrl_c_during_a_refresh_also_exits_0() -> None:
    def interrupted() -> str:
        raise KeyboardInterrupt

    assert watch("first\n", interrupted, io.StringIO(), interval_s=1, sleep=lambda _s: None) == 0


# ------------------------------------------------------------------------------------------ the CLI


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config_file(tmp_path: Path, **kafka: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port()}", **kafka}}))
    return path


@pytest.mark.parametrize("extra", [[], ["--json"], ["--watch", "1"]])
def test_kafka_not_answering_exits_3_with_one_line_naming_the_servers_and_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-secret-51d0")
    config = config_file(tmp_path, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                         sasl_username="status")
    servers = json.loads(config.read_text())["kafka"]["bootstrap_servers"]
    assert main(["status", "--config", str(config), "--timeout-s", "1", *extra]) == 3
    out = capsys.readouterr()
    assert out.out == ""
    [line] = out.err.splitlines()
    assert line.startswith(f"usage-consumer: error: Kafka at {servers} did not answer within 1s")
    assert "sasl-secret-51d0" not in out.err


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "soon"], "--window 'soon': expected a duration like 90s, 15m, 1h"),
    (["--window", "0m"], "--window '0m': the duration must be longer than zero"),
    (["--watch", "0"], "--watch takes a positive number of seconds"),
    (["--timeout-s", "-1"], "--timeout-s must be positive"),
])
def test_bad_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                      message: str) -> None:
    assert main(["status", "--config", str(config_file(tmp_path)), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unparsable_watch_interval_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--watch", "often"])
    assert exit_info.value.code == 2
    assert "--watch: invalid float value: 'often'" in capsys.readouterr().err
