#!/usr/bin/env python3
"""``make demo``: the whole job end to end on local parts, then a summary.

Starts a real Kafka broker, a schema registry emulator and both destination emulators; produces a
realistic stream (thousands of events of every type across several partitions, plus a few malformed
records and events missing a field Freshsuccess requires); runs ``usage-consumer run`` as a separate
process until both destinations have committed to the end of the topic; stops it with SIGTERM; and prints
what was consumed, delivered, dead-lettered and committed. Exits non-zero if any valid event is missing.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from consumer.testing.devstack import DevStack
from consumer.testing.eventgen import make_event, malformed_values, realistic_events
from consumer.testing.local_kafka import die_with_parent

REPO = Path(__file__).resolve().parent.parent
FS_ACTION_TYPES = {"feature_used", "module_ended", "session_synced", "user_identified", "account_identified"}


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


Stream = list[tuple[bytes | None, bytes]]


def build_stream(stack: DevStack, schema_id: int, count: int) -> tuple[list[dict[str, Any]], Stream, Counter[str]]:
    """Valid events with malformed records and events lacking a Freshsuccess-required field mixed in."""
    events = list(realistic_events(count, seed=2024))
    rng = random.Random(99)
    incomplete = []
    for i in range(5):  # a feature_used event without its feature: Freshsuccess requires it
        event = make_event(rng, count + i, "feature_used")
        event["feature"] = None
        incomplete.append(event)
    values: Stream = [(e["account_id"].encode(), stack.encode(schema_id, e)) for e in events + incomplete]
    bad = malformed_values(schema_id, values[0][1]) * 2
    expected_bad: Counter[str] = Counter()
    for i, (reason, value) in enumerate(bad):
        values.insert(rng.randrange(len(values)), (f"bad-{i}".encode(), value))
        expected_bad[reason] += 1
    return [*events, *incomplete], values, expected_bad


def wait_drained(stack: DevStack, groups: list[str], topic: str, end: dict[int, int], process: Any,
                 timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    total = sum(end.values())
    while time.monotonic() < deadline:
        if process.poll() is not None:
            say(f"the consumer exited early with code {process.returncode}")
            return False
        committed = {g: stack.committed(g, topic) for g in groups}
        done = {g: sum(c.values()) for g, c in committed.items()}
        if all(c == end for c in committed.values()):
            return True
        if time.monotonic() - last_report > 2:
            last_report = time.monotonic()
            progress = ", ".join(f"{g.rsplit('.', 1)[-1]} {n}/{total}" for g, n in done.items())
            say(f"committed so far: {progress}")
        time.sleep(0.3)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout-s", type=float, default=180)
    args = parser.parse_args(argv)
    started = time.monotonic()

    say("starting a local Kafka broker, a schema registry and the Freshsuccess/Freshpaint emulators ...")
    with DevStack(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as stack:
        say(f"broker {stack.bootstrap}; registry {stack.registry.url}; freshsuccess "
            f"{stack.emulators.freshsuccess_url}; freshpaint {stack.emulators.freshpaint_url}")
        topic, dlq = stack.topics(partitions=args.partitions, prefix="usage-demo")
        schema_id = stack.register(topic)
        events, stream, expected_bad = build_stream(stack, schema_id, args.events)
        say(f"producing {len(events)} events and {sum(expected_bad.values())} malformed records to {topic} "
            f"({args.partitions} partitions) ...")
        stack.produce(topic, stream)
        end = stack.end_offsets(topic)

        config = stack.config_file(topic, dlq, group="usage-demo", logging={"format": "json"})
        env = {**os.environ, **stack.secrets_env()}
        log_path = Path(config).with_suffix(".log")
        say(f"running: usage-consumer run --config {config}  (logs: {log_path})")
        with log_path.open("w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "consumer.cli", "run", "--config", str(config)],
                                       env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                       preexec_fn=die_with_parent)
            groups = ["usage-demo.freshsuccess", "usage-demo.freshpaint"]
            try:
                drained = wait_drained(stack, groups, topic, end, process, args.timeout_s)
            finally:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                code = process.wait(timeout=60)
        say(f"consumer stopped with exit code {code}")

        fs = stack.emulators.freshsuccess.stats()
        fp = stack.emulators.freshpaint.stats()
        letters = stack.read_all(dlq)
        by_reason: Counter[tuple[str, str]] = Counter()
        for letter in letters:
            headers = {k: v.decode() for k, v in letter.headers()}
            by_reason[(headers["dlq.destination"], headers["dlq.reason"])] += 1
        committed = {g: stack.committed(g, topic) for g in groups}

        incomplete = sum(1 for e in events if e["event_type"] == "feature_used" and e["feature"] is None)
        valid_fs = sum(1 for e in events if e["event_type"] in FS_ACTION_TYPES) - incomplete
        page_views = sum(1 for e in events if e["event_type"] == "page_viewed")

        print()
        print("=" * 72)
        print(f" usage-consumer demo summary ({time.monotonic() - started:.1f}s)")
        print("=" * 72)
        print(f" produced to {topic}: {len(events)} events + {sum(expected_bad.values())} malformed records "
              f"= {sum(end.values())} records")
        print(f" Freshsuccess accepted {fs['accepted']} events (expected {valid_fs}) in {fs['requests']} "
              f"requests; dropped by the API: {fs['dropped']}")
        print(f"   skipped (no Freshsuccess rule: page views): {page_views}")
        print(f" Freshpaint accepted {fp['accepted']} events (expected {len(events)}) in {fp['requests']} "
              f"requests; duplicates removed: {fp['duplicates']}")
        print(" dead-lettered:")
        for (destination, reason), n in sorted(by_reason.items()):
            print(f"   {destination:<13} {reason:<24} {n}")
        print(" committed offsets vs end offsets:")
        for partition in sorted(end):
            row = "  ".join(f"{g.rsplit('.', 1)[-1]} {committed[g].get(partition, 0):>5}" for g in groups)
            print(f"   partition {partition}: end {end[partition]:>5}  {row}")
        print("=" * 72)

        expected_letters = Counter({("freshsuccess", r): n for r, n in expected_bad.items()})
        expected_letters.update({("freshpaint", r): n for r, n in expected_bad.items()})
        expected_letters[("freshsuccess", "missing_required_field")] += incomplete
        problems = []
        if not drained:
            problems.append("the topic was not drained in time")
        if fs["accepted"] != valid_fs:
            problems.append(f"Freshsuccess accepted {fs['accepted']}, expected {valid_fs}")
        if fp["accepted"] != len(events):
            problems.append(f"Freshpaint accepted {fp['accepted']}, expected {len(events)}")
        if by_reason != expected_letters:
            problems.append(f"dead letters {dict(by_reason)} differ from expected {dict(expected_letters)}")
        if any(committed[g] != end for g in groups):
            problems.append("committed offsets did not reach the end offsets")
        if code != 0:
            problems.append(f"the consumer exited with {code}")
        if problems:
            for problem in problems:
                print(f" PROBLEM: {problem}")
            print(f" consumer log: {log_path}")
            return 1
        print(" every valid event delivered, every malformed one dead-lettered, all offsets committed.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
