"""What a sink would send, for the dry run: secrets masked, body before compression."""

from __future__ import annotations

from dataclasses import dataclass

MASK = "***"
"""What stands where a secret would be."""


@dataclass(frozen=True)
class Preview:
    """One HTTP request as the sink would send it; ``Content-Length`` is the size actually sent."""

    method: str
    url: str
    headers: dict[str, str]
    body: str
