"""The operator documents stay true to the code: every setting is in the configuration reference, and every
metric and log event the runbook tells people to look for exists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import get_args, get_origin

from pydantic import BaseModel

from consumer.config import Settings
from consumer.observability.metrics import COUNTERS, LaneSnapshot, Metrics, Tally

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def setting_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if get_origin(annotation) is tuple:  # a list of sections (streams): document the item's keys
            annotation = get_args(annotation)[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(setting_keys(annotation, f"{name}."))
        else:
            keys.append(prefix + name)
    return keys


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text()
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip().strip("`")] = body
    secrets = {"freshsuccess.auth_key", "freshsuccess.api_key", "freshpaint.token"}  # environment only
    missing = []
    for key in setting_keys():
        section, name = key.split(".", 1)
        if key in secrets:
            continue
        if f"| `{name}` |" not in sections.get(section, ""):
            missing.append(key)
    assert missing == []


def test_every_metric_the_runbook_names_is_exported() -> None:
    class Lane:
        def snapshot(self) -> LaneSnapshot:
            return LaneSnapshot(name="freshsuccess", counters=dict.fromkeys(COUNTERS, 1),
                                dead_lettered={"undecodable": 1}, failed=False, in_flight_batches=0,
                                paused_partitions=0, destination_state="ok", committed={("t", 0): 1},
                                lag={("t", 0): 1}, lag_seconds={("t", 0): 1.0},
                                streams={"default": Tally(sent=1, parked=Counter({"undecodable": 1}))})

    lane = Lane()
    metrics = Metrics()
    metrics.add_lane(lane)
    metrics.on_retry("freshsuccess")("http_503", 1.0)
    metrics.batch_events.labels("freshsuccess").observe(1)
    metrics.batch_delivery_seconds.labels("freshsuccess").observe(1)
    exported = {line.split("{")[0].split(" ")[0] for line in metrics.exposition().decode().splitlines()
                if line and not line.startswith("#")}
    exported |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    named = set(re.findall(r"usage_consumer_[a-z_]+", (DOCS / "runbook.md").read_text()))
    assert named
    assert named - exported == set()


def test_every_log_event_the_runbook_names_is_logged_somewhere() -> None:
    code = "\n".join(p.read_text() for p in (REPO / "consumer").rglob("*.py"))
    runbook = (DOCS / "runbook.md").read_text()
    table = runbook[runbook.index("Log events (JSON lines"):runbook.index("Metrics (`/metrics`")]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    assert {"delivery_retried", "event_dead_lettered", "lane_stopped"} <= named
    missing = [name for name in named if f'"{name}"' not in code]
    assert missing == []
