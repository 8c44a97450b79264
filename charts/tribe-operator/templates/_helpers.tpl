{{/*
Chart name, truncated to a DNS label.
*/}}
{{- define "tribe-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already has it.
*/}}
{{- define "tribe-operator.fullname" -}}
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

{{- define "tribe-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the chart.
*/}}
{{- define "tribe-operator.labels" -}}
helm.sh/chart: {{ include "tribe-operator.chart" . }}
{{ include "tribe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tribe
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "tribe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tribe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "tribe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tribe-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's registry: image.registry, else the path of image.repository (empty for a
short name such as tribe-operator).
*/}}
{{- define "tribe-operator.registry" -}}
{{- if .Values.image.registry }}
{{- trimSuffix "/" .Values.image.registry }}
{{- else if contains "/" .Values.image.repository }}
{{- dir .Values.image.repository }}
{{- end }}
{{- end }}

{{/*
The operator image, tag defaulting to the chart's appVersion.
*/}}
{{- define "tribe-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The node image of SessionClusters without spec.image: nodeImage, by default the
operator's registry and tag (so the nodes follow the operator across upgrades).
*/}}
{{- define "tribe-operator.nodeImage" -}}
{{- $registry := default (include "tribe-operator.registry" .) .Values.nodeImage.registry }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.nodeImage.tag }}
{{- if $registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .Values.nodeImage.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.nodeImage.repository $tag }}
{{- end }}
{{- end }}

{{- define "tribe-operator.leaseName" -}}
{{- default (include "tribe-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
