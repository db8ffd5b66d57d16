"""The command line: one clear message and a non-zero exit for every start-up failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from consumer.cli import main


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # the CLI configures logging for the process; give later tests theirs back


def test_check_accepts_the_shipped_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:")
    assert "freshsuccess, freshpaint" in out


def test_check_lists_every_mapping_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("version: 1\nrules:\n  - name: r1\n    when: {event_type: x}\n"
                       "    freshsuccess:\n      - action: feature\n        fields:\n"
                       "          feature: {field: no_such_field}\n          module: core\n          total: 1\n"
                       "  - name: r2\n    when: {event_type: y}\n    freshpaint:\n      - event: E\n"
                       "        properties: {x: {field: user.nope}}\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"mapping:\n  file: {mapping}\n")
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{mapping}:8" in err
    assert "no_such_field" in err
    assert "user.nope" in err
    assert "Traceback" not in err


def test_run_refuses_an_unknown_key_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kafka:\n  topic: [a]\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:2: kafka.topic: unknown key (did you mean 'topics'?)" in err


def test_run_without_secrets_names_the_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FRESHSUCCESS_AUTH_KEY", "FRESHSUCCESS_API_KEY", "FRESHPAINT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run"]) == 2
    assert "FRESHSUCCESS_AUTH_KEY" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kafka: [not, a, mapping]\n")
    assert main(["--debug", "check", "--config", str(config)]) == 2
    assert "Traceback" in capsys.readouterr().err
