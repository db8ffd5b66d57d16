"""What the operator tools share: the configured decoder (checked once, no retry loop) and time parsing."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from consumer.config import Settings
from consumer.decoding.decoder import Decoder, decoder_for
from consumer.decoding.registry import SchemaRegistryClient
from consumer.errors import ConfigError, FatalError, TransientError


def tool_decoder(settings: Settings, reader_schema: dict[str, Any], *, check: bool = True) -> Decoder:
    """The decoder the consumer would use; for ``confluent`` the registry is asked once, without retries."""
    return decoder_for(settings, reader_schema, check_registry=check_once if check else None)


def check_once(registry: SchemaRegistryClient) -> None:
    """The tools' registry check: one question, no retries (an operator is waiting for the answer)."""
    try:
        registry.check()
    except TransientError as exc:
        raise FatalError(f"{exc}; check decoding.schema_registry_url (or SCHEMA_REGISTRY_URL) and that the "
                         "registry is up") from None


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time_ms(text: str, *, now_s: float | None = None, option: str = "--since") -> int:
    """Epoch milliseconds from ``2025-01-31T10:00:00Z``, ``2025-01-31 10:00`` (UTC when no zone),
    ``2025-01-31``, epoch milliseconds, or a duration ago: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        ago_s = float(relative.group(1)) * _UNIT_S[relative.group(2).lower()]
        return int(((time.time() if now_s is None else now_s) - ago_s) * 1000)
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected a time like 2025-01-31T10:00:00Z, 2025-01-31, "
                          "epoch milliseconds, or a duration ago like 30m, 2h, 7d") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def format_time_ms(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "unknown time"
    stamp = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"
