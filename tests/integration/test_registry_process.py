"""The schema registry emulator as a process: serves preloaded schemas until SIGTERM, then exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from consumer.decoding.schemas import default_schema_dir
from tests.helpers import wait_for
from tests.unit.test_registry import CURRENT

REPO = Path(__file__).resolve().parents[2]


def test_emulator_cli_serves_preloaded_schemas_until_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    schema_path = default_schema_dir() / "usage_event.avsc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer.testing.emulators.schema_registry", "--port", "0", "--ready-file", str(ready),
         "--register", f"usage-events-value={schema_path}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for(ready.exists, timeout_s=30.0, what="the emulator's ready file")
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        latest = httpx.get(f"{info['schema_registry_url']}/subjects/usage-events-value/versions/latest").json()
        assert json.loads(latest["schema"]) == CURRENT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30.0)
    out, _ = proc.communicate()
    assert "registered usage-events-value as schema id 1" in out
