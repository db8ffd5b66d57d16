"""Configuration: parsed once, unknown keys refused, bad values named with file and line, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.config import Settings, load_settings
from consumer.errors import ConfigError

ENV = {"FRESHSUCCESS_AUTH_KEY": "auth-secret-123", "FRESHSUCCESS_API_KEY": "api-secret-456",
       "FRESHPAINT_TOKEN": "token-secret-789"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  topics: [a, b]\n  group_id: g\nbatching:\n  max_events: 500\n")
    settings = load_settings(path, environ={**ENV, "KAFKA_BOOTSTRAP_SERVERS": "broker:9093"})
    assert settings.kafka.topics == ("a", "b")
    assert settings.kafka.bootstrap_servers == "broker:9093"
    assert settings.batching.max_events == 500
    assert settings.group_for("freshsuccess") == "g.freshsuccess"
    assert settings.freshsuccess.auth_key is not None
    assert settings.freshsuccess.auth_key.get_secret_value() == "auth-secret-123"


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  topics: [a]\n\nbatching:\n  max_event: 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=ENV)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 5, "batching.max_event")
    assert "did you mean 'max_events'" in str(err)


def test_bad_value_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "freshsuccess:\n  datacenter: mars\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=ENV)
    assert info.value.line == 2
    assert info.value.key == "freshsuccess.datacenter"
    assert "mars" in str(info.value)


def test_secrets_in_the_file_are_refused_without_echoing_them(tmp_path: Path) -> None:
    path = write(tmp_path, "freshpaint:\n  token: leaked-token-value\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=ENV)
    assert "environment" in str(info.value)
    assert "leaked-token-value" not in str(info.value)
    assert info.value.line == 2


def test_repr_never_shows_secrets(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "{}\n"), environ=ENV)
    text = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ENV.values():
        assert secret not in text


def test_missing_secrets_name_the_variables(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "{}\n"), environ={})
    with pytest.raises(ConfigError, match="FRESHSUCCESS_AUTH_KEY, FRESHSUCCESS_API_KEY, FRESHPAINT_TOKEN"):
        settings.require_secrets(["freshsuccess", "freshpaint"])


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "{}\n"), environ=ENV)
    with pytest.raises(Exception, match="frozen"):
        settings.kafka.group_id = "other"  # type: ignore[misc]


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    config = folder / "config.yaml"
    config.write_text("mapping:\n  file: mapping.yaml\ndecoding:\n  reader_schema: schemas/event.avsc\n"
                      "freshpaint:\n  ca_bundle: /etc/ssl/ca.pem\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("../deploy/config.yaml"), environ={})
    assert settings.mapping.file == Path("../deploy/mapping.yaml")
    assert settings.decoding.reader_schema == Path("../deploy/schemas/event.avsc")
    assert settings.freshpaint.ca_bundle == Path("/etc/ssl/ca.pem")  # absolute paths stay as written
    assert settings.mapping.file.resolve() == folder / "mapping.yaml"


@pytest.mark.parametrize(("yaml", "variable"), [
    ("freshpaint:\n  token: t0k3n\n", "FRESHPAINT_TOKEN"),
    ("kafka:\n  sasl_password: hunter2\n", "KAFKA_SASL_PASSWORD"),
    ("decoding:\n  schema_registry_password: hunter2\n", "SCHEMA_REGISTRY_PASSWORD"),
])
def test_a_secret_written_in_the_file_is_refused_naming_its_environment_variable(
        tmp_path: Path, yaml: str, variable: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=f"comes from the environment variable {variable}; remove this key") as info:
        load_settings(path, environ={})
    assert "hunter2" not in str(info.value)
    assert "t0k3n" not in str(info.value)
    assert f"{path}:2:" in str(info.value)


def test_every_secret_comes_from_its_variable_and_is_scrubbed() -> None:
    from consumer.config import SECRETS

    environ = {secret.variable: f"value-of-{secret.variable}" for secret in SECRETS}
    settings = load_settings(None, environ=environ)
    assert sorted(settings.secret_values()) == sorted(environ.values())
    with pytest.raises(ConfigError, match="FRESHSUCCESS_AUTH_KEY, FRESHSUCCESS_API_KEY, FRESHPAINT_TOKEN"):
        load_settings(None, environ={}).require_secrets(["freshsuccess", "freshpaint"])


def test_a_lanes_default_settings_are_the_configurations() -> None:
    """LaneSettings() (what tests and tools build) and the settings a lane gets from a default configuration are
    one set of values: defaults are written only in consumer/config.py."""
    from consumer.app.build import lane_settings
    from consumer.pipeline.lane import LaneSettings

    assert LaneSettings() == lane_settings(Settings())
