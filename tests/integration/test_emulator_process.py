"""The emulator runner as a process: starts, serves, exits 0 on SIGTERM; refuses to start without keys.

These start a Python process each, so they live with the integration tests, not the unit tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from consumer.testing.waiting import wait_until
from tests.unit.test_emulators import API_KEY, AUTH_KEY, JSON_HEADERS, TOKEN, fp_event, fs_event, ndjson

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _runner_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FRESHSUCCESS_AUTH_KEY", "FRESHSUCCESS_API_KEY", "FRESHPAINT_TOKEN")}
    env.update(extra)
    return env


def _runner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c",
            f"import sys; from consumer.testing.emulators.runner import main; sys.exit(main({list(args)!r}))"]


def test_runner_starts_serves_and_exits_0_on_sigterm(tmp_path: Path, http: httpx.Client) -> None:
    ready = tmp_path / "ready.json"
    env = _runner_env(FRESHSUCCESS_AUTH_KEY=AUTH_KEY, FRESHSUCCESS_API_KEY=API_KEY, FRESHPAINT_TOKEN=TOKEN)
    proc = subprocess.Popen(_runner_cmd("--ready-file", str(ready), "--record-dir", str(tmp_path / "rec")),
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            return ready.exists()

        wait_until(up, timeout_s=20, what="the runner's ready file")
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        response = http.post(info["freshpaint_url"] + "/track", json=fp_event())
        assert response.status_code == 200
        fs = http.post(f"{info['freshsuccess_url']}/v1/{AUTH_KEY}/{API_KEY}", content=ndjson([fs_event()]),
                       headers=JSON_HEADERS)
        assert fs.status_code == 200
        assert http.get(info["freshsuccess_url"] + "/_emulator/stats").json()["accepted"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "ready" in text
    assert info["freshpaint_url"] in text
    assert "accepted=1" in text
    assert AUTH_KEY not in text + err.decode()
    assert API_KEY not in text + err.decode()
    assert (tmp_path / "rec" / "freshpaint.jsonl").read_bytes().count(b"\n") == 1
    assert not ready.exists()  # removed on exit so that nobody polls dead ports


def test_runner_without_keys_exits_2_with_a_clear_message() -> None:
    proc = subprocess.run(_runner_cmd(), cwd=REPO_ROOT, env=_runner_env(), capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 2
    assert b"FRESHSUCCESS_AUTH_KEY" in proc.stderr
    assert b"FRESHPAINT_TOKEN" in proc.stderr
