"""The Helm chart: lint, render every feature combination, validate strictly, and pin what operators rely on."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    CHART,
    CI_VALUES,
    CRD_SCHEMAS,
    FIXTURES,
    FULLNAME,
    ROOT,
    Rendered,
    crd_schema_paths,
    helm,
    jsonschema,
    render,
    template_error,
    validation_errors,
    values_yaml,
    venv_tool,
    write_values,
)

CASES = [pytest.param((), id="defaults")] + [pytest.param((p,), id=p.stem) for p in CI_VALUES]
FEATURES = {"keda", "hpa", "servicemonitor", "prometheusrule", "existing-secret", "sasl", "networkpolicy"}
SHIPPED_MAPPING = ROOT / "consumer" / "defaults" / "mapping.yaml"


def test_every_feature_has_a_ci_values_file():
    assert {p.stem.removesuffix("-values") for p in CI_VALUES} >= FEATURES


# ------------------------------------------------------------------------------------ lint, render, schema

@pytest.mark.parametrize("values", CASES)
def test_helm_lint_strict(values: tuple[Path, ...]):
    args = ["lint", "--strict"] + [a for p in values for a in ("-f", str(p))]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", CASES)
def test_rendered_manifests_pass_strict_schemas(values: tuple[Path, ...]):
    rendered = render(values)
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"} <= rendered.kinds()
    errors = [e for doc in rendered.docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)


def test_crd_schemas_are_valid_json_schemas_that_refuse_unknown_fields():
    paths = crd_schema_paths()
    assert {p.relative_to(CRD_SCHEMAS).as_posix() for p in paths} == {
        "keda.sh/scaledobject_v1alpha1.json", "keda.sh/triggerauthentication_v1alpha1.json",
        "monitoring.coreos.com/prometheusrule_v1.json", "monitoring.coreos.com/servicemonitor_v1.json"}
    for path in paths:
        schema = json.loads(path.read_text())
        jsonschema().Draft7Validator.check_schema(schema)
    scaled = render((CHART / "ci" / "keda-values.yaml",)).one("ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000  # KEDA metadata values are strings
    scaled["spec"]["pollingIntervall"] = 30
    errors = list(validation_errors(scaled))
    assert any("pollingIntervall" in e for e in errors), errors
    assert any("lagThreshold" in e for e in errors), errors


def test_the_kubernetes_validation_is_strict():
    """A typo in a built-in resource is caught, so a green run means the fields exist."""
    deployment = copy.deepcopy(render().deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    errors = list(validation_errors(deployment))
    assert any("httpGett" in e for e in errors), errors


# ----------------------------------------------------------------------------- config and mapping content

def test_chart_default_mapping_is_the_shipped_default():
    assert values_yaml()["mapping"] == yaml.safe_load(SHIPPED_MAPPING.read_text())


def _check(rendered: Rendered, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``usage-consumer check`` on the rendered ConfigMap, as the pod would read it."""
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(rendered.configmap_file("mapping.yaml"))
    config = rendered.config
    assert config["mapping"] == {"file": "/etc/usage-consumer/mapping.yaml"}
    config["mapping"]["file"] = str(mapping)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # The pod's environment has the SASL password from the credentials Secret; `check` names it when missing.
    return subprocess.run([venv_tool("usage-consumer"), "check", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "KAFKA_SASL_PASSWORD": "from-the-secret"})


@pytest.mark.parametrize("values", CASES)
def test_rendered_configmap_passes_usage_consumer_check(values: tuple[Path, ...], tmp_path: Path):
    result = _check(render(values), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: "), result.stdout


def test_mapping_with_a_field_the_schema_lacks_renders_but_fails_the_check_with_its_line(tmp_path: Path):
    """Structure is checked at template time; names and types against the event schema by the consumer."""
    mapping = copy.deepcopy(values_yaml()["mapping"])
    mapping["rules"][0]["freshsuccess"][0]["fields"]["feature"] = {"field": "featur"}
    rendered = render(set_json={"mapping": mapping})
    result = _check(rendered, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "mapping.yaml:" in result.stderr
    assert "unknown field 'featur'" in result.stderr


BROKEN = [
    pytest.param("broken-mapping-values.yaml", ["/mapping/rules/0/freshsuccess/0", "'actoin' not allowed"],
                 id="misspelled-key"),
    pytest.param({"mapping": {"version": 2, "rules": [{"name": "x", "freshpaint": [{"event": "E"}]}]}},
                 ["/mapping/version", "1"], id="unsupported-version"),
    pytest.param({"rules": [{"name": "x", "freshsuccess": [{"action": "featur"}]}]},
                 ["/mapping/rules/0/freshsuccess/0/action", "featur"], id="unknown-action"),
    pytest.param({"rules": [{"name": "x", "freshsuccess": [{"action": "moduleEnd", "fields": {"timeSpnet": 1}}]}]},
                 ["/mapping/rules/0/freshsuccess/0/fields", "'timeSpnet' not allowed"], id="field-of-another-action"),
    pytest.param({"rules": [{"name": "x", "freshpaint": [{"event": "E", "properties": {"token": "t"}}]}]},
                 ["/mapping/rules/0/freshpaint/0/properties/token"], id="reserved-token"),
    pytest.param({"rules": [{"name": "x", "freshpaint": [{"event": "E", "properties": {
                     "uses": {"field": "count", "convert": "seconds"}}}]}]},
                 ["/mapping/rules/0/freshpaint/0/properties/uses/convert", "value must be one of 'epoch_ms'"],
                 id="unknown-convert"),
    pytest.param({"rules": [{"name": "x"}]}, ["/mapping/rules/0", "freshsuccess", "freshpaint"], id="no-outputs"),
    pytest.param({"rules": []}, ["/mapping/rules", "minItems: got 0, want 1"], id="no-rules"),
]


@pytest.mark.parametrize(("broken", "expected"), BROKEN)
def test_broken_mapping_fails_at_template_time_with_a_readable_message(
        broken: str | dict[str, Any], expected: list[str], tmp_path: Path):
    if isinstance(broken, str):
        values = FIXTURES / broken
    else:
        mapping = broken.get("mapping", {"version": 1, **broken})
        values = write_values(tmp_path, "broken.yaml", {"mapping": mapping})
    error = template_error([values])
    assert "values don't meet the specifications of the schema" in error, error
    for text in expected:
        assert text in error, error


def test_config_keys_in_the_values_schema_match_the_consumer_settings():
    """values.schema.json refuses unknown config keys, so it must know every key the consumer has."""
    from consumer.config import Settings, StreamConfig

    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    secrets = {"auth_key", "api_key", "token"}  # environment only: the schema must refuse them
    owned_by_chart = {"mapping"}  # mapping.file is set by the chart
    top_level = {"streams"}  # the `streams` value next to `mapping` (its files are the chart's), checked below
    model_sections = {name for name, field in Settings.model_fields.items() if not field.exclude} - {"source"}
    assert set(sections) == model_sections - owned_by_chart - top_level
    assert schema["properties"]["streams"]["items"] == {"$ref": "#/definitions/stream"}
    # A stream's reader_schema and mapping are file paths the chart owns: the values give the schema itself
    # (reader_schema_inline) and the mapping document (`mapping`), and the chart writes both paths.
    stream_fields = set(StreamConfig.model_fields) - {"reader_schema"}
    in_schema = set(schema["definitions"]["stream"]["properties"])
    assert in_schema == stream_fields, (
        f"helm/usage-consumer/values.schema.json definitions.stream is out of date: add "
        f"{sorted(stream_fields - in_schema)}, remove {sorted(in_schema - stream_fields)}")
    for name in sections:
        section_model = Settings.model_fields[name].annotation
        assert isinstance(section_model, type)
        fields = set(getattr(section_model, "model_fields", {})) - secrets
        in_schema = set(sections[name]["properties"])
        assert in_schema == fields, (
            f"helm/usage-consumer/values.schema.json config.{name} is out of date: add "
            f"{sorted(fields - in_schema)}, remove {sorted(in_schema - fields)} (with the consumer's type and range)")


def test_secrets_in_config_values_are_refused():
    error = template_error(sets={"config.freshsuccess.auth_key": "k"})
    assert "'auth_key' not allowed" in error
    error = template_error(sets={"config.freshpaint.token": "t"})
    assert "'token' not allowed" in error


def test_chart_sets_the_mapping_path_and_refuses_one_in_values():
    assert render().config["mapping"] == {"file": "/etc/usage-consumer/mapping.yaml"}
    error = template_error(sets={"config.mapping.file": "/x.yaml"})
    assert "at '/config': additional properties 'mapping' not allowed" in error


# ------------------------------------------------------------------------------------------ the Deployment

def test_rolling_update_adds_one_before_removing_any():
    strategy = render().deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def _checksum(rendered: Rendered) -> str:
    annotations: dict[str, str] = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


def test_checksum_annotation_changes_with_the_mapping_and_config_only():
    base = _checksum(render())
    mapping = copy.deepcopy(values_yaml()["mapping"])
    mapping["rules"][0]["freshpaint"][0]["event"] = "Feature Was Used"
    assert _checksum(render(set_json={"mapping": mapping})) != base
    assert _checksum(render(sets={"config.batching.max_events": "500"})) != base
    assert _checksum(render(sets={"replicaCount": "5", "resources.limits.memory": "2Gi"})) == base


@pytest.mark.parametrize(("values", "replicas"), [
    pytest.param((), 2, id="defaults"),
    pytest.param((CHART / "ci" / "hpa-values.yaml",), None, id="hpa"),
    pytest.param((CHART / "ci" / "keda-values.yaml",), None, id="keda"),
])
def test_replicas_are_left_to_the_autoscaler(values: tuple[Path, ...], replicas: int | None):
    rendered = render(values)
    assert rendered.deployment["spec"].get("replicas") == replicas
    autoscalers = rendered.all("HorizontalPodAutoscaler") + rendered.all("ScaledObject")
    assert len(autoscalers) == (0 if replicas else 1)


def test_hpa_and_keda_together_are_refused():
    error = template_error([CHART / "ci" / "hpa-values.yaml", CHART / "ci" / "keda-values.yaml"])
    assert "enable at most one of autoscaling.hpa.enabled and keda.enabled" in error


@pytest.mark.parametrize("values", CASES)
def test_security_context_is_hardened(values: tuple[Path, ...]):
    rendered = render(values)
    pod, container = rendered.pod, rendered.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/usage-consumer"]["readOnly"] is True
    assert "/tmp" in mounts  # writable scratch space on a read-only root


def test_termination_grace_period_exceeds_the_shutdown_deadline():
    rendered = render()
    assert rendered.pod["terminationGracePeriodSeconds"] > rendered.config["shutdown"]["timeout_s"]
    error = template_error(sets={"config.shutdown.timeout_s": "60"})
    assert "terminationGracePeriodSeconds (40) must be at least config.shutdown.timeout_s (60) + 5" in error
    rendered = render(sets={"config.shutdown.timeout_s": "60", "terminationGracePeriodSeconds": "75"})
    assert rendered.pod["terminationGracePeriodSeconds"] == 75


@pytest.mark.parametrize("values", CASES)
def test_probes_and_ports_follow_the_health_port(values: tuple[Path, ...]):
    rendered = render(values)
    port = rendered.config["health"]["port"]
    container = rendered.container
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert rendered.config["health"]["host"] == "0.0.0.0"  # the kubelet probes the pod IP
    assert container["args"] == ["run", "--config", "/etc/usage-consumer/config.yaml"]


def test_pod_disruption_budget_selects_the_pods():
    rendered = render()
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "PodDisruptionBudget" not in render(sets={"podDisruptionBudget.enabled": "false"}).kinds()


def test_resources_are_set():
    resources = render().container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory", "ephemeral-storage"}
    # No CPU limit: throttling would stall the poll loop (kube-score's finding is silenced, helm/README.md).
    assert set(resources["limits"]) == {"memory", "ephemeral-storage"}


# ------------------------------------------------------------------------------------- consumer group, KEDA

def _triggers(rendered: Rendered) -> list[dict[str, Any]]:
    triggers: list[dict[str, Any]] = rendered.one("ScaledObject")["spec"]["triggers"]
    return triggers


def test_keda_watches_the_groups_the_consumer_joins():
    rendered = render((CHART / "ci" / "keda-values.yaml",))
    kafka = rendered.config["kafka"]
    group_id = kafka["group_id"]
    pairs = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in _triggers(rendered)}
    assert pairs == {(f"{group_id}.{d}", topic) for d in ("freshsuccess", "freshpaint") for topic in kafka["topics"]}
    for trigger in _triggers(rendered):
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["bootstrapServers"] == kafka["bootstrap_servers"]
        assert trigger["metadata"]["lagThreshold"] == "10000"
        assert "authenticationRef" not in trigger
    spec = rendered.one("ScaledObject")["spec"]
    assert spec["scaleTargetRef"] == {"name": rendered.deployment["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 24)


@pytest.mark.parametrize(("sets", "groups"), [
    pytest.param({"config.kafka.group_id": "g"}, {"g.freshsuccess", "g.freshpaint"}, id="per-destination"),
    pytest.param({"config.kafka.group_id": "g", "config.kafka.group_per_destination": "false"}, {"g"}, id="shared"),
    pytest.param({"config.kafka.group_id": "g", "config.freshsuccess.enabled": "false"}, {"g.freshpaint"},
                 id="freshpaint-only"),
])
def test_one_group_value_drives_app_and_autoscaler(sets: dict[str, str], groups: set[str]):
    rendered = render(sets={"keda.enabled": "true", **sets})
    assert rendered.config["kafka"]["group_id"] == "g"
    assert {t["metadata"]["consumerGroup"] for t in _triggers(rendered)} == groups


def test_keda_authenticates_like_the_consumer_with_sasl():
    rendered = render((CHART / "ci" / "sasl-values.yaml",))
    auth = rendered.one("TriggerAuthentication")
    for trigger in _triggers(rendered):
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        # extraEnv overrides the bootstrap servers in the consumer, so KEDA reads the same variable.
        assert trigger["metadata"]["bootstrapServersFromEnv"] == "KAFKA_BOOTSTRAP_SERVERS"
    env = {e["name"]: e for e in rendered.container["env"]}
    password = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert {"parameter": "password", **password} in auth["spec"]["secretTargetRef"]
    assert {"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"} in auth["spec"]["secretTargetRef"]
    assert env["KAFKA_SASL_USERNAME"]["value"] == rendered.config["kafka"]["sasl_username"]
    assert auth["spec"]["env"] == [{"parameter": "username", "name": "KAFKA_SASL_USERNAME",
                                    "containerName": rendered.container["name"]}]


# ----------------------------------------------------------------------------------------- secrets, Kafka

def _secret_env(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in rendered.container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_default_secrets_come_from_the_release_secret_which_the_chart_does_not_create():
    rendered = render()
    assert "Secret" not in rendered.kinds()
    assert _secret_env(rendered) == {name: {"name": FULLNAME, "key": name}
                                     for name in ("FRESHSUCCESS_AUTH_KEY", "FRESHSUCCESS_API_KEY", "FRESHPAINT_TOKEN")}


def test_existing_secret_with_its_own_key_names():
    rendered = render((CHART / "ci" / "existing-secret-values.yaml",))
    assert "Secret" not in rendered.kinds()
    assert _secret_env(rendered) == {
        "FRESHSUCCESS_AUTH_KEY": {"name": "usage-consumer-credentials", "key": "freshsuccess-auth-key"},
        "FRESHSUCCESS_API_KEY": {"name": "usage-consumer-credentials", "key": "freshsuccess-api-key"},
        "FRESHPAINT_TOKEN": {"name": "usage-consumer-credentials", "key": "freshpaint-token"},
        "SCHEMA_REGISTRY_PASSWORD": {"name": "usage-consumer-credentials", "key": "schema-registry-password"},
    }


def test_dev_secret_is_created_and_rolls_the_pods():
    rendered = render((CHART / "ci" / "dev-secret-values.yaml",))
    secret = rendered.one("Secret")
    assert secret["metadata"]["name"] == FULLNAME
    assert set(secret["data"]) == {"FRESHPAINT_TOKEN"}
    assert _secret_env(rendered) == {"FRESHPAINT_TOKEN": {"name": FULLNAME, "key": "FRESHPAINT_TOKEN"}}
    annotations = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations
    other = render((CHART / "ci" / "dev-secret-values.yaml",), sets={"secrets.dev.FRESHPAINT_TOKEN": "other"})
    assert other.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] != \
        annotations["checksum/secret"]


def test_no_secret_value_reaches_the_configmap():
    rendered = render((CHART / "ci" / "dev-secret-values.yaml",), sets={"secrets.dev.FRESHPAINT_TOKEN": "s3cr3t-tok"})
    assert "s3cr3t-tok" not in yaml.safe_dump(rendered.one("ConfigMap"))
    assert "s3cr3t-tok" not in yaml.safe_dump(rendered.deployment)


def test_existing_and_dev_secrets_together_are_refused():
    error = template_error([CHART / "ci" / "existing-secret-values.yaml", CHART / "ci" / "dev-secret-values.yaml"])
    assert "secrets.existingSecret and secrets.dev are both set" in error


def test_sasl_wires_the_password_and_tls_files():
    rendered = render((CHART / "ci" / "sasl-values.yaml",))
    kafka = rendered.config["kafka"]
    assert (kafka["security_protocol"], kafka["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka["ssl_ca_location"] == "/etc/usage-consumer/kafka-tls/ca.crt"
    assert "ssl_key_location" not in kafka
    assert _secret_env(rendered)["KAFKA_SASL_PASSWORD"] == {"name": "usage-consumer-credentials",
                                                           "key": "KAFKA_SASL_PASSWORD"}
    mounts = {m["name"]: m for m in rendered.container["volumeMounts"]}
    assert mounts["kafka-tls"] == {"name": "kafka-tls", "mountPath": "/etc/usage-consumer/kafka-tls", "readOnly": True}
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-ca"


def test_mutual_tls_key_password_is_optional():
    rendered = render((CHART / "ci" / "mtls-values.yaml",))
    kafka = rendered.config["kafka"]
    assert kafka["ssl_certificate_location"] == "/etc/usage-consumer/kafka-tls/tls.crt"
    assert kafka["ssl_key_location"] == "/etc/usage-consumer/kafka-tls/tls.key"
    assert _secret_env(rendered)["KAFKA_SSL_KEY_PASSWORD"]["optional"] is True


@pytest.mark.parametrize(("sets", "message"), [
    pytest.param({"config.kafka.security_protocol": "SASL_SSL", "config.kafka.sasl_username": "u"},
                 "set config.kafka.sasl_mechanism", id="no-mechanism"),
    pytest.param({"config.kafka.security_protocol": "SASL_SSL", "config.kafka.sasl_mechanism": "PLAIN"},
                 "set config.kafka.sasl_username", id="no-username"),
    pytest.param({"config.kafka.sasl_mechanism": "PLAIN"}, "use SASL_SSL or SASL_PLAINTEXT", id="no-sasl-protocol"),
    pytest.param({"kafkaTls.existingSecret": "ca"}, "use SSL or SASL_SSL", id="tls-files-without-tls"),
    pytest.param({"config.kafka.security_protocol": "SSL", "kafkaTls.existingSecret": "t", "kafkaTls.certKey": "c"},
                 "kafkaTls.certKey and kafkaTls.keyKey go together", id="cert-without-key"),
    pytest.param({"config.kafka.security_protocol": "SASL_SSL", "config.kafka.sasl_mechanism": "GSSAPI",
                  "config.kafka.sasl_username": "u"}, "/config/kafka/sasl_mechanism", id="unknown-mechanism"),
])
def test_kafka_security_mistakes_are_refused_with_what_to_change(sets: dict[str, str], message: str):
    assert message in template_error(sets=sets)


def test_extra_env_is_added():
    rendered = render(set_json={"extraEnv": [{"name": "LOG_EXTRA", "value": "1"}]})
    assert {"name": "LOG_EXTRA", "value": "1"} in rendered.container["env"]


# -------------------------------------------------------------------------------- metrics, Service, NOTES

def test_service_monitor_scrapes_metrics_through_the_service():
    rendered = render((CHART / "ci" / "servicemonitor-values.yaml",))
    service, monitor = rendered.one("Service"), rendered.one("ServiceMonitor")
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "10s"}]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rendered.container["ports"][0]["containerPort"] == 9464
    assert "Service" not in render().kinds()


def _notes(tmp_path: Path, *values: Path) -> str:
    """NOTES.txt as rendered (helm template renders but does not print it): through a throwaway template."""
    chart = tmp_path / "usage-consumer"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n')
    rendered = render(values, chart=chart)
    notes = [d for d in rendered.docs if "notes" in d and "kind" not in d]
    assert len(notes) == 1
    text: str = notes[0]["notes"]
    return text


def test_notes_name_the_secret_keys_and_groups(tmp_path: Path):
    notes = _notes(tmp_path)
    assert f'Secret "{FULLNAME}"' in notes
    for key in ("FRESHSUCCESS_AUTH_KEY", "FRESHSUCCESS_API_KEY", "FRESHPAINT_TOKEN"):
        assert f"--from-literal={key}=..." in notes
    assert "usage-consumer.freshsuccess, usage-consumer.freshpaint" in notes
    assert "/livez, /readyz, /metrics" in notes


def test_notes_warn_about_dev_secrets(tmp_path: Path):
    notes = _notes(tmp_path, CHART / "ci" / "dev-secret-values.yaml")
    assert "WARNING: secrets.dev is set" in notes
    assert "--from-literal" not in notes


@pytest.mark.parametrize(("members", "rate", "says"), [
    (12, 500, "WARNING: up to 12 members x freshpaint.max_requests_per_s 500 = 6000 requests/s"),
    (12, 400, "Freshpaint: at most 12 members x 400 = 4800 requests/s (account limit 5000/s)"),
    (12, None, "Set it to at most 416"),
], ids=["over", "under", "unset"])
def test_notes_check_members_times_the_freshpaint_rate_against_the_account_limit(
        tmp_path: Path, members: int, rate: int | None, says: str):
    values: dict[str, Any] = {"keda": {"enabled": True, "maxReplicaCount": members}}
    if rate is not None:
        values["config"] = {"freshpaint": {"max_requests_per_s": rate}}
    notes = _notes(tmp_path, write_values(tmp_path, "rate.yaml", values))
    assert says in notes
    assert ("WARNING: up to" in notes) == (rate == 500)



def test_the_values_schema_refuses_exactly_the_secret_client_properties_the_consumer_refuses(tmp_path: Path):
    """One table decides (consumer.config.SECRETS): the chart refuses the same librdkafka properties before a pod
    would refuse them at start-up."""
    from consumer.config import SECRETS

    schema = json.loads((CHART / "values.schema.json").read_text())
    refused = schema["properties"]["config"]["properties"]["kafka"]["properties"]["client_properties"]
    assert sorted(refused["propertyNames"]["not"]["enum"]) == sorted(
        p for secret in SECRETS for p in secret.client_properties)
    error = template_error((write_values(tmp_path, "secret.yaml",
                                         {"config": {"kafka": {"client_properties": {"sasl.password": "x"}}}}),))
    assert "sasl.password" in error or "client_properties" in error
