"""The chart held to kube-score (github.com/zegl/kube-score, built by ``scripts/dev-tools``): issue 16.

Each rendering is scored twice. As a user's kube-score scores it (the Deployment's ``kube-score/ignore`` annotation
in effect): no CRITICAL may be left. And with ``--disable-ignore-checks-annotations``: every finding must be one that
helm/README.md ("kube-score") explains, since an ignored check would otherwise hide its other findings (ignoring
``container-resources`` for the CPU limit also hides a missing memory limit, and kube-score implies
``container-ephemeral-storage-request-and-limit`` from it).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    CHART,
    CI_VALUES,
    FIXTURES,
    ROOT,
    built_tool,
    render,
    template_error,
    template_result,
)

ALL_FEATURES = FIXTURES / "all-features-values.yaml"
ANNOTATION = "kube-score/ignore"
# The oldest Kubernetes the chart supports (tests/chart/chart.py KUBERNETES_VERSIONS), and the optional checks the
# chart passes, so they stay passed.
FLAGS = ("--kubernetes-version", "v1.27",
         "--enable-optional-test", "container-seccomp-profile",
         "--enable-optional-test", "container-ports-check")
# Each check the chart silences, with the one finding it is silenced for (helm/README.md says why).
SILENCED = {
    "container-resources": "CPU limit is not set",
    "container-image-pull-policy": "ImagePullPolicy is not set to Always",
    "deployment-has-host-podantiaffinity": "Deployment does not have a host podAntiAffinity set",
    "pod-networkpolicy": "The pod does not have a matching NetworkPolicy",
    "deployment-replicas": "Deployment few replicas",
}
RENDERINGS = [pytest.param((), id="defaults"), pytest.param((ALL_FEATURES,), id="all-features")]
EVERY_RENDERING = RENDERINGS + [pytest.param((p,), id=p.stem) for p in CI_VALUES]


@cache
def kube_score_path() -> str:
    return built_tool("kube-score")


@dataclass(frozen=True)
class Finding:
    """One kube-score comment on a check graded below OK."""

    obj: str
    check: str
    grade: str
    path: str
    summary: str

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"[{self.grade}] {self.obj} {self.check}{where}: {self.summary}"


@dataclass(frozen=True)
class Score:
    returncode: int
    findings: tuple[Finding, ...]
    skipped: frozenset[tuple[str, str]]  # (object, check) not run: ignored, or optional and not enabled

    def critical(self) -> list[Finding]:
        return [f for f in self.findings if f.grade == "CRITICAL"]

    def report(self) -> str:
        return "\n".join(map(str, self.findings)) or "(no findings)"


GRADES = {1: "CRITICAL", 5: "WARNING"}


def score(manifests: str, *flags: str) -> Score:
    """``kube-score score`` on rendered manifests (JSON output: the check ids), each finding printed."""
    result = subprocess.run([kube_score_path(), "score", "--output-format", "json", *FLAGS, *flags, "-"],
                            input=manifests, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode in (0, 1), f"kube-score failed ({result.returncode}):\n{result.stderr}"
    findings: list[Finding] = []
    skipped: set[tuple[str, str]] = set()
    for obj in json.loads(result.stdout):
        name = f"{obj['type_meta']['kind']}/{obj['object_meta']['name']}"
        for check in obj["checks"]:
            check_id = check["check"]["id"]
            if check["skipped"]:
                if any(c["summary"] == f"Skipped because {check_id} is ignored" for c in check["comments"] or []):
                    skipped.add((name, check_id))
                continue
            if check["grade"] not in GRADES:
                continue
            for comment in check["comments"] or [{"path": "", "summary": check["check"]["name"]}]:
                findings.append(Finding(name, check_id, GRADES[check["grade"]], comment["path"] or "",
                                        comment["summary"]))
    scored = Score(result.returncode, tuple(sorted(findings, key=str)), frozenset(skipped))
    print(f"kube-score {' '.join(flags)}:\n{scored.report()}")
    return scored


def manifests(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
              set_json: Mapping[str, Any] | None = None) -> str:
    result = template_result(values, sets, set_json)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result.stdout


def ignored(text: str) -> set[str]:
    deployment = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    value: str = deployment["metadata"].get("annotations", {}).get(ANNOTATION, "")
    return {c for c in value.split(",") if c}


def assert_no_critical(scored: Score) -> None:
    assert not scored.critical(), "kube-score CRITICAL findings (fix them, or silence one with a reason in " \
        "helm/README.md):\n" + scored.report()
    assert scored.returncode == 0, scored.report()


def unexplained(scored: Score) -> list[Finding]:
    """Findings (annotations disabled) that no line of helm/README.md's kube-score table explains."""
    return [f for f in scored.findings if SILENCED.get(f.check) != f.summary]


# ------------------------------------------------------------------------------------------- the renderings

@pytest.mark.parametrize("values", EVERY_RENDERING)
def test_no_critical_finding_is_left(values: tuple[Path, ...]):
    assert_no_critical(score(manifests(values)))


@pytest.mark.parametrize("values", EVERY_RENDERING)
def test_silenced_checks_hide_only_the_findings_the_readme_explains(values: tuple[Path, ...]):
    text = manifests(values)
    scored = score(text, "--disable-ignore-checks-annotations")
    assert not unexplained(scored), "kube-score findings behind the kube-score/ignore annotation that " \
        "helm/README.md does not explain:\n" + "\n".join(map(str, unexplained(scored)))
    # Each check the annotation names is needed: it has its finding once the annotation is off.
    assert ignored(text) == {f.check for f in scored.findings}, scored.report()


@pytest.mark.parametrize(("values", "expected"), [
    pytest.param((), {"container-resources", "container-image-pull-policy", "deployment-has-host-podantiaffinity",
                      "pod-networkpolicy"}, id="defaults"),
    pytest.param((ALL_FEATURES,), {"container-resources", "container-image-pull-policy",
                                   "deployment-has-host-podantiaffinity", "deployment-replicas"}, id="all-features"),
])
def test_the_annotation_is_what_kube_score_skips(values: tuple[Path, ...], expected: set[str]):
    text = manifests(values)
    assert ignored(text) == expected
    by_annotation = score(text).skipped - score(text, "--disable-ignore-checks-annotations").skipped
    # container-resources implies container-ephemeral-storage-request-and-limit (kube-score's own rule).
    implied = {"container-ephemeral-storage-request-and-limit"} if "container-resources" in expected else set()
    assert by_annotation == {("Deployment/uc-usage-consumer", check) for check in expected | implied}


@pytest.mark.parametrize(("sets", "set_json", "dropped"), [
    pytest.param({"resources.limits.cpu": "2"}, None, "container-resources", id="cpu-limit"),
    pytest.param({"image.pullPolicy": "Always"}, None, "container-image-pull-policy", id="pull-always"),
    pytest.param({}, {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
            "matchLabels": {"app.kubernetes.io/name": "usage-consumer"}}}}]}}},
        "deployment-has-host-podantiaffinity", id="anti-affinity"),
    pytest.param({}, {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "usage-consumer"}}}]},
                 "deployment-has-host-podantiaffinity", id="spread-by-zone-only"),
    pytest.param({"networkPolicy.enabled": "true"}, None, "pod-networkpolicy", id="network-policy"),
])
def test_a_check_is_silenced_only_while_its_reason_holds(sets: dict[str, str], set_json: dict[str, Any] | None,
                                                         dropped: str):
    assert dropped in ignored(manifests())
    text = manifests(sets=sets, set_json=set_json)
    assert dropped not in ignored(text)
    scored = score(text)
    if dropped == "deployment-has-host-podantiaffinity" and "topologySpreadConstraints" in (set_json or {}):
        # A zone-only spread leaves members free to share a node: kube-score's warning is right and stays.
        assert [f.summary for f in scored.findings] == [SILENCED[dropped]]
    else:
        assert not scored.findings, scored.report()


def test_keda_members_below_two_keep_the_replicas_warning():
    """kube-score counts KEDA's Deployment (no spec.replicas) as one member: silenced only when KEDA keeps two."""
    for service in ({"service.enabled": "true"}, {"serviceMonitor.enabled": "true"}):
        text = manifests([CHART / "ci" / "keda-values.yaml"], sets=service)  # minReplicaCount 2
        assert "deployment-replicas" in ignored(text)
        assert not score(text).findings
        text = manifests([CHART / "ci" / "keda-values.yaml"], sets={**service, "keda.minReplicaCount": "1"})
        assert "deployment-replicas" not in ignored(text)
        assert [str(f) for f in score(text).findings] == [
            "[WARNING] Deployment/uc-usage-consumer deployment-replicas: Deployment few replicas"]


# ------------------------------------------------------------------------------------- it catches problems

def _without_annotation(text: str) -> str:
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["metadata"].get("annotations", {}).pop(ANNOTATION, None)
    return yaml.safe_dump_all(docs)


def test_the_default_rendering_without_its_annotation_fails():
    """The NetworkPolicy is off by default: without the annotation, kube-score's CRITICAL fails the test."""
    scored = score(_without_annotation(manifests()))
    assert scored.returncode == 1
    assert {(f.check, f.summary) for f in scored.critical()} == {
        ("pod-networkpolicy", "The pod does not have a matching NetworkPolicy"),
        ("container-resources", "CPU limit is not set"),
        ("container-image-pull-policy", "ImagePullPolicy is not set to Always")}
    with pytest.raises(AssertionError, match="pod-networkpolicy"):
        assert_no_critical(scored)


def test_a_container_without_limits_is_caught_although_container_resources_is_silenced():
    text = manifests(set_json={"resources": {"limits": None}})
    assert not score(text).critical()  # the annotation hides it from kube-score's own verdict...
    found = {(f.check, f.summary) for f in unexplained(score(text, "--disable-ignore-checks-annotations"))}
    assert found == {("container-resources", "Memory limit is not set"),  # ... not from the second scoring
                     ("container-ephemeral-storage-request-and-limit", "Ephemeral Storage limit is not set")}


def test_a_network_policy_that_selects_no_pod_is_critical():
    text = manifests(sets={"networkPolicy.enabled": "true"})
    docs = [d for d in yaml.safe_load_all(text) if d]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] = "other"
    scored = score(yaml.safe_dump_all(docs))
    assert {f.check for f in scored.critical()} == {"pod-networkpolicy", "networkpolicy-targets-pod"}


def test_missing_kube_score_says_to_run_make_chart_tools(tmp_path: Path):
    with pytest.raises(pytest.fail.Exception, match=re.escape("make chart-tools does the same")):
        built_tool("kube-score", tmp_path)


# -------------------------------------------------------------------------- ephemeral storage and emptyDir

@pytest.mark.parametrize("values", EVERY_RENDERING)
def test_every_emptydir_has_a_size_limit_within_the_ephemeral_storage_limit(values: tuple[Path, ...]):
    rendered = render(values)
    limits = rendered.container["resources"]["limits"]
    requests = rendered.container["resources"]["requests"]
    assert {"ephemeral-storage"} <= set(limits) & set(requests)
    empty_dirs = [v for v in rendered.pod["volumes"] if "emptyDir" in v]
    assert empty_dirs
    for volume in empty_dirs:
        assert volume["emptyDir"].get("sizeLimit"), volume
        assert _bytes(volume["emptyDir"]["sizeLimit"]) < _bytes(limits["ephemeral-storage"])


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity)
    assert match, quantity
    return int(match[1]) * units[match[2]]


def test_an_extra_emptydir_without_a_size_limit_is_refused():
    error = template_error(set_json={"extraVolumes": [{"name": "scratch", "emptyDir": {}}]})
    assert "/extraVolumes/0/emptyDir" in error, error
    assert "sizeLimit" in error, error
    sized = {"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}}
    assert sized in render(set_json={"extraVolumes": [sized]}).pod["volumes"]


# ------------------------------------------------------------------------------------------ documentation

def test_the_readme_explains_each_silenced_check():
    readme = (ROOT / "helm" / "README.md").read_text()
    section = readme.split("\n## kube-score\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| [^|]+ \|$", section, flags=re.MULTILINE)
    assert rows == list(SILENCED)


def test_the_helpers_name_only_checks_kube_score_has():
    listed = subprocess.run([kube_score_path(), "list"], capture_output=True, text=True, timeout=60, check=True)
    checks = {line.split(",", 1)[0] for line in listed.stdout.splitlines()}
    assert set(SILENCED) <= checks
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "usage-consumer.kubeScoreIgnored"', 1)[1].split("{{- end }}\n\n", 1)[0]
    assert set(re.findall(r'append \$ignored "([a-z-]+)"', block)) == set(SILENCED)
