#!/usr/bin/env bash
# build.sh: builds the helm CLI that the chart test (deploy/chart_test.go)
# lints and renders deploy/chart/kube-flannel with, from the Go module proxy,
# and prints the binary's path.
#
# The version is the helm.sh/helm/v3 requirement of this tools module's go.mod
# (a separate module so the product's go.mod stays free of helm's
# dependencies). A cold build takes several minutes on 2 cores, so the binary
# is cached OUTSIDE the clone, keyed by version, and reused. Concurrent callers
# serialise on a lock and the second one reuses the first one's result.
#
# Env: WEFT_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/weft).
# Output: the binary's absolute path on stdout; progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/cache.sh"
tool_cache helm helm.sh/helm/v3

# Stamp the version, and the Kubernetes version `helm template` and `helm
# lint` assume (.Capabilities.KubeVersion), the way helm's own Makefile does:
# from the client-go it is built with (v0.X.Y is Kubernetes 1.X). Unstamped,
# helm reports v3.x and assumes Kubernetes 1.20.
kminor=$(cd "$here" && go list -f '{{.Version}}' -m k8s.io/client-go | cut -d. -f2)
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
done

echo "building helm $version into $out (a cold build takes several minutes)" >&2
start=$(date +%s)
tmp="$cache/helm.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm)
"$tmp" version >&2
mv "$tmp" "$out"
echo "built helm $version in $(($(date +%s) - start))s" >&2
echo "$out"
