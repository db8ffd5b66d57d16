"""The local-broker script itself: clean stop, a port taken by someone else is survived, and no broker outlives
an owner killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from consumer.testing.local_kafka import LocalKafka, free_port, pid_alive
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_leaves_no_process_and_no_port() -> None:
    broker = LocalKafka()
    broker.start()
    pid, port, work_dir = broker.pid, broker.port, broker.work_dir
    assert pid_alive(pid)
    assert port_open(port)
    broker.stop()
    assert not pid_alive(pid)
    assert not port_open(port)
    assert not work_dir.exists()


def test_a_port_taken_between_choosing_and_binding_is_given_up_for_another() -> None:
    """Parallel test workers choose free ports at the same time; the broker that loses a port starts on another.

    Kafka logs the bind failure and then a long shutdown, so the failure is far from the end of its log.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]

        def ports() -> Iterator[int]:
            yield busy
            while True:
                yield free_port()

        chosen = ports()
        broker = LocalKafka(choose_port=lambda: next(chosen))
        try:
            broker.start()
            assert broker.port != busy
            assert port_open(broker.port)
        finally:
            broker.stop()


def test_broker_dies_with_an_owner_killed_by_sigkill() -> None:
    script = (
        "import time;"
        "from consumer.testing.local_kafka import LocalKafka; b = LocalKafka(); b.start();"
        "print(b.pid, flush=True); time.sleep(600)"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        broker_pid = int(owner.stdout.readline())
        assert pid_alive(broker_pid)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.communicate()  # waits, and closes the stdout pipe
    wait_for(lambda: not pid_alive(broker_pid), timeout_s=30, what="the orphaned broker to die")
