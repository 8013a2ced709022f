{{/* Name of the release's objects. */}}
{{- define "pullahead.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pullahead.labels" -}}
app.kubernetes.io/name: pullahead
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pullahead.selector" -}}
app.kubernetes.io/name: pullahead
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pullahead.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
Per-host pull budgets as the agent's --registry-parallel list: HOST=N,...
*/}}
{{- define "pullahead.hostBudgets" -}}
{{- $out := list -}}
{{- range $host, $n := . -}}
{{- $out = append $out (printf "%s=%v" $host $n) -}}
{{- end -}}
{{- join "," $out -}}
{{- end }}
