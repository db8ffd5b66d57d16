"""The chart's NetworkPolicy (issue 16): rendered, validated like every manifest, and read back.

The ports it allows are checked against what the pod connects to, taken from the consumer's own view of the
rendered config: config.yaml from the ConfigMap with the container's literal environment, loaded by
``settings_from`` (so a literal KAFKA_BOOTSTRAP_SERVERS in extraEnv counts, as in the pod), and the destinations'
URLs as the consumer builds them (``datacenter_url``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from consumer.config import Settings, settings_from
from consumer.sinks.freshsuccess import datacenter_url
from consumer.yamlsource import load_yaml_text
from tests.chart.chart import (
    CHART,
    FIXTURES,
    FULLNAME,
    Rendered,
    render,
    template_error,
    validation_errors,
    values_yaml,
)

ENABLED = {"networkPolicy.enabled": "true"}
DNS = {("UDP", 53), ("TCP", 53)}
TARGETS = ("kafka", "schemaRegistry", "freshsuccess", "freshpaint")
SCHEMA_ERROR = "values don't meet the specifications of the schema"


def _render(values: Iterable[Path] = (), sets: Mapping[str, str] | None = None,
            set_json: Mapping[str, Any] | None = None) -> Rendered:
    rendered = render(values, {**ENABLED, **(sets or {})}, set_json)
    errors = [e for doc in rendered.docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)
    return rendered


def _policy(rendered: Rendered) -> dict[str, Any]:
    policy = rendered.one("NetworkPolicy")
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    return policy


def _settings(rendered: Rendered) -> Settings:
    """The settings the pod runs with: config.yaml and the container's literal environment variables."""
    environ = {e["name"]: e["value"] for e in rendered.container.get("env", []) if "value" in e}
    configmap = next(d for d in rendered.all("ConfigMap") if d["metadata"]["name"] == FULLNAME)  # not the dashboard
    return settings_from(load_yaml_text(configmap["data"]["config.yaml"]), environ)


def _host_port(server: str) -> int:
    server = server.strip().split("://", 1)[-1]
    host, sep, port = server.rpartition(":")
    return int(port) if sep and port.isdigit() and not host.endswith(":") else 9092


def _url_port(url: str) -> int:
    parts = urlsplit(url.strip())
    return parts.port or {"https": 443, "http": 80}[parts.scheme]


def _expected(settings: Settings) -> dict[str, set[int]]:
    """The TCP ports the consumer connects to, by target (the policy's egress rules after DNS, in this order)."""
    expected = {"kafka": {_host_port(s) for s in settings.kafka.bootstrap_servers.split(",") if s.strip()}}
    if settings.decoding.schema_registry_url:
        expected["schemaRegistry"] = {_url_port(u) for u in settings.decoding.schema_registry_url.split(",")}
    if settings.freshsuccess.enabled:
        url = settings.freshsuccess.base_url or datacenter_url(settings.freshsuccess.datacenter)
        expected["freshsuccess"] = {_url_port(url)}
    if settings.freshpaint.enabled:
        expected["freshpaint"] = {_url_port(settings.freshpaint.base_url)}
    return expected


def _ports(rule: Mapping[str, Any]) -> set[tuple[str, int]]:
    assert rule.get("ports"), f"an egress rule without ports allows every port: {rule}"
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}


def _egress(policy: Mapping[str, Any], extra: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The DNS rule and the target rules (without the ``extra`` rules at the end)."""
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    dns, *targets = rules[:len(rules) - extra]
    assert _ports(dns) == DNS
    return dns, targets


def _check(rendered: Rendered) -> dict[str, set[int]]:
    """The policy allows exactly what the pod's settings connect to, and ingress only to the health port."""
    policy, settings = _policy(rendered), _settings(rendered)
    ingress = policy["spec"]["ingress"]
    assert len(ingress) == 1
    assert ingress[0]["ports"] == [{"protocol": "TCP", "port": settings.health.port}]
    assert rendered.container["ports"] == [{"name": "http", "containerPort": settings.health.port, "protocol": "TCP"}]
    expected = _expected(settings)
    _, targets = _egress(policy)
    assert [{port for _, port in _ports(rule)} for rule in targets] == list(expected.values())
    assert all(protocol == "TCP" for rule in targets for protocol, _ in _ports(rule))
    return expected


# ------------------------------------------------------------------------------- the ports follow the config

PORT_CASES = [
    pytest.param({}, {"kafka": {9092}, "schemaRegistry": {8081}, "freshsuccess": {443}, "freshpaint": {443}},
                 8080, id="defaults"),
    pytest.param({"config": {
        "kafka": {"bootstrap_servers": "SASL_SSL://k-0.example:19093, k-1.example:29093,k-2.example"},
        "decoding": {"schema_registry_url": "http://registry.internal:18081,http://registry-b.internal"},
        "freshsuccess": {"base_url": "https://freshsuccess-proxy.internal:8443"},
        "freshpaint": {"base_url": "http://freshpaint-emulator:8080"},
        "health": {"port": 9464}}},
        {"kafka": {19093, 29093, 9092}, "schemaRegistry": {18081, 80}, "freshsuccess": {8443}, "freshpaint": {8080}},
        9464, id="other-ports"),
    pytest.param({"config": {"decoding": {"schema_registry_url": None}, "freshsuccess": {"enabled": False}}},
                 {"kafka": {9092}, "freshpaint": {443}}, 8080, id="no-registry-freshpaint-only"),
    pytest.param({"extraEnv": [{"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "kafka-env:39092"},
                               {"name": "SCHEMA_REGISTRY_URL", "value": "https://registry-env:9443"}]},
                 {"kafka": {39092}, "schemaRegistry": {9443}, "freshsuccess": {443}, "freshpaint": {443}},
                 8080, id="literal-environment-wins"),
]


@pytest.mark.parametrize(("values", "ports", "health"), PORT_CASES)
def test_allowed_ports_match_the_configured_kafka_registry_destinations_and_health_port(
        values: dict[str, Any], ports: dict[str, set[int]], health: int):
    rendered = _render(set_json=values)
    assert _check(rendered) == ports
    assert _policy(rendered)["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": health}]


@pytest.mark.parametrize("values", [
    pytest.param(CHART / "ci" / "networkpolicy-values.yaml", id="networkpolicy"),
    pytest.param(FIXTURES / "all-features-values.yaml", id="all-features"),
    pytest.param(CHART / "ci" / "keda-values.yaml", id="keda"),
    pytest.param(CHART / "ci" / "existing-secret-values.yaml", id="https-registry"),
    pytest.param(CHART / "ci" / "dev-secret-values.yaml", id="emulator"),
])
def test_allowed_ports_match_the_settings_of_the_ci_values(values: Path):
    extra = len((yaml.safe_load(values.read_text()).get("networkPolicy") or {}).get("egress", {}).get("extra", []))
    rendered = _render((values,))
    policy, settings = _policy(rendered), _settings(rendered)
    _, targets = _egress(policy, extra)
    assert [{port for _, port in _ports(rule)} for rule in targets] == list(_expected(settings).values())


def test_the_ci_values_render_what_they_say():
    rendered = _render((CHART / "ci" / "networkpolicy-values.yaml",))
    policy = _policy(rendered)
    _, (kafka, registry, freshsuccess, freshpaint) = _egress(policy, extra=1)
    assert _ports(kafka) == {("TCP", 9093)}
    assert kafka["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}},
                            "podSelector": {"matchLabels": {"strimzi.io/cluster": "events"}}}]
    assert (_ports(registry), registry["to"]) == ({("TCP", 8443)}, [{"ipBlock": {"cidr": "10.30.0.0/24"}}])
    assert _ports(freshsuccess) == {("TCP", 443)}
    assert freshsuccess["to"][0]["ipBlock"]["except"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert _ports(freshpaint) == {("TCP", 443)}
    assert "to" not in freshpaint  # any address
    assert policy["spec"]["egress"][-1] == {"to": [{"ipBlock": {"cidr": "10.40.0.10/32"}}],
                                            "ports": [{"protocol": "TCP", "port": 3128}]}
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]


# ----------------------------------------------------------------------------------- defaults and overrides

def test_off_by_default():
    assert values_yaml()["networkPolicy"]["enabled"] is False
    assert "NetworkPolicy" not in render().kinds()


def test_default_peers():
    policy = _policy(_render())
    network_policy = values_yaml()["networkPolicy"]
    assert policy["spec"]["ingress"][0]["from"] == network_policy["ingress"]["from"]
    dns, targets = _egress(policy)
    assert dns["to"] == network_policy["egress"]["dns"]["to"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert all("to" not in rule for rule in targets)  # no address known: the ports at any address


def test_listed_ports_and_peers_replace_the_derived_ones():
    kafka_peer = {"ipBlock": {"cidr": "10.20.0.0/16"}}
    rendered = _render(set_json={"networkPolicy": {"egress": {
        "kafka": {"ports": [9093, 9094, 9095], "to": [kafka_peer]},
        "freshpaint": {"ports": [8443]},
        "dns": {"to": []}}}})
    dns, (kafka, _, _, freshpaint) = _egress(_policy(rendered))
    assert "to" not in dns
    assert (_ports(kafka), kafka["to"]) == ({("TCP", 9093), ("TCP", 9094), ("TCP", 9095)}, [kafka_peer])
    assert _ports(freshpaint) == {("TCP", 8443)}


def test_registry_ports_alone_add_the_rule_when_the_url_comes_from_a_configmap():
    rendered = _render(set_json={
        "config": {"decoding": {"schema_registry_url": None}},
        "extraEnv": [{"name": "SCHEMA_REGISTRY_URL", "valueFrom": {"configMapKeyRef": {"name": "k", "key": "u"}}}],
        "networkPolicy": {"egress": {"schemaRegistry": {"ports": [8081]}}}})
    _, targets = _egress(_policy(rendered))
    assert [{p for _, p in _ports(rule)} for rule in targets] == [{9092}, {8081}, {443}, {443}]


def test_empty_ingress_peers_admit_nobody():
    policy = _policy(_render(set_json={"networkPolicy": {"ingress": {"from": []}}}))
    assert policy["spec"]["ingress"] == []
    assert "Ingress" in policy["spec"]["policyTypes"]


def test_extra_egress_rules_are_appended_as_given():
    extra = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "otel"}}}],
              "ports": [{"protocol": "TCP", "port": 4317}, {"protocol": "UDP", "port": 6831}]}]
    policy = _policy(_render(set_json={"networkPolicy": {"egress": {"extra": extra}}}))
    assert policy["spec"]["egress"][-1:] == extra
    _, targets = _egress(policy, extra=1)
    assert len(targets) == len(TARGETS)


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"egress": {"kafak": {"ports": [9092]}}}, "additional properties 'kafak' not allowed",
                 id="unknown-target"),
    pytest.param({"egress": {"kafka": {"ports": [70000]}}}, "/networkPolicy/egress/kafka/ports/0", id="port-range"),
    pytest.param({"egress": {"kafka": {"ports": ["9092"]}}}, "/networkPolicy/egress/kafka/ports/0", id="port-type"),
    pytest.param({"ingress": {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                        "namespaceSelector": {}}]}}, "/networkPolicy/ingress/from/0",
                 id="ipblock-with-selector"),
    pytest.param({"ingress": {"from": [{"podSelector": {"matchLabel": {"a": "b"}}}]}},
                 "additional properties 'matchLabel' not allowed", id="selector-typo"),
    pytest.param({"ingress": {"port": 9090}}, "additional properties 'port' not allowed", id="ingress-port"),
    pytest.param({"egress": {"extra": [{"to": [], "port": 1}]}}, "additional properties 'port' not allowed",
                 id="extra-rule-typo"),
])
def test_the_schema_refuses_mistakes(values: dict[str, Any], message: str):
    error = template_error(set_json={"networkPolicy": {"enabled": True, **values}})
    assert SCHEMA_ERROR in error, error
    assert message in error, error
