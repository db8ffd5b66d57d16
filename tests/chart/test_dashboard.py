"""The Grafana dashboard the chart ships: its ConfigMap, its shape, and its PromQL (parses; names real metrics).

The metric names are checked against a live consumer in ``tests/integration/test_metric_names.py``; here the same
guard runs against the consumer's own registry (no broker) and is itself tested on fake expositions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import (
    FULLNAME,
    Rendered,
    helm,
    render,
    template_error,
    validation_errors,
    values_yaml,
)
from tests.chart.promql import (
    DASHBOARD_FILE,
    DASHBOARD_KEY,
    GRAFANA_BUILTINS,
    Query,
    Shipped,
    check_rules,
    dashboard_configmap,
    dashboard_from,
    dashboard_queries,
    dashboard_variables,
    describe_missing,
    exported,
    metric_names,
    missing_metrics,
    panels,
    shipped_queries,
    substitute,
)

ENABLED = {"grafanaDashboard.enabled": "true"}
VARIABLE_VALUES = {
    "datasource": "prometheus",
    "namespace": "usage",
    "job": FULLNAME,
    "pod": f"({FULLNAME}-5d8f7c-abcde|{FULLNAME}-5d8f7c-fghij)",  # a multi-value variable, as Grafana renders it
    "destination": "(freshsuccess|freshpaint)",
    **GRAFANA_BUILTINS,
}
"""What Grafana would put in for each variable, so a query reaches promtool as Prometheus would receive it."""

PANELS = {
    1: "Overview: keeping up, stuck, dropping?",
    2: "Members scraped",
    3: "Lane stopped (fatal)",
    4: "Destination state",
    5: "Lag (oldest unfinished record)",
    6: "Delivered over 1 h late (last 1 h)",
    7: "Dead letters (last 1 h)",
    8: "Throughput",
    9: "Records in and out per second",
    10: "Events delivered per second",
    11: "Delivery latency and event age",
    12: "Batch delivery latency",
    13: "Event age at delivery",
    14: "Delivered more than 1 h after the event",
    15: "Lag and commits",
    16: "Lag in messages per partition",
    17: "Lag in seconds per partition",
    18: "Time since last commit",
    19: "Dead letters and retries",
    20: "Dead letters by reason",
    21: "Retries by reason",
    22: "Decode retries and refused commits",
    23: "Back-pressure and destination state",
    24: "In-flight batches",
    25: "Paused partitions",
    26: "Members per destination state",
    27: "Outputs per batch",
    28: "Resources",
    29: "Resident memory per member",
    30: "CPU per member",
    31: "Container restarts",
}
"""Panel ids are part of the dashboard's interface (``viewPanel=`` links, panel-scoped alerts, the operators'
bookmarks): a panel keeps its id, a new one takes a new id."""


@cache
def _rendered() -> Rendered:
    return render(sets={**ENABLED, "grafanaDashboard.folder": "Kafka"})


@cache
def _shipped() -> Shipped:
    return shipped_queries()


def _dashboard() -> dict[str, Any]:
    return dashboard_from(_rendered())


# ------------------------------------------------------------------------------------------- the ConfigMap

def test_the_dashboard_is_off_by_default():
    assert values_yaml()["grafanaDashboard"]["enabled"] is False
    assert not [d for d in render().all("ConfigMap") if DASHBOARD_KEY in (d.get("data") or {})]


def test_the_dashboard_configmap_passes_the_strict_validation_and_lint():
    rendered = _rendered()
    errors = [e for doc in rendered.docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)
    result = helm("lint", "--strict", "--set", "grafanaDashboard.enabled=true",
                  "--set", "grafanaDashboard.folder=Kafka")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configmap_is_labelled_for_the_grafana_sidecar_and_carries_the_file_unchanged():
    configmap = dashboard_configmap(_rendered())
    metadata = configmap["metadata"]
    assert metadata["name"] == f"{FULLNAME}-dashboard"
    assert metadata["namespace"] == "usage"
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["labels"]["app.kubernetes.io/instance"] == "uc"
    assert metadata["annotations"] == {"grafana_folder": "Kafka"}
    assert configmap["data"][DASHBOARD_KEY] == DASHBOARD_FILE.read_text().rstrip("\n")


def test_the_sidecar_label_folder_annotation_and_namespace_are_configurable():
    rendered = render(sets={**ENABLED, "grafanaDashboard.label": "example.com/dashboard",
                            "grafanaDashboard.labelValue": "1", "grafanaDashboard.folder": "Kafka consumers",
                            "grafanaDashboard.folderAnnotation": "k8s-sidecar-target-directory",
                            "grafanaDashboard.namespace": "monitoring",
                            "grafanaDashboard.labels.team": "data"})
    metadata = dashboard_configmap(rendered)["metadata"]
    assert metadata["labels"]["example.com/dashboard"] == "1"  # --set gives a number: rendered quoted
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["labels"]["team"] == "data"
    assert metadata["annotations"] == {"k8s-sidecar-target-directory": "Kafka consumers"}
    assert metadata["namespace"] == "monitoring"
    errors = [e for doc in rendered.docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)
    assert "annotations" not in dashboard_configmap(render(sets=ENABLED))["metadata"]


@pytest.mark.parametrize(("sets", "expected"), [
    pytest.param({"grafanaDashboard.enabeld": "true"}, "additional properties 'enabeld' not allowed", id="typo"),
    pytest.param({"grafanaDashboard.label": "not a label"}, "/grafanaDashboard/label", id="label-key"),
    pytest.param({"grafanaDashboard.labelValue": "-1-"}, "/grafanaDashboard/labelValue", id="label-value"),
    pytest.param({"grafanaDashboard.namespace": "Monitoring"}, "/grafanaDashboard/namespace", id="namespace"),
])
def test_the_schema_refuses_unknown_keys_and_invalid_names(sets: dict[str, str], expected: str):
    error = template_error(sets=sets)
    assert "values don't meet the specifications of the schema" in error, error
    assert expected in error, error


# --------------------------------------------------------------------------------------- the dashboard itself

def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_the_dashboard_uses_grafanas_current_schema_and_no_fixed_datasource():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "usage-consumer"
    assert {p["type"] for p in panels(dashboard)} <= {"row", "timeseries", "stat"}
    # Every query goes to the data source the viewer picks: no uid of somebody's Prometheus.
    sources = list(_datasources(dashboard["panels"])) + list(_datasources(dashboard["templating"]))
    assert sources
    assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources), sources
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "job", "pod", "destination"} <= set(variables)
    assert variables["destination"]["multi"]
    assert variables["destination"]["includeAll"]


def test_panel_ids_are_stable_and_unique():
    dashboard = _dashboard()
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert {p["id"]: p["title"] for p in panels(dashboard)} == PANELS


def test_panels_fit_the_grid_without_overlapping():
    taken: dict[tuple[int, int], int] = {}
    for panel in panels(_dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"panel {panel['id']} overlaps panel {taken[(x, y)]}"
                taken[(x, y)] = panel["id"]


def test_every_panel_but_rows_has_a_description_and_queries():
    for panel in panels(_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel.get("description"), panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_the_dashboard_answers_the_operators_questions():
    """Throughput in and out, latency, event age, lag in messages and seconds, commits, dead letters, retries,
    back-pressure, destination state, memory and CPU: each has a query."""
    named = set().union(*(metric_names(q.expr) for q in dashboard_queries(_dashboard())))
    assert named >= {
        "usage_consumer_consumed_total", "usage_consumer_delivered_messages_total",
        "usage_consumer_delivered_events_total", "usage_consumer_batch_delivery_seconds_bucket",
        "usage_consumer_event_age_seconds_bucket", "usage_consumer_event_age_seconds_count",
        "usage_consumer_consumer_lag", "usage_consumer_lag_seconds", "usage_consumer_last_commit_timestamp_seconds",
        "usage_consumer_dead_lettered_total", "usage_consumer_retries_total", "usage_consumer_in_flight_batches",
        "usage_consumer_paused_partitions", "usage_consumer_destination_state", "usage_consumer_failed",
        "process_resident_memory_bytes", "process_cpu_seconds_total"}


# ---------------------------------------------------------------------------------------------- the queries

def test_every_variable_a_query_uses_is_defined():
    dashboard = _dashboard()
    defined = dashboard_variables(dashboard) | set(GRAFANA_BUILTINS)
    assert set(VARIABLE_VALUES) == defined
    for query in dashboard_queries(dashboard):
        substitute(query.expr, {name: VARIABLE_VALUES[name] for name in defined})


def test_every_query_of_the_dashboard_and_the_rules_parses_with_promtool(tmp_path: Path):
    shipped = _shipped()
    queries = [q.expr for q in shipped.rule_queries]
    queries += [substitute(q.expr, VARIABLE_VALUES) for q in shipped.dashboard_queries]
    result = check_rules(((f"chart_query:{i}", expr) for i, expr in enumerate(queries)), tmp_path)
    where = "\n".join(f"chart_query:{i} = {q.where}" for i, q in enumerate(shipped.rule_queries +
                                                                           shipped.dashboard_queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout


def test_the_promtool_check_rejects_a_query_prometheus_would_reject(tmp_path: Path):
    result = check_rules([("good", "sum by (destination) (rate(x_total[5m]))"),
                          ("broken", "sum by (destination) rate(x_total[5m]))")], tmp_path)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ----------------------------------------------------------------------------------------- metric names guard

@pytest.mark.parametrize(("expr", "histograms", "expected"), [
    pytest.param('sum by (destination, reason) (rate(usage_consumer_retries_total{destination=~"fresh.*", '
                 'reason!="timeout"}[5m]))', (), {"usage_consumer_retries_total"}, id="aggregation-by-labels"),
    pytest.param('histogram_quantile(0.99, sum without (pod) (rate(x_bucket{le!="+Inf"}[5m])))', ("x",), {"x"},
                 id="histogram-bucket"),
    pytest.param('histogram_quantile(0.99, rate(x_bucket[5m]))', (), {"x_bucket"}, id="not-known-as-histogram"),
    pytest.param("rate(x_sum[5m]) / rate(x_count[5m]) + y_count", ("x",), {"x", "y_count"},
                 id="suffix-only-on-histograms"),
    pytest.param("a and on (destination) b unless ignoring(partition) c or d", (), {"a", "b", "c", "d"},
                 id="set-operators"),
    pytest.param("a * on(destination) group_left (state) b / on() group_right c", (), {"a", "b", "c"},
                 id="group-modifiers"),
    pytest.param("a * on(destination) group_left b", (), {"a", "b"}, id="group-left-without-labels"),
    pytest.param('count_values("le", x)', (), {"x"}, id="string-argument"),
    pytest.param('label_replace(up, "dst", "$1", "destination", "(.*)")', (), {"up"}, id="label-replace"),
    pytest.param("max_over_time(x[1h:5m]) offset 1h + y @ start() - z offset -5m", (), {"x", "y", "z"},
                 id="subquery-offset-at"),
    pytest.param("topk(3, sum by (topic) (x)) > bool 0", (), {"x"}, id="topk-bool"),
    pytest.param("sum(x) by (count, rate, sum)", (), {"x"}, id="trailing-by-with-function-named-labels"),
    pytest.param('{__name__="x", job="y"} + {__name__=~"z|w"}', (), {"x"}, id="name-matcher"),
    pytest.param("time() - max(last_commit) > Inf or vector(1) < NaN", (), {"last_commit"}, id="functions-numbers"),
    pytest.param("# how late\nx > 1e3 * 2.5e-1 + 0x1F", (), {"x"}, id="comment-and-numbers"),
    pytest.param("job:usage_consumer_lag:max5m > 0", (), {"job:usage_consumer_lag:max5m"}, id="recording-rule"),
    pytest.param('absent(x{a="{b}", c="\\"d(e)\\"", f=`g{`})', (), {"x"}, id="strings-with-brackets"),
    pytest.param("sum by(destination)(rate(x[5m]))", (), {"x"}, id="no-spaces"),
    pytest.param('rate(x{pod=~"$pod", d=~"${destination:regex}"}[$__rate_interval]) > $threshold', (), {"x"},
                 id="grafana-variables"),
    pytest.param("sum without (pod) (x) / ignoring (le) group_left sum(y)", (), {"x", "y"}, id="without"),
])
def test_metric_names_finds_exactly_the_metrics(expr: str, histograms: tuple[str, ...], expected: set[str]):
    assert metric_names(expr, histograms) == expected


def test_substitute_replaces_every_variable_form_and_refuses_unknown_ones():
    values = {"a": "1", "rate": "2m"}
    assert substitute('x{l="$a", m="${a}", n="${a:regex}", o="[[a]]"}[$rate]', values) == \
        'x{l="1", m="1", n="1", o="1"}[2m]'
    with pytest.raises(KeyError, match=r"\$b"):
        substitute("x[$b]", values)


FAKE_EXPOSITION = """\
# HELP usage_consumer_consumed_total Records consumed from Kafka.
# TYPE usage_consumer_consumed_total counter
usage_consumer_consumed_total{destination="freshpaint"} 3.0
# HELP usage_consumer_retries_total Requests retried.
# TYPE usage_consumer_retries_total counter
# HELP usage_consumer_batch_delivery_seconds Delivery time.
# TYPE usage_consumer_batch_delivery_seconds histogram
usage_consumer_batch_delivery_seconds_bucket{destination="freshpaint",le="+Inf"} 1.0
usage_consumer_batch_delivery_seconds_count{destination="freshpaint"} 1.0
usage_consumer_batch_delivery_seconds_sum{destination="freshpaint"} 0.1
process_resident_memory_bytes 1.2e+08
"""


def test_exported_reads_declared_families_samples_and_histograms():
    have = exported(FAKE_EXPOSITION)
    assert have.histograms == {"usage_consumer_batch_delivery_seconds"}
    assert {"usage_consumer_consumed_total", "usage_consumer_retries_total", "process_resident_memory_bytes",
            "usage_consumer_batch_delivery_seconds", "usage_consumer_batch_delivery_seconds_bucket"} <= have.names
    assert "usage_consumer_consumed" not in have.names  # Prometheus stores the counter as ..._total only


def test_the_guard_reports_each_unexported_metric_with_where_it_is_used():
    queries = [
        Query("panel A", "sum(rate(usage_consumer_consumed_total[5m])) / sum(rate(usage_consumer_consumed[5m]))"),
        Query("panel B", "histogram_quantile(0.9, rate(usage_consumer_batch_delivery_seconds_bucket[5m]))"),
        Query("panel C", "rate(usage_consumer_batch_delivery_seconds_total[5m]) + usage_consumer_lag_seconds"),
        Query("panel D", "rate(usage_consumer_retries_total[5m]) and up and kube_pod_status_ready"),
        Query("rule E", "usage_consumer_lag_seconds > 60 or job:recorded:max > 0"),
    ]
    missing = missing_metrics(queries, FAKE_EXPOSITION, defined={"job:recorded:max"})
    assert missing == {
        "usage_consumer_consumed": ["panel A"],
        "usage_consumer_batch_delivery_seconds_total": ["panel C"],
        "usage_consumer_lag_seconds": ["panel C", "rule E"],
    }
    message = describe_missing(missing)
    assert "3 metric(s)" in message
    assert "usage_consumer_lag_seconds\n      used by panel C\n      used by rule E" in message


def _consumer_exposition() -> str:
    """What the consumer's registry declares before any lane runs: every family's name, no traffic needed."""
    from consumer.observability.metrics import Metrics

    return Metrics().exposition().decode()


def test_the_guard_fails_when_a_dashboard_query_names_a_metric_the_consumer_does_not_export():
    """The shipped dashboard against the consumer's exposition with one family left out: the guard names it and
    the panel that uses it."""
    exposition = "\n".join(line for line in _consumer_exposition().splitlines()
                           if "usage_consumer_paused_partitions" not in line)
    missing = missing_metrics(dashboard_queries(_dashboard()), exposition)
    assert missing == {"usage_consumer_paused_partitions": ['dashboard panel 25 "Paused partitions" target A']}

    broken = json.loads(json.dumps(_dashboard()))
    target = next(p for p in panels(broken) if p["id"] == 9)["targets"][0]
    target["expr"] = target["expr"].replace("usage_consumer_consumed_total", "usage_consumer_consumed")
    missing = missing_metrics(dashboard_queries(broken), _consumer_exposition())
    assert missing == {"usage_consumer_consumed": ['dashboard panel 9 "Records in and out per second" target A']}


def test_the_dashboard_and_rules_name_only_metrics_the_consumer_declares():
    """Fast feedback without a broker: the consumer's registry declares every family the queries name (the
    integration test checks the same against a running consumer's /metrics)."""
    shipped = _shipped()
    missing = missing_metrics(shipped.queries, _consumer_exposition(), defined=shipped.recorded)
    assert not missing, describe_missing(missing)
