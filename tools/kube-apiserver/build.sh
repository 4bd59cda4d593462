#!/usr/bin/env bash
# build.sh: builds the kube-apiserver that the Kubernetes-mode tests run
# against, from the Go module proxy, and prints the binary's path.
#
# The version is the k8s.io/kubernetes requirement of this tools module's
# go.mod (a separate module so the product's go.mod stays free of kubernetes).
# A cold build takes ~12 minutes and ~2 GB on 2 cores, so the binary is cached
# OUTSIDE the clone, keyed by version, and reused: a CI machine pays the build
# once. Concurrent callers (two test packages, CI and a developer) serialise on
# a lock and the second one reuses the first one's result.
#
# Env: WEFT_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/weft).
# Output: the binary's absolute path on stdout; progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/cache.sh"
tool_cache kube-apiserver k8s.io/kubernetes

# Stamp the version the way kubernetes' release builds do; an unstamped build
# reports v0.0.0-master, which clients' discovery checks dislike. Keep these
# flags fixed: changing -trimpath invalidates the whole build cache.
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

echo "building kube-apiserver $version into $out (a cold build takes ~12 minutes)" >&2
start=$(date +%s)
tmp="$cache/kube-apiserver.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
"$tmp" --version >&2
mv "$tmp" "$out"
echo "built kube-apiserver $version in $(($(date +%s) - start))s" >&2
echo "$out"
