"""The service's threads carry their names at the OS level (``top -H``, ``ps -L``, the benchmark's CPU split)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from consumer.observability.health import HealthServer
from consumer.observability.threads import name_os_thread
from consumer.pipeline.delivery import DeliveryLoop
from consumer.testing.waiting import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def os_thread_names() -> set[str]:
    return {(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()}


def test_a_thread_takes_its_python_name_cut_to_what_linux_keeps() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread()
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=run, name="lane-freshsuccess-and-more")
    thread.start()
    thread.join()
    assert seen == ["lane-freshsucce"]


def test_the_delivery_loop_and_the_health_server_are_named() -> None:
    delivery = DeliveryLoop("delivery").start()
    health = HealthServer("127.0.0.1", 0, live=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                          metrics=lambda: b"").start()
    try:
        wait_until(lambda: {"delivery", "health"} <= os_thread_names(), timeout_s=5, what="named threads")
    finally:
        health.stop()
        delivery.stop()
