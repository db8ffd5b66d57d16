"""The peers' virtual environments: ``.venv-peers/<peer>``, each built from ``bench/requirements-peers-<peer>.txt``.

The peers pin confluent-kafka differently from usage-consumer and from each other (Quix Streams 3.28 wants
<2.13, sentry-arroyo 2.48 wants >=2.13.2), so each runs from a virtual environment of its own, never from the
product's ``.venv``. :func:`ensure` builds one when it is missing or its requirements file changed (a stamp
holds the file's hash; a build cut short leaves no stamp and is redone), under a file lock so concurrent
benchmark runs build it once. Needs pip's access to PyPI the first time (~15-40 s per peer).

``python bench/peers/venvs.py`` builds all of them (``make bench-peers``).
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".venv-peers"
PEERS = ("quix", "arroyo")
SCRIPTS = {"quix": REPO / "bench" / "peers" / "quix_pipeline.py",
           "arroyo": REPO / "bench" / "peers" / "arroyo_pipeline.py"}
PACKAGES = {"quix": ("quixstreams", "confluent-kafka", "fastavro"),
            "arroyo": ("sentry-arroyo", "confluent-kafka", "fastavro")}
"""The versions each peer's report names."""


def requirements(peer: str) -> Path:
    return REPO / "bench" / f"requirements-peers-{peer}.txt"


def pinned(peer: str) -> dict[str, str]:
    """``{package: version}`` of the packages in :data:`PACKAGES`, as the requirements file pins them."""
    pins = {}
    for line in requirements(peer).read_text().splitlines():
        name, _, version = line.partition("==")
        if version and name.strip().lower() in PACKAGES[peer]:
            pins[name.strip().lower()] = version.strip()
    return pins


def ensure(peer: str, *, say: Callable[[str], None] | None = None) -> Path:
    """The Python interpreter of ``peer``'s environment, built first if needed."""
    wanted = hashlib.sha256(requirements(peer).read_bytes()).hexdigest()
    venv = ROOT / peer
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    ROOT.mkdir(exist_ok=True)
    with (ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == wanted and python.exists():
            return python
        if say is not None:
            say(f"building {venv} from {requirements(peer).relative_to(REPO)} (pip, once) ...")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(requirements(peer))], check=True)
        stamp.write_text(wanted + "\n")
        return python


def main() -> int:
    for peer in PEERS:
        print(f"{peer}: {ensure(peer, say=print)} {pinned(peer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
