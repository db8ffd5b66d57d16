"""Start-up failures that need a running broker: an unknown topic and a schema registry that is down.

Each prints one message naming the cause and the fix, exits non-zero, and shows no traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import structlog

from consumer.cli import main
from consumer.testing.devstack import DevStack


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str) -> Iterator[DevStack]:
    with DevStack(kafka_bootstrap) as running:
        yield running


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in DevStack.secrets_env().items():
        monkeypatch.setenv(name, value)
    yield
    structlog.reset_defaults()


def message(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("usage-consumer: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_an_unknown_topic_is_named_with_the_fix(stack: DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    _topic, dlq = stack.topics(partitions=1)
    config = stack.config_file("no-such-topic", dlq)
    assert main(["run", "--config", str(config)]) == 2
    line = message(capsys.readouterr().err)
    assert line == (f"usage-consumer: configuration error: {config}: kafka.topics: topic(s) no-such-topic do not "
                    f"exist on {stack.bootstrap}; create them or fix kafka.topics / kafka.dead_letter_topic")


def test_a_schema_registry_that_is_down_is_named_with_the_fix(stack: DevStack,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    topic, dlq = stack.topics(partitions=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = stack.config_file(topic, dlq, decoding={"schema_registry_url": f"http://127.0.0.1:{port}"})
    assert main(["run", "--config", str(config)]) == 3
    line = message(capsys.readouterr().err)
    assert line.startswith(f"usage-consumer: error: schema registry at 127.0.0.1:{port} is unreachable")
    assert "check decoding.schema_registry_url (or SCHEMA_REGISTRY_URL) and that the registry is up" in line
