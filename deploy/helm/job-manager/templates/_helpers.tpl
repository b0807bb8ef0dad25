{{/* Names ----------------------------------------------------------------------- */}}

{{- define "job-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "job-manager.fullname" -}}
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

{{- define "job-manager.appVersion" -}}
{{- default .Chart.AppVersion .Values.appVersionOverride }}
{{- end }}

{{- define "job-manager.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "job-manager.selectorLabels" . }}
app.kubernetes.io/version: {{ include "job-manager.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: job-manager
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "job-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "job-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: job-manager
{{- end }}

{{/* Labels the job manager puts on runtime pods (through kubernetes.podLabels), so
     NetworkPolicies can tell them from job-manager pods. */}}
{{- define "job-manager.runtimeSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: runtime
{{- end }}

{{- define "job-manager.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "job-manager.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "job-manager.runtimeServiceAccountName" -}}
{{- if .Values.runtimePods.serviceAccount.create }}
{{- default (printf "%s-runtime" (include "job-manager.fullname" .) | trunc 63 | trimSuffix "-") .Values.runtimePods.serviceAccount.name }}
{{- else }}
{{- .Values.runtimePods.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secrets: one chart-made Secret for what only the job manager reads, one for the
     internal API key (sidecars in runtime pods refer to it by name). */}}
{{- define "job-manager.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "job-manager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "job-manager.locationKeySecretName" -}}
{{- default (include "job-manager.credentialsSecretName" .) .Values.jobManager.locationKeySecretName }}
{{- end }}

{{- define "job-manager.internalApiKeySecretName" -}}
{{- default (printf "%s-internal-api-key" (include "job-manager.fullname" .) | trunc 63 | trimSuffix "-") .Values.global.internalApiKeySecretName }}
{{- end }}

{{- define "job-manager.vsePassphraseSecretName" -}}
{{- default (include "job-manager.credentialsSecretName" .) .Values.jobManager.vsePassphraseSecretName }}
{{- end }}

{{- define "job-manager.tokenSigningKeySecretName" -}}
{{- default (include "job-manager.credentialsSecretName" .) .Values.jobManager.tokenSigningKeySecretName }}
{{- end }}

{{- define "job-manager.runtimeCaConfigMapName" -}}
{{- printf "%s-runtime-ca" (include "job-manager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the job manager reads the broker CA bundle (its ConfigMap's mount) and the
     client certificate Secret. */}}
{{- define "job-manager.brokerCaFile" -}}
/etc/job-manager/broker-ca.pem
{{- end }}
{{- define "job-manager.brokerClientCertDir" -}}
/etc/job-manager/broker-client
{{- end }}

{{/* Where the job manager reads the --set-file content of
     jobManager.userDefinedVariables.userDefinedFile: its own ConfigMap's mount. */}}
{{- define "job-manager.userDefinedFileMount" -}}
/etc/job-manager/user_defined_variables.json
{{- end }}

{{/* Images --------------------------------------------------------------------- */}}

{{/* The registry prepended to every image: global.imageRegistry, else an umbrella
     chart's global.image.registry. */}}
{{- define "job-manager.imageRegistry" -}}
{{- default ((.Values.global.image | default dict).registry | default "") .Values.global.imageRegistry | trimSuffix "/" }}
{{- end }}

{{- define "job-manager.image" -}}
{{- $registry := include "job-manager.imageRegistry" . }}
{{- $repository := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (include "job-manager.appVersion" .) (toString .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Pull secrets given as names or {name: ...} objects, as a YAML list of
     LocalObjectReference. Argument: a list. */}}
{{- define "job-manager.pullSecrets" -}}
{{- $out := list }}
{{- range . }}
{{- if kindIs "string" . }}
{{- $out = append $out (dict "name" .) }}
{{- else }}
{{- $out = append $out (dict "name" .name) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Persistence ---------------------------------------------------------------- */}}

{{/* Does the chart generate a PersistentVolumeClaim? */}}
{{- define "job-manager.generatesClaim" -}}
{{- $p := .Values.global.persistence }}
{{- if and (not $p.existingClaimName) (or $p.enabled $p.existingVolumeName $p.storageClass) }}true{{- end }}
{{- end }}

{{/* The claim the data volume uses, empty for an emptyDir. */}}
{{- define "job-manager.claimName" -}}
{{- $p := .Values.global.persistence }}
{{- if $p.existingClaimName }}
{{- $p.existingClaimName }}
{{- else if include "job-manager.generatesClaim" . }}
{{- printf "%s-data" (include "job-manager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Scaling: the least number of replicas that will be running. */}}
{{- define "job-manager.minReplicas" -}}
{{- if .Values.jobManager.keda.enabled }}
{{- .Values.jobManager.keda.minReplicaCount | int }}
{{- else if .Values.jobManager.hpa.enabled }}
{{- .Values.jobManager.hpa.minReplicas | int }}
{{- else }}
{{- .Values.replicaCount | int }}
{{- end }}
{{- end }}

{{/* Cross-field rules JSON Schema cannot state with a clear message. Rendered once,
     from the Deployment, so `helm lint`, `template` and `install` all stop here. */}}
{{- define "job-manager.validate" -}}
{{- $jm := .Values.jobManager }}
{{- if and (not $jm.locationKey) (not $jm.locationKeySecretName) }}
{{- fail "jobManager.locationKey or jobManager.locationKeySecretName is required: set the location key (--set jobManager.locationKey=...) or the name of an existing Secret holding the key `locationKey`" }}
{{- end }}
{{- if and $jm.locationKey $jm.locationKeySecretName }}
{{- fail "set only one of jobManager.locationKey and jobManager.locationKeySecretName" }}
{{- end }}
{{- if and (not .Values.global.internalApiKey) (not .Values.global.internalApiKeySecretName) }}
{{- fail "global.internalApiKey or global.internalApiKeySecretName is required: set the internal API key (--set global.internalApiKey=...) or the name of an existing Secret holding the key `internalApiKey`" }}
{{- end }}
{{- if and .Values.global.internalApiKey .Values.global.internalApiKeySecretName }}
{{- fail "set only one of global.internalApiKey and global.internalApiKeySecretName" }}
{{- end }}
{{- if and $jm.vsePassphrase $jm.vsePassphraseSecretName }}
{{- fail "set only one of jobManager.vsePassphrase and jobManager.vsePassphraseSecretName" }}
{{- end }}
{{- if and $jm.tokenSigningKey $jm.tokenSigningKeySecretName }}
{{- fail "set only one of jobManager.tokenSigningKey and jobManager.tokenSigningKeySecretName" }}
{{- end }}
{{- /* The broker proxy settings, as the job manager validates them (config/validate.rs). */}}
{{- if and $jm.apiProxyHost (not $jm.apiProxyPort) }}
{{- fail "jobManager.apiProxyPort is required (1-65535) when jobManager.apiProxyHost is set" }}
{{- end }}
{{- if and (not $jm.apiProxyHost) (or $jm.apiProxyPort $jm.brokerApiProxyUsername $jm.brokerApiProxyPw) }}
{{- fail "jobManager.apiProxyHost is required when jobManager.apiProxyPort, jobManager.brokerApiProxyUsername or jobManager.brokerApiProxyPw is set" }}
{{- end }}
{{- if and $jm.brokerApiProxyPw (not $jm.brokerApiProxyUsername) }}
{{- fail "jobManager.brokerApiProxyUsername is required when jobManager.brokerApiProxyPw is set" }}
{{- end }}
{{- $udv := $jm.userDefinedVariables }}
{{- if gt (len (compact (list $udv.userDefinedJson $udv.userDefinedFile $udv.userDefinedPath))) 1 }}
{{- fail "set only one of jobManager.userDefinedVariables.userDefinedJson, userDefinedFile and userDefinedPath" }}
{{- end }}
{{- range $key := list "userDefinedJson" "userDefinedFile" }}
{{- $text := index $udv $key | trim }}
{{- if $text }}
{{- $parsed := fromJson $text }}
{{- /* fromJson answers {"Error": ...} for anything that is not a JSON object. */}}
{{- if or (not (hasPrefix "{" $text)) (and (hasKey $parsed "Error") (eq (len $parsed) 1) (not (contains "\"Error\"" $text))) }}
{{- if eq $key "userDefinedFile" }}
{{- fail (printf "jobManager.userDefinedVariables.userDefinedFile must be the content of a JSON object file, given with --set-file jobManager.userDefinedVariables.userDefinedFile=<path> (as the synthetics job manager's chart takes it), got %q (%s)" ($text | trunc 60) (get $parsed "Error" | default "not an object")) }}
{{- else }}
{{- fail (printf "jobManager.userDefinedVariables.userDefinedJson must be a JSON object, e.g. '{\"key\":\"value\"}', got %q (%s)" ($text | trunc 60) (get $parsed "Error" | default "not an object")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $jm.sidecar.enabled }}
{{- fail "jobManager.sidecar.enabled cannot be false: the sidecar is every runtime's only way to its job and back (it fetches the job with the single-use token and reports the result), and its egress policy is what keeps runtimes away from cloud metadata, the API server and private ranges. To roll out a policy without enforcing it, set jobManager.sidecar.reportOnly=true" }}
{{- end }}
{{- if and $udv.userDefinedPath (or (hasPrefix "/" $udv.userDefinedPath) (has ".." (splitList "/" $udv.userDefinedPath))) }}
{{- fail "jobManager.userDefinedVariables.userDefinedPath must be a relative path inside the persistent volume (no leading '/', no '..')" }}
{{- end }}
{{- if ge (int $jm.shutdownGraceSecs) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than jobManager.shutdownGraceSecs (%d), or in-flight work is killed before it drains" (int .Values.terminationGracePeriodSeconds) (int $jm.shutdownGraceSecs)) }}
{{- end }}
{{- if and $jm.hpa.enabled (not $jm.keda.enabled) (gt (int $jm.hpa.minReplicas) (int $jm.hpa.maxReplicas)) }}
{{- fail (printf "jobManager.hpa.minReplicas (%d) must not exceed jobManager.hpa.maxReplicas (%d)" (int $jm.hpa.minReplicas) (int $jm.hpa.maxReplicas)) }}
{{- end }}
{{- if and $jm.keda.enabled (gt (int $jm.keda.minReplicaCount) (int $jm.keda.maxReplicaCount)) }}
{{- fail (printf "jobManager.keda.minReplicaCount (%d) must not exceed jobManager.keda.maxReplicaCount (%d)" (int $jm.keda.minReplicaCount) (int $jm.keda.maxReplicaCount)) }}
{{- end }}
{{- if and (not (index .Values "node-api-runtime" "enabled")) (not (index .Values "node-browser-runtime" "enabled")) }}
{{- fail "enable at least one runtime: node-api-runtime.enabled or node-browser-runtime.enabled" }}
{{- end }}
{{- end }}

{{/* Env entries from a map (name -> value), sorted by name. */}}
{{- define "job-manager.envFromMap" -}}
{{- range $name, $value := . }}
- name: {{ $name | quote }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* `brokerApiProxySelfSignedCert` accepts true, 1 or yes (seed 000); the config file wants a bool. */}}
{{- define "job-manager.truthy" -}}
{{- if has (lower (toString .)) (list "true" "1" "yes") }}true{{ else }}false{{ end }}
{{- end }}
