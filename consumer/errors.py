"""The one exception tree of usage-consumer.

::

    UsageConsumerError
    ├── ConfigError              bad configuration: stops start-up, names file, line and key
    │   └── MappingInvalid       the mapping file does not compile; carries every problem found
    ├── EventError               one bad event: dead-lettered with ``reason``, never blocks its partition
    │   ├── DecodeError          bytes that are not a valid event for their framing / schema
    │   ├── UnknownSchema        a schema id or fingerprint that no registry or schema file knows
    │   ├── MappingFailed        a rule could not be applied to this event (e.g. a value that won't convert)
    │   ├── MissingRequiredField an output lacks a field its destination requires
    │   ├── OversizedEvent       the record is larger than the configured limit
    │   ├── TooLarge             an output exceeds its destination's caps (properties, request bytes)
    │   └── Rejected             the destination refused this event for good (non-retryable 4xx)
    ├── TransientError           worth retrying later: registry or destination down, timeouts, 5xx, 429
    └── FatalError               the consumer must stop and say why (e.g. Freshsuccess answered 400)
        └── BadCredentials       a destination answered 401/403: pause it and report, never dead-letter

``EventError.reason`` is the short, stable code used in the dead-letter headers and in metric labels.
Messages never contain secrets: code that builds them must log hosts, not URLs.
"""

from __future__ import annotations


class UsageConsumerError(Exception):
    """Base of every error usage-consumer raises on purpose."""


class ConfigError(UsageConsumerError):
    """Configuration that cannot be used; raised at start-up only."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")


class MappingInvalid(ConfigError):
    """The mapping did not compile; ``problems`` lists every one, each already naming file, line and rule."""

    def __init__(self, problems: list[str], *, title: str = "invalid mapping") -> None:
        self.problems = list(problems)
        Exception.__init__(self, f"{title}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class EventError(UsageConsumerError):
    """A single event that cannot be delivered; it goes to the dead-letter topic.

    Each subclass names its ``reason`` in its header (``class X(EventError, reason="x")``). The keyword is
    required, so a new kind of bad event cannot reach the dead-letter topic under its parent's code.
    """

    reason = "bad_event"

    def __init_subclass__(cls, *, reason: str) -> None:
        super().__init_subclass__()
        cls.reason = reason


class DecodeError(EventError, reason="undecodable"):
    """Bytes that are not a valid event for their framing / schema."""


class UnknownSchema(EventError, reason="unknown_schema"):
    """A schema id or fingerprint that no registry or schema file knows."""


class MappingFailed(EventError, reason="mapping_failed"):
    """A rule could not be applied to this event (e.g. a value that won't convert)."""


class MissingRequiredField(EventError, reason="missing_required_field"):
    """An output lacks a field its destination requires."""


class SchemaMismatch(EventError, reason="schema_mismatch"):
    """The record's writer schema does not resolve to its stream's reader schema (both are named)."""


class NoStream(EventError, reason="no_stream"):
    """The record's topic belongs to no configured stream (``streams[].topics``)."""


class OversizedEvent(EventError, reason="oversized"):
    """The record is larger than the configured limit."""


class TooLarge(EventError, reason="too_large"):
    """An output exceeds its destination's configured caps: it would be refused, or silently dropped."""


class Rejected(EventError, reason="rejected"):
    """The destination refused the event (non-retryable); ``status`` and ``body`` say how."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class TransientError(UsageConsumerError):
    """Retry later; ``retry_after_s`` is the server's hint when it gave one."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalError(UsageConsumerError):
    """Stop consuming, commit nothing further, and report this message."""


class BadCredentials(FatalError):
    """401/403 from a destination: the lane pauses and reports instead of dead-lettering."""


def dead_letter_reasons() -> list[str]:
    """Every ``reason`` an :class:`EventError` can carry, sorted. Metrics export each at 0 from the start, so
    that the first dead letter of a reason shows as an increase, not as a new series already at 1."""
    found: set[str] = set()
    pending: list[type[EventError]] = [EventError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind is not EventError:
            found.add(kind.reason)
    return sorted(found)
