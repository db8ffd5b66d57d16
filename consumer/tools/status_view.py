"""How ``usage-consumer status`` shows its facts: one screen of plain tables, or one JSON object.

The JSON keys are part of the interface (scripts and tests read them; docs/runbook.md lists them): add keys,
never rename or drop one.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from consumer.tools.common import format_time_ms
from consumer.tools.durations import format_duration_s

if TYPE_CHECKING:
    from consumer.tools.status import DeadLetterCounts, DestinationStatus, PartitionLag, Status

CLEAR_SCREEN = "\x1b[H\x1b[2J"


# ------------------------------------------------------------------------------------------- JSON


def status_json(status: Status) -> dict[str, Any]:
    """The whole status as plain JSON values, keys in a fixed order."""
    return {
        "at_ms": status.at_ms,
        "at": format_time_ms(status.at_ms),
        "bootstrap_servers": status.bootstrap_servers,
        "destinations": [destination_json(d) for d in status.destinations],
        "dead_letters": dead_letters_json(status.dead_letters),
    }


def destination_json(destination: DestinationStatus) -> dict[str, Any]:
    group = destination.group
    return {
        "destination": destination.destination,
        "group": group.group,
        "state": group.state,
        "coordinator": group.coordinator,
        "error": group.error,
        "members": [{"client_id": m.client_id, "host": m.host, "member_id": m.member_id,
                     "assigned": [{"topic": t, "partition": p} for t, p in m.assigned]} for m in group.members],
        "lag_messages": destination.lag_messages,
        "lag_s": destination.lag_s,
        "partitions": [partition_json(p) for p in destination.partitions],
    }


def partition_json(row: PartitionLag) -> dict[str, Any]:
    return {
        "topic": row.topic, "partition": row.partition, "committed": row.committed,
        "earliest_offset": row.earliest_offset, "end_offset": row.end_offset, "next_offset": row.next_offset,
        "starts_from": row.starts_from, "lag_messages": row.lag_messages, "lag_s": row.lag_s,
        "next_record_ms": row.next_record_ms, "member": row.member, "note": row.note,
    }


def dead_letters_json(counts: DeadLetterCounts) -> dict[str, Any]:
    return {
        "topic": counts.topic,
        "window_s": counts.window_s,
        "since_ms": counts.since_ms,
        "since": format_time_ms(counts.since_ms),
        "total": counts.total,
        "by_reason": dict(counts.by_reason.most_common()),
        "by_destination": {destination: {"total": sum(reasons.values()), "by_reason": dict(reasons.most_common())}
                           for destination, reasons in counts.by_destination.items()},
        "error": counts.error,
    }


def render_json(status: Status, *, compact: bool = False) -> str:
    """Indented for one run; one line per refresh under ``--watch`` (JSON lines, for ``jq`` or a pipe)."""
    option = 0 if compact else orjson.OPT_INDENT_2
    return orjson.dumps(status_json(status), option=option).decode() + "\n"


def render_failure(text: str, *, as_json: bool) -> str:
    """What a ``--watch`` refresh that failed shows instead of the screen (the loop goes on)."""
    if as_json:
        return orjson.dumps({"error": text}).decode() + "\n"
    return f"refresh failed (retrying): {text}\n"


# ------------------------------------------------------------------------------------------ screen


def render_screen(status: Status, *, watch_s: float | None = None) -> str:
    every = f" (every {watch_s:g}s; Ctrl-C stops)" if watch_s is not None else ""
    lines = [f"usage-consumer status at {format_time_ms(status.at_ms)}, Kafka {status.bootstrap_servers}{every}"]
    for destination in status.destinations:
        lines += ["", *destination_lines(destination)]
    lines += ["", *dead_letter_lines(status.dead_letters, [d.destination for d in status.destinations])]
    return "\n".join(lines) + "\n"


def destination_lines(destination: DestinationStatus) -> list[str]:
    group = destination.group
    members = len(group.members)
    state = f"state unknown ({group.error})" if group.error else group.state
    if group.state == "dead":
        state = "no such group (no member, nothing committed)"
    who = f"{members} member{'s' if members != 1 else ''}" if members else "no member"
    lines = [f"{destination.destination}: group {group.group}, {state}, {who}; lag "
             f"{destination.lag_messages} message{'s' if destination.lag_messages != 1 else ''}, "
             f"{format_duration_s(destination.lag_s)}"]
    if group.members:
        members_rows: list[tuple[str, ...]] = [("MEMBER", "HOST", "ASSIGNED")]
        members_rows += [(m.client_id, m.host, assigned_text(m.assigned) or "nothing") for m in group.members]
        lines += ["  " + line for line in table(members_rows)]
    rows: list[tuple[str, ...]] = [("PARTITION", "COMMITTED", "END", "LAG", "LAG_S", "MEMBER", "NOTE")]
    rows += [(f"{p.topic}[{p.partition}]", "-" if p.committed is None else str(p.committed), str(p.end_offset),
              str(p.lag_messages), format_duration_s(p.lag_s), p.member or "-", p.note or "")
             for p in destination.partitions]
    lines += ["  " + line for line in table(rows)]
    return lines


def dead_letter_lines(counts: DeadLetterCounts, destinations: list[str]) -> list[str]:
    title = (f"dead letters in {counts.topic} over the last {format_duration_s(counts.window_s)} "
             f"(since {format_time_ms(counts.since_ms)})")
    if counts.error:
        return [f"{title}: not read: {counts.error}"]
    if not counts.total:
        return [f"{title}: none"]
    columns = list(dict.fromkeys([*destinations, *counts.by_destination]))
    rows: list[tuple[str, ...]] = [("REASON", *(c.upper() for c in columns), "TOTAL")]
    empty: Counter[str] = Counter()
    for reason, total in counts.by_reason.most_common():
        rows.append((reason, *(str(counts.by_destination.get(c, empty)[reason]) for c in columns), str(total)))
    return [f"{title}: {counts.total}", *("  " + line for line in table(rows))]


def assigned_text(assigned: tuple[tuple[str, int], ...]) -> str:
    """``usage-events[0-3,7] other[0]``: a member's partitions per topic, consecutive runs shortened."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in assigned:
        by_topic.setdefault(topic, []).append(partition)
    return " ".join(f"{topic}[{runs(sorted(partitions))}]" for topic, partitions in by_topic.items())


def runs(numbers: list[int]) -> str:
    """``[0, 1, 2, 3, 7]`` -> ``0-3,7``."""
    parts: list[str] = []
    start = previous = None
    for number in [*numbers, None]:
        if start is not None and number is not None and previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = number
    return ",".join(parts)


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded (it holds free text)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
            for row in rows]
