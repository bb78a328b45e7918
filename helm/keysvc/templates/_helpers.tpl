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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
{{- define "keysvc.tlsDir" -}}/run/tls/keysvc{{- end }}
{{- define "keysvc.clientCaDir" -}}/run/tls/keysvc-client-ca{{- end }}
{{- define "keysvc.storeSecretDir" -}}/run/secrets/keysvc-gateway-store{{- end }}
{{- define "keysvc.deliverySecretDir" -}}/run/secrets/keysvc-trigger-delivery{{- end }}
{{/* Push delivery's public URL: triggerDelivery.publicUrl, else config.public_url, else the Ingress's https host. */}}
{{- define "keysvc.deliveryPublicUrl" -}}
{{- $v := .Values }}
{{- if $v.triggerDelivery.publicUrl }}{{ $v.triggerDelivery.publicUrl }}
{{- else if $v.config.public_url }}{{ $v.config.public_url }}
{{- else if and $v.ingress.enabled $v.ingress.host }}https://{{ $v.ingress.host }}
{{- end }}
{{- end }}

{{/* The kubernetes.io/tls Secret of the internal listener: the one given, or the cert-manager Certificate's. */}}
{{- define "keysvc.tlsSecretName" -}}
{{- default (printf "%s-internal-tls" (include "keysvc.fullname" .)) .Values.internalTls.existingSecret }}
{{- end }}

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
{{- $listen := dict "public" (printf "0.0.0.0:%d" (int $v.ports.public)) "internal" (printf "0.0.0.0:%d" (int $v.ports.internal)) }}
{{- if $v.internalTls.enabled }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "keysvc.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "keysvc.tlsDir" .)) }}
{{- if $v.internalTls.clientAuth.enabled }}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" (include "keysvc.clientCaDir" .)) }}
{{- $_ := set $tls "require_client_cert" $v.internalTls.clientAuth.required }}
{{- end }}
{{- $_ := set $listen "tls" $tls }}
{{- end }}
{{- $_ := set $listen "head_timeout" $v.listenTimeouts.head }}
{{- $_ := set $listen "body_timeout" $v.listenTimeouts.body }}
{{- $_ := set $listen "keepalive_timeout" $v.listenTimeouts.keepalive }}
{{- $_ := set $cfg "listen" $listen }}
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
{{- /* OpenID discovery names the JWKS by absolute URL: behind the chart's Ingress that is its https host. */}}
{{- if and $v.ingress.enabled $v.ingress.host (not $v.config.public_url) }}
{{- $_ := set $cfg "public_url" (printf "https://%s" $v.ingress.host) }}
{{- end }}
{{- if $v.config.token_exchange }}
{{- $tx := deepCopy $v.config.token_exchange }}
{{- $_ := set $tx "client_secret_file" (printf "%s/%s" (include "keysvc.secretsDir" .) $v.secrets.clientSecretKey) }}
{{- with $v.gatewayStore }}{{ if .url }}
{{- $store := dict "url" .url "timeout" .timeout "fallback_divisor" (int .fallbackDivisor) }}
{{- if .passwordSecret.name }}
{{- $_ := set $store "password_file" (printf "%s/%s" (include "keysvc.storeSecretDir" $) .passwordSecret.key) }}
{{- end }}
{{- $_ := set $tx "store" $store }}
{{- end }}{{ end }}
{{- with $v.triggerDelivery }}{{ if .url }}
{{- $delivery := dict "url" .url "public_url" (include "keysvc.deliveryPublicUrl" $) "lease" .lease "sweep_interval" .sweepInterval }}
{{- $_ := set $delivery "secret_file" (printf "%s/%s" (include "keysvc.deliverySecretDir" $) .secret.key) }}
{{- $_ := set $tx "trigger_delivery" $delivery }}
{{- end }}{{ end }}
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
{{- $store := $v.gatewayStore }}
{{- if and $store.url (not $v.config.token_exchange) }}
{{- fail "gatewayStore.url needs config.token_exchange: the store holds the partner gateway's shared state" }}
{{- end }}
{{- if and (hasPrefix "sqlite:" $store.url) (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) }}
{{- fail (printf "gatewayStore.url is SQLite, a file of one pod: it needs replicaCount 1 (got %d) and autoscaling.enabled false; use PostgreSQL for several replicas" (int $v.replicaCount)) }}
{{- end }}
{{- if and $store.passwordSecret.name (hasPrefix "sqlite:" $store.url) }}
{{- fail "gatewayStore.passwordSecret is for PostgreSQL; a SQLite store takes no password" }}
{{- end }}
{{- $delivery := $v.triggerDelivery }}
{{- if and $delivery.url (not $store.url) }}
{{- fail "triggerDelivery.url needs gatewayStore.url: push delivery finds the inboxes keysvc ensured in the gateway store" }}
{{- end }}
{{- if and $delivery.url (not $delivery.secret.name) }}
{{- fail "triggerDelivery.url needs triggerDelivery.secret.name: the Secret holding the whsec_ signing secret" }}
{{- end }}
{{- if and $delivery.url (not (include "keysvc.deliveryPublicUrl" .)) }}
{{- fail "triggerDelivery.url needs triggerDelivery.publicUrl (or config.public_url, or ingress.enabled with ingress.host): Zapier notifies keysvc there" }}
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
{{- $tls := $v.internalTls }}
{{- if and $tls.enabled (not $tls.existingSecret) (not $tls.certManager.enabled) }}
{{- fail "internalTls.enabled needs its certificate: set internalTls.existingSecret or internalTls.certManager.enabled" }}
{{- end }}
{{- if and $tls.enabled $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "internalTls.certManager.enabled needs internalTls.certManager.issuerRef.name" }}
{{- end }}
{{- if and $tls.clientAuth.enabled (not $tls.enabled) }}
{{- fail "internalTls.clientAuth.enabled needs internalTls.enabled: client certificates are checked on the TLS listener" }}
{{- end }}
{{- range $name, $client := $v.config.clients }}
{{- if and $client.cert_subjects (not $tls.clientAuth.enabled) }}
{{- fail (printf "config.clients.%s.cert_subjects needs internalTls.clientAuth.enabled (keysvc verifies client certificates against its CA)" $name) }}
{{- end }}
{{- if and $client.zapier (not $v.config.token_exchange) }}
{{- fail (printf "config.clients.%s.zapier needs config.token_exchange (the gateway uses its access tokens)" $name) }}
{{- end }}
{{- if kindIs "slice" $client.admin }}
{{- range $keyset := $client.admin }}
{{- if not (hasKey $v.config.keysets $keyset) }}
{{- fail (printf "config.clients.%s.admin: no keyset named %s in config.keysets" $name $keyset) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key := list "head" "body" "keepalive" }}
{{- if le (float64 (include "keysvc.seconds" (get $v.listenTimeouts $key))) 0.0 }}
{{- fail (printf "listenTimeouts.%s must be greater than 0" $key) }}
{{- end }}
{{- end }}
{{- with $v.config.token_exchange }}
{{- if hasKey . "run_wait_max" }}
{{- $wait := float64 (include "keysvc.seconds" .run_wait_max) }}
{{- if or (le $wait 0.0) (gt $wait 600.0) }}
{{- fail (printf "config.token_exchange.run_wait_max (%v) must be more than 0 and at most 10m: a caller's request stays open that long" .run_wait_max) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.ingress.enabled (eq $v.service.public.type "LoadBalancer") }}
{{- fail "service.public.type=LoadBalancer with ingress.enabled exposes the public port twice: pick one" }}
{{- end }}
{{- /* Every problem below at once, one per line (helm's `fail` could only name the first). */}}
{{- $problems := list }}
{{- range $line := splitList "\n" (print (include "keysvc.validateRequired" .) (include "keysvc.validateTimings" .)) }}
{{- if trim $line }}{{ $problems = append $problems (trim $line) }}{{ end }}
{{- end }}
{{- if $problems }}
{{- fail (printf "%d problem(s) in the values:\n  %s" (len $problems) (join "\n  " $problems)) }}
{{- end }}
{{- end }}

{{/*
Values without a sane default: the release must set them (the chart's defaults are empty on purpose, so a
forgotten value fails the install instead of deploying a placeholder). Prints one problem per line;
keysvc.validate fails with all of them.
*/}}
{{- define "keysvc.validateRequired" -}}
{{- $v := .Values }}
{{- range $name, $ks := $v.config.keysets }}
{{- $issuer := (default (dict) $ks).issuer }}
{{- if not $issuer }}
{{- printf "%s\n" (printf "config.keysets.%s.issuer is required: the `iss` of the tokens this keyset signs, which verifiers match byte for byte (e.g. https://auth.yourcompany.com). Set it in your values file, or drop the chart's example keyset with `config.keysets.%s: null`" $name $name) }}
{{- end }}
{{- if eq $issuer "https://partner.example.com" }}
{{- printf "%s\n" (printf "config.keysets.%s.issuer is the placeholder %s of older chart versions: set your own issuer" $name $issuer) }}
{{- end }}
{{- end }}
{{- if and (eq $v.backend.type "kms") (not $v.backend.kms.region) }}
{{- print "backend.kms.region is required with backend.type=kms: the AWS region that holds the signing keys (e.g. eu-west-1)\n" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.host) }}
{{- print "ingress.host is required with ingress.enabled: the public host name verifiers fetch the JWKS from (e.g. jwks.yourcompany.com)\n" }}
{{- end }}
{{- range $name, $client := $v.config.clients }}
{{- range $keyset := (default (list) $client.keysets) }}
{{- if not (hasKey (default (dict) $v.config.keysets) $keyset) }}
{{- printf "%s\n" (printf "config.clients.%s.keysets: no keyset named %s in config.keysets" $name $keyset) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A duration setting in seconds: (list SECTION KEY DEFAULT), DEFAULT being keysvc's own when KEY is absent.
*/}}
{{- define "keysvc.secondsOf" -}}
{{- $section := default (dict) (index . 0) }}
{{- $value := index . 2 }}
{{- if and (hasKey $section (index . 1)) (not (kindIs "invalid" (get $section (index . 1)))) }}
{{- $value = get $section (index . 1) }}
{{- end }}
{{- include "keysvc.seconds" $value }}
{{- end }}

{{/* Seconds as people write them: 1020, 4.5 (never 2.592e+06). */}}
{{- define "keysvc.formatSeconds" -}}
{{- printf "%.3f" (float64 .) | trimSuffix "0" | trimSuffix "0" | trimSuffix "0" | trimSuffix "." }}s
{{- end }}

{{/*
keysvc's timing invariants for every keyset, with keysvc's defaults for what the values leave out (the same
check `keysvc check-config` makes at start-up, moved to install time so a refused config never reaches a pod),
one problem per line:
  publish_ahead A >= max(jwks.max_age M + jwks.stale_while_revalidate W, jwks.verifier_cache C)
                     + backend.refresh_interval I + clock_skew S
  retain_after R >= max_token_ttl T + I + S;  rotation_period P > A;  1s <= T <= P.
*/}}
{{- define "keysvc.validateTimings" -}}
{{- $c := .Values.config }}
{{- $jwks := default (dict) $c.jwks }}
{{- $m := float64 (include "keysvc.secondsOf" (list $jwks "max_age" "5m")) }}
{{- $w := float64 (include "keysvc.secondsOf" (list $jwks "stale_while_revalidate" "1m")) }}
{{- $cache := float64 (include "keysvc.secondsOf" (list $jwks "verifier_cache" "10m")) }}
{{- $i := float64 (include "keysvc.secondsOf" (list $c.backend "refresh_interval" "30s")) }}
{{- $s := float64 (include "keysvc.secondsOf" (list $c "clock_skew" "60s")) }}
{{- if le $i 0.0 }}
{{- print "config.backend.refresh_interval must be greater than 0\n" }}
{{- end }}
{{- $cached := addf $m $w }}
{{- if gt $cache $cached }}{{ $cached = $cache }}{{ end }}
{{- $needA := addf $cached $i $s }}
{{- range $name, $ks := $c.keysets }}
{{- $ks = default (dict) $ks }}
{{- $path := printf "config.keysets.%s" $name }}
{{- $p := float64 (include "keysvc.secondsOf" (list $ks "rotation_period" "30d")) }}
{{- $a := float64 (include "keysvc.secondsOf" (list $ks "publish_ahead" "2d")) }}
{{- $r := float64 (include "keysvc.secondsOf" (list $ks "retain_after" "1d")) }}
{{- $t := float64 (include "keysvc.secondsOf" (list $ks "max_token_ttl" "5m")) }}
{{- if lt $a $needA }}
{{- printf "%s\n" (printf "%s.publish_ahead (%s) is too short: must be >= max(config.jwks.max_age + config.jwks.stale_while_revalidate, config.jwks.verifier_cache) + config.backend.refresh_interval + config.clock_skew = %s, so that every verifier has the next key cached before it signs" $path (include "keysvc.formatSeconds" $a) (include "keysvc.formatSeconds" $needA)) }}
{{- end }}
{{- $needR := addf $t $i $s }}
{{- if lt $r $needR }}
{{- printf "%s\n" (printf "%s.retain_after (%s) is too short: must be >= max_token_ttl + config.backend.refresh_interval + config.clock_skew = %s, so that every token stays verifiable until it expires" $path (include "keysvc.formatSeconds" $r) (include "keysvc.formatSeconds" $needR)) }}
{{- end }}
{{- if le $p $a }}
{{- printf "%s\n" (printf "%s.rotation_period (%s) must be greater than publish_ahead (%s)" $path (include "keysvc.formatSeconds" $p) (include "keysvc.formatSeconds" $a)) }}
{{- end }}
{{- if gt $t $p }}
{{- printf "%s\n" (printf "%s.max_token_ttl (%s) must not exceed rotation_period (%s)" $path (include "keysvc.formatSeconds" $t) (include "keysvc.formatSeconds" $p)) }}
{{- end }}
{{- if lt $t 1.0 }}
{{- printf "%s\n" (printf "%s.max_token_ttl (%s) must be at least 1s: tokens carry whole seconds" $path (include "keysvc.formatSeconds" $t)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A keysvc duration (integer seconds, or compound units such as 1h30m, 1500ms, 2.5d) in seconds.
*/}}
{{- define "keysvc.seconds" -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 }}
{{- if kindIs "string" . }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)" . -1 }}
{{- $unit := regexFind "(ms|s|m|h|d)$" . }}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit .)) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- else }}
{{- float64 . }}
{{- end }}
{{- end }}

{{/* The PromQL matchers that select this release's series (they replace the rule files' job=~".*keysvc.*"). */}}
{{- define "keysvc.ruleSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- tpl .Values.prometheusRule.selector . }}
{{- else if .Values.serviceMonitor.enabled }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (printf "%s-internal" (include "keysvc.fullname" .)) }}
{{- else }}
{{- printf "namespace=%q" .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
files/alerts.yaml (a plain rule file, also shipped as helm/prometheus-rules.yaml) made this release's:
every selector scoped to the release, per-alert enable/threshold/for/severity, routing labels on every
alert, runbook links to prometheusRule.runbookBaseUrl, and the canary threshold at 3 x canary.interval.
*/}}
{{- define "keysvc.alertGroups" -}}
{{- $v := .Values.prometheusRule }}
{{- $file := .Files.Get "files/alerts.yaml" | fromYaml }}
{{- if not $file.groups }}
{{- fail "files/alerts.yaml must hold a `groups:` list" }}
{{- end }}
{{- $selector := include "keysvc.ruleSelector" . }}
{{- $overrides := deepCopy (default (dict) $v.alerts) }}
{{- $canary := default (dict) .Values.config.canary }}
{{- if and (not (dig "KeysvcCanaryStalled" "threshold" "" $overrides)) $canary.interval }}
{{- $stalled := merge (dict "threshold" (mulf 3.0 (float64 (include "keysvc.seconds" $canary.interval)))) (default (dict) (get $overrides "KeysvcCanaryStalled")) }}
{{- $_ := set $overrides "KeysvcCanaryStalled" $stalled }}
{{- end }}
{{- $known := dict }}
{{- $groups := list }}
{{- range $group := $file.groups }}
{{- $rules := list }}
{{- range $file_rule := $group.rules }}
{{- $rule := deepCopy $file_rule }}
{{- $_ := set $known $rule.alert true }}
{{- $o := default (dict) (get $overrides $rule.alert) }}
{{- if ne (toString (get $o "enabled")) "false" }}
{{- $expr := replace "job=~\".*keysvc.*\"" $selector $rule.expr }}
{{- if hasKey $o "threshold" }}
{{- if not (regexMatch ">\\s*[0-9.]+\\s*$" $expr) }}
{{- fail (printf "prometheusRule.alerts.%s.threshold: this alert has no threshold to set" $rule.alert) }}
{{- end }}
{{- $expr = regexReplaceAll ">\\s*[0-9.]+\\s*$" $expr (printf "> %v" $o.threshold) }}
{{- end }}
{{- $_ := set $rule "expr" $expr }}
{{- with $o.for }}{{ $_ := set $rule "for" . }}{{ end }}
{{- $labels := merge (deepCopy $rule.labels) (default (dict) $v.ruleLabels) }}
{{- with $o.severity }}{{ $_ := set $labels "severity" . }}{{ end }}
{{- $_ := set $rule "labels" $labels }}
{{- $anchor := regexReplaceAll "^[^#]*" $rule.annotations.runbook_url "" }}
{{- $_ := set $rule.annotations "runbook_url" (printf "%s%s" (trimSuffix "/" $v.runbookBaseUrl) $anchor) }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- end }}
{{- $groups = append $groups (dict "name" $group.name "rules" $rules) }}
{{- end }}
{{- range $name, $_ := $v.alerts }}
{{- if not (hasKey $known $name) }}
{{- fail (printf "prometheusRule.alerts.%s: no such alert in files/alerts.yaml" $name) }}
{{- end }}
{{- end }}
{{- toYaml $groups }}
{{- end }}

{{/* The environment of keysvc, shared by the server and its check-config init container. */}}
{{- define "keysvc.env" -}}
- name: KEYSVC_CONFIG
  value: {{ include "keysvc.configDir" . }}/keysvc.yaml
- name: TMPDIR
  value: /tmp
# keysvc records which pod created a key (created_by).
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: KEYSVC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if eq .Values.backend.type "kms" }}
- name: AWS_REGION
  value: {{ .Values.backend.kms.region | quote }}
- name: AWS_STS_REGIONAL_ENDPOINTS
  value: regional
{{- end }}
{{- with .Values.extraEnv }}
{{ tpl (toYaml .) $ }}
{{- end }}
{{- end }}

{{/*
The files keysvc reads (config, secrets, TLS, the extra mounts) and /tmp, shared by the server and its
check-config init container; the file backend's key volume is the server's alone.
*/}}
{{- define "keysvc.volumeMounts" -}}
- name: config
  mountPath: {{ include "keysvc.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or (include "keysvc.usesPassphrase" .) (include "keysvc.usesClientSecret" .) }}
- name: secrets
  mountPath: {{ include "keysvc.secretsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.gatewayStore.passwordSecret.name }}
- name: gateway-store-password
  mountPath: {{ include "keysvc.storeSecretDir" . }}
  readOnly: true
{{- end }}
{{- if and .Values.triggerDelivery.url .Values.triggerDelivery.secret.name }}
- name: trigger-delivery-secret
  mountPath: {{ include "keysvc.deliverySecretDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.internalTls.enabled }}
- name: internal-tls
  mountPath: {{ include "keysvc.tlsDir" . }}
  readOnly: true
{{- if .Values.internalTls.clientAuth.enabled }}
- name: client-ca
  mountPath: {{ include "keysvc.clientCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ tpl (toYaml .) $ }}
{{- end }}
{{- end }}
