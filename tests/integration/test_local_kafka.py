"""The local-broker script itself: clean stop, and no broker outlives an owner killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from consumer.testing.local_kafka import LocalKafka, pid_alive
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
