"""The command line at its edges: JSON lines holding Unicode line separators, a health port already taken."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import structlog

from consumer.cli import main
from tests.unit.test_tools_dryrun import API_KEY, AUTH_KEY, TOKEN, event


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHSUCCESS_AUTH_KEY", AUTH_KEY)
    monkeypatch.setenv("FRESHSUCCESS_API_KEY", API_KEY)
    monkeypatch.setenv("FRESHPAINT_TOKEN", TOKEN)


def test_a_json_line_with_unicode_line_separators_inside_a_string_is_one_sample(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = "before\u2028after\u0085end\u2029"
    samples = tmp_path / "samples.jsonl"
    lines = [event(feature=odd), event(event_id="second")]
    samples.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines), encoding="utf-8")
    assert "\u2028" in samples.read_text(encoding="utf-8")  # written raw, not escaped
    code = main(["map", "--json", str(samples)])
    structlog.reset_defaults()
    plans = json.loads(capsys.readouterr().out)["events"]
    assert code == 0
    assert [p.get("problem") for p in plans] == [None, None]
    assert [p["event_id"] for p in plans] == [lines[0]["event_id"], "second"]
    sent = plans[0]["destinations"]["freshpaint"]["outputs"][0]["output"]["properties"]
    assert sent["feature"] == odd


def test_a_health_port_already_taken_is_a_configuration_error_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(f"health:\n  host: 127.0.0.1\n  port: {port}\n")
        code = main(["run", "--config", str(config)])
    structlog.reset_defaults()
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{config}: health.port: port {port} on 127.0.0.1 is already in use" in err
    assert "set health.port to a free port" in err
