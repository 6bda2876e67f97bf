{{/*
Names, labels, images and the environment shared by the GMMAS templates.
*/}}

{{/* The services this chart knows, in a fixed order. */}}
{{- define "gmmas.serviceNames" -}}
api ingest preprocess infer report curate train
{{- end -}}

{{/* Services that have a device setting and may be placed on a GPU. */}}
{{- define "gmmas.gpuCapable" -}}
infer curate train
{{- end -}}

{{/* Services whose /metrics needs an ml-engineer bearer token. */}}
{{- define "gmmas.protectedMetrics" -}}
api ingest
{{- end -}}

{{- define "gmmas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already holds the chart's name. */}}
{{- define "gmmas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gmmas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <fullname>-<component> within 63 characters. Call with (dict "root" $ "component" "api"). */}}
{{- define "gmmas.componentName" -}}
{{- $max := int (sub 62 (len .component)) -}}
{{- printf "%s-%s" (include "gmmas.fullname" .root | trunc $max | trimSuffix "-") .component -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "gmmas.labels" -}}
helm.sh/chart: {{ include "gmmas.chart" . }}
app.kubernetes.io/name: {{ include "gmmas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gmmas
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector of one component's pods. (dict "root" $ "component" NAME) */}}
{{- define "gmmas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gmmas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects. (dict "root" $ "component" NAME) */}}
{{- define "gmmas.componentLabels" -}}
{{ include "gmmas.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector of every pod of this release (for NetworkPolicies). */}}
{{- define "gmmas.releasePods" -}}
app.kubernetes.io/name: {{ include "gmmas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gmmas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gmmas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The GMMAS image of a pod. (dict "root" $ "gpu" BOOL): pods on a GPU always take the cuda variant.
*/}}
{{- define "gmmas.image" -}}
{{- $img := .root.Values.image -}}
{{- $variant := ternary "cuda" $img.variant (eq (toString .gpu) "true") -}}
{{- $digest := index ($img.digests | default dict) $variant | default "" -}}
{{- if $digest -}}
{{- printf "%s@%s" $img.repository $digest -}}
{{- else -}}
{{- printf "%s:%s-%s" $img.repository (default .root.Chart.AppVersion $img.tag) $variant -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the service runs on a GPU: the global switch, a GPU-capable service and its own switch.
(dict "root" $ "name" NAME "svc" VALUES)
*/}}
{{- define "gmmas.onGpu" -}}
{{- if and .root.Values.gpu.enabled (has .name (splitList " " (include "gmmas.gpuCapable" .root))) .svc.gpu -}}
{{- if .svc.gpu.enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when an autoscaler owns the replica count of the service. (dict "svc" VALUES) */}}
{{- define "gmmas.autoscaled" -}}
{{- if and .svc.autoscaling .svc.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/*
An environment value as a string. Whole numbers are written without an exponent (YAML numbers
reach templates as floats: 1000000 would otherwise become "1e+06").
*/}}
{{- define "gmmas.envValue" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 .) (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The NATS server URL(s) the services use. */}}
{{- define "gmmas.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := printf "%s-nats" .Release.Name -}}
{{- if .Values.nats.fullnameOverride -}}
{{- $name = .Values.nats.fullnameOverride -}}
{{- else if contains "nats" .Release.Name -}}
{{- $name = .Release.Name -}}
{{- end -}}
{{- printf "nats://%s.%s.svc.%s:4222" ($name | trunc 63 | trimSuffix "-") .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{/* The URL of the report service's LLM server. */}}
{{- define "gmmas.llmUrl" -}}
{{- $llm := .Values.services.report.llm -}}
{{- if $llm.url -}}
{{- $llm.url -}}
{{- else if and (not .Values.ollama.enabled) (ne $llm.backend "none") -}}
{{- fail "services.report.llm.url is empty and ollama.enabled is false: name the LLM server, enable Ollama, or set services.report.llm.backend to none" -}}
{{- else -}}
{{- printf "http://%s:11434" (include "gmmas.componentName" (dict "root" . "component" "ollama")) -}}
{{- end -}}
{{- end -}}

{{/*
Host names api and ingest answer: the pod's own IP (probes and Prometheus reach the pod by
it), the Service's names, the ingress hosts (api) and the configured extra names.
(dict "root" $ "name" NAME "svc" VALUES)
*/}}
{{- define "gmmas.allowedHosts" -}}
{{- $root := .root -}}
{{- $svcName := include "gmmas.componentName" (dict "root" $root "component" .name) -}}
{{- $ns := $root.Release.Namespace -}}
{{- $hosts := list "$(POD_IP)" $svcName (printf "%s.%s" $svcName $ns) (printf "%s.%s.svc" $svcName $ns) (printf "%s.%s.svc.%s" $svcName $ns $root.Values.clusterDomain) -}}
{{- if and (eq .name "api") $root.Values.ingress.enabled -}}
{{- range $root.Values.ingress.hosts -}}
{{- $hosts = append $hosts .host -}}
{{- end -}}
{{- end -}}
{{- range .svc.allowedHosts -}}
{{- $hosts = append $hosts . -}}
{{- end -}}
{{- $hosts | uniq | join "," -}}
{{- end -}}

{{/*
The plain (name: value) environment of a GMMAS service as a dict; the values in
services.<name>.env win over the chart's. (dict "root" $ "name" NAME "svc" VALUES "gpu" BOOL)
*/}}
{{- define "gmmas.envDict" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := .svc -}}
{{- $name := .name -}}
{{- $env := dict
  "GMMAS_HTTP_ADDR" "0.0.0.0:8080"
  "GMMAS_NATS_URL" (include "gmmas.natsUrl" $root)
  "GMMAS_MIGRATE_ON_START" "false"
  "GMMAS_LOG_FORMAT" "json"
  "GMMAS_WORKERS" (include "gmmas.envValue" $svc.workers)
  "GMMAS_ACK_WAIT_S" (include "gmmas.envValue" $svc.ackWaitSeconds)
-}}
{{- if $v.natsAuth.enabled -}}
{{- $_ := set $env "GMMAS_NATS_USER" $name -}}
{{- $_ := set $env "GMMAS_NATS_PASSWORD_FILE" "/etc/gmmas/nats/password" -}}
{{- end -}}
{{- if $v.natsTls.caSecret -}}
{{- $_ := set $env "GMMAS_NATS_TLS_CA_FILE" (printf "/etc/gmmas/nats-ca/%s" $v.natsTls.caKey) -}}
{{- end -}}
{{- if $v.natsTls.clientSecret -}}
{{- $_ := set $env "GMMAS_NATS_TLS_CERT_FILE" "/etc/gmmas/nats-client/tls.crt" -}}
{{- $_ := set $env "GMMAS_NATS_TLS_KEY_FILE" "/etc/gmmas/nats-client/tls.key" -}}
{{- end -}}
{{- if $v.natsTls.required -}}
{{- $_ := set $env "GMMAS_NATS_TLS_REQUIRED" "true" -}}
{{- end -}}
{{- if has $name (splitList " " (include "gmmas.gpuCapable" $root)) -}}
{{- $_ := set $env "GMMAS_DEVICE" (ternary "cuda" "cpu" (eq (toString .gpu) "true")) -}}
{{- $_ := set $env "GMMAS_THREADS" (include "gmmas.envValue" $svc.threads) -}}
{{- end -}}
{{- if has $name (list "api" "ingest") -}}
{{- $_ := set $env "GMMAS_ALLOWED_HOSTS" (include "gmmas.allowedHosts" .) -}}
{{- if $v.auth.existingSecret -}}
{{- $_ := set $env "GMMAS_AUTH_KEY_FILE" (printf "/etc/gmmas/auth/%s" $v.auth.keyKey) -}}
{{- end -}}
{{- with $v.auth.jwksUrl }}{{ $_ := set $env "GMMAS_AUTH_JWKS_URL" . }}{{ end -}}
{{- with $v.auth.issuer }}{{ $_ := set $env "GMMAS_AUTH_ISSUER" . }}{{ end -}}
{{- with $v.auth.audience }}{{ $_ := set $env "GMMAS_AUTH_AUDIENCE" . }}{{ end -}}
{{- with $v.auth.tenantClaim }}{{ $_ := set $env "GMMAS_AUTH_TENANT_CLAIM" . }}{{ end -}}
{{- with $v.auth.roleClaim }}{{ $_ := set $env "GMMAS_AUTH_ROLE_CLAIM" . }}{{ end -}}
{{- end -}}
{{- if and (eq $name "api") $svc.corsAllowedOrigins -}}
{{- $_ := set $env "GMMAS_CORS_ALLOWED_ORIGINS" (join "," $svc.corsAllowedOrigins) -}}
{{- end -}}
{{- if eq $name "infer" -}}
{{- $_ := set $env "GMMAS_MODEL_PATH" $svc.modelPath -}}
{{- $_ := set $env "GMMAS_INCOMPLETE_MODEL_PATH" $svc.incompleteModelPath -}}
{{- $_ := set $env "GMMAS_MC_PASSES" (include "gmmas.envValue" $svc.mcPasses) -}}
{{- end -}}
{{- if eq $name "report" -}}
{{- $_ := set $env "GMMAS_LLM_BACKEND" $svc.llm.backend -}}
{{- $_ := set $env "GMMAS_LLM_URL" (include "gmmas.llmUrl" $root) -}}
{{- $_ := set $env "GMMAS_LLM_MODEL" $svc.llm.model -}}
{{- $_ := set $env "GMMAS_LLM_TIMEOUT_S" (include "gmmas.envValue" $svc.llm.timeoutSeconds) -}}
{{- if and $svc.llm.embedModel (ne $svc.llm.backend "none") -}}
{{- $_ := set $env "GMMAS_EMBED_BACKEND" $svc.llm.backend -}}
{{- $_ := set $env "GMMAS_EMBED_URL" (include "gmmas.llmUrl" $root) -}}
{{- $_ := set $env "GMMAS_EMBED_MODEL" $svc.llm.embedModel -}}
{{- end -}}
{{- end -}}
{{- if eq $name "train" -}}
{{- $_ := set $env "GMMAS_RUN_CONFIG" $svc.runConfig -}}
{{- $_ := set $env "GMMAS_EVAL_DIR" $svc.evalDir -}}
{{- $_ := set $env "GMMAS_WORK_DIR" "/var/lib/gmmas/work" -}}
{{- end -}}
{{- $user := dict -}}
{{- range $k, $val := ($svc.env | default dict) -}}
{{- if ne $k "GMMAS_DATABASE_URL" -}}
{{- $_ := set $user $k (include "gmmas.envValue" $val) -}}
{{- end -}}
{{- end -}}
{{- toYaml (merge $user $env) -}}
{{- end -}}

{{/* The pod-level security context of GMMAS pods. */}}
{{- define "gmmas.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security context of every container of the chart. */}}
{{- define "gmmas.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Resources with the GPU handled by the chart: the GPU resource is taken out of what the values
say and, on a GPU, set to the service's count. (dict "root" $ "resources" MAP "gpu" BOOL "count" N)
*/}}
{{- define "gmmas.resources" -}}
{{- $gpuName := .root.Values.gpu.resourceName -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- $requests := omit ($res.requests | default dict) $gpuName -}}
{{- $limits := omit ($res.limits | default dict) $gpuName -}}
{{- if eq (toString .gpu) "true" -}}
{{- $_ := set $limits $gpuName (int .count) -}}
{{- end -}}
{{- $out := dict -}}
{{- if $requests }}{{ $_ := set $out "requests" $requests }}{{ end -}}
{{- if $limits }}{{ $_ := set $out "limits" $limits }}{{ end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Scheduling of a pod: its own node selector, tolerations and affinity, plus those of the GPU
nodes when it runs on one. (dict "root" $ "own" VALUES "gpu" BOOL "component" NAME "spread" BOOL)
*/}}
{{- define "gmmas.scheduling" -}}
{{- $g := .root.Values.gpu -}}
{{- $onGpu := eq (toString .gpu) "true" -}}
{{- $nodeSelector := deepCopy (.own.nodeSelector | default dict) -}}
{{- $tolerations := .own.tolerations | default list -}}
{{- $affinity := .own.affinity | default dict -}}
{{- if $onGpu -}}
{{- $nodeSelector = merge $nodeSelector ($g.nodeSelector | default dict) -}}
{{- $tolerations = concat ($g.tolerations | default list) $tolerations -}}
{{- if not $affinity }}{{ $affinity = $g.affinity | default dict }}{{ end -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .own.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .own.topologySpreadConstraints | nindent 2 }}
{{- else if and .spread .root.Values.podSpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ .root.Values.podSpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "gmmas.selectorLabels" (dict "root" .root "component" .component) | nindent 8 }}
{{- end }}
{{- if and $onGpu $g.runtimeClassName }}
runtimeClassName: {{ $g.runtimeClassName }}
{{- end }}
{{- end -}}
