{{/* Names and labels shared by every template. */}}

{{- define "thrifty.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "thrifty.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "thrifty.operatorName" -}}
{{- printf "%s-operator" (include "thrifty.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /*
The ClusterRole and ClusterRoleBinding. Watching every namespace: the operator's name (one such
operator per cluster). With operator.watchNamespaces the release namespace is part of it: the
chart may then be installed in several namespaces under the same release name, and cluster-scoped
objects of one name would collide (helm refuses an object of another release namespace).
*/}}
{{- define "thrifty.clusterRoleName" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- printf "%s-%s" (include "thrifty.operatorName" .) .Release.Namespace | trunc 253 | trimSuffix "-" -}}
{{- else -}}
{{- include "thrifty.operatorName" . -}}
{{- end -}}
{{- end -}}

{{- define "thrifty.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thrifty.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "thrifty.labels" -}}
{{ include "thrifty.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: thrifty
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "thrifty.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "thrifty.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "thrifty.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
