{{/* Names and labels. */}}
{{- define "usage-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "usage-consumer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "usage-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "usage-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "usage-consumer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "usage-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "usage-consumer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "usage-consumer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "usage-consumer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the secret environment variables. */}}
{{- define "usage-consumer.secretName" -}}
{{- default (include "usage-consumer.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Config sections with the defaults the consumer would use when a section or key is left out. */}}
{{- define "usage-consumer.section" -}}
{{- toYaml (index (.root.Values.config | default dict) .name | default dict) }}
{{- end }}

{{- define "usage-consumer.healthPort" -}}
{{- $health := include "usage-consumer.section" (dict "root" . "name" "health") | fromYaml }}
{{- $health.port | default 8080 | int }}
{{- end }}

{{- define "usage-consumer.shutdownTimeout" -}}
{{- $shutdown := include "usage-consumer.section" (dict "root" . "name" "shutdown") | fromYaml }}
{{- $shutdown.timeout_s | default 25 | float64 }}
{{- end }}

{{- define "usage-consumer.enabled" -}}
{{- $section := include "usage-consumer.section" (dict "root" .root "name" .name) | fromYaml }}
{{- if or (not (hasKey $section "enabled")) $section.enabled }}true{{ end }}
{{- end }}

{{/* Destinations the consumer runs, as a YAML list. */}}
{{- define "usage-consumer.destinations" -}}
{{- $out := list }}
{{- range $name := list "freshsuccess" "freshpaint" }}
{{- if include "usage-consumer.enabled" (dict "root" $ "name" $name) }}
{{- $out = append $out $name }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The consumer groups the consumer joins (one per destination unless group_per_destination is false), as a
YAML list: what the app derives from config.kafka.group_id, so KEDA watches the same groups. */}}
{{- define "usage-consumer.groups" -}}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- $groupId := $kafka.group_id | default "usage-consumer" }}
{{- $perDestination := or (not (hasKey $kafka "group_per_destination")) $kafka.group_per_destination }}
{{- $out := list }}
{{- if $perDestination }}
{{- range $dest := include "usage-consumer.destinations" . | fromYamlArray }}
{{- $out = append $out (printf "%s.%s" $groupId $dest) }}
{{- end }}
{{- else }}
{{- $out = list $groupId }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{- define "usage-consumer.saslEnabled" -}}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- if hasPrefix "SASL_" ($kafka.security_protocol | default "PLAINTEXT") }}true{{ end }}
{{- end }}

{{- define "usage-consumer.tlsEnabled" -}}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- if has ($kafka.security_protocol | default "PLAINTEXT") (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "usage-consumer.tlsDir" -}}/etc/usage-consumer/kafka-tls{{- end }}

{{/* Where each stream's files are mounted (ConfigMap keys streams.<name>.*, projected into this directory). */}}
{{- define "usage-consumer.streamsDir" -}}/etc/usage-consumer/streams{{- end }}

{{/* The topics config.yaml has when `streams` is not set: the chart's default, dropped when streams are given. */}}
{{- define "usage-consumer.defaultTopics" -}}
{{- toYaml (list "usage-events") }}
{{- end }}

{{/* The files of the streams, as a YAML list of {key, path, content}: each stream's inline reader schema as
<name>.avsc (JSON, Avro's own format) and its mapping as <name>.mapping.yaml, when it has them. `key` is the
ConfigMap key, `path` where it is mounted under /etc/usage-consumer. */}}
{{- define "usage-consumer.streamFiles" -}}
{{- $files := list }}
{{- range .Values.streams | default list }}
{{- if .reader_schema_inline }}
{{- $files = append $files (dict "key" (printf "streams.%s.avsc" .name) "path" (printf "streams/%s.avsc" .name) "content" (toPrettyJson .reader_schema_inline)) }}
{{- end }}
{{- if .mapping }}
{{- $files = append $files (dict "key" (printf "streams.%s.mapping.yaml" .name) "path" (printf "streams/%s.mapping.yaml" .name) "content" (toYaml .mapping)) }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/* The `streams:` section of config.yaml: each stream's settings, with the paths of the files the chart
writes for it (an inline schema becomes reader_schema: <name>.avsc, a mapping mapping: <name>.mapping.yaml);
a stream without a mapping gets none (the consumer's packaged default). */}}
{{- define "usage-consumer.streamsConfig" -}}
{{- $dir := include "usage-consumer.streamsDir" . }}
{{- $out := list }}
{{- range .Values.streams | default list }}
{{- $stream := dict "name" .name "topics" .topics }}
{{- if .reader_schema_inline }}
{{- $_ := set $stream "reader_schema" (printf "%s/%s.avsc" $dir .name) }}
{{- end }}
{{- if .reader_schema_subject }}
{{- $_ := set $stream "reader_schema_subject" .reader_schema_subject }}
{{- if hasKey . "reader_schema_version" }}
{{- $_ := set $stream "reader_schema_version" .reader_schema_version }}
{{- end }}
{{- end }}
{{- if .mapping }}
{{- $_ := set $stream "mapping" (printf "%s/%s.mapping.yaml" $dir .name) }}
{{- end }}
{{- if .record_names }}
{{- $_ := set $stream "record_names" .record_names }}
{{- end }}
{{- if .other_records }}
{{- $_ := set $stream "other_records" .other_records }}
{{- end }}
{{- $out = append $out $stream }}
{{- end }}
{{- toYaml (dict "streams" $out) }}
{{- end }}

{{/* Every topic and topic pattern the consumer subscribes to, once each, in configuration order, as a YAML
list: the streams' topics, or config.kafka.topics. */}}
{{- define "usage-consumer.topics" -}}
{{- $out := list }}
{{- if .Values.streams }}
{{- range .Values.streams }}
{{- range .topics }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- else }}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- $out = $kafka.topics | default (include "usage-consumer.defaultTopics" . | fromYamlArray) }}
{{- end }}
{{- toYaml (uniq $out) }}
{{- end }}

{{/* config.yaml: the `config` values, with the paths the chart owns filled in. Without `streams` the chart
sets mapping.file; with them, each stream names its own files and config.yaml has no kafka.topics,
decoding.reader_schema or mapping.file (the consumer refuses them together with streams). */}}
{{- define "usage-consumer.configYaml" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if .Values.streams }}
{{- $kafka := deepCopy (index $config "kafka" | default dict) }}
{{- $_ := unset $kafka "topics" }}
{{- $_ := set $config "kafka" $kafka }}
{{- $_ := merge $config (include "usage-consumer.streamsConfig" . | fromYaml) }}
{{- else }}
{{- $_ := set $config "mapping" (dict "file" "/etc/usage-consumer/mapping.yaml") }}
{{- end }}
{{- if .Values.kafkaTls.existingSecret }}
{{- $kafka := deepCopy (index $config "kafka" | default dict) }}
{{- $dir := include "usage-consumer.tlsDir" . }}
{{- if .Values.kafkaTls.caKey }}
{{- $_ := set $kafka "ssl_ca_location" (printf "%s/%s" $dir .Values.kafkaTls.caKey) }}
{{- end }}
{{- if .Values.kafkaTls.certKey }}
{{- $_ := set $kafka "ssl_certificate_location" (printf "%s/%s" $dir .Values.kafkaTls.certKey) }}
{{- end }}
{{- if .Values.kafkaTls.keyKey }}
{{- $_ := set $kafka "ssl_key_location" (printf "%s/%s" $dir .Values.kafkaTls.keyKey) }}
{{- end }}
{{- $_ := set $config "kafka" $kafka }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The secret environment variables the config needs, each from the Secret. */}}
{{- define "usage-consumer.secretEnv" -}}
{{- $secret := include "usage-consumer.secretName" . }}
{{- $keys := .Values.secrets.keys }}
{{- $wanted := list }}
{{- if include "usage-consumer.enabled" (dict "root" . "name" "freshsuccess") }}
{{- $wanted = concat $wanted (list "FRESHSUCCESS_AUTH_KEY" "FRESHSUCCESS_API_KEY") }}
{{- end }}
{{- if include "usage-consumer.enabled" (dict "root" . "name" "freshpaint") }}
{{- $wanted = append $wanted "FRESHPAINT_TOKEN" }}
{{- end }}
{{- $decoding := include "usage-consumer.section" (dict "root" . "name" "decoding") | fromYaml }}
{{- if $decoding.schema_registry_user }}
{{- $wanted = append $wanted "SCHEMA_REGISTRY_PASSWORD" }}
{{- end }}
{{- if include "usage-consumer.saslEnabled" . }}
{{- $wanted = append $wanted "KAFKA_SASL_PASSWORD" }}
{{- end }}
{{- range $wanted }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ index $keys . | default . }}
{{- end }}
{{- if and .Values.kafkaTls.existingSecret .Values.kafkaTls.keyKey }}
- name: KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ index $keys "KAFKA_SSL_KEY_PASSWORD" | default "KAFKA_SSL_KEY_PASSWORD" }}
      optional: true
{{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express; each failure says what to change. */}}
{{- define "usage-consumer.validate" -}}
{{- $grace := .Values.terminationGracePeriodSeconds | float64 }}
{{- $timeout := include "usage-consumer.shutdownTimeout" . | float64 }}
{{- if lt $grace (addf $timeout 5) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least config.shutdown.timeout_s (%v) + 5: Kubernetes kills the pod after it, and the consumer needs the shutdown deadline plus a few seconds to commit and exit" $grace $timeout) }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled .Values.keda.enabled }}
{{- fail "enable at most one of autoscaling.hpa.enabled and keda.enabled: KEDA creates its own HPA for the Deployment" }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.dev }}
{{- fail "secrets.existingSecret and secrets.dev are both set: use existingSecret (production) or dev (development only), not both" }}
{{- end }}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- if include "usage-consumer.saslEnabled" . }}
{{- if not $kafka.sasl_mechanism }}
{{- fail (printf "config.kafka.security_protocol is %s: set config.kafka.sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $kafka.security_protocol) }}
{{- end }}
{{- if not $kafka.sasl_username }}
{{- fail (printf "config.kafka.security_protocol is %s: set config.kafka.sasl_username (the password comes from the Secret key %s)" $kafka.security_protocol (index .Values.secrets.keys "KAFKA_SASL_PASSWORD" | default "KAFKA_SASL_PASSWORD")) }}
{{- end }}
{{- else if $kafka.sasl_mechanism }}
{{- fail (printf "config.kafka.sasl_mechanism is set but config.kafka.security_protocol is %s: use SASL_SSL or SASL_PLAINTEXT" ($kafka.security_protocol | default "PLAINTEXT")) }}
{{- end }}
{{- if and .Values.kafkaTls.existingSecret (not (include "usage-consumer.tlsEnabled" .)) }}
{{- fail (printf "kafkaTls.existingSecret is set but config.kafka.security_protocol is %s: use SSL or SASL_SSL" ($kafka.security_protocol | default "PLAINTEXT")) }}
{{- end }}
{{- if and .Values.kafkaTls.existingSecret (or $kafka.ssl_ca_location $kafka.ssl_certificate_location $kafka.ssl_key_location) }}
{{- fail "kafkaTls.existingSecret sets config.kafka.ssl_*_location itself: remove them from config.kafka" }}
{{- end }}
{{- if ne (empty .Values.kafkaTls.certKey) (empty .Values.kafkaTls.keyKey) }}
{{- fail "kafkaTls.certKey and kafkaTls.keyKey go together (a client certificate needs its key)" }}
{{- end }}
{{- if .Values.streams }}
{{- if and (hasKey $kafka "topics") (ne (toJson $kafka.topics) (include "usage-consumer.defaultTopics" . | fromYamlArray | toJson)) }}
{{- fail (printf "config.kafka.topics (%s) and streams are both set: streams replace kafka.topics, so give each stream its topics and remove config.kafka.topics (or set it to null)" (join ", " $kafka.topics)) }}
{{- end }}
{{- $decoding := include "usage-consumer.section" (dict "root" . "name" "decoding") | fromYaml }}
{{- if $decoding.reader_schema }}
{{- fail "config.decoding.reader_schema and streams are both set: streams replace it, so give each stream its reader_schema_inline or reader_schema_subject and remove config.decoding.reader_schema" }}
{{- end }}
{{- $names := list }}
{{- range .Values.streams }}
{{- if has .name $names }}
{{- fail (printf "streams: the name %s is used by more than one stream; stream names must be distinct (the stream's files in the ConfigMap are named after it)" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- end }}

{{/* A non-secret setting as the consumer sees it: a literal `value` of extraEnv (the consumer's environment
overrides config.yaml for KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL), else the config value. A value from
a ConfigMap or Secret (valueFrom) cannot be read at template time: the config value is used. */}}
{{- define "usage-consumer.effectiveSetting" -}}
{{- $value := .value }}
{{- range .root.Values.extraEnv }}
{{- if and (eq .name $.env) (hasKey . "value") }}{{ $value = .value }}{{ end }}
{{- end }}
{{- $value | default "" }}
{{- end }}

{{/* The TCP ports of Kafka bootstrap servers ("[PROTOCOL://]host[:port],..."; 9092 without a port), as a YAML
list of integers, each once. */}}
{{- define "usage-consumer.kafkaPorts" -}}
{{- $kafka := include "usage-consumer.section" (dict "root" . "name" "kafka") | fromYaml }}
{{- $servers := include "usage-consumer.effectiveSetting" (dict "root" . "env" "KAFKA_BOOTSTRAP_SERVERS" "value" $kafka.bootstrap_servers) }}
{{- $ports := list }}
{{- range splitList "," $servers }}
{{- $server := regexReplaceAll "^[A-Za-z_]+://" (trim .) "" }}
{{- if $server }}
{{- $port := regexFind ":[0-9]+$" $server | trimPrefix ":" }}
{{- $ports = append $ports (ternary ($port | int) 9092 (ne $port "")) }}
{{- end }}
{{- end }}
{{- toYaml (uniq $ports) }}
{{- end }}

{{/* The TCP ports of URLs ("scheme://host[:port]/path,...": the port, else 443 for https and 80 for http), as a
YAML list of integers, each once. */}}
{{- define "usage-consumer.urlPorts" -}}
{{- $ports := list }}
{{- range splitList "," (. | default "") }}
{{- $url := trim . }}
{{- if $url }}
{{- $parsed := urlParse $url }}
{{- $port := regexFind ":[0-9]+$" $parsed.host | trimPrefix ":" }}
{{- $ports = append $ports (ternary ($port | int) (ternary 80 443 (eq (lower $parsed.scheme) "http")) (ne $port "")) }}
{{- end }}
{{- end }}
{{- toYaml (uniq $ports) }}
{{- end }}

{{/* The egress the consumer needs besides DNS, as a YAML list of {name, ports, to}: the Kafka bootstrap servers
(and brokers), the schema registry when one is configured, and each enabled destination. `ports` are the
networkPolicy.egress.<name>.ports, or those derived from the config when that list is empty; `to` the
NetworkPolicyPeers of networkPolicy.egress.<name>.to (empty: any address). */}}
{{- define "usage-consumer.egressTargets" -}}
{{- $egress := .Values.networkPolicy.egress }}
{{- $derived := dict "kafka" (include "usage-consumer.kafkaPorts" . | fromYamlArray) }}
{{- $decoding := include "usage-consumer.section" (dict "root" . "name" "decoding") | fromYaml }}
{{- $registry := include "usage-consumer.effectiveSetting" (dict "root" . "env" "SCHEMA_REGISTRY_URL" "value" $decoding.schema_registry_url) }}
{{- $_ := set $derived "schemaRegistry" (include "usage-consumer.urlPorts" $registry | fromYamlArray) }}
{{- $freshsuccess := include "usage-consumer.section" (dict "root" . "name" "freshsuccess") | fromYaml }}
{{- $_ := set $derived "freshsuccess" (include "usage-consumer.urlPorts" ($freshsuccess.base_url | default "https://") | fromYamlArray) }}
{{- $freshpaint := include "usage-consumer.section" (dict "root" . "name" "freshpaint") | fromYaml }}
{{- $_ := set $derived "freshpaint" (include "usage-consumer.urlPorts" ($freshpaint.base_url | default "https://") | fromYamlArray) }}
{{- $destinations := include "usage-consumer.destinations" . | fromYamlArray }}
{{- $out := list }}
{{- range $name := list "kafka" "schemaRegistry" "freshsuccess" "freshpaint" }}
{{- $rule := index $egress $name | default dict }}
{{- $ports := $rule.ports | default (index $derived $name) }}
{{- $wanted := true }}
{{- if and (has $name (list "freshsuccess" "freshpaint")) (not (has $name $destinations)) }}
{{- $wanted = false }}
{{- end }}
{{- /* No port: no rule (a rule without ports would allow every port). */}}
{{- if and $wanted $ports }}
{{- $out = append $out (dict "name" $name "ports" $ports "to" ($rule.to | default list)) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The kube-score checks (github.com/zegl/kube-score) this release does not follow on purpose, each only while
its reason holds; helm/README.md ("kube-score") says why for each. Comma-separated, for the `kube-score/ignore`
annotation. */}}
{{- define "usage-consumer.kubeScoreIgnored" -}}
{{- $ignored := list }}
{{- $limits := (.Values.resources | default dict).limits | default dict }}
{{- if not (hasKey $limits "cpu") }}
{{- $ignored = append $ignored "container-resources" }}
{{- end }}
{{- if ne .Values.image.pullPolicy "Always" }}
{{- $ignored = append $ignored "container-image-pull-policy" }}
{{- end }}
{{- $spreadByHost := not .Values.topologySpreadConstraints }}
{{- range .Values.topologySpreadConstraints }}
{{- if eq .topologyKey "kubernetes.io/hostname" }}{{ $spreadByHost = true }}{{ end }}
{{- end }}
{{- if and $spreadByHost (not (.Values.affinity | default dict).podAntiAffinity) }}
{{- $ignored = append $ignored "deployment-has-host-podantiaffinity" }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}
{{- $ignored = append $ignored "pod-networkpolicy" }}
{{- end }}
{{- /* kube-score checks the replicas of a Deployment behind a Service only. */}}
{{- $service := or .Values.service.enabled .Values.serviceMonitor.enabled }}
{{- if and .Values.keda.enabled (ge (.Values.keda.minReplicaCount | int) 2) $service }}
{{- $ignored = append $ignored "deployment-replicas" }}
{{- end }}
{{- join "," $ignored }}
{{- end }}
