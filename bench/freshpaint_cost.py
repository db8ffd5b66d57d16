#!/usr/bin/env python3
"""CPU per Freshpaint request: the sink as the service builds it, fed the way a lane feeds it.

The Freshpaint emulator runs as its own process (``usage-consumer emulate``), so only the client's CPU is
counted. This process builds the sink with :func:`consumer.app.build.build_sink` from the default settings
(64 requests in flight, batches of 2,000), decides realistic events up front (decode + default mapping, not
timed), then, timed: adds each message's decision to a :class:`~consumer.pipeline.batcher.Batcher`, hands
closed batches to a :class:`~consumer.pipeline.delivery.DeliveryLoop` (at most ``max_in_flight_batches`` at
once, waiting for one to finish like the lane does) and waits until every event was answered.

CPU is user + system time (``getrusage``) of this process (poll thread + delivery thread) over the timed
phase, divided by the number of requests; the median of ``--repeat`` runs is reported. ``--profile`` adds one
run under cProfile (each thread timed by its own CPU clock) and prints the top lines by own time.

``--transport aiohttp`` builds the same sink over aiohttp instead of the service's client, for comparison.
Results and the profile before and after issue 14's change: docs/performance.md, "Freshpaint per request".

Run: ``.venv/bin/python bench/freshpaint_cost.py [--events 20000] [--repeat 5] [--transport aiohttp] [--profile]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.app.build import build_sink, lane_settings, retry_policy
from consumer.config import default_mapping_file, load_settings
from consumer.decoding.decoder import RawDecoder
from consumer.decoding.encoding import encode_raw
from consumer.decoding.schemas import default_reader_schema_path, load_schema, parse
from consumer.mapping import load_mapping
from consumer.observability.logs import configure_logging
from consumer.pipeline.batcher import Batch, Batcher
from consumer.pipeline.delivery import DeliveryLoop
from consumer.pipeline.verdict import SEND, Decision, Judge
from consumer.sinks.freshpaint import FreshpaintSink
from consumer.testing.eventgen import realistic_events
from consumer.testing.fakes import kafka_message

TOKEN = "bench-2ce2b45b-af44-4426-a3ef-a314abce9c85"
TICKS = os.sysconf("SC_CLK_TCK")


def start_emulator(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``usage-consumer emulate`` in its own process; returns it and the Freshpaint base URL."""
    ready = directory / "emulators.json"
    env = {**os.environ, "FRESHSUCCESS_AUTH_KEY": "bench-auth", "FRESHSUCCESS_API_KEY": "bench-api",
           "FRESHPAINT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "emulate", "--ready-file", str(ready),
                             "--max-kept-events", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=(directory / "emulators.log").open("wb"))
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the emulator did not start: see {directory / 'emulators.log'}")
        time.sleep(0.05)
    return proc, str(json.loads(ready.read_text())["freshpaint_url"])


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def decisions_for(count: int) -> tuple[list[Any], list[Decision]]:
    """``count`` realistic records and the Freshpaint lane's decision on each (those it sends)."""
    schema = load_schema(default_reader_schema_path())
    parsed = parse(schema)
    mapping = load_mapping(default_mapping_file(), schema)
    assert mapping.freshpaint is not None
    judge = Judge(decoder=RawDecoder(parsed, parsed), map_fn=mapping.freshpaint, max_event_bytes=1 << 20,
                  ndjson=False)
    messages: list[Any] = []
    decisions: list[Decision] = []
    for offset, event in enumerate(realistic_events(count * 2, seed=3)):
        message = kafka_message("usage", offset % 8, offset // 8, encode_raw(event, parsed))
        decision = judge.decide(message.value(), "usage", message.partition(), message.offset())
        if decision.kind is SEND and len(decision.outputs) == 1:
            messages.append(message)
            decisions.append(decision)
            if len(messages) == count:
                break
    return messages, decisions


def feed(sink: FreshpaintSink, delivery: DeliveryLoop, messages: list[Any], decisions: list[Decision],
         *, max_events: int, max_in_flight_batches: int) -> int:
    """What a lane does with decided messages: batch them, submit closed batches, wait for a free slot;
    returns the number of events Freshpaint rejected (0 expected)."""
    batcher = Batcher(sink.name, max_events=max_events, max_bytes=1 << 30, max_wait_s=1e9, clock=time.monotonic,
                      ndjson=sink.ndjson)
    in_flight: list[tuple[Batch, concurrent.futures.Future[Any]]] = []
    rejected = 0

    def collect() -> None:
        nonlocal rejected, in_flight
        still = []
        for batch, future in in_flight:
            if future.done():
                rejected += len(future.result())
                batch.work.release()
            else:
                still.append((batch, future))
        in_flight = still

    def submit() -> None:
        batch = batcher.take()
        if batch is not None:
            batch.submitted_at = time.monotonic()
            in_flight.append((batch, delivery.submit(sink.write(batch))))

    add = batcher.add
    for message, decision in zip(messages, decisions, strict=True):
        key = (message.topic(), message.partition())
        add(decision, message, key, message.offset())
        if batcher.full:
            collect()
            while len(in_flight) >= max_in_flight_batches:
                delivery.wait([f for _, f in in_flight], 1.0)
                collect()
            submit()
    submit()
    while in_flight:
        delivery.wait([f for _, f in in_flight], 1.0)
        collect()
    return rejected


def profiled(delivery: DeliveryLoop, run: Callable[[], Any], top: int) -> str:
    """Run ``run`` with cProfile on the poll thread and on the delivery thread, each timing its own thread's CPU
    (not wall time: a send that waits for the other core is not cost); their merged top lines."""
    poll, loop_profile = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
    delivery.loop.call_soon_threadsafe(loop_profile.enable)
    poll.enable()
    try:
        run()
    finally:
        poll.disable()
        done = concurrent.futures.Future[None]()
        delivery.loop.call_soon_threadsafe(lambda: (loop_profile.disable(), done.set_result(None)))
        done.result(10)
    out = io.StringIO()
    stats = pstats.Stats(loop_profile, stream=out)
    stats.add(poll)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def measure(args: argparse.Namespace, sink: FreshpaintSink, delivery: DeliveryLoop, messages: list[Any],
            decisions: list[Decision], max_events: int, max_in_flight_batches: int,
            emulator: subprocess.Popen[bytes] | None) -> None:
    """Warm up, time ``--repeat`` runs, print each and the median; then the profile if asked."""

    def once() -> int:
        return feed(sink, delivery, messages, decisions, max_events=max_events,
                    max_in_flight_batches=max_in_flight_batches)

    assert once() == 0, "the emulator rejected events"  # warm-up: connections opened, caches filled
    cpu_us: list[float] = []
    system_us: list[float] = []
    emulator_us: list[float] = []
    rates: list[float] = []
    for run in range(args.repeat):
        server_before = cpu_of(emulator.pid) if emulator is not None else 0.0
        usage_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        once()
        usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall_before
        user = (usage.ru_utime - usage_before.ru_utime) / len(messages) * 1e6
        system = (usage.ru_stime - usage_before.ru_stime) / len(messages) * 1e6
        cpu_us.append(user + system)
        system_us.append(system)
        rates.append(len(messages) / wall)
        line = (f"run {run + 1}: {cpu_us[-1]:6.1f} CPU-µs per request ({system:5.1f} of it in the kernel), "
                f"{rates[-1]:8,.0f} requests/s")
        if emulator is not None:
            emulator_us.append((cpu_of(emulator.pid) - server_before) / len(messages) * 1e6)
            line += f" (emulator: {emulator_us[-1]:.0f} CPU-µs per request)"
        print(line, flush=True)
    median = statistics.median(cpu_us)
    print(f"median: {median:.1f} CPU-µs per request (client process, both threads; "
          f"{statistics.median(system_us):.1f} in the kernel), {statistics.median(rates):,.0f} requests/s",
          flush=True)
    if args.profile:
        print("\nprofile of one more run (poll + delivery threads), by own time:")
        print(profiled(delivery, once, args.top))
    if args.json is not None:
        args.json.write_text(json.dumps({"requests_per_run": len(messages), "cpu_us_per_request": cpu_us,
                                         "system_us_per_request": system_us,
                                         "median_cpu_us_per_request": median, "requests_per_s": rates,
                                         "emulator_cpu_us_per_request": emulator_us}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="requests per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--profile", action="store_true", help="add one run under cProfile, print its top lines")
    parser.add_argument("--top", type=int, default=30, help="profile lines to print (default 30)")
    parser.add_argument("--url", default=None, help="a running Freshpaint emulator instead of starting one "
                        f"(it must accept the token {TOKEN!r})")
    parser.add_argument("--transport", choices=["http1", "aiohttp"], default=None,
                        help="build the sink with this HTTP client instead of the service's default (the same "
                        "settings otherwise), to compare clients")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    configure_logging(level="warning", fmt="json")  # as the service runs (bench config: warning)
    directory = Path(tempfile.mkdtemp(prefix="freshpaint-cost-"))
    emulator: subprocess.Popen[bytes] | None = None
    delivery: DeliveryLoop | None = None
    try:
        if args.url is None:
            emulator, url = start_emulator(directory)
        else:
            url = args.url
        config = directory / "config.yaml"
        config.write_text(json.dumps({"freshpaint": {"base_url": url}}))
        settings = load_settings(config, environ={"FRESHPAINT_TOKEN": TOKEN})
        lanes = lane_settings(settings)
        sink = build_sink(settings, "freshpaint")
        assert isinstance(sink, FreshpaintSink)
        if args.transport is not None:
            fp = settings.freshpaint
            sink = FreshpaintSink(base_url=fp.base_url, token=TOKEN, max_in_flight=fp.max_in_flight_requests,
                                  timeout_s=fp.timeout_s, retry=retry_policy(settings), ordered=fp.ordered,
                                  transport=args.transport)
        messages, decisions = decisions_for(args.events)
        delivery = DeliveryLoop("delivery").start()
        client = getattr(sink, "transport", "its default client")  # older code (a --baseline copy) has no attribute
        print(f"{sink!r} over {client}: {len(messages):,} requests per run, batches of {lanes.max_events}, "
              f"{lanes.max_in_flight_batches} batches and {settings.freshpaint.max_in_flight_requests} requests "
              "in flight", flush=True)
        measure(args, sink, delivery, messages, decisions, lanes.max_events, lanes.max_in_flight_batches,
                emulator)
        delivery.call(sink.aclose, 10)
    finally:
        if delivery is not None:
            delivery.stop()
        if emulator is not None:
            emulator.terminate()
            try:
                emulator.wait(10)
            except subprocess.TimeoutExpired:
                emulator.kill()
                emulator.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
