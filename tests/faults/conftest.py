"""Fixtures of the fault-injection suite: the session broker, one dev stack, scenarios, seeds and figures.

The broker fixture is the integration tier's (``tests/integration/conftest.py``), re-exported so that both
tiers start and stop their broker the same way (``KAFKA_BOOTSTRAP_SERVERS`` reuses a running one).

Every test records its figures (events produced, delivered, duplicated before and after de-duplication,
dead-lettered, lost, memory; the SIGKILL test also Freshsuccess duplicates per kill); at the end of the session
they are printed and written to ``.local/faults-summary.json``, from which ``docs/reliability.md`` takes its table.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.testing.devstack import API_KEY, AUTH_KEY, TOKEN, DevStack
from consumer.testing.emulators import Emulators
from consumer.testing.faultkit import DESTINATIONS, Scenario
from consumer.testing.local_kafka import LocalKafka
from tests.integration.conftest import kafka_admin, kafka_bootstrap

__all__ = ["kafka_admin", "kafka_bootstrap"]

REPO = Path(__file__).resolve().parents[2]
SUMMARY_PATH = REPO / ".local" / "faults-summary.json"
FIGURES = pytest.StashKey[dict[str, dict[str, Any]]]()
SEED = pytest.StashKey[int]()
STARTED = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    seed = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(1, 2**31))
    config.stash[SEED] = seed
    config.stash[FIGURES] = {}
    config.stash[STARTED] = time.monotonic()


def pytest_report_header(config: pytest.Config) -> str:
    return f"fault-injection seed: {config.stash[SEED]} (rerun with FAULTS_SEED={config.stash[SEED]})"


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The session seed mixed with the test's name: each test's random timing is reproducible on its own."""
    base = request.config.stash[SEED]
    value = (base ^ zlib.crc32(request.node.name.encode())) & 0x7FFFFFFF
    print(f"seed {value} (FAULTS_SEED={base})")
    return value


@pytest.fixture(scope="session")
def stack(kafka_bootstrap: str) -> Iterator[DevStack]:
    with DevStack(kafka_bootstrap) as running:
        yield running


@pytest.fixture
def own_broker() -> Iterator[tuple[LocalKafka, DevStack]]:
    """A broker of the test's own (to restart, kill or freeze), with a dev stack of its own on it."""
    broker = LocalKafka(tie_to_parent=True)
    broker.start()
    try:
        with DevStack(broker.bootstrap) as stack:
            yield broker, stack
    finally:
        broker.stop()


@pytest.fixture
def fresh_emulators(stack: DevStack) -> None:
    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.clear_faults()
        emulator.reset()
    stack.registry.fail_with(None)


@pytest.fixture
def own_emulators() -> Iterator[Emulators]:
    """Emulators of this test alone, keeping every request (so each repeat can be traced to its event).

    Stopping them cancels handlers still sleeping in a latency fault, so nothing they accept late can
    land in another test's counts.
    """
    with Emulators(auth_key=AUTH_KEY, api_key=API_KEY, token=TOKEN, max_recorded_requests=None) as emulators:
        yield emulators


class FigureBook:
    """Where a test puts its figures for the summary."""

    def __init__(self, book: dict[str, dict[str, Any]], name: str) -> None:
        self._book = book
        self._name = name

    def record(self, figures: dict[str, Any]) -> None:
        self._book[self._name] = figures
        print(f"figures: {json.dumps(figures)}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> FigureBook:
    return FigureBook(request.config.stash[FIGURES], request.node.name)


@pytest.fixture
def make_scenario(stack: DevStack, fresh_emulators: None, tmp_path: Path) -> Iterator[Any]:
    """``make_scenario(name, **kwargs)`` -> a :class:`faultkit.Scenario`; processes stopped afterwards.

    On teardown the consumers' log tails are printed (pytest shows them when the test failed).
    """
    made: list[Scenario] = []

    def make(name: str, **kwargs: Any) -> Scenario:
        kwargs.setdefault("log_dir", tmp_path)
        on = kwargs.pop("stack", stack)
        scenario = Scenario(on, name=name, **kwargs)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.close()
        for process in scenario.processes:
            print(process.log_tail(15))


# ------------------------------------------------------------------------------------------- the summary


def _totals(book: dict[str, dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"events_produced": 0, "malformed_produced": 0, "dead_lettered": 0}
    for destination in DESTINATIONS:
        totals[destination] = dict.fromkeys(("expected", "delivered", "received", "duplicates",
                                             "duplicates_after_dedup", "lost", "unexpected"), 0)
    for figures in book.values():
        totals["events_produced"] += figures.get("events_produced", 0)
        totals["malformed_produced"] += figures.get("malformed_produced", 0)
        totals["dead_lettered"] += sum(figures.get("dead_lettered", {}).values())
        for destination in DESTINATIONS:
            for key, value in figures.get(destination, {}).items():
                totals[destination][key] += value
    return totals


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    book = session.config.stash.get(FIGURES, {})
    if not book:
        return
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": session.config.stash[SEED],
        "exit_status": int(exitstatus),
        "duration_s": round(time.monotonic() - session.config.stash[STARTED], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tests": book,
        "totals": _totals(book),
    }
    SUMMARY_PATH.write_text(json.dumps(summary, indent=2) + "\n")


def short_name(test_name: str) -> str:
    """``test_a_long_name[param]`` -> ``a_long_na…[param]``, for the summary table."""
    base, _, param = test_name.partition("[")
    base = base.removeprefix("test_")
    if len(base) > 40:
        base = base[:39] + "…"
    return base + (f"[{param}" if param else "")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    book = config.stash.get(FIGURES, {})
    if not book:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault-injection figures")
    write(f"seed {config.stash[SEED]}; written to {SUMMARY_PATH.relative_to(REPO)}")
    write(f"{'scenario':<60} {'events':>7} {'bad':>4} | {'FS got':>7} {'dup':>5} {'lost':>4} | "
          f"{'FP got':>7} {'dup':>5} {'kept':>4} {'lost':>4} | {'DLQ':>4} {'RSS MiB':>8} {'FS dup/kill':>11}")
    for name, f in book.items():
        fs, fp = f.get("freshsuccess", {}), f.get("freshpaint", {})
        rss = f.get("rss_mib", {}).get("max") if isinstance(f.get("rss_mib"), dict) else f.get("peak_rss_mib")
        write(f"{short_name(name):<60} {f.get('events_produced', 0):>7} {f.get('malformed_produced', 0):>4} | "
              f"{fs.get('delivered', 0):>7} {fs.get('duplicates', 0):>5} {fs.get('lost', 0):>4} | "
              f"{fp.get('delivered', 0):>7} {fp.get('duplicates', 0):>5} {fp.get('duplicates_after_dedup', 0):>4} "
              f"{fp.get('lost', 0):>4} | {sum(f.get('dead_lettered', {}).values()):>4} {rss or '-':>8} "
              f"{f.get('freshsuccess_duplicates_per_kill', '-'):>11}")
    per_kill = {name: f["freshsuccess_duplicates_per_kill"] for name, f in book.items()
                if "freshsuccess_duplicates_per_kill" in f}
    for name, value in per_kill.items():
        write(f"Freshsuccess duplicates per SIGKILL ({short_name(name)}): {value}")
