"""Small test utilities shared by both tiers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from consumer.testing.waiting import wait_until

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout_s: float = 30.0, interval_s: float = 0.05,
             what: str = "condition") -> T:
    """:func:`consumer.testing.waiting.wait_until` with the defaults the unit and integration tests use."""
    result: T = wait_until(condition, timeout_s=timeout_s, what=what, interval_s=interval_s)
    return result
