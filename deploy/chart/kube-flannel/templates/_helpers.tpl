{{/*
The image of flanneld and of the install-cni container.
*/}}
{{- define "kube-flannel.image" -}}
{{ .Values.flannel.image.repository }}:{{ .Values.flannel.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The image the CNI plugin is copied from: flannel.flannel_cni.image, else
older charts' flannel.image_cni, else flanneld's image (weft's image carries
its plugin at /flannel).
*/}}
{{- define "kube-flannel.cniPluginImage" -}}
{{- $new := dig "flannel_cni" "image" "repository" "" .Values.flannel -}}
{{- $old := dig "image_cni" "repository" "" .Values.flannel -}}
{{- if $new -}}
{{ $new }}:{{ required "flannel.flannel_cni.image.tag is required with flannel.flannel_cni.image.repository" (dig "flannel_cni" "image" "tag" "" .Values.flannel) }}
{{- else if $old -}}
{{ $old }}:{{ required "flannel.image_cni.tag is required with flannel.image_cni.repository" (dig "image_cni" "tag" "" .Values.flannel) }}
{{- else -}}
{{ include "kube-flannel.image" . }}
{{- end }}
{{- end }}

{{/*
net-conf.json, in the order and layout of deploy/kube-flannel.yml. Each
value goes through toJson, so any values file yields valid JSON; an option
that is unset, zero or false is left out (the backend's default), as
upstream's chart does.
*/}}
{{- define "kube-flannel.netConf" -}}
{{- $f := .Values.flannel -}}
{{- $top := list -}}
{{- if .Values.podCidr -}}
{{- $top = append $top (printf "\"Network\": %s" (toJson .Values.podCidr)) -}}
{{- else -}}
{{- $top = append $top "\"EnableIPv4\": false" -}}
{{- end -}}
{{- if .Values.podCidrv6 -}}
{{- $top = append $top (printf "\"IPv6Network\": %s" (toJson .Values.podCidrv6)) -}}
{{- $top = append $top "\"EnableIPv6\": true" -}}
{{- end -}}
{{- $top = append $top (printf "\"EnableNFTables\": %s" (toJson (ternary true false (eq (toString $f.enableNFTables) "true")))) -}}
{{- $opts := list -}}
{{- if eq $f.backend "vxlan" -}}
{{- $opts = list (list "Port" $f.backendPort) (list "VNI" $f.vni) (list "GBP" $f.GBP) (list "DirectRouting" $f.directRouting) (list "MTU" $f.mtu) (list "MacPrefix" $f.macPrefix) -}}
{{- else if eq $f.backend "wireguard" -}}
{{- $opts = list (list "ListenPort" $f.backendPort) (list "ListenPortV6" $f.backendPortv6) (list "PSK" $f.psk) (list "MTU" $f.mtu) (list "Mode" $f.tunnelMode) (list "PersistentKeepaliveInterval" $f.keepaliveInterval) -}}
{{- else if eq $f.backend "udp" -}}
{{- $opts = list (list "Port" $f.backendPort) -}}
{{- end -}}
{{- $backend := list (printf "\"Type\": %s" (toJson (required "flannel.backend is required" $f.backend))) -}}
{{- range $opts -}}
{{- if index . 1 -}}
{{- $backend = append $backend (printf "%s: %s" (toJson (index . 0)) (toJson (index . 1))) -}}
{{- end -}}
{{- end -}}
{
  {{ join ",\n  " $top }},
  "Backend": {
    {{ join ",\n    " $backend }}
  }
}
{{- end }}
