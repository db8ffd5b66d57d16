"""``usage-consumer ping`` against the real broker, the schema registry emulator and both destination emulators.

By default ``ping`` creates nothing in either destination (the emulators' counts stay put); only
``--freshpaint-check event`` sends one Freshpaint test event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import structlog

from consumer.cli import main
from consumer.testing.devstack import DevStack
from consumer.testing.emulators.common import BaseEmulator
from consumer.tools.ping import PING_DISTINCT_ID, PING_EVENT


@pytest.fixture(autouse=True)
def logging_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def table(out: str) -> dict[str, tuple[str, str]]:
    _header, *lines, _verdict = out.splitlines()
    return {cells[0]: (cells[2], cells[3]) for cells in (re.split(r"\s{2,}", line, maxsplit=3) for line in lines)}


def test_every_check_passes_with_the_right_keys(stack: DevStack, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    topic, dlq = stack.topics(partitions=2)
    for name, value in DevStack.secrets_env().items():
        monkeypatch.setenv(name, value)
    assert main(["ping", "--config", str(stack.config_file(topic, dlq))]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    assert {name: result for name, (result, _) in rows.items()} == {
        "kafka": "ok", "schema registry": "ok", "freshsuccess ping": "ok", "freshsuccess keys": "ok",
        "freshpaint connect": "ok"}
    assert rows["kafka"][1] == f"1 broker(s); topics {topic} (2 partitions), {dlq} (1 partitions)"
    assert out.splitlines()[-1] == "all checks passed"


def test_bad_keys_and_a_missing_topic_fail_and_say_what_to_fix(
    stack: DevStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, _dlq = stack.topics(partitions=1)
    monkeypatch.setenv("FRESHSUCCESS_AUTH_KEY", "not-the-auth-key")
    monkeypatch.setenv("FRESHSUCCESS_API_KEY", "not-the-api-key")
    monkeypatch.setenv("FRESHPAINT_TOKEN", "not-the-token")
    assert main(["ping", "--config", str(stack.config_file(topic, "no-such-dlq")), "--freshpaint-check",
                 "event"]) == 1
    out = capsys.readouterr().out
    rows = table(out)
    assert rows["kafka"][0] == "FAILED"
    assert "topic(s) no-such-dlq do not exist" in rows["kafka"][1]
    assert rows["freshsuccess ping"][0] == "ok"
    assert rows["freshsuccess keys"][0] == "FAILED"
    assert "answered 400: the auth key or the API key is wrong" in rows["freshsuccess keys"][1]
    assert rows["freshpaint event"][0] == "FAILED"
    assert "the token was refused" in rows["freshpaint event"][1]
    assert "not-the-" not in out
    assert out.splitlines()[-1] == "3 of 5 checks failed"


def counts(emulator: BaseEmulator) -> dict[str, int]:
    """What the emulator holds: events accepted, de-duplicated repeats, requests refused or dropped events."""
    stats = emulator.stats()
    return {name: stats[name] for name in ("accepted", "duplicates", "dropped", "rejected")}


@pytest.mark.usefixtures("fresh_emulators", "tool_environment")
def test_ping_creates_no_event_unless_asked_and_then_exactly_one(stack: DevStack,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    topic, dlq = stack.topics(partitions=1)
    config = str(stack.config_file(topic, dlq))
    freshsuccess, freshpaint = stack.emulators.freshsuccess, stack.emulators.freshpaint
    fs_before, fp_before = counts(freshsuccess), counts(freshpaint)
    fp_requests = freshpaint.stats()["requests"]

    assert main(["ping", "--config", config]) == 0
    assert (counts(freshsuccess), counts(freshpaint)) == (fs_before, fp_before)  # first: the defect itself
    assert freshpaint.stats()["requests"] == fp_requests  # not one request reached Freshpaint
    assert freshsuccess.events() == []
    rows = table(capsys.readouterr().out)
    assert rows["freshpaint connect"][0] == "ok"
    assert "nothing sent" in rows["freshpaint connect"][1]

    assert main(["ping", "--config", config, "--freshpaint-check", "event"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["freshpaint event"][0] == "ok"
    assert f"this creates the event '{PING_EVENT}' for the user (distinct_id) '{PING_DISTINCT_ID}'" in (
        rows["freshpaint event"][1])
    assert counts(freshsuccess) == fs_before
    assert counts(freshpaint) == {**fp_before, "accepted": fp_before["accepted"] + 1}
    [sent] = freshpaint.events()
    assert (sent["event"], sent["properties"]["distinct_id"]) == (PING_EVENT, PING_DISTINCT_ID)
    assert sent["properties"]["$options"] == {"integrations": {"All": False}}
