"""Error messages are what an operator reads first: they must say where and what."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError, EventError, MappingInvalid, Rejected, UsageConsumerError


def test_config_error_names_file_line_and_key() -> None:
    err = ConfigError("must be a positive number", file="config.yaml", line=12, key="batch.max_events")
    assert str(err) == "config.yaml:12: batch.max_events: must be a positive number"
    assert (err.file, err.line, err.key) == ("config.yaml", 12, "batch.max_events")


def test_mapping_invalid_lists_every_problem() -> None:
    err = MappingInvalid(["m.yaml:3: rule 'a': unknown field 'x'", "m.yaml:9: rule 'b': unknown action 'y'"])
    text = str(err)
    assert "unknown field 'x'" in text
    assert "unknown action 'y'" in text
    assert isinstance(err, ConfigError)


@pytest.mark.parametrize("cls", EventError.__subclasses__())
def test_every_event_error_has_its_own_reason_code(cls: type[EventError]) -> None:
    reasons = [c.reason for c in EventError.__subclasses__()]
    assert reasons.count(cls.reason) == 1
    assert cls.reason.isidentifier()
    assert issubclass(cls, UsageConsumerError)


def test_rejected_keeps_status_and_body() -> None:
    err = Rejected("freshpaint refused the event", status=400, body='{"error": "time"}')
    assert err.status == 400
    assert "time" in err.body
