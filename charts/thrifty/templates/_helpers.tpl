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

{{- /*
One operator per resource: two installations watching the same namespaces would both reconcile
every resource there and undo each other's changes (images, config) for ever. At install and
upgrade (`lookup` reads the cluster; `helm template` skips this), every other release's operator
ClusterRole says what it watches (annotation thrifty.dev/watch-namespaces, "" = every
namespace); one that overlaps this release's namespaces stops the install. A ClusterRole of a
chart before this check has no annotation: watching every namespace, unless its name carries
its release namespace (the name a namespaced install gets), whose namespaces are not known (an
overlap only for a release watching every namespace).
*/}}
{{- define "thrifty.refuseOverlappingInstallations" -}}
{{- $mine := .Values.operator.watchNamespaces | default list -}}
{{- $roles := lookup "rbac.authorization.k8s.io/v1" "ClusterRole" "" "" | default dict -}}
{{- range ($roles.items | default list) -}}
{{- $meta := .metadata -}}
{{- $labels := $meta.labels | default dict -}}
{{- $ann := $meta.annotations | default dict -}}
{{- $release := get $ann "meta.helm.sh/release-name" -}}
{{- $releaseNs := get $ann "meta.helm.sh/release-namespace" -}}
{{- $ours := and (eq $release $.Release.Name) (eq $releaseNs $.Release.Namespace) -}}
{{- if and (eq (get $labels "app.kubernetes.io/name") "thrifty-operator") $release (not $ours) -}}
{{- $known := hasKey $ann "thrifty.dev/watch-namespaces" -}}
{{- $theirs := splitList "," (get $ann "thrifty.dev/watch-namespaces") | compact -}}
{{- if or $known (empty $mine) (not (hasSuffix (printf "-%s" $releaseNs) $meta.name)) -}}
{{- $clash := or (empty $mine) (empty $theirs) -}}
{{- range $mine -}}{{- if has . $theirs -}}{{- $clash = true -}}{{- end -}}{{- end -}}
{{- if $clash -}}
{{- $where := ternary "every namespace" (join ", " $theirs) (empty $theirs) -}}
{{- fail (printf "another Thrifty operator (release %s in namespace %s) already watches %s: two operators would reconcile the same resources and undo each other's changes. Uninstall it first, or give each installation namespaces of its own (operator.watchNamespaces)." $release $releaseNs $where) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
