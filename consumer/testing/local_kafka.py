#!/usr/bin/env python3
"""A real, single-node Apache Kafka broker on loopback, from Maven Central's jars.

No Docker engine runs here, so the broker comes from its published jars: ``fetch`` resolves
``org.apache.kafka:kafka_2.13`` (pinned below) and its runtime dependencies with ``mvn`` into a cache
outside the repo, reused on later runs. ``LocalKafka`` formats KRaft storage in a temporary directory,
starts one broker+controller bound to 127.0.0.1 on free ports, waits for it to answer a metadata
request, and stops it cleanly (SIGTERM, then SIGKILL after a timeout).

A broker whose owner died without stopping it (a test run killed with SIGKILL) is reaped by the next
start: every broker is registered under the cache with its owner's pid, and fixture-owned brokers also
ask the kernel to kill them when their parent dies (``PR_SET_PDEATHSIG``).

Shell use (``scripts/kafka`` wraps this file)::

    scripts/kafka fetch      # resolve the jars into the cache
    scripts/kafka start      # start a broker in the background, print its bootstrap address
    scripts/kafka status     # print the bootstrap address if running, exit 1 if not
    scripts/kafka stop       # stop it, leaving no process or port behind
    scripts/kafka run        # run in the foreground until Ctrl-C

Python use: ``with LocalKafka() as broker: broker.bootstrap``. Only the standard library is needed,
except for the readiness check, which uses confluent-kafka's AdminClient (a real metadata request).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"  # the version kafka 4.1.1 itself depends on; adds the slf4j 1.x binding

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("USAGE_CONSUMER_CACHE", Path.home() / ".cache" / "usage-consumer"))
DEFAULT_STATE_DIR = REPO / ".local" / "kafka"

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.usage-consumer</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """status = warn
shutdownHook = disable
appender.file.type = Console
appender.file.name = OUT
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.noisy.name = org.apache.kafka.clients
logger.noisy.level = WARN
"""

STARTED_LINE = "Kafka Server started"


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message carries the log's tail."""


def log(message: str) -> None:
    print(f"[local-kafka] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- jars


def jars_dir() -> Path:
    return CACHE / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}" / "libs"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch() -> Path:
    """Resolve the broker's jars into the cache once; later calls return the cached directory."""
    libs = jars_dir()
    done = libs / ".complete"
    if done.exists():
        return libs
    with _locked(libs.parent / ".lock"):
        if done.exists():
            return libs
        if shutil.which("mvn") is None:
            raise BrokerError("mvn is not on PATH; it is needed once to fetch the Kafka broker jars")
        log(f"resolving org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION} from Maven Central into {libs}")
        with tempfile.TemporaryDirectory(prefix="kafka-pom-") as tmp:
            (Path(tmp) / "pom.xml").write_text(POM)
            staging = libs.parent / "libs.partial"
            shutil.rmtree(staging, ignore_errors=True)
            started = time.monotonic()
            proc = subprocess.run(
                ["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
                 "-DincludeScope=runtime"],
                cwd=tmp, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise BrokerError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
            done.write_text(KAFKA_VERSION)
            log(f"resolved {len(list(libs.glob('*.jar')))} jars in {time.monotonic() - started:.1f}s")
    return libs


# ------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _is_our_broker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGKILL when the parent thread exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _registry() -> Path:
    return CACHE / "brokers"


def reap_orphans() -> int:
    """Kill brokers whose owner is gone (e.g. a test run killed with SIGKILL); returns how many."""
    reaped = 0
    registry = _registry()
    if not registry.is_dir():
        return 0
    for entry in registry.glob("*.json"):
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
            continue
        owner = info.get("owner_pid")
        pid = int(info["pid"])
        if owner is not None and pid_alive(int(owner)):
            continue
        if owner is None and pid_alive(pid):
            continue  # started from the shell: `scripts/kafka stop` owns it
        if pid_alive(pid) and _is_our_broker(pid):
            log(f"reaping broker pid {pid} left by dead owner {owner}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
            reaped += 1
        if info.get("temporary") and info.get("work_dir"):
            shutil.rmtree(info["work_dir"], ignore_errors=True)
        entry.unlink(missing_ok=True)
    return reaped


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


# --------------------------------------------------------------------------------------- broker


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1, in a work directory of its own."""

    def __init__(self, work_dir: Path | None = None, *, heap_mb: int = 768, tie_to_parent: bool = True,
                 extra_properties: dict[str, str] | None = None, extra_listeners: dict[str, str] | None = None,
                 format_args: tuple[str, ...] = (), choose_port: Callable[[], int] = free_port) -> None:
        """``extra_listeners`` maps more listener names to their security protocol (e.g. ``{"SASL_SSL":
        "SASL_SSL"}``); each gets a free port of its own (:meth:`listener_bootstrap`), while PLAINTEXT stays
        the inter-broker, controller-facing and readiness listener. Their settings (key stores, SASL) go in
        ``extra_properties``; ``format_args`` are added to the storage format step (e.g. ``--add-scram=...``).
        ``choose_port`` picks each port (a seam for tests of a port taken before the broker binds it).
        """
        self.temporary = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="usage-consumer-kafka-")) if work_dir is None else work_dir
        self.heap_mb = heap_mb
        self.tie_to_parent = tie_to_parent
        self.extra_properties = dict(extra_properties or {})
        self.extra_listeners = dict(extra_listeners or {})
        self.format_args = tuple(format_args)
        self.choose_port = choose_port
        self.listener_ports: dict[str, int] = {}
        self.port = 0
        self.controller_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where the current start's lines begin in the log

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listener_bootstrap(self, name: str) -> str:
        """The bootstrap address of one of ``extra_listeners`` (known once started)."""
        return f"127.0.0.1:{self.listener_ports[name]}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    def _properties(self) -> str:
        extra = "".join(f",{name}://127.0.0.1:{self.listener_ports[name]}" for name in self.extra_listeners)
        protocols = "".join(f",{name}:{protocol}" for name, protocol in self.extra_listeners.items())
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}{extra}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}{extra}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
            "log.dirs": str(self.work_dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "24",
        }
        props.update(self.extra_properties)
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java(self, *args: str) -> list[str]:
        libs = fetch()
        return [
            "java", "-Xms256m", f"-Xmx{self.heap_mb}m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", *args,
        ]

    def _format(self) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        shutil.rmtree(self.work_dir / "data", ignore_errors=True)
        proc = subprocess.run(
            # "=" form: a random cluster id may start with "-", which argparse would take for a flag.
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       f"--config={self.work_dir / 'server.properties'}", *self.format_args),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{proc.stdout}\n{proc.stderr}")

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the broker and return its bootstrap address once it answers a metadata request."""
        reap_orphans()
        fetch()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        last_error: BrokerError | None = None
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port, self.controller_port = self.choose_port(), self.choose_port()
            self.listener_ports = {name: self.choose_port() for name in self.extra_listeners}
            if len({self.port, self.controller_port, *self.listener_ports.values()}) < 2 + len(self.listener_ports):
                continue
            (self.work_dir / "server.properties").write_text(self._properties())
            self._format()
            try:
                self._spawn()
                self._wait_ready(timeout_s)
                log(f"broker started at {self.bootstrap} (pid {self.pid}, log {self.log_path})")
                return self.bootstrap
            except BrokerError as exc:
                last_error = exc
                if not self._lost_a_port():
                    self.stop(quiet=True)
                    raise
                self._end_process()  # keeps the work dir for the next attempt
        self.stop(quiet=True)
        assert last_error is not None
        raise last_error

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self) -> None:
        log_file = self.log_path.open("ab")
        self._log_start = log_file.tell()
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", str(self.work_dir / "server.properties")),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent if self.tie_to_parent else None,
        )
        log_file.close()
        registry = _registry()
        registry.mkdir(parents=True, exist_ok=True)
        (registry / f"{self.process.pid}.json").write_text(json.dumps({
            "pid": self.process.pid,
            "owner_pid": os.getpid() if self.tie_to_parent else None,
            "work_dir": str(self.work_dir),
            "temporary": self.temporary,
            "bootstrap": self.bootstrap,
            "started_at": time.time(),
        }))

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient  # real metadata request

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0,
                             "logger": _silent_logger()})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(f"broker exited with {self.process.returncode} during start-up:\n{self.log_tail()}")
            if STARTED_LINE in self._read_log():
                try:
                    metadata = admin.list_topics(timeout=2.0)
                    if metadata.brokers:
                        return
                except Exception:  # KafkaException while the listener warms up; retried until the deadline
                    time.sleep(0.2)
                    continue
            time.sleep(0.1)
        raise BrokerError(f"broker did not answer a metadata request within {timeout_s:.0f}s:\n{self.log_tail()}")

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _lost_a_port(self) -> bool:
        """Whether the last start failed because a port was taken; the bind error comes before a long shutdown,
        so the whole of this start's log is searched, not its tail."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_start)
                return b"Address already in use" in log_file.read()
        except OSError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0, *, quiet: bool = False) -> None:
        """SIGTERM, wait for a clean shutdown, SIGKILL after ``timeout_s``; remove a temporary work dir."""
        self._end_process(timeout_s, quiet=quiet)
        if self.temporary:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _end_process(self, timeout_s: float = 30.0, *, quiet: bool = True) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            _terminate(process, timeout_s)
            if not quiet:
                how = "killed" if process.returncode == -signal.SIGKILL else "clean shutdown"
                log(f"broker at {self.bootstrap} stopped ({how}, exit {process.returncode})")
        if process is not None:
            (_registry() / f"{process.pid}.json").unlink(missing_ok=True)
        self.process = None

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL the broker, as a crash would; its work dir, data and ports are kept for :meth:`restart`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)
        (_registry() / f"{process.pid}.json").unlink(missing_ok=True)
        log(f"broker at {self.bootstrap} killed (pid {process.pid})")

    def restart(self, timeout_s: float = 90.0) -> str:
        """Stop the broker with SIGTERM (SIGKILL after ``timeout_s``) keeping its work dir, data and ports,
        start it again on the same ports, and return once it answers a metadata request.

        Clients keep their bootstrap address across the restart, as they would across a broker's rolling
        restart in production. Also brings back a broker stopped by :meth:`kill`.
        """
        process = self.process
        if process is None:
            raise BrokerError("restart() needs a broker started by this LocalKafka")
        if process.poll() is None:
            _terminate(process, timeout_s)
        (_registry() / f"{process.pid}.json").unlink(missing_ok=True)
        log(f"broker at {self.bootstrap} stopped for a restart (exit {process.returncode})")
        deadline = time.monotonic() + timeout_s
        while True:
            starts_before = self._read_log().count(STARTED_LINE)
            self._spawn()
            new = self.process
            assert new is not None
            while new.poll() is None and self._read_log().count(STARTED_LINE) == starts_before:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"restarted broker did not start within {timeout_s:.0f}s:\n{self.log_tail()}")
                time.sleep(0.1)
            if new.poll() is None:
                break
            (_registry() / f"{new.pid}.json").unlink(missing_ok=True)
            # The old listener's port can linger briefly; anything else is a real failure.
            if not self._lost_a_port() or time.monotonic() >= deadline:
                raise BrokerError(f"restarted broker exited with {new.returncode}:\n{self.log_tail()}")
            time.sleep(0.5)
        self._wait_ready(max(1.0, deadline - time.monotonic()))
        log(f"broker restarted at {self.bootstrap} (pid {self.pid})")
        return self.bootstrap

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the broker's process group, SIGKILL it if it is still there after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log(f"broker pid {process.pid} ignored SIGTERM for {timeout_s:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _silent_logger() -> Any:
    import logging

    logger = logging.getLogger("local_kafka.admin")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


# ------------------------------------------------------------------------------------ shell CLI


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_file(state_dir).read_text())
    except (OSError, ValueError):
        return None
    if not (pid_alive(int(state["pid"])) and _is_our_broker(int(state["pid"]))):
        return None
    return state


def cmd_start(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is not None:
        print(state["bootstrap"])
        return 0
    shutil.rmtree(state_dir, ignore_errors=True)
    broker = LocalKafka(state_dir, tie_to_parent=False)
    broker.start()
    _state_file(state_dir).write_text(json.dumps({"pid": broker.pid, "bootstrap": broker.bootstrap,
                                                  "log": str(broker.log_path)}))
    print(broker.bootstrap)
    return 0


def cmd_stop(state_dir: Path, timeout_s: float = 30.0) -> int:
    state = _read_state(state_dir)
    if state is None:
        log("no broker running")
        return 0
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        log(f"broker pid {pid} ignored SIGTERM for {timeout_s:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
    (_registry() / f"{pid}.json").unlink(missing_ok=True)
    log(f"broker at {state['bootstrap']} stopped")
    return 0


def cmd_status(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is None:
        log("not running")
        return 1
    print(state["bootstrap"])
    return 0


def cmd_run() -> int:
    broker = LocalKafka()
    broker.start()
    print(broker.bootstrap, flush=True)
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/kafka", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "start", "stop", "status", "run", "reap"])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("KAFKA_STATE_DIR", DEFAULT_STATE_DIR)))
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
            return 0
        if args.command == "start":
            return cmd_start(args.state_dir)
        if args.command == "stop":
            return cmd_stop(args.state_dir)
        if args.command == "status":
            return cmd_status(args.state_dir)
        if args.command == "reap":
            log(f"reaped {reap_orphans()} orphaned broker(s)")
            return 0
        return cmd_run()
    except BrokerError as exc:
        log(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
