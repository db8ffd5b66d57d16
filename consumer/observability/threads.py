"""OS-level names for the service's threads, so ``top -H``, ``ps -L`` and profilers tell them apart.

Python (before 3.14) leaves every thread it starts named after the executable ("python"); librdkafka names
its own (``rdk:main``, ``rdk:broker1``, ...). Each of the service's threads calls :func:`name_os_thread` first
thing, so the lane (``lane-freshsuccess``), the delivery loop and the health server show up by name, and
``make bench`` can split a run's CPU by thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable

__all__ = ["name_os_thread"]

_PR_SET_NAME = 15
_MAX_NAME_BYTES = 15
"""Linux keeps 16 bytes, the terminating NUL included."""


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_SET_NAME = _prctl()


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread an OS-level name: ``name``, else its Python name (cut to 15 bytes). Does nothing
    where the OS offers no way to (the name is a convenience, never needed to run)."""
    if _SET_NAME is None:
        return
    encoded = (name or threading.current_thread().name).encode("utf-8", "replace")[:_MAX_NAME_BYTES]
    _SET_NAME(_PR_SET_NAME, ctypes.c_char_p(encoded), 0, 0, 0)
