"""A lane decodes only what its mapping reads: the record's fields up to the last one its rules use.

Avro writes a record's fields one after another, so a lane whose rules never read the trailing fields (the
Freshsuccess lane and ``properties``, for example) can stop reading there. The outputs must not change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.app.build import judges_for
from consumer.app.startup import prepare
from consumer.config import default_mapping_file, load_settings
from consumer.decoding.decoder import make_decoder
from consumer.decoding.encoding import encode_raw
from consumer.decoding.schemas import default_reader_schema_path, default_schema_dir, load_schema, parse
from consumer.errors import DecodeError
from consumer.mapping import load_mapping
from consumer.pipeline.verdict import Judge
from consumer.testing.eventgen import realistic_events

SCHEMA = load_schema(default_reader_schema_path())
V1 = load_schema(default_schema_dir() / "usage_event.v1.avsc")
MAPPING = load_mapping(default_mapping_file(), SCHEMA)


def test_each_destination_reads_only_the_fields_its_rules_use() -> None:
    fs, fp = MAPPING.fields_read["freshsuccess"], MAPPING.fields_read["freshpaint"]
    assert {"properties", "device_id", "event_id"}.isdisjoint(fs)  # no Freshsuccess rule reads them
    assert {"account_id", "user_id", "occurred_at", "event_type"} <= fs
    assert {"properties", "event_id", "device_id"} <= fp  # pass_properties, $insert_id, $device_id


@pytest.mark.parametrize("writer", [SCHEMA, V1], ids=["same schema", "older writer (resolved)"])
@pytest.mark.parametrize("destination", ["freshsuccess", "freshpaint"])
def test_a_lane_decoding_only_what_it_reads_maps_every_event_exactly_as_before(writer: dict[str, Any],
                                                                               destination: str) -> None:
    parsed_writer = parse(writer)
    full = make_decoder("raw", reader_schema=SCHEMA, writer_schema=writer)
    lean = make_decoder("raw", reader_schema=SCHEMA, writer_schema=writer,
                        needed=MAPPING.fields_read[destination])
    map_fn = MAPPING.functions[destination]
    writer_fields = {f["name"] for f in writer["fields"]}
    differs = 0
    for offset, event in enumerate(realistic_events(3000, seed=17)):
        value = encode_raw({k: v for k, v in event.items() if k in writer_fields}, parsed_writer)
        whole, read = full.decode(value), lean.decode(value)
        assert read.items() <= whole.items()
        differs += read != whole
        assert map_fn(read, "usage", 0, offset) == map_fn(whole, "usage", 0, offset)
    if destination == "freshsuccess" and writer is SCHEMA:
        assert differs  # it did leave something out (the v1 writer ends with a field the lane reads)


def test_a_broken_field_no_rule_reads_does_not_stop_a_lane_that_does_not_read_it() -> None:
    """The Freshsuccess lane stops before ``properties``; the Freshpaint lane reads it and parks the event."""
    parsed = parse(SCHEMA)
    event = next(iter(realistic_events(1, seed=5)))
    value = encode_raw({**event, "properties": {}}, parsed)
    broken = value[:-1] + b"\x07"  # the properties map now claims entries that are not there
    fs = make_decoder("raw", reader_schema=SCHEMA, needed=MAPPING.fields_read["freshsuccess"])
    fp = make_decoder("raw", reader_schema=SCHEMA, needed=MAPPING.fields_read["freshpaint"])
    assert fs.decode(broken)["event_type"] == event["event_type"]
    with pytest.raises(DecodeError):
        fp.decode(broken)
    with pytest.raises(DecodeError, match="trailing bytes"):
        fp.decode(value + b"\x00")  # a lane that reads to the end still refuses trailing bytes


def test_the_lanes_decode_what_their_rules_read_and_the_tools_the_whole_record(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"decoding": {"framing": "raw"}}))
    settings = load_settings(config, environ={})
    prepared = prepare(settings)
    for name in ("freshsuccess", "freshpaint"):
        lane = judges_for(settings, name, prepared, None)
        assert isinstance(lane, Judge)
        assert lane.decoder.needed == MAPPING.fields_read[name]  # type: ignore[attr-defined]
        tool = judges_for(settings, name, prepared, None, whole_records=True)
        assert isinstance(tool, Judge)
        assert tool.decoder.needed is None  # type: ignore[attr-defined]
