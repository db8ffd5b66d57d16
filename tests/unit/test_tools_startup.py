"""Start-up failures a person can act on: one message naming the cause and the fix, a non-zero exit code,
and no traceback unless ``--debug``. Failures that need a running broker (an unknown topic, the schema
registry down) are in tests/integration/test_tools_startup.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from consumer.cli import main


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FRESHSUCCESS_AUTH_KEY", "auth-key-1234")
    monkeypatch.setenv("FRESHSUCCESS_API_KEY", "api-key-1234")
    monkeypatch.setenv("FRESHPAINT_TOKEN", "token-1234")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    yield
    structlog.reset_defaults()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text("health:\n  enabled: false\n" + text)
    return str(path)


def error_line(err: str) -> str:
    """The CLI's own message: the last line of stderr (log lines may precede it)."""
    lines = [line for line in err.splitlines() if line.startswith("usage-consumer: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_bad_value_names_file_line_key_and_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "kafka:\n  consume_batch_size: 0\n")
    assert main(["run", "--config", path]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"usage-consumer: configuration error: {path}:4: kafka.consume_batch_size: ")
    assert "greater than or equal to 1" in line


def test_an_invalid_mapping_lists_its_problems_and_stops_run(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("version: 1\nrules:\n  - name: r\n    freshsuccess:\n      - action: featur\n")
    path = config(tmp_path, f"mapping:\n  file: {mapping}\n")
    assert main(["run", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "usage-consumer: configuration error: invalid mapping:" in err
    assert f"{mapping}:5: rule 'r': freshsuccess[0].action: unknown action 'featur' (did you mean 'feature'?)" in err
    assert "Traceback" not in err


def test_an_unreachable_broker_is_named_with_the_fix_within_the_startup_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    path = config(tmp_path, f"kafka:\n  bootstrap_servers: 127.0.0.1:{port}\n  startup_timeout_s: 1\n")
    started = time.monotonic()
    assert main(["run", "--config", path]) == 3
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    line = error_line(err)
    assert line.startswith(f"usage-consumer: error: Kafka at 127.0.0.1:{port} did not answer within 1s (")
    assert "check kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS)" in line
    assert "%3|" not in err  # no librdkafka connection noise


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, f"kafka:\n  bootstrap_servers: 127.0.0.1:{closed_port()}\n  startup_timeout_s: 1\n")
    assert main(["--debug", "run", "--config", path]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_a_setting_the_kafka_client_refuses_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, f"kafka:\n  bootstrap_servers: 127.0.0.1:{closed_port()}\n"
                            "  client_properties: {no.such.property: x}\n")
    assert main(["run", "--config", path]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("usage-consumer: configuration error: the Kafka client refused its settings: ")
    assert "no.such.property" in line
    assert "check kafka.client_properties" in line


def test_a_missing_reader_schema_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, f"decoding:\n  reader_schema: {tmp_path / 'nope.avsc'}\n")
    assert main(["check", "--config", path]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'nope.avsc'}: cannot read schema file" in line


def test_missing_secrets_name_the_variables(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRESHPAINT_TOKEN")
    assert main(["run", "--config", config(tmp_path, "")]) == 2
    assert "missing secret environment variable(s): FRESHPAINT_TOKEN" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [["map", "--from-topic", "5"], ["dlq", "inspect"], ["dlq", "replay"]])
def test_the_tools_name_an_unreachable_broker_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  command: list[str]) -> None:
    port = closed_port()
    path = config(tmp_path, f"kafka:\n  bootstrap_servers: 127.0.0.1:{port}\n  startup_timeout_s: 1\n"
                            "decoding:\n  framing: raw\n")
    assert main([*command, "--config", path]) == 3
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"usage-consumer: error: Kafka at 127.0.0.1:{port} did not answer within 1s")


def test_a_mistyped_dead_letter_reason_is_refused_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "replay", "--reason", "mapping-failed", "--config", config(tmp_path, "")]) == 2
    line = error_line(capsys.readouterr().err)
    assert "--reason 'mapping-failed' is not a dead-letter reason (did you mean 'mapping_failed'?)" in line
