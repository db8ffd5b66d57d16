"""The chart's alert rules (templates/prometheusrule.yaml): rendered as an operator installs them, checked and
unit-tested with promtool (tests/chart/rules/*.yaml), and held to what an on-call reader needs.

promtool is built by ``scripts/dev-tools`` (``make chart-tools``); without it these tests fail, they never skip: an
alert that silently stops firing is exactly what they are here to catch.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    CHART,
    FULLNAME,
    ROOT,
    Rendered,
    promtool_path,
    render,
    template_error,
    validation_errors,
)

RULE_TESTS = Path(__file__).resolve().parent / "rules"
RULES_FILE = "usage-consumer.rules.yaml"
"""The name the test files' ``rule_files`` give the rendered rules (written next to a copy of each)."""
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://runbook.test/runbook.md"
"""The test files pin each alert's annotations, runbook_url included: rendered with this base, they do not depend
on where the chart's default says the runbook is hosted."""
ENABLED = {"prometheusRule.enabled": "true", "prometheusRule.runbookBaseUrl": RUNBOOK_BASE}
SELECTOR = f'job="{FULLNAME}",namespace="usage"'


@cache
def _rendered() -> Rendered:
    return render(sets=ENABLED)


def rule_doc() -> dict[str, Any]:
    return _rendered().one("PrometheusRule")


def alerts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every alerting rule of a rendered PrometheusRule, by alert name."""
    found = {}
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
                found[rule["alert"]] = rule
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_path(), *args], capture_output=True, text=True, timeout=300, check=False)


def write_rules(directory: Path, doc: dict[str, Any]) -> Path:
    """The PrometheusRule's ``spec`` is a Prometheus rule file as it stands: what the operator hands Prometheus."""
    path = directory / RULES_FILE
    path.write_text(yaml.safe_dump(doc["spec"], sort_keys=False))
    return path


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS.glob("*.yaml"))


# ------------------------------------------------------------------------------------------- rendering

def test_rules_are_off_by_default():
    assert "PrometheusRule" not in render().kinds()


def test_rendered_rule_passes_the_chart_validation():
    doc = rule_doc()
    errors = list(validation_errors(doc))
    assert not errors, "\n".join(errors)
    assert doc["metadata"]["name"] == FULLNAME
    assert doc["metadata"]["namespace"] == "usage"


def test_the_rule_schema_is_strict():
    """A misspelled rule field would be pruned by the API server and the alert would change silently."""
    doc = copy.deepcopy(rule_doc())
    doc["spec"]["groups"][0]["rules"][0]["fro"] = doc["spec"]["groups"][0]["rules"][0].pop("for")
    errors = list(validation_errors(doc))
    assert any("fro" in e for e in errors), errors


def test_operator_and_alert_labels_and_thresholds_follow_the_values():
    rendered = render(sets={**ENABLED, "prometheusRule.labels.release": "kube-prometheus-stack",
                            "prometheusRule.alertLabels.team": "usage",
                            "prometheusRule.alerts.lagHigh.thresholdSeconds": "120",
                            "prometheusRule.alerts.lagHigh.for": "2m",
                            "prometheusRule.alerts.lagHigh.severity": "page",
                            "prometheusRule.alerts.absent.enabled": "false"})
    doc = rendered.one("PrometheusRule")
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = alerts(doc)
    assert "UsageConsumerAbsent" not in by_name
    assert all(rule["labels"]["team"] == "usage" for rule in by_name.values())
    lag = by_name["UsageConsumerLagHigh"]
    assert lag["expr"].endswith("> 120")
    assert lag["for"] == "2m"
    assert lag["labels"]["severity"] == "page"
    assert "(threshold 120s)" in lag["annotations"]["description"]


def test_each_release_selects_only_its_own_series():
    """Two releases in one Prometheus: every consumer series and ``up`` is read through the release's job and
    namespace (the ServiceMonitor's), or through the selector the values give."""
    for name, rule in alerts(rule_doc()).items():
        if "kube_" not in rule["expr"]:
            assert SELECTOR in rule["expr"], f"{name} does not select the release's series: {rule['expr']}"
    custom = 'job="usage-consumer",cluster="eu-1"'
    doc = render(sets=ENABLED, set_json={"prometheusRule.selector": custom}).one("PrometheusRule")
    for name, rule in alerts(doc).items():
        if "kube_" not in rule["expr"]:
            assert custom in rule["expr"], f"{name}: {rule['expr']}"
            assert SELECTOR not in rule["expr"], f"{name}: {rule['expr']}"


@pytest.mark.parametrize(("set_json", "where"), [
    pytest.param({"prometheusRule.alerts.lagHigh.treshold": 60}, "treshold", id="misspelled-threshold"),
    pytest.param({"prometheusRule.alerts.lagGrowing.window": "0s"}, "/prometheusRule/alerts/lagGrowing/window",
                 id="empty-window"),
    pytest.param({"prometheusRule.alerts.stalled.for": "15 minutes"}, "/prometheusRule/alerts/stalled/for",
                 id="not-a-duration"),
    pytest.param({"prometheusRule.alertLabels": {"severity": "page"}}, "/prometheusRule/alertLabels",
                 id="severity-in-alert-labels"),
    pytest.param({"prometheusRule.runbookBaseUrl": "docs/runbook.md#alerts"}, "/prometheusRule/runbookBaseUrl",
                 id="relative-runbook-url"),
    pytest.param({"prometheusRule.selector": "{job=\"x\"}"}, "/prometheusRule/selector", id="selector-in-braces"),
])
def test_the_schema_refuses_mistakes_in_the_rule_values(set_json: dict[str, Any], where: str):
    error = template_error(sets={"prometheusRule.enabled": "true"}, set_json=set_json)
    assert "values don't meet the specifications of the schema" in error, error
    assert where in error, error


# --------------------------------------------------------------------------------------------- promtool

def test_promtool_accepts_the_rendered_rules(tmp_path: Path):
    result = run_promtool("check", "rules", str(write_rules(tmp_path, rule_doc())))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(rule_doc()))} rules found" in result.stdout, result.stdout


@pytest.mark.parametrize("tests_file", rule_test_files(), ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(tests_file: Path, tmp_path: Path):
    write_rules(tmp_path, rule_doc())
    copy = tmp_path / tests_file.name
    shutil.copyfile(tests_file, copy)
    assert yaml.safe_load(copy.read_text())["rule_files"] == [RULES_FILE]
    result = run_promtool("test", "rules", str(copy))
    where = tests_file.relative_to(ROOT)
    assert result.returncode == 0, f"promtool test rules {where}:\n{result.stdout}{result.stderr}"


def _cases() -> Iterator[tuple[str, str, bool]]:
    """``(test file and group, alert name, fires)`` for every ``alert_rule_test`` of every test file."""
    for path in rule_test_files():
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                yield f"{path.name}: {group.get('name')}", case["alertname"], bool(case.get("exp_alerts"))


def test_every_alert_is_tested_firing_and_silent():
    """A rule without a firing case may never fire; one without a silent case may always fire."""
    rendered = set(alerts(rule_doc()))
    cases = list(_cases())
    unknown = {(where, name) for where, name, _ in cases if name not in rendered}
    assert not unknown, f"cases for alerts the chart does not render (a silent one passes vacuously): {unknown}"
    missing = [f"{name}: no {'firing' if fires else 'silent'} case" for name in sorted(rendered)
               for fires in (True, False) if not any(n == name and f == fires for _, n, f in cases)]
    assert not missing, "\n".join(missing)


# ----------------------------------------------------------------------------------- what on-call reads

def test_every_alert_has_severity_summary_description_and_its_runbook_section():
    for name, rule in alerts(rule_doc()).items():
        assert rule["labels"].get("severity") in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert all(annotations[key].strip() for key in annotations), name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", name


def test_the_default_runbook_url_is_docs_runbook_md():
    doc = render(sets={"prometheusRule.enabled": "true"}).one("PrometheusRule")
    for name, rule in alerts(doc).items():
        url = rule["annotations"]["runbook_url"]
        assert re.fullmatch(rf"https://\S+/docs/runbook\.md#{name.lower()}", url), url


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to
    hyphens; fenced code is not headings)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fenced:
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-"))
    return anchors


def test_github_anchors_are_computed_as_github_does():
    text = "# Runbook\n## Growing dead-letter topic\n```sh\n# not a heading\n```\n### UsageConsumerLagHigh\n"
    assert github_anchors(text) == {"runbook", "growing-dead-letter-topic", "usageconsumerlaghigh"}


def test_every_runbook_url_points_at_a_section_of_the_runbook():
    anchors = github_anchors(RUNBOOK.read_text())
    missing = [name for name, rule in alerts(rule_doc()).items()
               if rule["annotations"]["runbook_url"].partition("#")[2] not in anchors]
    assert not missing, f"{RUNBOOK.relative_to(ROOT)} has no section for: {missing}"


def test_values_document_every_alert():
    """Each alert's values block says which alert it tunes (the comment above it in values.yaml)."""
    text = (CHART / "values.yaml").read_text()
    assert all(f"# {name}:" in text for name in alerts(rule_doc())), "values.yaml: an alert lacks its comment"
