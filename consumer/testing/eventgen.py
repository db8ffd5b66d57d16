"""Realistic product-usage events (and a few malformed records) for the demo, tests and benchmarks.

Deterministic for a given seed, so a run can be reproduced and asserted on.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections.abc import Iterator
from typing import Any

EVENT_TYPES = ("feature_used", "module_ended", "session_synced", "user_identified", "account_identified",
               "page_viewed")
WEIGHTS = (60, 12, 10, 4, 2, 12)
FEATURES = ("export_csv", "share_link", "create_report", "invite_user", "bulk_edit", "search", "dashboard_filter")
MODULES = ("reports", "dashboards", "admin", "editor", "inbox")
PRODUCTS = ("analytics", "crm")
PLANS = ("free", "starter", "pro", "enterprise")
ROLES = ("admin", "member", "viewer")
BASE_TIME_MS = 1_763_900_000_000


def make_event(rng: random.Random, index: int, event_type: str | None = None) -> dict[str, Any]:
    """One event of ``event_type`` (random by weight when None) with the fields that type carries."""
    kind = event_type or rng.choices(EVENT_TYPES, WEIGHTS)[0]
    account = rng.randrange(200)
    user = account * 50 + rng.randrange(50)
    event: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": kind,
        "occurred_at": BASE_TIME_MS + index * 37 + rng.randrange(1000),
        "account_id": f"acct-{account:04d}",
        "user_id": f"user-{user:06d}@example.com",
        "session_id": f"sess-{user:06d}-{index // 500}",
        "device_id": f"dev-{rng.getrandbits(48):012x}" if rng.random() < 0.8 else None,
        "product": rng.choice(PRODUCTS),
        "module": rng.choice(MODULES),
        "feature": None,
        "duration_ms": None,
        "count": None,
        "user": None,
        "account": None,
        "properties": {},
    }
    if kind == "feature_used":
        event["feature"] = rng.choice(FEATURES)
        event["count"] = rng.choice((None, 1, 1, 2, 5))
        event["properties"] = {"plan": rng.choice(PLANS), "browser": rng.choice(("chrome", "firefox", "safari"))}
    elif kind in ("module_ended", "session_synced"):
        event["duration_ms"] = rng.randrange(1_000, 1_800_000)
    elif kind == "user_identified":
        event["user"] = {"email": event["user_id"], "name": f"User {user}", "role": rng.choice(ROLES),
                         "created_at": BASE_TIME_MS - rng.randrange(10**10), "attributes": {"locale": "en-GB"}}
    elif kind == "account_identified":
        event["account"] = {"name": f"Account {account}", "plan": rng.choice(PLANS),
                            "mrr": round(rng.uniform(0, 5000), 2),
                            "created_at": BASE_TIME_MS - rng.randrange(10**11), "attributes": {"region": "emea"}}
    elif kind == "page_viewed":
        event["properties"] = {"path": f"/{rng.choice(MODULES)}/{rng.randrange(100)}", "referrer": "direct"}
    return event


def realistic_events(count: int, *, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for index in range(count):
        yield make_event(rng, index)


def one_of_each(*, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_event(rng, i, kind) for i, kind in enumerate(EVENT_TYPES)]


def malformed_values(schema_id: int, valid_value: bytes) -> list[tuple[str, bytes]]:
    """(expected dead-letter reason, value) pairs: records that must be dead-lettered, never delivered.

    ``schema_id`` is a registered id and ``valid_value`` a well-formed Confluent-framed event.
    """
    header = b"\x00" + struct.pack(">I", schema_id)
    return [
        ("undecodable", header + b"\xff\xff\xff"),                 # a known schema id, a garbage body
        ("undecodable", b"not avro at all"),                        # wrong magic byte
        ("undecodable", valid_value[: len(valid_value) // 2]),     # a real event cut in half
        ("unknown_schema", b"\x00" + struct.pack(">I", 999_999) + valid_value[5:]),  # nobody knows this id
    ]
