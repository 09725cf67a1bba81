{{/* Names. */}}
{{- define "realm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "realm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $fn := (include "realm.manifest" . | fromYaml).name | default "function" }}
{{- if contains $fn .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $fn | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "realm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "realm.labels" -}}
helm.sh/chart: {{ include "realm.chart" . }}
{{ include "realm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "realm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "realm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "realm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The function manifest, parsed. The runtime validates it fully at start (`realm function
validate`); the chart checks what it reads itself.
*/}}
{{- define "realm.manifest" -}}
{{- $m := fromYaml .Values.function.manifest }}
{{- if hasKey $m "Error" }}
{{- fail (printf "function.manifest is not YAML: %s" (get $m "Error")) }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$" (toString ($m.name | default ""))) }}
{{- fail (printf "function.manifest: name %q is not a DNS label" (toString ($m.name | default ""))) }}
{{- end }}
{{- if not (and $m.model $m.model.uri) }}
{{- fail "function.manifest: model.uri is missing" }}
{{- end }}
{{- toYaml $m }}
{{- end }}

{{/* Scaling from the manifest, with the runtime's defaults: min, max, concurrency, gpu. */}}
{{- define "realm.scaling" -}}
{{- $m := include "realm.manifest" . | fromYaml }}
{{- $s := $m.scaling | default dict }}
{{- $min := int (ternary 0 $s.min_instances (kindIs "invalid" $s.min_instances)) }}
{{- $max := int (ternary 10 $s.max_instances (kindIs "invalid" $s.max_instances)) }}
{{- $conc := int (ternary 16 $s.concurrency (kindIs "invalid" $s.concurrency)) }}
{{- $gpu := toString ($s.gpu | default "none") }}
{{- if gt $min $max }}
{{- fail (printf "function.manifest: scaling.min_instances %d is above scaling.max_instances %d" $min $max) }}
{{- end }}
min: {{ $min }}
max: {{ $max }}
concurrency: {{ $conc }}
gpu: {{ $gpu }}
{{- end }}

{{- define "realm.gpuEnabled" -}}
{{- if kindIs "bool" .Values.gpu.enabled }}
{{- ternary "true" "" .Values.gpu.enabled }}
{{- else }}
{{- $s := include "realm.scaling" . | fromYaml }}
{{- ternary "true" "" (ne $s.gpu "none") }}
{{- end }}
{{- end }}

{{/* The model URI, and whether the init container fetches it. */}}
{{- define "realm.modelUri" -}}
{{- (include "realm.manifest" . | fromYaml).model.uri }}
{{- end }}

{{- define "realm.modelScheme" -}}
{{- $uri := include "realm.modelUri" . }}
{{- if contains "://" $uri }}{{ index (splitList "://" $uri) 0 }}{{ end }}
{{- end }}

{{- define "realm.fetchModel" -}}
{{- if kindIs "bool" .Values.modelFetch.enabled }}
{{- ternary "true" "" .Values.modelFetch.enabled }}
{{- else }}
{{- ternary "true" "" (has (include "realm.modelScheme" .) (list "s3" "gs" "az")) }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest pins it. */}}
{{- define "realm.image" -}}
{{- if .digest }}{{ .repository }}@{{ .digest }}{{ else }}{{ .repository }}:{{ .tag }}{{ end }}
{{- end }}

{{- define "realm.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecret }}{{ else if .Values.apiKeys.keys }}{{ include "realm.fullname" . }}-api-keys{{ end }}
{{- end }}

{{/*
The pod spec shared by the Deployment and the Knative Service. Knative forbids container port
numbers on probes and names the port http1; the Deployment names it http.
*/}}
{{- define "realm.podSpec" -}}
{{- $knative := .Values.knative.enabled }}
{{- $gpu := include "realm.gpuEnabled" . }}
{{- $fetch := include "realm.fetchModel" . }}
{{- $uri := include "realm.modelUri" . }}
{{- $keys := include "realm.apiKeysSecret" . -}}
serviceAccountName: {{ include "realm.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- if not $knative }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- if $fetch }}
initContainers:
  - name: model-fetch
    image: {{ include "realm.image" .Values.modelFetch.image | quote }}
    imagePullPolicy: {{ .Values.modelFetch.image.pullPolicy }}
    {{- $scheme := include "realm.modelScheme" . }}
    {{- $path := index (splitList "://" $uri) 1 }}
    args:
      - copyto
      {{- if eq $scheme "s3" }}
      - ":s3:{{ $path }}"
      - --s3-provider=AWS
      - --s3-env-auth
      {{- with .Values.modelFetch.s3Region }}
      - --s3-region={{ . }}
      {{- end }}
      {{- else if eq $scheme "gs" }}
      - ":gcs:{{ $path }}"
      - --gcs-env-auth
      {{- else if eq $scheme "az" }}
      - ":azureblob:{{ $path }}"
      - --azureblob-env-auth
      - --azureblob-account={{ required "modelFetch.azureStorageAccount is required for az:// model URIs" .Values.modelFetch.azureStorageAccount }}
      {{- else }}
      {{- fail (printf "modelFetch: model.uri %q is not an s3://, gs:// or az:// URI" $uri) }}
      {{- end }}
      - /models/{{ base $path }}
    env:
      - name: HOME
        value: /tmp
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml .Values.modelFetch.resources | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: /models
      - name: tmp
        mountPath: /tmp
{{- end }}
containers:
  - name: realm
    image: {{ include "realm.image" .Values.image | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    ports:
      - name: {{ ternary "http1" "http" $knative }}
        containerPort: 8080
        protocol: TCP
    env:
      - name: REALM_FUNCTION
        value: /etc/realm/realm.yaml
      - name: REALM_PLATFORM
        value: auto
      - name: REALM_MODEL_CACHE
        value: /models/cache
      - name: HOME
        value: /tmp
      {{- if $fetch }}
      - name: REALM_MODEL
        value: /models/{{ base (index (splitList "://" $uri) 1) }}
      {{- end }}
      {{- if $keys }}
      - name: REALM_API_KEYS_FILE
        value: /etc/realm-keys/keys
      {{- end }}
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- $port := ternary dict (dict "port" "http") $knative }}
    {{- if not $knative }}
    {{- /* Knative holds traffic until readiness passes, within its progress deadline. */}}
    startupProbe:
      httpGet:
        path: /ready
        port: http
      periodSeconds: {{ .Values.probes.startup.periodSeconds }}
      failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    {{- end }}
    readinessProbe:
      httpGet:
        path: /ready
        {{- with $port }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
      failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    livenessProbe:
      httpGet:
        path: /health
        {{- with $port }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
      failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      {{- $res := deepCopy .Values.resources }}
      {{- if $gpu }}
      {{- $_ := set $res "limits" (merge (dict .Values.gpu.resource (toString .Values.gpu.count)) ($res.limits | default dict)) }}
      {{- end }}
      {{- toYaml $res | nindent 6 }}
    volumeMounts:
      - name: manifest
        mountPath: /etc/realm
        readOnly: true
      - name: models
        mountPath: /models
      - name: tmp
        mountPath: /tmp
      {{- if $keys }}
      - name: api-keys
        mountPath: /etc/realm-keys
        readOnly: true
      {{- end }}
volumes:
  - name: manifest
    configMap:
      name: {{ include "realm.fullname" . }}-manifest
  {{- if $keys }}
  - name: api-keys
    secret:
      secretName: {{ $keys }}
      items:
        - key: {{ ternary .Values.apiKeys.existingSecretKey "keys" (ne .Values.apiKeys.existingSecret "") }}
          path: keys
  {{- end }}
  - name: models
    emptyDir:
      sizeLimit: {{ .Values.modelFetch.volumeSizeLimit }}
  - name: tmp
    emptyDir: {}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tol := .Values.tolerations }}
{{- if and $gpu .Values.gpu.tolerateTaint }}
{{- $tol = append $tol (dict "key" .Values.gpu.resource "operator" "Exists" "effect" "NoSchedule") }}
{{- end }}
{{- with $tol }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
