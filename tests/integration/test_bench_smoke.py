"""``make bench`` in smoke mode: the harness runs end to end and writes its report (timings not judged), and the
peers of the benchmark (bench/peers/) do the same work as usage-consumer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from consumer.config import default_mapping_file
from consumer.decoding.encoding import encode_confluent
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from consumer.mapping import load_mapping
from consumer.testing.eventgen import one_of_each, realistic_events

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_harness_runs_and_reports_every_measurement(kafka_bootstrap: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--output", str(output),
                           "--baseline", "HEAD"],
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(output.read_text())
    # g: the consumer as of --baseline; q, r: the Quix Streams and sentry-arroyo peers (their own virtual
    # environments, built with pip on first use); h: both destinations; l: large property maps; k: Freshpaint
    # paced by max_requests_per_s
    assert set(report["results"]) == {"a", "b", "c", "d", "e", "f", "g", "h", "k", "l", "q", "r"}
    for name, row in report["results"].items():
        assert row["events_per_s"] > 0, name
        assert row["cpu_s_per_million"] > 0, name
        assert row["peak_rss_mb"] > 0, name
    assert report["results"]["d"]["latency"]["count"] > 0
    assert report["results"]["e"]["latency"]["count"] > 0
    assert set(report["ratios"]) == {"d/a", "d/b", "d/c", "f/d", "d/g", "cpu d/g", "d/q", "cpu d/q", "d/r",
                                     "cpu d/r"}
    assert set(report["peers"]) == {"quix", "arroyo"}
    assert report["peers"]["quix"]["quixstreams"]
    assert report["peers"]["arroyo"]["sentry-arroyo"]
    assert set(report["targets"]) == {"d/q >= 2", "cpu d/q <= 0.5"}
    assert report["paced"]["max_requests_per_s"] == 200
    assert report["paced"]["measured_per_s"] > 0
    assert "usage-consumer benchmark" in proc.stdout


def _peer_common() -> ModuleType:
    """bench/peers/common.py (it needs only fastavro, orjson and httpx, which the product's venv has too)."""
    spec = importlib.util.spec_from_file_location("bench_peer_common", REPO / "bench" / "peers" / "common.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_peers_make_the_same_freshsuccess_actions_as_the_packaged_mapping() -> None:
    """The peers' hand-written decode + map gives exactly (keys in the same order) what usage-consumer's default
    mapping gives, so rows d, q and r send the same requests."""
    common = _peer_common()
    schema = load_schema(default_reader_schema_path())
    parsed = parse(schema)
    mapping = load_mapping(default_mapping_file(), schema)
    assert mapping.freshsuccess is not None
    decode = common.ConfluentAvroDecoder("http://registry.invalid")
    schema_id = 7
    decode._schemas[schema_id] = parsed.reader  # what one GET /schemas/ids/7 would have given it
    mapped = 0
    events = [*realistic_events(3000, seed=3), *one_of_each()]
    for offset, event in enumerate(events):
        record = decode(encode_confluent(schema_id, event, parsed))
        want = mapping.freshsuccess(record, "usage-events", 0, offset)
        got = common.freshsuccess_action(record)
        assert want == ([got] if got is not None else []), event
        if got is not None:
            assert list(got) == list(want[0])
            mapped += 1
    assert 0 < mapped < len(events)  # page views have no Freshsuccess rule
