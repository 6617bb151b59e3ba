{{/*
Names, labels and small pieces shared by the templates.
*/}}

{{- define "sentinel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sentinel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "sentinel.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "sentinel.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sentinel.cp.fullname" -}}
{{- printf "%s-cp" (include "sentinel.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sentinel.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "sentinel.fullname" . -}}
{{- else -}}
{{- required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "sentinel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sentinel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sentinel
{{- end -}}

{{- define "sentinel.cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "sentinel.proxy.componentLabels" -}}
app.kubernetes.io/name: {{ include "sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/*
The proxy fleets: one per region, or one per (region, zone) when the region
lists zones. Each entry: name (DNS label), region, zone ("" = from the node),
replicas, maxReplicas, nodeSelector, tolerations, service. Returned as YAML.
*/}}
{{- define "sentinel.proxy.fleets" -}}
{{- $fleets := list -}}
{{- range $region := .Values.proxy.regions -}}
{{- $base := dict "region" $region.name "replicas" ($region.replicas | default 3) "maxReplicas" ($region.maxReplicas | default 0) "nodeSelector" ($region.nodeSelector | default dict) "tolerations" ($region.tolerations | default list) "service" ($region.service | default dict) -}}
{{- if $region.zones -}}
{{- range $zone := $region.zones -}}
{{- $fleets = append $fleets (merge (dict "name" (printf "%s-%s" $region.name $zone) "zone" $zone) $base) -}}
{{- end -}}
{{- else -}}
{{- $fleets = append $fleets (merge (dict "name" $region.name "zone" "") $base) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "fleets" $fleets) -}}
{{- end -}}

{{/* Pod security context shared by every Sentinel container. */}}
{{- define "sentinel.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sentinel.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
gRPC URL of the control plane, as proxies dial it: the Service's short name,
so the rendered manifests work in any namespace (the certificate names it).
*/}}
{{- define "sentinel.cp.grpcUrl" -}}
{{- $scheme := ternary "https" "http" (ne .Values.controlPlane.tls.grpc.secretName "") -}}
{{- printf "%s://%s:%d" $scheme (include "sentinel.cp.fullname" .) (int .Values.controlPlane.grpcPort) -}}
{{- end -}}
