"""Logging: structlog JSON lines (one object per line), or readable lines on a terminal.

Secrets are scrubbed twice: code never logs them (hosts, not URLs), and as a last line of defence a
processor replaces any known secret value found in any string field with ``***``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO, cast

import orjson
import structlog


def _json_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class SecretScrubber:
    """A structlog processor replacing known secret values in every string of the event dict."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event
        return {key: self.scrub(value) for key, value in event.items()}


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it), never a stale handle."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(*, level: str = "info", fmt: Literal["auto", "json", "console"] = "auto",
                      secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Configure structlog once for the process (the CLI calls this before anything logs)."""
    # httpx logs request URLs at INFO, and Freshsuccess URLs carry the keys: never let it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = stream if stream is not None else _CurrentStderr()
    console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if console
                     else structlog.processors.JSONRenderer(serializer=_json_dumps))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            SecretScrubber(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(cast("TextIO", out)),
        cache_logger_on_first_use=False,
    )
