{{/*
Names, labels, the engine's TOML configuration, and the checks that refuse a wrong
configuration with what to change. Every template includes "engine.validate" first.
*/}}

{{/* The release's name for its objects; 52 characters leave room for "-headless". */}}
{{- define "engine.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "engine.headlessName" -}}
{{- printf "%s-headless" (include "engine.fullname" .) -}}
{{- end -}}

{{- define "engine.selectorLabels" -}}
app.kubernetes.io/name: engine
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.topology }}
{{- end -}}

{{- define "engine.labels" -}}
{{ include "engine.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "engine.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The shutdown timeout in ms, as the engine resolves it (its default: 30000). */}}
{{- define "engine.shutdownTimeoutMs" -}}
{{- $ms := index (default dict .Values.config.runtime) "shutdown_timeout_ms" -}}
{{- if kindIs "invalid" $ms }}30000{{ else }}{{ int64 $ms }}{{ end -}}
{{- end -}}

{{- define "engine.terminationGracePeriodSeconds" -}}
{{- $ms := include "engine.shutdownTimeoutMs" . | int64 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (div (add $ms 999) 1000) (int64 .Values.terminationGraceMarginSeconds) -}}
{{- else -}}
{{- int64 .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* A TOML key: bare when it may be, else a quoted string. */}}
{{- define "engine.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end -}}

{{/* A TOML value. YAML numbers reach templates as float64: whole ones are written as
integers, since the engine's integer settings refuse 30000.0. */}}
{{- define "engine.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "engine.toml.value" $e }}{{ end }}]
{{- else -}}
{{- fail (printf "cannot write %v (%s) into the engine's TOML configuration: use a string, number, boolean, list or map" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* A value as the string librdkafka and Kafka topic configurations take: numbers
without a fraction or an exponent (YAML's 1000000 is not "1e+06"). */}}
{{- define "engine.propertyString" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* A map of properties with every value a string (the engine's [kafka.properties] and
internal_topic_configs are string maps, so `linger.ms: 10` in YAML works). */}}
{{- define "engine.stringMap" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- $_ := set $out $k (include "engine.propertyString" $v) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A TOML table: (list NAME MAP); nested maps become sub-tables, nulls are left out
(the engine's default applies). */}}
{{- define "engine.toml.table" -}}
{{- $name := index . 0 -}}
{{- $table := index . 1 }}
[{{ $name }}]
{{- range $k, $v := $table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "engine.toml.key" $k }} = {{ include "engine.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $table }}
{{- if kindIs "map" $v }}
{{ include "engine.toml.table" (list (printf "%s.%s" $name (include "engine.toml.key" $k)) $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The engine's configuration file. Broker and registry addresses come from the
environment (KAFKA_BOOTSTRAP_SERVERS, KAFKA_SCHEMA_REGISTRY_URL), secrets from Secrets
through the environment: this file holds neither. */}}
{{- define "engine.config.toml" -}}
# The engine's configuration for `engine run {{ .Values.topology }}` (README,
# "Configuration"), rendered by the engine chart from the release's values.
{{- $runtime := merge (dict "state_dir" .Values.persistence.mountPath) (deepCopy (default dict .Values.config.runtime)) }}
{{- with $runtime.internal_topic_configs }}
{{- $_ := set $runtime "internal_topic_configs" (include "engine.stringMap" . | fromJson) }}
{{- end }}
{{- if .Values.config.kafka.properties }}
{{ include "engine.toml.table" (list "kafka.properties" (include "engine.stringMap" .Values.config.kafka.properties | fromJson)) }}
{{- end }}
{{- if .Values.config.schemaRegistry }}
{{ include "engine.toml.table" (list "schema_registry" .Values.config.schemaRegistry) }}
{{- end }}
{{ include "engine.toml.table" (list "runtime" $runtime) }}
{{- if .Values.config.topologyOptions }}
{{ include "engine.toml.table" (list (printf "topologies.%s" (include "engine.toml.key" .Values.topology)) .Values.config.topologyOptions) }}
{{- end }}
{{- end -}}

{{/* Environment variables the engine's commands read, shared by the StatefulSet and the
preflight Job. */}}
{{- define "engine.env" -}}
- name: ENGINE_CONFIG
  value: /etc/engine/engine.toml
- name: ENGINE_LOG
  value: {{ .Values.logLevel | quote }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.config.kafka.bootstrapServers | quote }}
{{- with .Values.config.schemaRegistryCredentials }}
{{- if .existingSecret }}
- name: SCHEMA_REGISTRY_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
- name: SCHEMA_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
- name: KAFKA_SCHEMA_REGISTRY_URL
{{- if .Values.config.schemaRegistryCredentials.existingSecret }}
{{- $url := .Values.config.kafka.schemaRegistryUrl }}
{{- $scheme := regexFind "^https?://" $url }}
  value: {{ printf "%s$(SCHEMA_REGISTRY_USERNAME):$(SCHEMA_REGISTRY_PASSWORD)@%s" $scheme (trimPrefix $scheme $url) | quote }}
{{- else }}
  value: {{ .Values.config.kafka.schemaRegistryUrl | quote }}
{{- end }}
{{- with .Values.config.kafka.sasl }}
{{- if .existingSecret }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- range $i, $property := keys .Values.config.kafka.secretProperties | sortAlpha }}
{{- $ref := index $.Values.config.kafka.secretProperties $property }}
- name: {{ printf "KAFKA_SECRET_PROPERTY_%d" $i }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "config.kafka.secretProperties.%s.secretName: name the Secret that holds %s" $property $property) $ref.secretName }}
      key: {{ required (printf "config.kafka.secretProperties.%s.key: name the key of Secret %s that holds %s" $property $ref.secretName $property) $ref.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* `--kafka KEY=$(VAR)` for each secret property: Kubernetes substitutes the variable
when it starts the container, so the value is in no manifest and no ConfigMap. */}}
{{- define "engine.secretArgs" -}}
{{- if .Values.config.kafka.sasl.existingSecret }}
- --kafka
- sasl.username=$(KAFKA_SASL_USERNAME)
- --kafka
- sasl.password=$(KAFKA_SASL_PASSWORD)
{{- end }}
{{- range $i, $property := keys .Values.config.kafka.secretProperties | sortAlpha }}
- --kafka
- {{ printf "%s=$(KAFKA_SECRET_PROPERTY_%d)" $property $i }}
{{- end }}
{{- end -}}

{{/* Refuses a configuration that cannot work, saying what to change. */}}
{{- define "engine.validate" -}}
{{- $v := .Values -}}
{{- $topology := required "topology: name the topology this release runs, as `engine list` prints it (e.g. --set topology=worker-agents, or -f deploy/helm/values/worker-agents.yaml)" $v.topology -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$" $topology) -}}
{{- fail (printf "topology `%s`: a topology name is lowercase letters, digits and dashes (see `engine list`)" $topology) -}}
{{- end -}}
{{- $_ := required "config.kafka.bootstrapServers: set the Kafka bootstrap servers (HOST:PORT,...); the pod gets them as KAFKA_BOOTSTRAP_SERVERS" $v.config.kafka.bootstrapServers -}}
{{- $url := required "config.kafka.schemaRegistryUrl: set the schema registry URL (http://HOST:PORT); the pod gets it as KAFKA_SCHEMA_REGISTRY_URL" $v.config.kafka.schemaRegistryUrl -}}
{{- if not (regexMatch "^https?://" $url) -}}
{{- fail (printf "config.kafka.schemaRegistryUrl `%s` must start with http:// or https://" $url) -}}
{{- end -}}
{{- if regexMatch "^https?://[^/]*@" $url -}}
{{- fail "config.kafka.schemaRegistryUrl holds credentials (user:password@), which would land in the manifests: remove them and put them in a Secret named by config.schemaRegistryCredentials.existingSecret (keys username and password)" -}}
{{- end -}}
{{- range $key, $value := $v.config.kafka.properties -}}
{{- $bare := regexReplaceAll "^(consumer|producer)\\." $key "" -}}
{{- if regexMatch "(password|secret|^sasl\\.username$|^ssl\\.key\\.pem$|^sasl\\.oauthbearer\\.config$)" $bare -}}
{{- if eq $bare "sasl.username" "sasl.password" -}}
{{- fail (printf "config.kafka.properties.%s would be written into a ConfigMap: put the SASL credentials in a Secret and name it in config.kafka.sasl.existingSecret (keys username and password)" $key) -}}
{{- else -}}
{{- fail (printf "config.kafka.properties.%s would be written into a ConfigMap: take it from a Secret with config.kafka.secretProperties.%s: {secretName: NAME, key: KEY}" $key $key) -}}
{{- end -}}
{{- end -}}
{{- if eq $bare "bootstrap.servers" -}}
{{- fail (printf "config.kafka.properties.%s: set config.kafka.bootstrapServers instead (the pod's KAFKA_BOOTSTRAP_SERVERS)" $key) -}}
{{- end -}}
{{- end -}}
{{- if $v.config.kafka.sasl.existingSecret -}}
{{- $protocol := toString (index (default dict $v.config.kafka.properties) "security.protocol") -}}
{{- if not (hasPrefix "SASL" (upper $protocol)) -}}
{{- fail (printf "config.kafka.sasl.existingSecret is set but config.kafka.properties.security.protocol is `%s`: set it to SASL_SSL or SASL_PLAINTEXT (and sasl.mechanism), or the credentials are never used" $protocol) -}}
{{- end -}}
{{- end -}}
{{- if and $v.config.kafka.sasl.existingSecret (hasKey $v.config.kafka.secretProperties "sasl.password") -}}
{{- fail "config.kafka.secretProperties.sasl.password and config.kafka.sasl.existingSecret both set the SASL password: keep one" -}}
{{- end -}}
{{- $runtime := default dict $v.config.runtime -}}
{{- if hasKey $runtime "state_dir" -}}
{{- fail "config.runtime.state_dir: the chart puts the state directory on the pod's volume claim; set persistence.mountPath instead" -}}
{{- end -}}
{{- if hasKey $runtime "advertised_http" -}}
{{- fail "config.runtime.advertised_http: the chart advertises each pod by its name in the headless Service (--advertised-http); remove it" -}}
{{- end -}}
{{- if hasKey (default dict $v.config.schemaRegistry) "url" -}}
{{- fail "config.schemaRegistry.url: set config.kafka.schemaRegistryUrl instead (the pod's KAFKA_SCHEMA_REGISTRY_URL)" -}}
{{- end -}}
{{- $ms := include "engine.shutdownTimeoutMs" . | int64 -}}
{{- if lt $ms 1 -}}
{{- fail "config.runtime.shutdown_timeout_ms must be at least 1" -}}
{{- end -}}
{{- $grace := include "engine.terminationGracePeriodSeconds" . | int64 -}}
{{- if le (mul $grace 1000) $ms -}}
{{- fail (printf "terminationGracePeriodSeconds %d is not above config.runtime.shutdown_timeout_ms %d: Kubernetes would SIGKILL an instance still committing; set it above %d, or leave it null to derive it" $grace $ms (div $ms 1000)) -}}
{{- end -}}
{{- $replicas := int64 $v.replicas -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "replicas %d: run at least one instance (uninstall the release to stop the topology)" $replicas) -}}
{{- end -}}
{{- if gt $replicas 1 -}}
{{- $partitions := required (printf "sourcePartitions: replicas is %d; set sourcePartitions to the partition count of %s's source topics so the chart can check that no instance would be left without a partition" $replicas $topology) $v.sourcePartitions | int64 -}}
{{- if gt $replicas $partitions -}}
{{- fail (printf "replicas %d is more than sourcePartitions %d: each partition belongs to one instance, so %d instance(s) would get no partition and sit idle; set replicas to at most %d, or add partitions to the source topics first" $replicas $partitions (sub $replicas $partitions) $partitions) -}}
{{- end -}}
{{- end -}}
{{- with $v.livenessProbe.httpGet -}}
{{- if eq (trimSuffix "/" (toString .path)) "/health" -}}
{{- fail "livenessProbe.httpGet.path /health: /health answers 503 while a store restores, so the pod would be restarted mid-restore, again and again; probe /health/live for liveness (readiness uses /health)" -}}
{{- end -}}
{{- end -}}
{{- if $v.preflight.enabled -}}
{{- range $i, $check := $v.preflight.schemaChecks -}}
{{- $_ := required (printf "preflight.schemaChecks[%d].subject: name the registry subject to check (e.g. execution.tickets-value)" $i) $check.subject -}}
{{- $_ := required (printf "preflight.schemaChecks[%d].file: the .avsc file in the image to check %s against (under /usr/share/engine/schemas)" $i $check.subject) $check.file -}}
{{- end -}}
{{- end -}}
{{- end -}}
