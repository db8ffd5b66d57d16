#!/usr/bin/env python3
"""``make bench``: usage-consumer against the machine's ceilings and a naive baseline, on the same data.

Starts a local broker, a schema registry emulator (in this process) and the destination emulators (in their
own process), fills an 8-partition topic with realistic Avro events (Confluent framing), then measures, each
``--repeat`` times (medians reported):

  (a) consume ceiling    (b) decode ceiling    (c) naive baseline    (d) usage-consumer -> Freshsuccess
  (e) usage-consumer -> Freshpaint (on the first ``--freshpaint-events`` of the same stream)
  (f) two usage-consumer processes in one group -> Freshsuccess
  (g) with ``--baseline REV``: usage-consumer as of commit REV -> Freshsuccess, alternated with (d), so a
      change's cost on the same data and machine shows as the ratio d/g
  (q) the Quix Streams peer and (r) the sentry-arroyo peer -> Freshsuccess (bench/peers/): what a Python user
      would deploy instead, doing the same work (fastavro decode, the same Freshsuccess actions, gzip NDJSON
      POSTs of the same size, commit after delivery), each from its own virtual environment
      (``.venv-peers/*``, built on first use from ``bench/requirements-peers-*.txt``), alternated with (d);
      ``--no-peers`` leaves them out
  (h) one usage-consumer process delivering to both Freshsuccess and Freshpaint (the chart's default), on the
      ``--freshpaint-events`` stream
  (l) usage-consumer -> Freshsuccess on a stream whose events carry ~50-entry ``properties`` maps
      (``--large-events`` of them)

Every measured program runs as its own process: events/s, CPU seconds per million events (user + system,
from ``wait4``), peak and steady resident memory. A live phase then produces at a fixed rate while (d) and
(e) run, for p50/p99 latency from produce time to acceptance by the emulator. Prints a table and writes
``bench/results/latest.json``. ``--smoke`` runs everything small and once (``make test`` uses it to check
the harness, not the timings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from peers import venvs as peer_venvs  # bench/peers/venvs.py (this script's directory is on sys.path)

from consumer.testing.devstack import API_KEY, AUTH_KEY, TOKEN, DevStack
from consumer.testing.eventgen import realistic_events
from consumer.testing.local_kafka import die_with_parent

REPO = Path(__file__).resolve().parent.parent

RESULTS = REPO / "bench" / "results"
PY = sys.executable
FS_TYPES = {"feature_used", "module_ended", "session_synced", "user_identified", "account_identified"}
PARTITIONS = 8
MAX_WAIT_S = 0.5
"""``batching.max_wait_s`` of the benchmark's consumer configuration; the peers hold batches as long at most."""
BATCH_EVENTS = 2000
"""usage-consumer's ``batching.max_events`` default: the peers POST batches of this many actions."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    events: int
    elapsed_s: float
    cpu_s: float
    peak_rss_mb: float
    steady_rss_mb: float | None = None
    processed: int = 0
    """Events the process handled in all (CPU per million is over these); 0 means ``events``."""
    threads: dict[str, float] = field(default_factory=dict)
    """CPU seconds by OS thread name (summed over the processes), read just before they were told to stop."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class Result:
    name: str
    label: str
    runs: list[Run] = field(default_factory=list)
    latency: dict[str, float] | None = None
    note: str = ""

    def median(self, attribute: str) -> float | None:
        values = [getattr(r, attribute) for r in self.runs if getattr(r, attribute) is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        eps = self.median("events_per_s") or 0.0
        cpu = statistics.median(r.cpu_s / (r.processed or r.events) * 1e6 for r in self.runs) if self.runs else None
        names = {name for r in self.runs for name in r.threads}
        threads = {name: round(statistics.median(r.threads.get(name, 0.0) / (r.processed or r.events) * 1e6
                                                 for r in self.runs), 2) for name in sorted(names)}
        return {"label": self.label, "events_per_s": round(eps), "cpu_s_per_million": cpu and round(cpu, 2),
                "cpu_s_per_million_by_thread": threads,
                "peak_rss_mb": self.median("peak_rss_mb"), "steady_rss_mb": self.median("steady_rss_mb"),
                "latency": self.latency, "runs": [asdict(r) | {"events_per_s": round(r.events_per_s)}
                                                  for r in self.runs], "note": self.note}


# ------------------------------------------------------------------------------------ processes


class Proc:
    """A child process: CPU time read with wait4 when it ends, peak RSS from its own ``VmHWM``.

    Not ``ru_maxrss``: Linux records the forking parent's resident size in the child's maximum when the child
    execs, so wait4 would report at least this (large, event-producing) process's RSS for every child.
    ``VmHWM`` belongs to the child's own address space; it is read every 0.05 s while :meth:`finish` waits
    and at every :meth:`sample_rss`, so the last reading before exit is the peak.
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
                 cwd: Path = REPO) -> None:
        """``cwd`` holds the ``consumer`` package the child imports (``-m consumer.cli``): the repository, or a
        baseline commit's copy of it."""
        out = log.open("w") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if log is None else out,
                                      stderr=subprocess.STDOUT if log else subprocess.DEVNULL, cwd=cwd,
                                      preexec_fn=die_with_parent)
        self.rss_samples: list[float] = []
        self.peak_mb = 0.0

    def _status(self) -> dict[str, float]:
        """VmRSS and VmHWM in MB (empty once the process is gone)."""
        found = {}
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1]) / 1024
        except OSError:
            pass
        self.peak_mb = max(self.peak_mb, found.get("VmHWM", 0.0))
        return found

    def sample_rss(self) -> None:
        rss = self._status().get("VmRSS")
        if rss is not None:
            self.rss_samples.append(rss)

    def finish(self, *, terminate: bool, timeout_s: float = 60) -> tuple[float, float, str]:
        """(cpu seconds, peak RSS MB, stdout) once the process has exited."""
        self._status()
        if terminate and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.popen.kill()
            self._status()
            time.sleep(0.05)
        out = self.popen.stdout.read().decode() if self.popen.stdout else ""
        return usage.ru_utime + usage.ru_stime, self.peak_mb or usage.ru_maxrss / 1024, out

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far by thread: usage-consumer names its threads (``lane-freshsuccess``, ``delivery``,
        ``health``), librdkafka its own (all ``rdk:*`` summed as ``librdkafka``); the main thread, which starts
        the service, is ``main``. Threads inherit their starter's name, so ``delivery`` includes the compression
        threads its event loop starts."""
        found: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{self.popen.pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended meanwhile
                continue
            if task.name == str(self.popen.pid):
                name = "main"
            elif name.startswith("rdk:"):
                name = "librdkafka"
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return found


def run_loop(mode: str, stack: DevStack, topic: str, count: int, fs_url: str) -> Run:
    proc = Proc([PY, str(REPO / "bench" / "loops.py"), mode, "--bootstrap", stack.bootstrap, "--topic", topic,
                 "--count", str(count), "--registry", stack.registry.url, "--freshsuccess-url", fs_url,
                 "--auth-key", AUTH_KEY, "--api-key", API_KEY])
    cpu, peak, out = proc.finish(terminate=False, timeout_s=3600)
    if proc.popen.returncode != 0:
        raise RuntimeError(f"bench loop {mode} failed: {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return Run(result["events"], result["elapsed_s"], cpu, peak)


class EmulatorClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=10)

    def stats(self) -> dict[str, int]:
        data: dict[str, int] = self.http.get(f"{self.url}/_emulator/stats").json()
        return data

    def latency(self) -> dict[str, float]:
        data: dict[str, float] = self.http.get(f"{self.url}/_emulator/latency").json()
        return data

    def reset(self) -> None:
        self.http.post(f"{self.url}/_emulator/reset")


def consumer_config(stack: DevStack, topic: str, dlq: str, destination: str, urls: dict[str, str],
                    directory: Path, group: str, freshpaint: dict[str, Any] | None = None) -> Path:
    """``destination``: "freshsuccess", "freshpaint" or "both"; ``freshpaint``: more Freshpaint settings."""
    config = {
        "kafka": {"bootstrap_servers": stack.bootstrap, "topics": [topic], "dead_letter_topic": dlq,
                  "group_id": group, "consume_batch_size": 2000},
        "decoding": {"framing": "confluent", "schema_registry_url": stack.registry.url},
        "freshsuccess": {"enabled": destination in ("freshsuccess", "both"), "base_url": urls["freshsuccess"]},
        "freshpaint": {"enabled": destination in ("freshpaint", "both"), "base_url": urls["freshpaint"],
                       "max_in_flight_requests": 64, **(freshpaint or {})},
        "batching": {"max_wait_s": MAX_WAIT_S},
        "health": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "warning", "format": "json"},
    }
    path = directory / f"{group}.yaml"
    path.write_text(json.dumps(config))
    return path


CONSUMER_ENV = {"FRESHSUCCESS_AUTH_KEY": AUTH_KEY, "FRESHSUCCESS_API_KEY": API_KEY, "FRESHPAINT_TOKEN": TOKEN}


def run_consumers(stack: DevStack, emulator: EmulatorClient, config: Path, *, processes: int, expected: int,
                  directory: Path, source_events: int, timeout_s: float = 1800, code: Path = REPO,
                  also: list[tuple[EmulatorClient, int]] | None = None) -> Run:
    """Start ``processes`` usage-consumer processes; time from the first accepted event to the last.

    ``also``: further (emulator, expected outputs) the same processes deliver to (row h).
    """
    env = {**os.environ, **CONSUMER_ENV}

    def start() -> list[Proc]:
        return [Proc([PY, "-m", "consumer.cli", "run", "--config", str(config)], env=env,
                     log=directory / f"{config.stem}-{i}.log", cwd=code) for i in range(processes)]

    return measure_procs(start, [(emulator, expected), *(also or [])], directory=directory,
                         source_events=source_events, timeout_s=timeout_s)


def run_peer(peer: str, stack: DevStack, emulator: EmulatorClient, topic: str, fs_url: str, *, expected: int,
             directory: Path, source_events: int, timeout_s: float = 1800) -> Run:
    """One peer process (bench/peers/) from its own virtual environment, measured like :func:`run_consumers`."""
    python = peer_venvs.ensure(peer, say=say)
    group = f"bench-{peer}-{uuid.uuid4().hex[:6]}"
    argv = [str(python), str(peer_venvs.SCRIPTS[peer]), "--bootstrap", stack.bootstrap, "--topic", topic,
            "--group", group, "--registry", stack.registry.url, "--freshsuccess-url", fs_url,
            "--auth-key", AUTH_KEY, "--api-key", API_KEY, "--batch-events", str(BATCH_EVENTS)]
    if peer == "quix":
        # A checkpoint holds events at most as long as usage-consumer's batches do, and closes after
        # about one full POST per partition (Quix's commit_every, as its docs suggest for batch sizes).
        argv += ["--commit-interval", str(MAX_WAIT_S), "--commit-every", str(BATCH_EVENTS * PARTITIONS)]
    else:
        argv += ["--batch-time", str(MAX_WAIT_S), "--threads", "4"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}

    def start() -> list[Proc]:
        return [Proc(argv, env=env, log=directory / f"{group}.log", cwd=directory)]

    return measure_procs(start, [(emulator, expected)], directory=directory, source_events=source_events,
                         timeout_s=timeout_s)


def measure_procs(start: Callable[[], list[Proc]], targets: list[tuple[EmulatorClient, int]], *,
                  directory: Path, source_events: int, timeout_s: float) -> Run:
    """Reset the emulators, start the processes; time from the first accepted output to the last.

    The emulators count outputs; ``source_events / expected`` scales them to source events (with several
    destinations: all their outputs together), so events/s and CPU per million are comparable with the
    loops (which count records consumed). Done when every emulator accepted its ``expected`` outputs; then
    none of them may have dropped an event, refused a request or seen a protocol violation. When all outputs
    land between two samples (only in tiny runs), the window is the whole run from the processes' start.
    """
    expected = sum(n for _, n in targets)
    scale = source_events / expected
    for emulator, _ in targets:
        emulator.reset()
    started = time.perf_counter()
    procs = start()
    first: tuple[float, int] | None = None
    last = (0.0, 0)
    deadline = time.monotonic() + timeout_s
    samples = 0
    while time.monotonic() < deadline:
        counts = [emulator.stats()["accepted"] for emulator, _ in targets]
        accepted = sum(counts)
        now = time.perf_counter()
        if accepted and first is None:
            first = (now, accepted)
        last = (now, accepted)
        samples += 1
        if samples % 5 == 0:
            for proc in procs:
                proc.sample_rss()
        if all(count >= n for count, (_, n) in zip(counts, targets, strict=True)):
            break
        if any(p.popen.poll() is not None for p in procs):
            raise RuntimeError(f"a measured process exited early; see {directory}")
        time.sleep(0.1)
    else:
        raise RuntimeError(f"only {last[1]} of {expected} outputs accepted within {timeout_s}s; see {directory}")
    threads: dict[str, float] = {}
    for proc in procs:
        for name, cpu_s in proc.thread_cpu().items():
            threads[name] = threads.get(name, 0.0) + cpu_s
    results = [p.finish(terminate=True) for p in procs]
    assert first is not None
    for emulator, _ in targets:
        stats = emulator.stats()
        bad = {k: stats.get(k, 0) for k in ("dropped", "rejected", "violations") if stats.get(k, 0)}
        if bad:
            raise RuntimeError(f"{emulator.url}: {bad} during a measured run; see {directory}")
    events, elapsed = last[1] - first[1], last[0] - first[0]
    if not events:  # everything landed between two samples (a tiny run): the whole run, start-up included
        events, elapsed = last[1], last[0] - started
    rss = [s for p in procs for s in p.rss_samples[len(p.rss_samples) // 2:]]
    return Run(round(events * scale), elapsed, sum(r[0] for r in results), max(r[1] for r in results),
               statistics.median(rss) if rss else None, processed=source_events, threads=threads)


def large_property_events(count: int, *, seed: int, entries: int = 50) -> Iterator[dict[str, Any]]:
    """The realistic stream, each event's ``properties`` map filled up to ``entries`` string entries (keys of
    6-15 characters, values of 1-34: the context, flags and campaign attributes a client SDK attaches)."""
    rng = random.Random(seed)
    names = [f"{prefix}_{i:02d}" for i, prefix in zip(range(entries), (
        "context_app", "context_os", "screen", "feature_flag", "experiment", "utm", "page", "client_build",
        "locale", "segment") * entries, strict=False)]
    for event in realistic_events(count, seed=seed):
        properties = event["properties"]
        for name in names[: max(0, entries - len(properties))]:
            properties[name] = f"{rng.getrandbits(8 + 8 * rng.randrange(17)):x}"
        yield event


# --------------------------------------------------------------------------------- live latency


def live_latency(stack: DevStack, emulator: EmulatorClient, config: Path, topic: str, schema_id: int, *,
                 rate: int, seconds: float, directory: Path) -> dict[str, float]:
    """Produce at ``rate`` events/s stamped with the produce time while a consumer runs; read the latency."""
    emulator.reset()
    env = {**os.environ, **CONSUMER_ENV}
    proc = Proc([PY, "-m", "consumer.cli", "run", "--config", str(config)], env=env,
                log=directory / f"{config.stem}-live.log")
    try:
        warm = list(realistic_events(50, seed=5))
        for e in warm:
            e["occurred_at"] = int(time.time() * 1000)
        stack.produce_events(topic, schema_id, warm)
        deadline = time.monotonic() + 60
        while emulator.stats()["accepted"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        emulator.reset()
        total = int(rate * seconds)
        events = list(realistic_events(total, seed=77))
        producer = stack.producer
        started = time.perf_counter()
        for i, event in enumerate(events):
            target = started + i / rate
            while (now := time.perf_counter()) < target:
                time.sleep(min(0.002, target - now))
            event["occurred_at"] = int(time.time() * 1000)
            producer.produce(topic, key=event["account_id"].encode(), value=stack.encode(schema_id, event))
            if i % 200 == 0:
                producer.poll(0)
        producer.flush(30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            latency = emulator.latency()
            if latency.get("count", 0) >= total * 0.8:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let the last batch land (max_wait_s) before reading the distribution
        return emulator.latency() | {"rate_per_s": rate}
    finally:
        proc.finish(terminate=True)


# ----------------------------------------------------------------------------------------- main


def checkout(rev: str, target: Path) -> Path:
    """The repository's files as of ``rev``, in ``target`` (a plain copy: the child imports its ``consumer``)."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    say(f"baseline: the consumer as of {commit} in {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--freshpaint-events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny and once: checks the harness, not timings")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the consumer as of this git commit, alternated with today's (row g)")
    parser.add_argument("--large-events", type=int, default=200_000,
                        help="events of the large-properties stream (row l); at most --events")
    parser.add_argument("--paced-rate", type=float, default=2000.0,
                        help="row k: freshpaint.max_requests_per_s, held for --paced-s seconds (measured once)")
    parser.add_argument("--paced-s", type=float, default=60.0)
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out the Quix Streams and sentry-arroyo peers (rows q and r), which need their "
                             "virtual environments (.venv-peers/, built with pip on first use)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.freshpaint_events, args.large_events, args.repeat = 6000, 1500, 6000, 1
        args.paced_rate, args.paced_s = 200.0, 5.0
    args.large_events = min(args.large_events, args.events)
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="usage-consumer-bench-"))
    args.baseline_code = checkout(args.baseline, directory / "baseline") if args.baseline else None
    if not args.no_peers:
        for peer in peer_venvs.PEERS:  # before the broker starts: a first build takes a while
            peer_venvs.ensure(peer, say=say)

    with DevStack(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), emulators=False) as stack:
        ready = directory / "emulators.json"
        emulators = Proc([PY, "-m", "consumer.cli", "emulate", "--ready-file", str(ready),
                          "--max-kept-events", "1"],
                         env={**os.environ, **stack.secrets_env()}, log=directory / "emulators.log")
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        urls = json.loads(ready.read_text())
        urls = {"freshsuccess": urls["freshsuccess_url"], "freshpaint": urls["freshpaint_url"]}
        fs, fp = EmulatorClient(urls["freshsuccess"]), EmulatorClient(urls["freshpaint"])
        try:
            results = measure(stack, args, urls, fs, fp, directory)
        finally:
            emulators.finish(terminate=True)

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "events": args.events, "freshpaint_events": args.freshpaint_events, "large_events": args.large_events,
        "repeat": args.repeat, "smoke": args.smoke, "elapsed_s": round(time.monotonic() - started, 1),
        "results": {r.name: r.summary() for r in results},
    }
    eps = {r.name: r.median("events_per_s") or 0.0 for r in results}
    cpu = {name: row["cpu_s_per_million"] for name, row in report["results"].items()}
    report["ratios"] = {"d/a": eps["d"] / eps["a"], "d/b": eps["d"] / eps["b"], "d/c": eps["d"] / eps["c"],
                        "f/d": eps["f"] / eps["d"]}
    if "g" in eps:
        report["baseline"] = args.baseline
        report["ratios"]["d/g"] = eps["d"] / eps["g"]
        if cpu["d"] and cpu["g"]:
            report["ratios"]["cpu d/g"] = cpu["d"] / cpu["g"]
    for peer in ("q", "r"):
        if peer in eps:
            report["ratios"][f"d/{peer}"] = eps["d"] / eps[peer]
            if cpu["d"] and cpu[peer]:
                report["ratios"][f"cpu d/{peer}"] = cpu["d"] / cpu[peer]
    if not args.no_peers:
        report["peers"] = {peer: peer_venvs.pinned(peer) for peer in peer_venvs.PEERS}
    if "k" in eps:
        measured = eps["k"]
        report["paced"] = {"max_requests_per_s": args.paced_rate, "seconds": args.paced_s,
                           "measured_per_s": round(measured, 1),
                           "deviation": round(measured / args.paced_rate - 1, 4),
                           "within_5pct": abs(measured / args.paced_rate - 1) <= 0.05}
    if "q" in eps:
        ratios = report["ratios"]
        report["targets"] = {"d/q >= 2": ratios["d/q"] >= 2,
                             "cpu d/q <= 0.5": "cpu d/q" in ratios and ratios["cpu d/q"] <= 0.5}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    say(f"wrote {args.output} ({report['elapsed_s']}s in all; logs in {directory})")
    return 0


def measure(stack: DevStack, args: argparse.Namespace, urls: dict[str, str], fs: EmulatorClient,
            fp: EmulatorClient, directory: Path) -> list[Result]:
    topic, dlq = stack.topics(partitions=PARTITIONS, prefix="bench")
    fp_topic, fp_dlq = stack.topics(partitions=PARTITIONS, prefix="bench-fp")
    large_topic, large_dlq = stack.topics(partitions=PARTITIONS, prefix="bench-large")
    paced_topic, paced_dlq = stack.topics(partitions=PARTITIONS, prefix="bench-paced")
    paced_id = stack.register(paced_topic)
    schema_id = stack.register(topic)
    stack.register(fp_topic)
    large_id = stack.register(large_topic)
    say(f"producing {args.events} events to {topic} ({PARTITIONS} partitions) ...")
    fs_expected = 0
    fp_fs_expected = 0  # Freshsuccess actions of the first --freshpaint-events events (row h delivers to both)
    produced = 0
    chunk: list[dict[str, Any]] = []
    for event in realistic_events(args.events, seed=1):
        is_fs = event["event_type"] in FS_TYPES
        fs_expected += is_fs
        fp_fs_expected += is_fs and produced + len(chunk) < args.freshpaint_events
        chunk.append(event)
        if len(chunk) == 50_000:
            produced += stack.produce_events(topic, schema_id, chunk)
            if produced <= args.freshpaint_events:
                stack.produce_events(fp_topic, schema_id, chunk)
            elif produced - len(chunk) < args.freshpaint_events:
                stack.produce_events(fp_topic, schema_id, chunk[: args.freshpaint_events - produced + len(chunk)])
            say(f"  {produced}/{args.events}")
            chunk = []
    if chunk:
        produced += stack.produce_events(topic, schema_id, chunk)
        if produced - len(chunk) < args.freshpaint_events:
            stack.produce_events(fp_topic, schema_id, chunk[: max(0, args.freshpaint_events - produced + len(chunk))])
    fp_count = min(args.freshpaint_events, args.events)

    say(f"producing {args.large_events} events with ~50 properties each to {large_topic} ...")
    large_expected = 0
    chunk = []
    for event in large_property_events(args.large_events, seed=2):
        large_expected += event["event_type"] in FS_TYPES
        chunk.append(event)
        if len(chunk) == 20_000:
            stack.produce_events(large_topic, large_id, chunk)
            chunk = []
    if chunk:
        stack.produce_events(large_topic, large_id, chunk)
    large_size = round(statistics.mean(len(stack.encode(large_id, e)) for e in large_property_events(200, seed=2)))

    results = {name: Result(name, label) for name, label in [
        ("a", "consume ceiling (confluent-kafka consume only)"),
        ("b", "decode ceiling (consume + usage-consumer's decoder)"),
        ("c", "naive baseline (AvroDeserializer, json, 1 POST/1000, sync commit)"),
        ("d", "usage-consumer -> Freshsuccess"),
        ("e", f"usage-consumer -> Freshpaint ({fp_count} events)"),
        ("f", "2 usage-consumer processes -> Freshsuccess"),
        ("h", f"usage-consumer -> Freshsuccess + Freshpaint ({fp_count} events)"),
        ("l", f"usage-consumer -> Freshsuccess, ~50 properties ({large_size} B/event)"),
    ]}

    def consumer_run(name: str, on: str, dlq_topic: str, destination: str, emulator: EmulatorClient,
                     expected: int, source_events: int, processes: int = 1, code: Path = REPO,
                     also: list[tuple[EmulatorClient, int]] | None = None,
                     freshpaint: dict[str, Any] | None = None) -> Callable[[], Run]:
        return lambda: run_consumers(
            stack, emulator, consumer_config(stack, on, dlq_topic, destination, urls, directory,
                                             f"bench-{name}-{uuid.uuid4().hex[:6]}", freshpaint),
            processes=processes, expected=expected, directory=directory, source_events=source_events, code=code,
            also=also)

    steps: list[tuple[str, Callable[[], Run]]] = [
        ("a", lambda: run_loop("consume", stack, topic, args.events, urls["freshsuccess"])),
        ("b", lambda: run_loop("decode", stack, topic, args.events, urls["freshsuccess"])),
        ("c", lambda: run_loop("naive", stack, topic, args.events, urls["freshsuccess"])),
        ("d", consumer_run("d", topic, dlq, "freshsuccess", fs, fs_expected, args.events)),
    ]
    if args.baseline_code is not None:
        results["g"] = Result("g", f"usage-consumer @ {args.baseline} -> Freshsuccess (baseline)")
        steps.append(("g", consumer_run("g", topic, dlq, "freshsuccess", fs, fs_expected, args.events,
                                        code=args.baseline_code)))
    if not args.no_peers:
        for name, peer, title in (("q", "quix", "Quix Streams"), ("r", "arroyo", "sentry-arroyo")):
            version = peer_venvs.pinned(peer)[peer_venvs.PACKAGES[peer][0]]
            results[name] = Result(name, f"{title} {version} peer -> Freshsuccess")
            steps.append((name, lambda peer=peer: run_peer(
                peer, stack, fs, topic, urls["freshsuccess"], expected=fs_expected, directory=directory,
                source_events=args.events)))
    steps += [
        ("e", consumer_run("e", fp_topic, fp_dlq, "freshpaint", fp, fp_count, fp_count)),
        ("f", consumer_run("f", topic, dlq, "freshsuccess", fs, fs_expected, args.events, processes=2)),
        ("h", consumer_run("h", fp_topic, fp_dlq, "both", fs, fp_fs_expected, fp_count, also=[(fp, fp_count)])),
        ("l", consumer_run("l", large_topic, large_dlq, "freshsuccess", fs, large_expected, args.large_events)),
    ]
    for repetition in range(1, args.repeat + 1):
        for name, step in steps:
            run = step()
            results[name].runs.append(run)
            say(f"run {repetition}/{args.repeat} ({name}) {results[name].label}: {run.events_per_s:,.0f} events/s, "
                f"{run.cpu_s:.1f} CPU s, peak RSS {run.peak_rss_mb:.0f} MB")
    # Row k, once: does Freshpaint delivery hold freshpaint.max_requests_per_s over a sustained period?
    paced_count = int(args.paced_rate * args.paced_s)
    say(f"producing {paced_count} events to {paced_topic} for row k ({args.paced_rate:,.0f} requests/s) ...")
    for start in range(0, paced_count, 50_000):
        stack.produce_events(paced_topic, paced_id, realistic_events(min(50_000, paced_count - start), seed=3 + start))
    results["k"] = Result("k", f"usage-consumer -> Freshpaint, max_requests_per_s={args.paced_rate:,.0f} "
                               f"({args.paced_s:.0f} s)")
    results["k"].runs.append(consumer_run("k", paced_topic, paced_dlq, "freshpaint", fp, paced_count, paced_count,
                                          freshpaint={"max_requests_per_s": args.paced_rate})())
    say(f"(k) {results['k'].label}: {results['k'].runs[0].events_per_s:,.1f} requests/s")
    results["c"].note = "CPU and memory include the naive loop's own process only"
    results["d"].note = ("source events/s: Freshsuccess outputs scaled by events/outputs (page views have no "
                         "Freshsuccess rule and are skipped)")
    results["f"].note = "two processes share the machine's 2 cores with the broker and the emulators"
    results["h"].note = ("both destinations' outputs together, scaled to source events; CPU per source event "
                         "(the Freshpaint share, one request per event, dominates)")
    results["l"].note = "the realistic mix, each event's properties map filled to 50 string entries"
    for name in ("q", "r"):
        if name in results:
            results[name].note = ("own process and virtual environment; same topic, batch size (2,000 actions), "
                                  "gzip level and emulator as (d); measured like (d)")

    say("live phase: fixed-rate production for produce-to-acceptance latency ...")
    live_topic, live_dlq = stack.topics(partitions=PARTITIONS, prefix="bench-live")
    live_id = stack.register(live_topic)
    seconds = 2.0 if args.smoke else 8.0
    results["d"].latency = live_latency(
        stack, fs, consumer_config(stack, live_topic, live_dlq, "freshsuccess", urls, directory, "bench-live-d"),
        live_topic, live_id, rate=5000 if args.smoke else 20_000, seconds=seconds, directory=directory)
    live_fp, live_fp_dlq = stack.topics(partitions=PARTITIONS, prefix="bench-live-fp")
    live_fp_id = stack.register(live_fp)
    results["e"].latency = live_latency(
        stack, fp, consumer_config(stack, live_fp, live_fp_dlq, "freshpaint", urls, directory, "bench-live-e"),
        live_fp, live_fp_id, rate=500 if args.smoke else 2000, seconds=seconds, directory=directory)
    return list(results.values())


def print_table(report: dict[str, Any]) -> None:
    rows = report["results"]
    print()
    print(f"usage-consumer benchmark: {report['events']:,} events, medians of {report['repeat']} run(s), "
          f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}"
          + (" [SMOKE: harness check only]" if report["smoke"] else ""))
    header = f"{'':4}{'measurement':<62}{'events/s':>11}{'CPU s/M':>9}{'peak MB':>9}{'steady MB':>10}"
    print(header + f"{'p50 ms':>9}{'p99 ms':>9}")
    print("-" * (len(header) + 18))
    for name, row in rows.items():
        latency = row["latency"] or {}
        steady = row["steady_rss_mb"]
        print(f"({name}) {row['label']:<62}{row['events_per_s']:>11,}{row['cpu_s_per_million'] or 0:>9.2f}"
              f"{row['peak_rss_mb'] or 0:>9.0f}{(f'{steady:.0f}' if steady else '-'):>10}"
              f"{latency.get('p50_ms', '-'):>9}{latency.get('p99_ms', '-'):>9}")
    for name in ("d", "h"):
        by_thread = rows.get(name, {}).get("cpu_s_per_million_by_thread")
        if by_thread:
            print(f"({name}) CPU s/M by thread, before stopping: " + ", ".join(
                f"{thread} {cpu:.2f}" for thread, cpu in sorted(by_thread.items(), key=lambda x: -x[1]) if cpu >= 0.05))
    ratios = report["ratios"]
    print("ratios: " + "  ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    if "peers" in report:
        print("peers: " + "; ".join(f"{peer}: " + ", ".join(f"{k} {v}" for k, v in pins.items())
                                    for peer, pins in report["peers"].items()))
    if "paced" in report:
        paced = report["paced"]
        print(f"paced (k): {paced['measured_per_s']:,.1f} requests/s against max_requests_per_s "
              f"{paced['max_requests_per_s']:,.0f} over {paced['seconds']:.0f} s: {paced['deviation']:+.2%} "
              f"({'within' if paced['within_5pct'] else 'NOT within'} 5%)")
    if "targets" in report:
        print("targets: " + "  ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in report["targets"].items()))
    print()


if __name__ == "__main__":
    sys.exit(main())
