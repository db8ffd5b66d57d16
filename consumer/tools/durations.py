"""Durations as operators type and read them: ``15m``, ``1h30m`` in; ``3m05s``, ``2h03m`` out.

The same units as ``--since`` (``s``, ``m``, ``h``, ``d``, ``w``), so ``status --window 2h`` and
``dlq inspect --since 2h`` mean the same stretch of time.
"""

from __future__ import annotations

import math
import re

from consumer.errors import ConfigError

UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_WHOLE = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[smhdw]\s*)+", re.IGNORECASE)


def parse_duration_s(text: str, *, option: str = "--window") -> float:
    """Seconds from ``90s``, ``15m``, ``1h``, ``1h30m``, ``7d``, ``1w`` (a bare number is seconds).
    Refuses zero, negative and unit-less nonsense with a :class:`ConfigError` naming ``option``."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif _WHOLE.fullmatch(value):
        seconds = sum(float(number) * UNIT_S[unit.lower()] for number, unit in _PART.findall(value))
    else:
        raise ConfigError(f"{option} {text!r}: expected a duration like 90s, 15m, 1h, 1h30m, 7d")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{option} {text!r}: the duration must be longer than zero")
    return seconds


def format_duration_s(seconds: float | None) -> str:
    """Two units at most, largest first, rounded down, a zero second unit left out (``0s``, ``45s``,
    ``3m05s``, ``15m``, ``2h03m``, ``1h``, ``3d04h``); ``-`` when unknown. Short enough for a table column,
    exact enough to compare at a glance."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = max(0, int(seconds))
    for unit_s, unit, smaller_s, smaller in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if whole >= unit_s:
            rest = whole % unit_s // smaller_s
            return f"{whole // unit_s}{unit}" + (f"{rest:02d}{smaller}" if rest else "")
    return f"{whole}s"
