"""The Dockerfile and the hash-locked requirements it installs (the image itself is built by make image-test)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart.chart import ROOT, venv_tool

DOCKERFILE = ROOT / "Dockerfile"
LOCKS = (ROOT / "requirements.lock", ROOT / "requirements-build.lock")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def test_hadolint_passes_with_every_rule():
    result = subprocess.run([venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_runtime_stage_runs_as_a_numeric_non_root_user_under_tini():
    final = dict(_final_stage())
    user = final["USER"].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["ENTRYPOINT"].startswith('["/usr/bin/tini", "-g", "--", "usage-consumer"]')
    assert final["CMD"] == '["run", "--config", "/etc/usage-consumer/config.yaml"]'


def test_runtime_stage_installs_nothing():
    """No compilers or package managers: the final stage only copies from the build stage and adds a user."""
    runs = [args for word, args in _final_stage() if word == "RUN"]
    assert runs, "the user is created in the final stage"
    for args in runs:
        assert not re.search(r"\b(apt-get|apt|pip|gcc|cc|make)\b", args), args


def test_dependencies_are_installed_from_the_hash_locks_only():
    installs = [args for word, args in _instructions() if word == "RUN" and " install " in args]
    assert installs
    text = " ".join(installs)
    for lock in LOCKS:
        assert f"-r {lock.name}" in text
    for command in re.split(r"&&", text):
        if "pip" in command and " install " in command and "-r " in command:
            assert "--require-hashes" in command, command
            assert "--only-binary :all:" in command, command


def _pins(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_every_pin_carries_hashes():
    for lock in LOCKS:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 2)[-1])
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock.name}: {block.splitlines()[0]}"


def test_lock_satisfies_every_runtime_dependency():
    """pyproject.toml changed without scripts/lock-requirements: the image would lack or mismatch a package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _pins(ROOT / "requirements.lock")
    for spec in project["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock-requirements"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{name}=={pins[name]} does not satisfy {spec}: run scripts/lock-requirements"
    build = _pins(ROOT / "requirements-build.lock")
    for spec in project["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in build, f"{name} is not in requirements-build.lock: run scripts/lock-requirements"
        assert requirement.specifier.contains(build[name], prereleases=True)


def test_build_context_holds_only_what_the_image_needs():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if line and not line.startswith("#"))] == "*"
    copied = {source for word, args in _instructions() if word == "COPY" and "--from" not in args
              for source in args.split()[:-1]}
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in copied:
        assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
