{{/* The release's name for every object, at most 63 characters. */}}
{{- define "qwen-gateway.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qwen-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the gateway's pods (never change them on upgrade). */}}
{{- define "qwen-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "qwen-gateway.labels" -}}
{{ include "qwen-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "qwen-gateway.vllmSelectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: vllm
{{- end -}}

{{- define "qwen-gateway.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{ .Values.secret.existingSecret }}
{{- else -}}
{{ include "qwen-gateway.fullname" . }}
{{- end -}}
{{- end -}}
