"""A plain-text progress bar for long tool runs: redrawn in place on a terminal, one line per 10% otherwise."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    """``advance()`` as items finish; ``finish()`` once. Writes only to ``stream`` (stderr: stdout stays clean)."""

    def __init__(self, total: int, stream: Any, *, label: str = "progress", width: int = 30,
                 min_interval_s: float = 0.1) -> None:
        self.total = max(0, total)
        self.done = 0
        self.note = ""
        self._stream = stream
        self._label = label
        self._width = width
        self._min_interval_s = min_interval_s
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1
        self._last_printed = -1
        self._finished = False

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.done = min(self.total, self.done + count) if self.total else self.done + count
        if note is not None:
            self.note = note
        self._draw(final=False)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._draw(final=True)

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        text = f"{self._label} [{bar}] {self.done}/{self.total} {fraction:4.0%}"
        return f"{text} {self.note}" if self.note else text

    def _draw(self, *, final: bool) -> None:
        if self._tty:
            now = time.monotonic()
            if not final and now - self._last_draw < self._min_interval_s:
                return
            self._last_draw = now
            self._stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        else:
            decile = int(10 * self.done / self.total) if self.total else 10
            if final:
                if self._last_printed == self.done:
                    return
            elif decile <= self._last_decile:
                return
            self._last_decile = max(decile, self._last_decile)
            self._last_printed = self.done
            self._stream.write(self.line() + "\n")
        self._stream.flush()
