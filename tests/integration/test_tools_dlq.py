"""``usage-consumer dlq inspect`` and ``dlq replay`` against the real broker and the destination emulators.

A scenario runs the consumer over four records until both lanes have committed everything: a valid
feature event, a module_ended event without a duration (Freshsuccess parks it: missing_required_field;
Freshpaint delivers it), an undecodable record (both lanes park it) and a valid session event. The tests
then inspect and replay those dead letters, each replay with its own progress group.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.config import default_mapping_file
from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import one_of_each
from tests.helpers import wait_for


@dataclass(frozen=True)
class Scenario:
    topic: str
    dlq: str
    config: Path
    module_ended: dict[str, Any]
    bad_value: bytes


pytestmark = pytest.mark.usefixtures("fresh_emulators", "tool_environment")

def park(stack: DevStack) -> Scenario:
    """Run the consumer over the four records until both lanes committed to the end; return where things are."""
    topic, dlq = stack.topics(partitions=1)
    schema_id = stack.register(topic)
    kinds = {e["event_type"]: e for e in one_of_each(seed=31)}
    module_ended = {**kinds["module_ended"], "duration_ms": None}
    bad = b"\x00\x00\x00\x00\x01not avro"  # a known framing, garbage after it
    stack.produce(topic, [(b"a", stack.encode(schema_id, kinds["feature_used"])),
                          (b"b", stack.encode(schema_id, module_ended)),
                          (b"c", bad),
                          (b"d", stack.encode(schema_id, kinds["session_synced"]))], partition=0)
    config = stack.config_file(topic, dlq)
    settings = stack.settings(topic, dlq)
    end = stack.end_offsets(topic)
    with RunningService(settings):
        for name in ("freshsuccess", "freshpaint"):
            group = settings.group_for(name)

            def committed_to_end(group: str = group) -> bool:
                return stack.committed(group, topic) == end

            wait_for(committed_to_end, timeout_s=90, what=f"{name} to commit")
    wait_for(lambda: sum(stack.end_offsets(dlq).values()) == 3, timeout_s=30, what="three dead letters")
    return Scenario(topic, dlq, config, module_ended, bad)


@pytest.fixture(scope="module")
def scenario(stack: DevStack) -> Scenario:
    return park(stack)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def own_ledger(scenario: Scenario) -> dict[str, Any]:
    """A replay ledger of the test's own: the tests share the scenario's dead letters, not what they replayed."""
    return {"replay_ledger_topic": f"{scenario.dlq}.replayed-{uuid.uuid4().hex[:8]}"}


def plain_config(stack: DevStack, scenario: Scenario) -> Path:
    return stack.config_file(scenario.topic, scenario.dlq, kafka=own_ledger(scenario))


def fixed_config(stack: DevStack, scenario: Scenario, tmp_path: Path) -> Path:
    """The scenario's config with the mapping fixed: a module_ended event without a duration spent 0 ms."""
    mapping = tmp_path / "mapping.yaml"
    text = default_mapping_file().read_text()
    assert text.count("timeSpent: {field: duration_ms}") == 1
    mapping.write_text(text.replace("timeSpent: {field: duration_ms}", "timeSpent: {field: duration_ms, default: 0}"))
    return stack.config_file(scenario.topic, scenario.dlq, mapping={"file": str(mapping)}, kafka=own_ledger(scenario))


def assert_progress_only_past(stack: DevStack, group: str, dlq: str, finished: set[tuple[str, str]]) -> int:
    """The group's progress passes only letters whose (reason, destination) is in ``finished``; returns it."""
    committed = stack.committed(group, dlq).get(0, 0)
    for letter in stack.read_all(dlq):
        headers = dict(letter.headers())
        if letter.offset() < committed:
            assert (headers["dlq.reason"].decode(), headers["dlq.destination"].decode()) in finished, \
                f"progress {committed} passed {letter.offset()} ({headers['dlq.reason']!r}), which was not replayed"
    return committed


def test_inspect_lists_reason_destination_source_time_and_a_decoded_preview(
    stack: DevStack, scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "dlq", "inspect", "--config", str(scenario.config), "--json")
    assert code == 0
    document = json.loads(out)
    letters = document["dead_letters"]
    assert sorted((d["destination"], d["reason"]) for d in letters) == [
        ("freshpaint", "undecodable"), ("freshsuccess", "missing_required_field"), ("freshsuccess", "undecodable")]
    assert document["summary"]["by_reason"] == {"undecodable": 2, "missing_required_field": 1}
    for letter in letters:
        assert letter["topic"] == scenario.dlq
        assert letter["source_topic"] == scenario.topic
        assert letter["source_partition"] == 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", letter["failed_at"])
    missing = next(d for d in letters if d["reason"] == "missing_required_field")
    assert missing["source_offset"] == 1
    assert missing["event"]["event_type"] == "module_ended"
    assert missing["event"]["event_id"] == scenario.module_ended["event_id"]
    assert "required field 'timeSpent' is missing" in missing["message"]
    undecodable = next(d for d in letters if d["reason"] == "undecodable")
    assert undecodable["source_offset"] == 2
    assert undecodable["value"].startswith("does not decode (undecodable)")

    code, out, _ = cli(capsys, "dlq", "inspect", "--config", str(scenario.config), "--reason", "undecodable",
                       "--destination", "freshpaint")
    assert code == 0
    assert out.startswith(f"{scenario.dlq}[0]@")
    assert f"source   {scenario.topic}[0]@2  (DecodeError)" in out
    assert "1 dead letter(s) shown of 3" in out

    code, out, _ = cli(capsys, "dlq", "inspect", "--config", str(scenario.config), "--since", "1h", "--json")
    assert len(json.loads(out)["dead_letters"]) == 3
    code, out, _ = cli(capsys, "dlq", "inspect", "--config", str(scenario.config), "--until", "1h", "--json")
    assert json.loads(out)["dead_letters"] == []


def test_replay_to_destinations_delivers_exactly_once_and_commits_after(
    stack: DevStack, scenario: Scenario, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(fixed_config(stack, scenario, tmp_path))
    group = f"replay-{uuid.uuid4().hex[:8]}"
    base = ["dlq", "replay", "--config", config, "--group", group, "--to-destinations",
            "--reason", "missing_required_field"]

    code, out, _ = cli(capsys, *base, "--dry-run")
    assert code == 0
    assert "would deliver 1 output(s)" in out
    assert "would be delivered to the destination: 1" in out
    assert stack.emulators.freshsuccess.events() == []
    assert stack.committed(group, scenario.dlq) == {}

    code, out, err = cli(capsys, *base)
    assert code == 0, err
    [delivered] = stack.emulators.freshsuccess.events()
    e = scenario.module_ended
    assert delivered == {"accountId": e["account_id"], "userId": e["user_id"], "createdAt": e["occurred_at"],
                         "action": "moduleEnd", "sessionId": e["session_id"], "module": e["module"], "timeSpent": 0}
    assert stack.emulators.freshpaint.events() == []  # it went only to the destination that parked it
    assert "delivered to the destination: 1" in out
    assert "replay [" in err  # the progress bar, on stderr
    assert_progress_only_past(stack, group, scenario.dlq, {("missing_required_field", "freshsuccess")})

    # A second run finds nothing new: the dead letter is not delivered twice, whatever the group.
    for again in (group, f"replay-{uuid.uuid4().hex[:8]}"):
        code, out, err = cli(capsys, *[again if part == group else part for part in base])
        assert code == 0, err
        assert len(stack.emulators.freshsuccess.events()) == 1
        assert "delivered to the destination" not in out


def test_a_failing_destination_stops_the_replay_without_committing_and_a_rerun_delivers_once(
    stack: DevStack, scenario: Scenario, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(fixed_config(stack, scenario, tmp_path))
    group = f"replay-{uuid.uuid4().hex[:8]}"
    base = ["dlq", "replay", "--config", config, "--group", group, "--to-destinations",
            "--reason", "missing_required_field"]
    stack.emulators.freshsuccess.inject(Fault(status=503))
    code, _, err = cli(capsys, *base, "--timeout-s", "3")
    assert code == 3
    assert "replay stopped: freshsuccess did not accept the replayed events within 3s" in err
    assert "Traceback" not in err
    assert stack.committed(group, scenario.dlq) == {}
    assert stack.emulators.freshsuccess.events() == []

    stack.emulators.freshsuccess.clear_faults()
    code, out, err = cli(capsys, *base)
    assert code == 0, err
    assert len(stack.emulators.freshsuccess.events()) == 1
    assert "delivered to the destination: 1" in out


def test_replay_to_the_source_topic_produces_each_record_once_without_dlq_headers(
    stack: DevStack, scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    group = f"replay-{uuid.uuid4().hex[:8]}"
    before = stack.end_offsets(scenario.topic)[0]
    config = str(plain_config(stack, scenario))

    # Parked by Freshsuccess only: Freshpaint already has it, so producing it again is refused.
    code, _, err = cli(capsys, "dlq", "replay", "--config", config, "--group", group,
                       "--reason", "missing_required_field")
    assert code == 3
    assert "parked by some destinations only" in err
    assert "--to-destinations" in err
    assert stack.end_offsets(scenario.topic)[0] == before

    # Parked by both lanes: one copy goes back to the source partition.
    code, out, err = cli(capsys, "dlq", "replay", "--config", config, "--group", group,
                         "--reason", "undecodable")
    assert code == 0, err
    assert "produced to the source topic: 1" in out
    assert "duplicate copies of a replayed record: 1" in out
    assert stack.end_offsets(scenario.topic)[0] == before + 1
    replayed = stack.read_all(scenario.topic)[-1]
    assert (replayed.key(), replayed.value(), replayed.partition()) == (b"c", scenario.bad_value, 0)
    assert not any(key.startswith("dlq.") for key, _ in replayed.headers() or [])
    assert_progress_only_past(stack, group, scenario.dlq, {("undecodable", "freshsuccess"),
                                                            ("undecodable", "freshpaint")})
    # Replayed once, for good: not again, whatever the filters or the group.
    code, out, err = cli(capsys, "dlq", "replay", "--config", config, "--group", f"other-{group}")
    assert code == 3  # only the Freshsuccess-only letter is left, and it is still refused
    assert stack.end_offsets(scenario.topic)[0] == before + 1


def test_a_dead_letter_that_fails_again_is_parked_anew_and_committed_past(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    own = park(stack)
    stack.emulators.freshsuccess.reset()
    group = f"replay-{uuid.uuid4().hex[:8]}"
    code, out, err = cli(capsys, "dlq", "replay", "--config", str(plain_config(stack, own)), "--group", group,
                         "--to-destinations", "--destination", "freshsuccess", "--reason", "undecodable")
    assert code == 1, err  # finished, but something failed again
    assert "failed again and parked anew (undecodable): 1" in out
    letters = stack.read_all(own.dlq)
    assert len(letters) == 4
    anew = letters[-1]
    headers = {k: v.decode() for k, v in anew.headers()}
    assert headers["dlq.reason"] == "undecodable"
    assert headers["dlq.destination"] == "freshsuccess"
    assert (headers["dlq.source_topic"], headers["dlq.source_offset"]) == (own.topic, "2")
    assert anew.value() == own.bad_value
    assert [k for k, _ in anew.headers()].count("dlq.reason") == 1
    assert_progress_only_past(stack, group, own.dlq, {("undecodable", "freshsuccess")})
    assert stack.emulators.freshsuccess.events() == []
