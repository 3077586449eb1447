{{/*
The chart's name (nameOverride replaces it).
*/}}
{{- define "avatar-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object: "<release>-<chart>", or the release name alone when it already
contains the chart's name. Truncated to 52 characters so that suffixed names ("-dispatcher")
stay within the 63 of a DNS label.
*/}}
{{- define "avatar-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "avatar-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "avatar-operator.labels" -}}
helm.sh/chart: {{ include "avatar-operator.chart" . }}
{{ include "avatar-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: avatar-operator
{{- end }}

{{/*
Selector labels; each workload adds app.kubernetes.io/component (operator, local-room).
*/}}
{{- define "avatar-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "avatar-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "avatar-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "avatar-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images: the tag defaults to the chart's appVersion.
*/}}
{{- define "avatar-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "avatar-operator.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (.Values.worker.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The VideoSDK credentials Secret the operator reads (in the release namespace): the chart's own
when it creates one (a local room's placeholder, or apiKey/secret from values), else
videosdk.existingSecret.
*/}}
{{- define "avatar-operator.createsCredentials" -}}
{{- if or .Values.localRoom.enabled .Values.videosdk.apiKey .Values.videosdk.secret }}true{{ end }}
{{- end }}

{{- define "avatar-operator.credentialsSecretName" -}}
{{- if include "avatar-operator.createsCredentials" . }}
{{- printf "%s-videosdk" (include "avatar-operator.fullname" .) }}
{{- else }}
{{- required "videosdk.existingSecret: name the Secret with your VideoSDK API key and secret (kubectl -n <namespace> create secret generic videosdk-credentials --from-literal=apiKey=<key> --from-literal=secret=<secret>), or set videosdk.apiKey and videosdk.secret, or localRoom.enabled=true to run without VideoSDK" .Values.videosdk.existingSecret }}
{{- end }}
{{- end }}

{{/*
The workers' status relay key Secret.
*/}}
{{- define "avatar-operator.relaySecretName" -}}
{{- .Values.statusRelay.existingSecret | default (printf "%s-relay" (include "avatar-operator.fullname" .)) }}
{{- end }}

{{/*
The status relay's TLS Secret (tls.crt, tls.key, ca.crt): the user's, or the chart's own.
*/}}
{{- define "avatar-operator.relayTlsSecretName" -}}
{{- .Values.statusRelay.tls.existingSecret | default (printf "%s-relay-tls" (include "avatar-operator.fullname" .)) }}
{{- end }}

{{/*
The dispatcher's bearer token Secret, and the namespace it creates sessions in.
*/}}
{{- define "avatar-operator.dispatcherSecretName" -}}
{{- .Values.dispatcher.existingSecret | default (printf "%s-dispatcher" (include "avatar-operator.fullname" .)) }}
{{- end }}

{{- define "avatar-operator.dispatcherNamespace" -}}
{{- .Values.dispatcher.namespace | default .Release.Namespace }}
{{- end }}

{{/*
The Lease the replicas elect their leader with.
*/}}
{{- define "avatar-operator.leaseName" -}}
{{- include "avatar-operator.fullname" . }}
{{- end }}

{{/*
Where workers report their status: the operator's Service, in TLS on statusRelay.port (the
certificate names the Service), or in plain HTTP on service.port with statusRelay.tls.enabled
false. Workers run in the sessions' namespaces, so the name is namespace-qualified.
*/}}
{{- define "avatar-operator.statusUrl" -}}
{{- if .Values.statusRelay.tls.enabled }}
{{- printf "https://%s.%s.svc:%d" (include "avatar-operator.fullname" .) .Release.Namespace (int .Values.statusRelay.port) }}
{{- else }}
{{- include "avatar-operator.httpUrl" . }}
{{- end }}
{{- end }}

{{/*
The operator's plain HTTP port on its Service: /healthz and /readyz.
*/}}
{{- define "avatar-operator.httpUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "avatar-operator.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/*
The local room server's URL template; the operator puts each session's roomId in.
*/}}
{{- define "avatar-operator.localRoomUrl" -}}
{{- .Values.localRoom.url | default (printf "ws://%s-room.%s.svc:%d/rooms/{roomId}" (include "avatar-operator.fullname" .) .Release.Namespace (int .Values.localRoom.port)) }}
{{- end }}

{{/*
AVATAR_OPERATOR_PLACEMENT: the placement engine's settings as JSON (the operator validates them
at start-up with the field named).
*/}}
{{- define "avatar-operator.placement" -}}
{{- $inventory := dict "headroomMiB" (int .Values.gpu.headroomMiB) "overheadMiB" (int .Values.gpu.overheadMiB) "pools" .Values.gpu.pools }}
{{- if .Values.gpu.maxSessionsPerGpu }}
{{- $_ := set $inventory "maxSessionsPerGpu" (int .Values.gpu.maxSessionsPerGpu) }}
{{- end }}
{{- $queue := dict "starvationSeconds" .Values.placement.queue.starvationSeconds "maxPasses" (int .Values.placement.queue.maxPasses) }}
{{- dict "inventory" $inventory "strategy" .Values.placement.strategy "window" (int .Values.placement.window) "queue" $queue | toJson }}
{{- end }}

{{/*
Checks of values that the schema cannot express; each failure says what to change.
*/}}
{{- define "avatar-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "leaderElection.enabled=false needs replicaCount=1: two active operators would place sessions twice" }}
{{- end }}
{{- if gt (mulf 2 .Values.leaderElection.renewSeconds) (float64 .Values.leaderElection.leaseDurationSeconds) }}
{{- fail "leaderElection.renewSeconds must be at most half of leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- if and (not .Values.localRoom.enabled) (or .Values.videosdk.apiKey .Values.videosdk.secret) (not (and .Values.videosdk.apiKey .Values.videosdk.secret)) }}
{{- fail "videosdk.apiKey and videosdk.secret go together: set both (or neither, and use videosdk.existingSecret)" }}
{{- end }}
{{- if and .Values.dispatcher.enabled .Values.watchNamespaces (not (has (include "avatar-operator.dispatcherNamespace" .) .Values.watchNamespaces)) }}
{{- fail (printf "dispatcher.namespace %q is not in watchNamespaces: add it there, or the sessions the dispatcher creates are never served" (include "avatar-operator.dispatcherNamespace" .)) }}
{{- end }}
{{- if and .Values.dispatcher.enabled (eq (int .Values.dispatcher.port) (int .Values.service.port)) }}
{{- fail "dispatcher.port must differ from service.port (the operator's HTTP port)" }}
{{- end }}
{{- if .Values.statusRelay.tls.enabled }}
{{- $relayPort := int .Values.statusRelay.port }}
{{- if or (eq $relayPort 8080) (eq $relayPort (int .Values.service.port)) (and .Values.dispatcher.enabled (eq $relayPort (int .Values.dispatcher.port))) }}
{{- fail "statusRelay.port must differ from 8080 (the operator's HTTP port), service.port and dispatcher.port" }}
{{- end }}
{{- end }}
{{- if and .Values.pool.create .Values.watchNamespaces (not (has .Release.Namespace .Values.watchNamespaces)) }}
{{- fail (printf "pool.create: the pool goes into the release namespace %q, which is not in watchNamespaces: add it there, or the pool is never served" .Release.Namespace) }}
{{- end }}
{{- if and .Values.localRoom.service.nodePort (ne .Values.localRoom.service.type "NodePort") }}
{{- fail "localRoom.service.nodePort needs localRoom.service.type=NodePort" }}
{{- end }}
{{- end }}

{{/*
RBAC: what the operator does with the resources of the namespaces it serves (every API call of
the reconciler, the relay and kopf's watches; kopf writes nothing to the sessions):
- avatarsessions: list and watch (kopf, start-up rebuild), delete (ttlSecondsAfterFinished);
  status: patch (phase, placement, conditions, the workers' reports).
- avatarpools: list and watch (kopf, the warm workers each pool wants); status: patch (its
  replicas, readyReplicas, starting, claimed, selector and conditions). The operator never
  changes a pool's spec: users and the scale subresource do.
- pods: list and watch (kopf, resync), create and delete (a session's worker, a pool's warm
  workers), patch (a session claims a warm worker: a patch of its labels and ownerReferences,
  conditional on its resourceVersion, so that no worker is claimed twice; a worker that asked
  for its session is labelled ready the same way), get (a warm worker's Pod read again when
  such a patch met a newer version of it).
- secrets: create, list and delete (a session's token Secret, the orphan sweep), get (a
  session's spec.credentials.secretRef or tokenSecretRef).
- events: create (the operator's and kopf's Events about sessions).
*/}}
{{- define "avatar-operator.sessionRules" -}}
- apiGroups: ["avatar-operator.dev"]
  resources: ["avatarsessions"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["avatar-operator.dev"]
  resources: ["avatarsessions/status"]
  verbs: ["patch"]
- apiGroups: ["avatar-operator.dev"]
  resources: ["avatarpools"]
  verbs: ["list", "watch"]
- apiGroups: ["avatar-operator.dev"]
  resources: ["avatarpools/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cluster-scoped reads: Nodes (the GPU inventory, by watch). Nothing else: kopf's scanning of
Namespaces and CRDs is off (the watched namespaces are exact names; the CRD is installed first).
*/}}
{{- define "avatar-operator.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Cluster-wide objects are named after the release's namespace too: two releases of the same
name in two namespaces must not share a ClusterRole.
*/}}
{{- define "avatar-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "avatar-operator.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}
