"""The real Kafka broker for integration tests.

``KAFKA_BOOTSTRAP_SERVERS`` in the environment makes the tests use that broker; otherwise one local
broker is started for the whole session by ``consumer/testing/local_kafka.py`` and stopped at the end.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
import structlog
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.testing.devstack import DevStack
from consumer.testing.local_kafka import LocalKafka
from consumer.testing.testpki import TestPki, make_test_pki, secured_local_kafka
from tests.integration.secured import KEY_PASSWORD, SCRAM_PASSWORD, SCRAM_USER


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        """Shown even under output capture: the run's log should show the broker's start and stop."""
        if capture is None:
            print(f"[local-kafka] {line}")
            return
        with capture.global_and_fixture_disabled():
            print(f"\n[local-kafka] {line}", flush=True)

    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        say(f"using the existing broker at {existing} (KAFKA_BOOTSTRAP_SERVERS)")
        yield existing
        return
    broker = LocalKafka(tie_to_parent=True)
    broker.start()
    say(f"broker started at {broker.bootstrap} (pid {broker.pid})")
    try:
        yield broker.bootstrap
    finally:
        pid = broker.pid
        broker.stop()
        say(f"broker pid {pid} stopped")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str) -> Iterator[DevStack]:
    """The schema registry and both destination emulators on the session's broker, one set per test module."""
    with DevStack(kafka_bootstrap) as running:
        yield running


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; deleted afterwards."""
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in kafka_admin.delete_topics(created).values():
            try:
                future.result(timeout=30)
            except Exception as exc:  # deletion is best effort; the broker is temporary anyway
                print(f"topic deletion failed: {exc}")


@pytest.fixture
def fresh_emulators(stack: DevStack) -> None:
    """Each test reads only what it sent: the emulators are shared by a module's tests."""
    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.clear_faults()
        emulator.reset()


@pytest.fixture
def tool_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The secrets in the environment, where the tools read them in a pod; structlog reset afterwards (a tool
    run in-process configures it)."""
    for name, value in DevStack.secrets_env().items():
        monkeypatch.setenv(name, value)
    yield
    structlog.reset_defaults()


@pytest.fixture
def cli_process_state() -> Iterator[None]:
    """The CLI (``usage-consumer run``, ``ping``) configures logging and signal handlers for the process: put
    them back."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    structlog.reset_defaults()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """The CA, broker and client certificates of the secured broker (client keys under ``KEY_PASSWORD``)."""
    return make_test_pki(tmp_path_factory.mktemp("kafka-pki"), client_key_password=KEY_PASSWORD)


@pytest.fixture(scope="session")
def secured_broker(pki: TestPki) -> Iterator[LocalKafka]:
    """A broker with PLAINTEXT (topics and offsets), SASL_SSL (SCRAM) and mTLS listeners, shared by the
    security tests: starting one takes seconds."""
    broker = secured_local_kafka(pki, {SCRAM_USER: SCRAM_PASSWORD})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
