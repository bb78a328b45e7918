{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "keysvc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "keysvc.fullname" -}}
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

{{- define "keysvc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keysvc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The helm test pod: deliberately NOT matched by the selector labels (Services, PDB, spread). */}}
{{- define "keysvc.testLabels" -}}
app.kubernetes.io/name: {{ include "keysvc.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "keysvc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "keysvc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keysvc
{{- end }}

{{- define "keysvc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keysvc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is given (immutable), else repository:tag. */}}
{{- define "keysvc.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the passphrase and the token-exchange client secret. */}}
{{- define "keysvc.secretName" -}}
{{- default (printf "%s-secrets" (include "keysvc.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "keysvc.pvcName" -}}
{{- default (printf "%s-keys" (include "keysvc.fullname" .)) .Values.backend.file.persistence.existingClaim }}
{{- end }}

{{/* Paths inside the pod; the rendered config points at them. */}}
{{- define "keysvc.configDir" -}}/etc/keysvc{{- end }}
{{- define "keysvc.secretsDir" -}}/run/secrets/keysvc{{- end }}
{{- define "keysvc.dataDir" -}}/var/lib/keysvc{{- end }}

{{- define "keysvc.usesPassphrase" -}}
{{- if and (eq .Values.backend.type "file") .Values.backend.file.encryptAtRest }}true{{ end }}
{{- end }}

{{- define "keysvc.usesClientSecret" -}}
{{- if .Values.config.token_exchange }}true{{ end }}
{{- end }}

{{/* Whether the chart itself must create the Secret (no existingSecret, and something to put in it). */}}
{{- define "keysvc.createSecret" -}}
{{- if and (not .Values.secrets.existingSecret) (or (include "keysvc.usesPassphrase" .) (include "keysvc.usesClientSecret" .)) }}true{{ end }}
{{- end }}

{{/*
keysvc.yaml: .Values.config with the parts the chart owns filled in. Cross-field rules that
values.schema.json cannot express fail here, at install time, with the value to fix.
*/}}
{{- define "keysvc.config" -}}
{{- $v := .Values }}
{{- $cfg := deepCopy $v.config }}
{{- $_ := set $cfg "listen" (dict "public" (printf "0.0.0.0:%d" (int $v.ports.public)) "internal" (printf "0.0.0.0:%d" (int $v.ports.internal))) }}
{{- $backend := deepCopy (default (dict) $v.config.backend) }}
{{- $_ := set $backend "type" $v.backend.type }}
{{- if eq $v.backend.type "file" }}
{{- $_ := set $backend "path" (include "keysvc.dataDir" .) }}
{{- if $v.backend.file.encryptAtRest }}
{{- $_ := set $backend "passphrase_file" (printf "%s/%s" (include "keysvc.secretsDir" .) $v.secrets.passphraseKey) }}
{{- end }}
{{- else }}
{{- $_ := set $backend "region" $v.backend.kms.region }}
{{- $_ := set $backend "alias_prefix" $v.backend.kms.aliasPrefix }}
{{- $_ := set $backend "deletion_window" $v.backend.kms.deletionWindow }}
{{- if $v.backend.kms.endpointUrl }}
{{- $_ := set $backend "endpoint_url" $v.backend.kms.endpointUrl }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "backend" $backend }}
{{- if $v.config.token_exchange }}
{{- $tx := deepCopy $v.config.token_exchange }}
{{- $_ := set $tx "client_secret_file" (printf "%s/%s" (include "keysvc.secretsDir" .) $v.secrets.clientSecretKey) }}
{{- $_ := set $cfg "token_exchange" $tx }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Install-time checks across values (the schema checks each value alone). */}}
{{- define "keysvc.validate" -}}
{{- $v := .Values }}
{{- if le (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d): keysvc needs time to drain after the preStop sleep" (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds)) }}
{{- end }}
{{- if and (include "keysvc.createSecret" .) (include "keysvc.usesPassphrase" .) (not $v.secrets.passphrase) }}
{{- fail "backend.file.encryptAtRest needs a passphrase: set secrets.existingSecret (preferred) or secrets.passphrase" }}
{{- end }}
{{- if and (include "keysvc.createSecret" .) (include "keysvc.usesClientSecret" .) (not $v.secrets.tokenExchangeClientSecret) }}
{{- fail "config.token_exchange needs the partner's client secret: set secrets.existingSecret (preferred) or secrets.tokenExchangeClientSecret" }}
{{- end }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)" (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- if eq (int $v.ports.public) (int $v.ports.internal) }}
{{- fail "ports.public and ports.internal must differ: the internal listener must never share the public port" }}
{{- end }}
{{- $defaults := 0 }}
{{- range $name, $ks := $v.config.keysets }}
{{- if $ks.default }}{{ $defaults = add1 $defaults }}{{ end }}
{{- end }}
{{- if gt $defaults 1 }}
{{- fail "config.keysets: at most one keyset may be `default: true`" }}
{{- end }}
{{- if and $v.ingress.enabled (eq $v.service.public.type "LoadBalancer") }}
{{- fail "service.public.type=LoadBalancer with ingress.enabled exposes the public port twice: pick one" }}
{{- end }}
{{- end }}
