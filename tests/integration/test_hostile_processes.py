"""Hostile input that needs a process of its own: a crash there must not take the test run down with it.

A recursive writer schema with deep data (fastavro recurses in C) and the atheris fuzzer of the decoder and
mapper. The in-process hostile-input tests are in tests/unit/test_hostile_input.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_hostile_input import CASES, encode

ROOT = Path(__file__).resolve().parents[2]


RECURSIVE_SCHEMA_SCRIPT = """
import copy, io, sys
from fastavro import schemaless_writer
from consumer.decoding.decoder import make_decoder
from consumer.errors import EventError
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from tests.unit.test_hostile_input import StubRegistry, base_event

reader = load_schema(default_reader_schema_path())
writer = copy.deepcopy(reader)  # the reader's fields plus one the reader does not know: a linked list
writer["fields"].append({{"name": "x", "default": None, "type": [
    "null", {{"type": "record", "name": "N", "fields": [{{"name": "n", "type": ["null", "N"]}}]}}]}})
buffer = io.BytesIO()
schemaless_writer(buffer, parse(writer).reader, {{**base_event(), "x": None}})
body = buffer.getvalue()[:-1] + b"\\x02" * {depth} + b"\\x00"  # x -> N -> N -> ... -> null
decoder = make_decoder("confluent", reader_schema=reader, registry=StubRegistry({{9: writer}}))
try:
    decoder.decode(b"\\x00\\x00\\x00\\x00\\x09" + body)
    print("decoded")
except EventError as exc:
    print("dead-letter:", exc.reason)
"""


def child_env() -> dict[str, str]:
    """The environment of a child Python that imports this repository's ``tests`` package too."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_recursive_schema(depth: int) -> subprocess.CompletedProcess[str]:
    """In a child process: a crash there must not take the test run down with it."""
    script = RECURSIVE_SCHEMA_SCRIPT.format(depth=depth)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT, env=child_env())


def test_a_recursive_writer_schema_with_shallow_data_is_handled() -> None:
    result = run_recursive_schema(100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] in ("decoded", "dead-letter: unknown_schema"), result.stdout


def test_a_recursive_writer_schema_with_deep_data_is_dead_lettered_not_a_crash() -> None:
    result = run_recursive_schema(500_000)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip().splitlines()[-1] == "dead-letter: unknown_schema", result.stdout


# ------------------------------------------------------------------------------------------ atheris

FUZZ_SECONDS = int(os.environ.get("HOSTILE_FUZZ_SECONDS", "10"))
FUZZ_SCRIPT = """
import sys
import atheris
import orjson

with atheris.instrument_imports(include=["consumer"]):
    from consumer.errors import EventError
    from tests.unit.test_hostile_input import DESTINATIONS, MAX_EVENT_BYTES, TOPIC, map_fn_for, new_decoder

decoder = new_decoder()
mappers = [map_fn_for(d) for d in DESTINATIONS]


def one_input(data: bytes) -> None:
    if len(data) > MAX_EVENT_BYTES:
        return  # the lane dead-letters these as oversized before decoding
    try:
        record = decoder.decode(data)
    except EventError:
        return
    for map_fn in mappers:
        try:
            orjson.dumps(map_fn(record, TOPIC, 0, 0))
        except EventError:
            pass


atheris.Setup(sys.argv, one_input)
atheris.Fuzz()
"""


def test_atheris_fuzz_of_the_decoder_and_mapper(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (optional: `pip install atheris`, wheels for CPython 3.11 on "
                    "Linux x86_64); the hypothesis tests above still ran")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    from consumer.testing.eventgen import one_of_each  # the seed corpus: one valid record of each event type

    for index, event in enumerate(one_of_each()):
        (corpus / f"seed-{index}").write_bytes(encode(event))
    for name, (value, _reason) in CASES.items():
        if value is not None and len(value) < 4096:
            (corpus / f"case-{name}").write_bytes(value)
    script = tmp_path / "fuzz_decoder.py"
    script.write_text(FUZZ_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(corpus), f"-max_total_time={FUZZ_SECONDS}", "-timeout=10",
         "-rss_limit_mb=2048", f"-max_len={4096}", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path, check=False, env=child_env())
    assert result.returncode == 0, f"atheris found a failing input:\n{result.stderr[-4000:]}"
    assert "Done" in result.stderr or "stat::number_of_executed_units" in result.stderr, result.stderr[-2000:]

