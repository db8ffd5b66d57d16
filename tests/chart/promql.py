"""The PromQL the chart ships (Grafana dashboard, PrometheusRule): extract it, check it parses, check its metrics exist.

Shared by ``tests/chart/test_dashboard.py`` (queries parse with ``promtool check rules``; the name guard itself) and
``tests/integration/test_metric_names.py`` (every metric named is exported by a running consumer's ``/metrics``).
A dashboard that names a metric the consumer never exports shows "No data" forever and an alert on it never fires,
so both are checked against the real exposition rather than against a list kept by hand.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart.chart import CHART, ROOT, Rendered, promtool_path, render

DASHBOARD_FILE = CHART / "dashboards" / "usage-consumer.json"
DASHBOARD_KEY = "usage-consumer.json"
RULE_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"

EXTERNAL_EXACT = frozenset({"up"})
EXTERNAL_PREFIXES = ("kube_", "container_")
"""Series the consumer does not export but Prometheus (``up``), kube-state-metrics (``kube_*``) and cAdvisor
(``container_*``) do: the only names a dashboard or rule may use besides the consumer's own (issue 15's metric
contract)."""

GRAFANA_BUILTINS = {
    "__rate_interval": "2m", "__interval": "30s", "__interval_ms": "30000",
    "__range": "6h", "__range_s": "21600", "__range_ms": "21600000",
}
"""Values for Grafana's own variables, so a query can be handed to promtool as Prometheus would receive it."""

# ------------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it is used (for failure messages a reader can act on)."""

    where: str
    expr: str


def dashboard_configmap(rendered: Rendered) -> dict[str, Any]:
    """The rendered Grafana ConfigMap: the one carrying ``usage-consumer.json`` (the chart's own holds config.yaml)."""
    maps = [d for d in rendered.all("ConfigMap") if DASHBOARD_KEY in (d.get("data") or {})]
    assert len(maps) == 1, f"expected one ConfigMap with {DASHBOARD_KEY}, rendered {len(maps)}"
    return maps[0]


def dashboard_from(rendered: Rendered) -> dict[str, Any]:
    """The dashboard JSON inside the rendered Grafana ConfigMap."""
    loaded: dict[str, Any] = json.loads(dashboard_configmap(rendered)["data"][DASHBOARD_KEY])
    return loaded


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variable_query(variable: Mapping[str, Any]) -> str:
    query = variable.get("query", "")
    text = query.get("query", "") if isinstance(query, Mapping) else str(query)
    return str(text)


LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every ``targets[].expr`` of every panel, plus the selectors of ``label_values(...)`` variables (they name
    metrics too: a variable over a missing metric leaves every panel empty)."""
    queries = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f'dashboard panel {panel["id"]} "{panel.get("title", "")}" target {target.get("refId")}'
                queries.append(Query(where, str(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        match = LABEL_VALUES.match(_variable_query(variable))
        assert match, f"dashboard variable {variable['name']}: expected label_values(<selector>, <label>)"
        queries.append(Query(f"dashboard variable ${variable['name']}", match["selector"]))
    return queries


def dashboard_variables(dashboard: Mapping[str, Any]) -> set[str]:
    return {str(v["name"]) for v in dashboard.get("templating", {}).get("list", [])}


VARIABLE = re.compile(r"\$\{(?P<braced>[A-Za-z_]\w*)(?::[A-Za-z]+)?\}"
                      r"|\[\[(?P<old>[A-Za-z_]\w*)\]\]"
                      r"|\$(?P<plain>[A-Za-z_]\w*)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with Grafana's ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` replaced from ``values``; an
    unknown variable is an error (a typo would otherwise reach Prometheus as a literal ``$`` and fail there)."""

    def one(match: re.Match[str]) -> str:
        name = match["braced"] or match["old"] or match["plain"]
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in: {expr}")
        return values[name]

    return VARIABLE.sub(one, expr)


def rule_queries(rule_docs: Iterable[Mapping[str, Any]]) -> tuple[list[Query], set[str]]:
    """The ``expr`` of every alert and recording rule of the PrometheusRule documents, and the names the recording
    rules define (queries may use those although the consumer does not export them)."""
    queries, recorded = [], set()
    for doc in rule_docs:
        for group in doc.get("spec", {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                if rule.get("record"):
                    recorded.add(str(rule["record"]))
                queries.append(Query(f"PrometheusRule group {group['name']} rule {name}", str(rule["expr"])))
    return queries, recorded


def rules_gate() -> str | None:
    """The values key that enables the PrometheusRule template (``.Values.<key>.enabled`` in its first ``if``), or
    None while the chart has no rule template: read from the template so this test follows its naming."""
    if not RULE_TEMPLATE.is_file():
        return None
    match = re.search(r"\.Values\.([A-Za-z0-9_.]+)\.enabled", RULE_TEMPLATE.read_text())
    assert match, f"{RULE_TEMPLATE.relative_to(ROOT)}: no .Values.<key>.enabled gate found"
    return match[1]


@dataclass(frozen=True)
class Shipped:
    """The chart's queries with the dashboard and (when the chart has them) the alert rules enabled."""

    dashboard: dict[str, Any]
    dashboard_queries: list[Query]
    rule_queries: list[Query]
    recorded: set[str]
    """Names the recording rules define."""
    rules_rendered: bool

    @property
    def queries(self) -> list[Query]:
        return self.dashboard_queries + self.rule_queries


def shipped_queries() -> Shipped:
    gate = rules_gate()
    sets = {"grafanaDashboard.enabled": "true"}
    if gate is not None:
        sets[f"{gate}.enabled"] = "true"
    rendered = render(sets=sets)
    dashboard = dashboard_from(rendered)
    rule_docs = rendered.all("PrometheusRule")
    assert gate is None or rule_docs, f"{gate}.enabled=true rendered no PrometheusRule"
    from_rules, recorded = rule_queries(rule_docs)
    return Shipped(dashboard, dashboard_queries(dashboard), from_rules, recorded, bool(rule_docs))


# -------------------------------------------------------------------------------------- metric names in PromQL

AGGREGATIONS = frozenset({"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
                          "quantile", "count_values", "limitk", "limit_ratio"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_]\w*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>\.?[0-9][0-9A-Za-z_.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){}\[\],])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@!])
""", re.X)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in: {expr}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
    return out


def _closing(tokens: list[tuple[str, str]], start: int, opening: str, closing: str) -> int:
    """The index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i] == ("punct", opening):
            depth += 1
        elif tokens[i] == ("punct", closing):
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening}{closing}")


def _name_matcher(tokens: list[tuple[str, str]]) -> Iterator[str]:
    """``__name__="x"`` inside a ``{...}`` selector names metric ``x`` (regex matchers name none)."""
    for i in range(len(tokens) - 2):
        if tokens[i] == ("ident", "__name__") and tokens[i + 1] == ("op", "=") and tokens[i + 2][0] == "string":
            yield tokens[i + 2][1][1:-1]


def metric_names(expr: str, histograms: Collection[str] = ()) -> set[str]:
    """The metrics ``expr`` selects: identifiers that are not functions, aggregations, keywords, grouping label
    lists or label names inside ``{}`` (Grafana's ``$variables`` stand for durations or values, never names).
    ``X_bucket``, ``X_sum`` and ``X_count`` become ``X`` when ``X`` is in ``histograms`` (so a histogram is one
    name however it is queried); elsewhere the suffix is part of the name."""
    tokens = _tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "punct" and text == "{":
            end = _closing(tokens, i, "{", "}")
            names.update(_name_matcher(tokens[i + 1:end]))
            i = end + 1
            continue
        if kind == "punct" and text == "[":  # a range or subquery: durations only
            i = _closing(tokens, i, "[", "]") + 1
            continue
        if kind == "ident":
            lower = text.lower()
            if lower in GROUPING and following == ("punct", "("):  # by (...), on (...), group_left (...)
                i = _closing(tokens, i + 1, "(", ")") + 1
                continue
            is_call = following == ("punct", "(")
            if not (is_call or lower in GROUPING or lower in KEYWORDS or lower in AGGREGATIONS):
                names.add(text)
        i += 1
    return {_family(name, histograms) for name in names}


def _family(name: str, histograms: Collection[str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def is_external(name: str) -> bool:
    return name in EXTERNAL_EXACT or name.startswith(EXTERNAL_PREFIXES)


# ------------------------------------------------------------------------------------ what /metrics exports


@dataclass(frozen=True)
class Exported:
    """The names a Prometheus scraping this exposition can query: every sample's name and every declared family's
    series (a family declared without samples yet, e.g. retries before the first retry, still counts: its name
    is right, only the traffic is missing). Histograms are listed by family name."""

    names: frozenset[str]
    histograms: frozenset[str]


_TYPE_LINE = re.compile(r"^#\s+TYPE\s+(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\s+(?P<type>\w+)\s*$")
_SAMPLE_NAME = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)[\s{]")


def exported(exposition: str) -> Exported:
    """Read the Prometheus text format's ``# TYPE`` lines and sample names (no client-library parser: its family
    names drop ``_total``, and which names Prometheus stores is exactly the question)."""
    names: set[str] = set()
    histograms: set[str] = set()
    for line in exposition.splitlines():
        declared = _TYPE_LINE.match(line)
        if declared:
            name, kind = declared["name"], declared["type"]
            names.add(name)
            if kind in ("histogram", "gaugehistogram"):
                histograms.add(name)
            continue
        sample = _SAMPLE_NAME.match(line)
        if sample:
            names.add(sample["name"])
    return Exported(frozenset(names | {f"{h}{s}" for h in histograms for s in HISTOGRAM_SUFFIXES}),
                    frozenset(histograms))


def missing_metrics(queries: Iterable[Query], exposition: str, *,
                    defined: Collection[str] = ()) -> dict[str, list[str]]:
    """Each metric the queries name that the exposition lacks (not external, not a recording rule in ``defined``),
    with where it is used."""
    have = exported(exposition)
    missing: dict[str, list[str]] = {}
    for query in queries:
        for name in sorted(metric_names(query.expr, have.histograms)):
            if name in have.names or is_external(name) or name in defined:
                continue
            missing.setdefault(name, []).append(query.where)
    return missing


def describe_missing(missing: Mapping[str, list[str]]) -> str:
    lines = [f"{len(missing)} metric(s) named by the dashboard or the alert rules are not exported on /metrics:"]
    for name, uses in sorted(missing.items()):
        lines.append(f"  {name}")
        lines.extend(f"      used by {where}" for where in uses)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- promtool


def check_rules(queries: Iterable[tuple[str, str]], directory: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on the queries written as recording rules (``(record name, expr)`` pairs): promtool
    parses each expression with Prometheus' own parser, so a query that passes is one Prometheus accepts."""
    rules = [{"record": record, "expr": expr} for record, expr in queries]
    path = directory / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "chart-queries", "rules": rules}]}, sort_keys=False))
    return subprocess.run([promtool_path(), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
