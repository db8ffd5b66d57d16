"""Dead-letter replay as an operator follows it (README "Operating it", docs/runbook.md), on the real broker.

Letters of two reasons are parked for each destination; the operator fixes and replays one reason, then the
other, replays the first again, then everything from the beginning. Every letter is delivered exactly once
where it was parked, and nothing is stranded. A replay killed with a request in flight re-sends at most that
request. Producing letters back to their source is refused only when some destination never parked the
record, judged over the whole dead-letter topic, not the window a replay reads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumer.config import default_mapping_file
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import make_event
from tests.helpers import wait_for
from tests.integration.test_tools_dlq import cli

pytestmark = pytest.mark.usefixtures("fresh_emulators", "tool_environment")

DESTINATIONS = ("freshsuccess", "freshpaint")
SMALL_EVENT_BYTES = 1500


def run_consumer(stack: DevStack, topic: str, dlq: str, *, destinations: list[str] | None = None,
                 decoding: dict[str, Any] | None = None) -> None:
    """Run the service over the topic until each of its lanes committed to the end."""
    settings = stack.settings(topic, dlq, decoding=decoding or {})
    end = stack.end_offsets(topic)
    with RunningService(settings, destinations=destinations):
        for name in destinations or list(DESTINATIONS):
            group = settings.group_for(name)

            def committed_to_end(group: str = group) -> bool:
                return stack.committed(group, topic) == end

            wait_for(committed_to_end, timeout_s=90, what=f"{name} to commit the topic")


def fixed_mapping(tmp_path: Path) -> Path:
    """The default mapping, fixed for events with a blank user_id (they count as 'anonymous')."""
    text = default_mapping_file().read_text()
    for line in ("    userId: {field: user_id}\n", "    distinct_id: {field: user_id}\n"):
        assert text.count(line) == 1
        text = text.replace(line, line.replace("{field: user_id}", '{field: user_id, default: "anonymous"}'))
    path = tmp_path / "fixed-mapping.yaml"
    path.write_text(text)
    return path


def test_two_reasons_fixed_one_after_the_other_then_everything_again_delivers_each_letter_once(
        stack: DevStack, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    rng = random.Random(18)
    blank_user = [make_event(rng, i, "feature_used") | {"user_id": ""} for i in range(3)]        # reason A
    too_big = [make_event(rng, 10 + i, "feature_used") | {"properties": {"pad": "x" * 2000}}     # reason B
               for i in range(3)]
    valid = [make_event(rng, 20 + i, "session_synced") for i in range(2)]
    undecodable = b"\x00" + schema_id.to_bytes(4, "big") + b"\xff\xff"                           # never fixable
    values = []
    for a, b in zip(blank_user, too_big, strict=True):
        values += [(b"a", stack.encode(schema_id, a)), (b"b", stack.encode(schema_id, b))]
    values += [(b"v", stack.encode(schema_id, e)) for e in valid] + [(b"u", undecodable)]
    stack.produce(topic, values, partition=0)
    run_consumer(stack, topic, dlq, decoding={"max_event_bytes": SMALL_EVENT_BYTES})
    wait_for(lambda: sum(stack.end_offsets(dlq).values()) == 14, timeout_s=30, what="14 dead letters")
    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.reset()

    mapping = str(fixed_mapping(tmp_path))
    a_fixed = str(stack.config_file(topic, dlq, mapping={"file": mapping},
                                    decoding={"max_event_bytes": SMALL_EVENT_BYTES}))
    both_fixed = str(stack.config_file(topic, dlq, mapping={"file": mapping}))

    def replay(config: str, *args: str) -> tuple[int, str]:
        code, out, err = cli(capsys, "dlq", "replay", "--config", config, "--to-destinations", *args)
        assert "Traceback" not in err
        return code, out

    code, out = replay(a_fixed, "--reason", "missing_required_field")
    assert code == 0, out
    assert "delivered to the destination: 6" in out
    code, out = replay(both_fixed, "--reason", "oversized")
    assert code == 0, out
    assert "delivered to the destination: 6" in out
    code, out = replay(both_fixed, "--reason", "missing_required_field")
    assert code == 0, out
    assert "already replayed by an earlier replay (not sent again): 6" in out
    assert "delivered to the destination" not in out
    code, out = replay(both_fixed, "--from-beginning")
    assert code == 1, out  # the undecodable record failed again
    assert "failed again and parked anew (undecodable): 2" in out
    assert "already replayed by an earlier replay (not sent again): 12" in out

    # Exactly once where each was parked: Freshpaint by $insert_id (the event_id), Freshsuccess by createdAt.
    fixable = blank_user + too_big
    fp = Counter(e["properties"]["$insert_id"] for e in stack.emulators.freshpaint.events())
    assert fp == Counter(e["event_id"] for e in fixable)
    fs = Counter(e["createdAt"] for e in stack.emulators.freshsuccess.events())
    assert fs == Counter(e["occurred_at"] for e in fixable)

    # Nothing stranded: what is left to look at is what was never fixable.
    code, out, _ = cli(capsys, "dlq", "inspect", "--config", both_fixed, "--json")
    assert code == 0
    document = json.loads(out)
    assert [(d["reason"], d["source_offset"]) for d in document["dead_letters"]] == [("undecodable", 8)] * 2
    assert document["summary"]["already_replayed_not_shown"] == 14


def test_a_replay_killed_with_a_request_in_flight_resends_at_most_that_request(
        stack: DevStack, tmp_path: Path) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    rng = random.Random(19)
    events = [make_event(rng, i, "module_ended") | {"duration_ms": None} for i in range(12)]  # Freshsuccess parks
    stack.produce(topic, [(b"k", stack.encode(schema_id, e)) for e in events], partition=0)
    run_consumer(stack, topic, dlq, destinations=["freshsuccess"])
    ledger = f"{dlq}.replayed"
    run_size = 4
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(default_mapping_file().read_text().replace(
        "timeSpent: {field: duration_ms}", "timeSpent: {field: duration_ms, default: 0}"))
    config = stack.config_file(topic, dlq, mapping={"file": str(mapping)}, batching={"max_events": run_size},
                               freshpaint={"enabled": False})
    command = [sys.executable, "-m", "consumer.cli", "dlq", "replay", "--config", str(config), "--to-destinations"]
    env = {**os.environ, **DevStack.secrets_env()}
    emulator = stack.emulators.freshsuccess
    emulator.reset()
    emulator.inject(Fault(latency_s=4.0))  # every request takes 4 s: the second is surely in flight below

    log = tmp_path / "replay.log"
    with log.open("w") as output:
        replay = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(stack.end_offsets(ledger).values()) >= run_size or replay.poll() is not None,
                 timeout_s=60, what="the first run to be accepted and recorded in the ledger")
        assert replay.poll() is None, log.read_text()[-3000:]
        replay.send_signal(signal.SIGKILL)
    finally:
        replay.kill()
        replay.wait(timeout=30)
    assert replay.returncode == -signal.SIGKILL
    emulator.clear_faults()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    delivered = Counter(e["createdAt"] for e in emulator.events())
    assert set(delivered) == {e["occurred_at"] for e in events}, "every parked event is delivered"
    repeats = sum(delivered.values()) - len(delivered)
    assert repeats <= run_size, f"{repeats} sent twice: more than the one request that was in flight"
    print(f"repeats after the kill: {repeats} (one request of {run_size} was in flight)")


def test_producing_back_is_refused_only_for_records_a_destination_never_parked_over_the_whole_topic(
        stack: DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    rng = random.Random(20)
    both = b"\x00" + schema_id.to_bytes(4, "big") + b"\xff\xff"                              # both lanes park it
    one = stack.encode(schema_id, make_event(rng, 0, "module_ended") | {"duration_ms": None})  # Freshsuccess only
    stack.produce(topic, [(b"both", both), (b"one", one)], partition=0)
    # Freshpaint parks first; later Freshsuccess parks both records: a replay --since after the first letter
    # reads a window that holds Freshsuccess's letters only.
    run_consumer(stack, topic, dlq, destinations=["freshpaint"])
    since_ms = int(time.time() * 1000)
    wait_for(lambda: int(time.time() * 1000) > since_ms, timeout_s=1, what="the clock to pass the first letter")
    run_consumer(stack, topic, dlq, destinations=["freshsuccess"])
    wait_for(lambda: sum(stack.end_offsets(dlq).values()) == 3, timeout_s=30, what="three dead letters")
    config = str(stack.config_file(topic, dlq))
    group = f"replay-{uuid.uuid4().hex[:8]}"
    before = stack.end_offsets(topic)[0]

    code, out, err = cli(capsys, "dlq", "replay", "--config", config, "--group", group, "--since", str(since_ms),
                         "--reason", "undecodable")
    assert code == 0, err
    assert "produced to the source topic: 1" in out
    assert stack.end_offsets(topic)[0] == before + 1

    code, _, err = cli(capsys, "dlq", "replay", "--config", config, "--group", group, "--since", str(since_ms),
                       "--reason", "missing_required_field")
    assert code == 3
    assert "parked by some destinations only" in err
    assert "parked by freshsuccess and never by freshpaint" in err
    assert stack.end_offsets(topic)[0] == before + 1
