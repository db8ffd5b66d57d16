"""``usage-consumer status`` against the real broker, a running service and the destination emulators.

The scenario fixes every fact ``status`` reports, so each can be checked exactly: the Freshsuccess group's
committed offset is committed by the test (no Freshsuccess lane runs), the records it has not consumed carry
explicit old Kafka timestamps (so their lag in seconds has a known lower bound), the Freshpaint lane runs
with a known ``client.id`` (its membership and assignment are the broker's), and the dead-letter topic holds
one letter parked now by that lane plus hand-made ones stamped hours ago (outside a 1h window, inside 4h).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.cli import main
from consumer.config import Settings, load_settings
from consumer.kafka.groups import GroupInspector
from consumer.testing.devstack import DevStack, RunningService, retrying
from consumer.testing.eventgen import one_of_each
from tests.helpers import wait_for

MEMBER = "status-test-member"
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Placed:
    """Where the scenario put things, and when Kafka stamped the records ``status`` must date."""

    topic: str
    dlq: str
    config: Path
    settings: Settings
    fs_next_ms: int
    """Timestamp of partition 0's offset 3: Freshsuccess committed 3, so it is its next unconsumed record."""
    p1_first_ms: int
    """Timestamp of partition 1's offset 0: Freshsuccess committed nothing there (auto.offset.reset=earliest)."""


pytestmark = pytest.mark.usefixtures("fresh_emulators", "tool_environment")

def produce_at(stack: DevStack, topic: str, partition: int, value: bytes, timestamp_ms: int,
               headers: list[tuple[str, bytes]] | None = None) -> None:
    """One record with an explicit Kafka timestamp, acknowledged before this returns."""
    stack.producer.produce(topic, key=b"k", value=value, partition=partition, timestamp=timestamp_ms,
                           headers=headers or [])
    assert stack.producer.flush(30) == 0


def hand_made_letter(stack: DevStack, dlq: str, source: str, *, reason: str, destination: str, at_ms: int) -> None:
    """A dead letter as the consumer writes them, parked (and stamped by Kafka) at ``at_ms``."""
    headers = [("dlq.reason", reason.encode()), ("dlq.destination", destination.encode()),
               ("dlq.source_topic", source.encode()), ("dlq.source_partition", b"0"),
               ("dlq.source_offset", b"0"), ("dlq.failed_at_ms", str(at_ms).encode())]
    produce_at(stack, dlq, 0, b"old", at_ms, headers)


def commit(stack: DevStack, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit for ``group`` directly, as its lane would have (the test then knows the committed offset)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        retrying(lambda: consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                                         asynchronous=False))
    finally:
        consumer.close()


def status(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> dict[str, Any]:
    code = main(["status", "--config", str(config), "--json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()  # a running service logs to the same stdout: the document is one block
    first = lines.index("{")
    document: dict[str, Any] = json.loads("\n".join(lines[first:lines.index("}", first) + 1]))
    return document


def of(document: dict[str, Any], destination: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in document["destinations"] if d["destination"] == destination)
    return found


def row(destination: dict[str, Any], topic: str, partition: int) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in destination["partitions"]
                                 if (p["topic"], p["partition"]) == (topic, partition))
    return found


def place(stack: DevStack) -> Placed:
    topic, dlq = stack.topics(partitions=2, prefix="status")
    schema_id = stack.register(topic)
    events = [stack.encode(schema_id, e) for e in one_of_each(seed=47)]
    now_ms = int(time.time() * 1000)
    fs_next_ms, p1_first_ms = now_ms - 600_000, now_ms - 1_200_000
    for offset, stamp in enumerate((now_ms - 900_000, now_ms - 800_000, now_ms - 700_000, fs_next_ms,
                                    now_ms - 300_000)):
        produce_at(stack, topic, 0, events[offset], stamp)
    produce_at(stack, topic, 1, events[5], p1_first_ms)
    produce_at(stack, topic, 1, b"\x00\x00\x00\x00\x01not avro", now_ms)  # Freshpaint parks it: undecodable
    config = stack.config_file(topic, dlq, kafka={"client_properties": {"client.id": MEMBER}})
    settings = load_settings(config, environ=DevStack.secrets_env())
    commit(stack, settings.group_for("freshsuccess"), topic, {0: 3})
    return Placed(topic, dlq, config, settings, fs_next_ms, p1_first_ms)


def test_status_shows_offsets_lag_members_and_dead_letters_in_the_window(
    stack: DevStack, capsys: pytest.CaptureFixture[str], kafka_admin: Any
) -> None:
    placed = place(stack)
    topic = placed.topic
    hand_made_letter(stack, placed.dlq, topic, reason="mapping_failed", destination="freshsuccess",
                     at_ms=int(time.time() * 1000) - 3 * HOUR_MS)

    with RunningService(placed.settings, destinations=["freshpaint"]):
        def freshpaint_caught_up() -> dict[str, Any] | None:
            document = status(capsys, placed.config)
            fp = of(document, "freshpaint")
            members = fp["members"]
            settled = (fp["state"] == "stable" and fp["lag_messages"] == 0 and len(members) == 1
                       and len(members[0]["assigned"]) == 2 and document["dead_letters"]["total"] == 1)
            return document if settled else None

        wait_for(freshpaint_caught_up, timeout_s=90, interval_s=0.3, what="the Freshpaint lane to catch up")
        # After the lane's own letter: a letter stamped 2h ago lands later in the topic than a newer one.
        hand_made_letter(stack, placed.dlq, topic, reason="oversized", destination="freshpaint",
                         at_ms=int(time.time() * 1000) - 2 * HOUR_MS)
        before_ms = int(time.time() * 1000)
        document = status(capsys, placed.config)
        member_id = of(document, "freshpaint")["members"][0]["member_id"]
        for _ in range(3):  # status never joins nor commits: the live member stays, the idle group stays empty
            again = status(capsys, placed.config)
            assert [m["member_id"] for m in of(again, "freshpaint")["members"]] == [member_id]
            assert of(again, "freshsuccess")["members"] == []

    assert document["bootstrap_servers"] == stack.bootstrap
    assert document["at_ms"] >= before_ms

    fp = of(document, "freshpaint")
    assert fp["group"] == placed.settings.group_for("freshpaint")
    [member] = fp["members"]
    assert member["client_id"] == MEMBER
    assert member["host"].endswith("127.0.0.1")
    assert member["assigned"] == [{"topic": topic, "partition": 0}, {"topic": topic, "partition": 1}]
    assert (fp["lag_messages"], fp["lag_s"]) == (0, 0)
    for partition, end in ((0, 5), (1, 2)):
        assert row(fp, topic, partition) == {
            "topic": topic, "partition": partition, "committed": end, "earliest_offset": 0, "end_offset": end,
            "next_offset": end, "starts_from": "committed", "lag_messages": 0, "lag_s": 0,
            "next_record_ms": None, "member": MEMBER, "note": None}

    fs = of(document, "freshsuccess")
    assert fs["group"] == placed.settings.group_for("freshsuccess")
    assert fs["state"] == "empty"  # offsets committed, nobody consuming
    assert fs["members"] == []
    p0 = row(fs, topic, 0)
    assert (p0["committed"], p0["end_offset"], p0["next_offset"], p0["starts_from"]) == (3, 5, 3, "committed")
    assert p0["lag_messages"] == 2
    assert p0["next_record_ms"] == placed.fs_next_ms
    assert p0["lag_s"] >= (before_ms - placed.fs_next_ms) / 1000 >= 600
    assert p0["lag_s"] < 600 + 300  # it is that record's age, not the oldest record's (900 s)
    assert p0["member"] is None
    p1 = row(fs, topic, 1)
    assert (p1["committed"], p1["end_offset"], p1["next_offset"], p1["starts_from"]) == (None, 2, 0, "earliest")
    assert "no committed offset" in p1["note"]
    assert p1["lag_messages"] == 2
    assert p1["next_record_ms"] == placed.p1_first_ms
    assert p1["lag_s"] >= (before_ms - placed.p1_first_ms) / 1000 >= 1200
    assert fs["lag_messages"] == 4
    assert fs["lag_s"] == max(p0["lag_s"], p1["lag_s"])

    letters = document["dead_letters"]
    assert letters["topic"] == placed.dlq
    assert letters["window_s"] == 3600
    assert letters["total"] == 1
    assert letters["by_reason"] == {"undecodable": 1}
    assert letters["by_destination"] == {"freshpaint": {"total": 1, "by_reason": {"undecodable": 1}}}

    wider = status(capsys, placed.config, "--window", "150m")["dead_letters"]
    assert wider["by_reason"] == {"undecodable": 1, "oversized": 1}
    widest = status(capsys, placed.config, "--window", "4h")["dead_letters"]
    assert widest["total"] == 3
    assert widest["by_destination"] == {
        "freshpaint": {"total": 2, "by_reason": {"undecodable": 1, "oversized": 1}},
        "freshsuccess": {"total": 1, "by_reason": {"mapping_failed": 1}}}

    # The throwaway consumers left no group behind (none was ever joined or committed to).
    listed = kafka_admin.list_consumer_groups(request_timeout=30).result(timeout=30)
    assert [g.group_id for g in listed.valid if ".status-" in g.group_id] == []


def test_the_screen_shows_the_same_facts(stack: DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    placed = place(stack)
    code = main(["status", "--config", str(placed.config)])
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    assert lines[0].startswith("usage-consumer status at ")
    assert lines[0].endswith(f"Kafka {stack.bootstrap}")
    fs_title = next(line for line in lines if line.startswith("freshsuccess: "))
    assert fs_title.startswith(f"freshsuccess: group {placed.settings.group_for('freshsuccess')}, empty, no member; "
                               "lag 4 messages, 20m")
    fs_rows = lines[lines.index(fs_title) + 1:]
    header = fs_rows[0].split()
    assert header == ["PARTITION", "COMMITTED", "END", "LAG", "LAG_S", "MEMBER", "NOTE"]
    p0, p1 = fs_rows[1].split(), fs_rows[2].split()
    assert p0[:4] == [f"{placed.topic}[0]", "3", "5", "2"]
    assert p0[4].startswith("10m")  # 600 s old, give or take the seconds the test took
    assert p1[:4] == [f"{placed.topic}[1]", "-", "2", "2"]
    assert " ".join(p1[6:]).startswith("no committed offset: starts at the earliest offset")
    fp_title = next(line for line in lines if line.startswith("freshpaint: "))
    assert "no such group (no member, nothing committed)" in fp_title
    assert f"dead letters in {placed.dlq} over the last 1h" in out.out


def test_an_idle_offset_reader_never_joins_the_group(stack: DevStack) -> None:
    """The committed-offset reader carries the group's id and stays open across ``--watch`` refreshes: it must
    not show up as a member (which would rebalance a live group)."""
    placed = place(stack)
    group = placed.settings.group_for("freshsuccess")
    with GroupInspector(placed.settings, timeout_s=15) as inspector:
        keys = inspector.partitions(placed.settings.topics())
        assert keys == [(placed.topic, 0), (placed.topic, 1)]
        assert inspector.partitions([f"^{re.escape(placed.topic)}$", placed.topic]) == keys  # a pattern, once each
        assert inspector.committed(group, keys) == {(placed.topic, 0): 3}
        for _ in range(3):
            described = inspector.describe([group])[group]
            assert (described.state, described.members) == ("empty", ())
