#!/usr/bin/env python3
"""Smoke run of the built image (``make image-test``, after ``scripts/image-test`` built it).

Runs the image's root filesystem with runc, the OCI runtime behind containerd's default configuration, set up
the way the Helm chart asks Kubernetes to: the image's user (uid 10001), a read-only root, no capabilities,
no new privileges, /tmp as a tmpfs and the config mounted read-only at /etc/usage-consumer. The container
shares the host's network namespace only so that it reaches the broker and emulators on 127.0.0.1; its
health server binds 127.0.0.1 too.

Passes when: /livez answers 200, /readyz turns 200, /metrics is Prometheus text, every produced event is
committed by both destination groups (delivered to the emulators), the root filesystem refuses writes, and
SIGTERM (``runc kill``, as the kubelet has the runtime send it) ends the container with exit code 0 within
the shutdown deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, NoReturn

from consumer.testing.devstack import DevStack
from consumer.testing.eventgen import one_of_each, realistic_events

SHUTDOWN_TIMEOUT_S = 20.0
# crun refuses hosts with cgroups in "hybrid" mode (v1 plus controllers on the unified v2 mount); runc does not.
RUNTIME = os.environ.get("OCI_RUNTIME", "runc")


def say(message: str) -> None:
    print(f"[image-smoke] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def wait_until(what: str, check: Any, timeout_s: float, process: subprocess.Popen[bytes], log: Path) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail if the container exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if process.poll() is not None:
            fail(f"the container exited with code {process.returncode} while waiting for {what}", log)
        time.sleep(0.2)
    fail(f"timed out after {timeout_s:.0f} s waiting for {what}", log)


def fail(message: str, log: Path | None = None) -> NoReturn:
    if log is not None and log.exists():
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
    say(f"FAILED: {message}")
    raise SystemExit(1)


def oci_spec(rootfs: Path, image_config: dict[str, Any], config_file: Path, env: dict[str, str]) -> dict[str, Any]:
    """An OCI runtime spec for the image as the chart's securityContext describes the pod."""
    user = str(image_config.get("User") or "")
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit():
        fail(f"the image's USER is {user!r}: the chart needs a numeric uid (runAsNonRoot)")
    uid, gid = int(uid_text), int(gid_text or uid_text)
    image_env = [e for e in image_config.get("Env") or [] if not e.startswith(tuple(f"{k}=" for k in env))]
    args = list(image_config.get("Entrypoint") or []) + list(image_config.get("Cmd") or [])
    ro_bind = ["rbind", "ro", "nosuid", "nodev"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": []},
            "args": args,
            "env": image_env + [f"{k}={v}" for k, v in env.items()],
            "cwd": image_config.get("WorkingDir") or "/",
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "usage-consumer",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "bind", "source": "/sys", "options": ro_bind},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/etc/usage-consumer/config.yaml", "type": "bind", "source": str(config_file),
             "options": ro_bind},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ro_bind},
        ],
        "linux": {
            # No network namespace: the container reaches the broker and emulators on the host's loopback.
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def runtime_path() -> str:
    path = shutil.which(RUNTIME)
    if path is None:
        fail(f"{RUNTIME} is not installed (apt-get install {RUNTIME})")
    return path


def runtime(*args: str, check: bool = True, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([runtime_path(), *args], capture_output=True, text=True, timeout=timeout_s, check=check)


def process_uids(container_id: str) -> list[tuple[int, str, str]]:
    """(pid, command, uid line) of every process of the container, from the host's /proc."""
    state = json.loads(runtime("state", container_id).stdout)
    init_pid = int(state["pid"])
    pids = [init_pid]
    children = Path(f"/proc/{init_pid}/task/{init_pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    found = []
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        found.append((pid, command, uid_line))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, required=True, help="the image's mounted root filesystem")
    parser.add_argument("--image-config", type=Path, required=True, help="`buildah inspect --type image` JSON")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--timeout-s", type=float, default=120)
    args = parser.parse_args(argv)
    image_config: dict[str, Any] = json.loads(args.image_config.read_text())["OCIv1"]["config"]

    with DevStack(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as stack, \
            tempfile.TemporaryDirectory(prefix="usage-consumer-smoke-") as work_dir:
        work = Path(work_dir)
        topic, dlq = stack.topics(partitions=3, prefix="image-smoke")
        schema_id = stack.register(topic)
        events = one_of_each() + list(realistic_events(args.events, seed=5))
        stack.produce_events(topic, schema_id, events)
        end = stack.end_offsets(topic)
        port = free_port()
        group = f"image-smoke-{uuid.uuid4().hex[:6]}"
        config = stack.config_file(topic, dlq, group=group, health={"host": "127.0.0.1", "port": port},
                                   shutdown={"timeout_s": SHUTDOWN_TIMEOUT_S}, logging={"format": "json"})
        config_copy = work / "config.yaml"
        shutil.copyfile(config, config_copy)
        config_copy.chmod(0o644)
        say(f"broker {stack.bootstrap}; {len(events)} events in {topic}; health on 127.0.0.1:{port}")

        bundle = work / "bundle"
        bundle.mkdir()
        spec = oci_spec(args.rootfs, image_config, config_copy, stack.secrets_env())
        (bundle / "config.json").write_text(json.dumps(spec, indent=2))
        container_id = f"usage-consumer-smoke-{uuid.uuid4().hex[:8]}"
        log = work / "container.log"
        base = f"http://127.0.0.1:{port}"
        with log.open("wb") as log_file:
            process = subprocess.Popen([runtime_path(), "run", "--bundle", str(bundle), container_id],
                                       stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                started = time.monotonic()
                wait_until("/livez", lambda: http_get(f"{base}/livez")[0] == 200, 60, process, log)
                say(f"/livez answered 200 after {time.monotonic() - started:.1f} s")
                for pid, command, uid_line in process_uids(container_id):
                    say(f"process {pid} ({command}): {uid_line}")
                    if uid_line.split()[1:] != [str(spec["process"]["user"]["uid"])] * 4:
                        fail(f"process {pid} does not run as uid {spec['process']['user']['uid']}: {uid_line}", log)
                wait_until("/readyz", lambda: http_get(f"{base}/readyz")[0] == 200, 60, process, log)
                say("/readyz answered 200")
                groups = [f"{group}.freshsuccess", f"{group}.freshpaint"]
                wait_until("both groups to commit to the end of the topic",
                           lambda: all(stack.committed(g, topic) == end for g in groups), args.timeout_s,
                           process, log)
                fs, fp = stack.emulators.freshsuccess.stats(), stack.emulators.freshpaint.stats()
                say(f"committed to the end ({sum(end.values())} records); Freshsuccess accepted {fs['accepted']}, "
                    f"Freshpaint accepted {fp['accepted']}")
                if fp["accepted"] < len(events) or fs["accepted"] == 0:
                    fail("the emulators did not receive every event", log)
                status, metrics = http_get(f"{base}/metrics")
                if status != 200 or "# TYPE" not in metrics:
                    fail(f"/metrics answered {status} without Prometheus text", log)
                say(f"/metrics answered 200 ({len(metrics.splitlines())} lines)")
                write = runtime("exec", container_id, "/opt/venv/bin/python", "-c",
                             "open('/usage-consumer-write-test', 'w')", check=False)
                if write.returncode == 0 or "Read-only file system" not in write.stderr + write.stdout:
                    fail(f"the root filesystem accepted a write: {write.stderr.strip() or write.stdout.strip()}", log)
                say("the root filesystem is read-only")
                stopping = time.monotonic()
                runtime("kill", container_id, "SIGTERM")
                try:
                    code = process.wait(timeout=SHUTDOWN_TIMEOUT_S + 10)
                except subprocess.TimeoutExpired:
                    fail(f"still running {SHUTDOWN_TIMEOUT_S + 10:.0f} s after SIGTERM", log)
                say(f"SIGTERM: exit code {code} after {time.monotonic() - stopping:.1f} s")
                if code != 0:
                    fail(f"exit code {code} after SIGTERM (expected 0)", log)
                if not all(stack.committed(g, topic) == end for g in groups):
                    fail("committed offsets moved back after shutdown", log)
            finally:
                if process.poll() is None:
                    runtime("kill", container_id, "SIGKILL", check=False)
                    process.wait(timeout=30)
                runtime("delete", "--force", container_id, check=False)
        lines = log.read_text(errors="replace").splitlines()
        say(f"container log: {len(lines)} lines; last: {lines[-1] if lines else '(empty)'}")
    say("passed")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
