{{/* Names and labels shared by every object of the chart. */}}
{{- define "qtap.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qtap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "qtap.labels" -}}
app.kubernetes.io/name: {{ include "qtap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "qtap.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "qtap.s3Secret" -}}
{{- .Values.stores.s3.existingSecret | default (printf "%s-s3" (include "qtap.fullname" .)) -}}
{{- end -}}

{{- define "qtap.pulseTokenSecret" -}}
{{- .Values.pulse.existingTokenSecret | default (printf "%s-pulse-token" (include "qtap.fullname" .)) -}}
{{- end -}}

{{- define "qtap.clickhouseSecret" -}}
{{- .Values.stores.clickhouse.existingSecret | default (printf "%s-clickhouse" (include "qtap.fullname" .)) -}}
{{- end -}}

{{- define "qtap.sendsToPulse" -}}
{{- if and .Values.pulse.enabled (or .Values.pulse.agentToken .Values.pulse.existingTokenSecret) -}}true{{- end -}}
{{- end -}}

{{/* The agent's qtap.yaml when values do not give one: stores from `stores`, metadata to Kafka or Pulse. */}}
{{- define "qtap.agentConfig" -}}
version: 2
services:
  event_stores:
{{- if .Values.stores.kafka.enabled }}
    - type: kafka
      id: events
      brokers: {{ toJson .Values.stores.kafka.brokers }}
      topic: {{ .Values.stores.kafka.topic | quote }}
{{- else if include "qtap.sendsToPulse" . }}
    - type: pulse
      id: pulse
      url: {{ printf "http://%s-pulse:%d" (include "qtap.fullname" .) (int .Values.pulse.port) | quote }}
      token: {type: env, value: QTAP_PULSE_TOKEN}
{{- else }}
    - type: stdout
{{- end }}
  object_stores:
{{- if .Values.stores.s3.enabled }}
    - type: s3
      id: payloads
{{- with .Values.stores.s3.endpoint }}
      endpoint: {{ . | quote }}
{{- end }}
      bucket: {{ .Values.stores.s3.bucket | quote }}
      region: {{ .Values.stores.s3.region | quote }}
{{- with .Values.stores.s3.retention }}
      retention: {{ . | quote }}
{{- end }}
      access_key: {type: env, value: QTAP_S3_ACCESS_KEY}
      secret_key: {type: env, value: QTAP_S3_SECRET_KEY}
{{- else }}
    - type: disabled
{{- end }}
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: summary
          format: json
{{- if include "qtap.sendsToPulse" . }}
      - type: report_usage
{{- end }}
tap:
  direction: all
  http:
    stack: default
{{- end -}}

{{- define "qtap.controlDatabaseSecret" -}}
{{- .Values.control.database.existingSecret | default (printf "%s-control-database" (include "qtap.fullname" .)) -}}
{{- end -}}

{{- define "qtap.controlOidcSecret" -}}
{{- .Values.control.oidc.existingSecret | default (printf "%s-control-oidc" (include "qtap.fullname" .)) -}}
{{- end -}}

{{/* The control plane keeps its state in PostgreSQL when given one, else in SQLite on its own volume. */}}
{{- define "qtap.controlUsesDatabase" -}}
{{- if or .Values.control.database.url .Values.control.database.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "qtap.controlOidcSecretGiven" -}}
{{- if or .Values.control.oidc.clientSecret .Values.control.oidc.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The control plane's settings file (docs/control.md, "Settings"). The database URL and the OIDC client
secret are not in it: they reach the pod as environment variables from Secrets. */}}
{{- define "qtap.controlSettings" -}}
{{- $c := .Values.control -}}
{{- $s := dict "data_dir" "/var/lib/qtap-control" "listen" (printf "0.0.0.0:%d" (int $c.port)) "cookie_secure" $c.cookieSecure -}}
{{- with $c.pulseUrl }}{{- $_ := set $s "pulse_url" . -}}{{- end }}
{{- if $c.oidc.issuer -}}
{{- $_ := set $s "oidc" (dict "issuer" $c.oidc.issuer "client_id" $c.oidc.clientId "redirect_url" $c.oidc.redirectUrl "groups_claim" $c.oidc.groupsClaim "username_claim" $c.oidc.usernameClaim "group_roles" $c.oidc.groupRoles "client_secret_env" "QTAP_CONTROL_OIDC_CLIENT_SECRET") -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $s (deepCopy $c.settings)) -}}
{{- end -}}

{{- define "qtap.agentRegistrationSecret" -}}
{{- .Values.agent.control.existingSecret | default (printf "%s-registration" (include "qtap.fullname" .)) -}}
{{- end -}}

{{/* The control plane agents join: agent.control.url, else the chart's own control Service. */}}
{{- define "qtap.agentControlUrl" -}}
{{- if .Values.agent.control.url -}}
{{- .Values.agent.control.url -}}
{{- else if .Values.control.enabled -}}
{{- printf "http://%s-control:%d" (include "qtap.fullname" .) (int .Values.control.port) -}}
{{- else -}}
{{- fail "agent.control.enabled needs agent.control.url or control.enabled" -}}
{{- end -}}
{{- end -}}
