"""``make bench`` in smoke mode: the harness runs end to end and writes its report (timings not judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_harness_runs_and_reports_every_measurement(kafka_bootstrap: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--output", str(output),
                           "--baseline", "HEAD"],
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["results"]) == {"a", "b", "c", "d", "e", "f", "g"}  # g: the consumer as of --baseline
    for name, row in report["results"].items():
        assert row["events_per_s"] > 0, name
        assert row["cpu_s_per_million"] > 0, name
        assert row["peak_rss_mb"] > 0, name
    assert report["results"]["d"]["latency"]["count"] > 0
    assert report["results"]["e"]["latency"]["count"] > 0
    assert set(report["ratios"]) == {"d/a", "d/b", "d/c", "f/d", "d/g", "cpu d/g"}
    assert "usage-consumer benchmark" in proc.stdout
