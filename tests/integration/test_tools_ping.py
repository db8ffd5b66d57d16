"""``usage-consumer ping`` against the real broker, the schema registry emulator and both destination emulators."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import structlog

from consumer.cli import main
from consumer.testing.devstack import DevStack


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
        "kafka": "ok", "schema registry": "ok", "freshsuccess": "ok", "freshsuccess keys": "ok", "freshpaint": "ok"}
    assert rows["kafka"][1] == f"1 broker(s); topics {topic} (2 partitions), {dlq} (1 partitions)"
    assert out.splitlines()[-1] == "all checks passed"


def test_bad_keys_and_a_missing_topic_fail_and_say_what_to_fix(
    stack: DevStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, _dlq = stack.topics(partitions=1)
    monkeypatch.setenv("FRESHSUCCESS_AUTH_KEY", "not-the-auth-key")
    monkeypatch.setenv("FRESHSUCCESS_API_KEY", "not-the-api-key")
    monkeypatch.setenv("FRESHPAINT_TOKEN", "not-the-token")
    assert main(["ping", "--config", str(stack.config_file(topic, "no-such-dlq"))]) == 1
    out = capsys.readouterr().out
    rows = table(out)
    assert rows["kafka"][0] == "FAILED"
    assert "topic(s) no-such-dlq do not exist" in rows["kafka"][1]
    assert rows["freshsuccess"][0] == "ok"
    assert rows["freshsuccess keys"][0] == "FAILED"
    assert "answered 400: the auth key or the API key is wrong" in rows["freshsuccess keys"][1]
    assert rows["freshpaint"][0] == "FAILED"
    assert "the token was refused" in rows["freshpaint"][1]
    assert "not-the-" not in out
    assert out.splitlines()[-1] == "3 of 5 checks failed"
