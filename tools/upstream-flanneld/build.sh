#!/usr/bin/env bash
# build.sh: builds upstream flanneld (github.com/flannel-io/flannel) from the
# Go module proxy, for the interop and migration tests, and prints the
# binary's path. It is never part of weft: the tests run it beside ours.
#
# The version is the requirement in this directory's go.mod (where
# internal/tooltest reads it too). The module's source comes from the proxy
# (go mod download), is unpacked into the cache, and is built the way
# upstream's Makefile builds dist/flanneld on amd64 (CGO_ENABLED=1: the udp
# backend's packet proxy is C), stamped with the version.
#
# One deviation: the blank import of pkg/backend/tencentvpc is removed from
# main.go before building, because the module proxy refuses its SDK
# (github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc answers 403
# for every version). The tencent-vpc backend is therefore absent from this
# binary; every other backend upstream ships is in it.
#
# Cached OUTSIDE the clone, keyed by version; concurrent callers serialise on
# a lock and the second reuses the first one's result. A cold build takes
# ~3-6 minutes on 2 cores and needs gcc and libc6-dev.
#
# Env: WEFT_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/weft).
# Output: the binary's absolute path on stdout; progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/flannel-io/flannel
. "$here/../lib/cache.sh"
# A cached binary counts only if it reports the version it was built as.
reports_version() { [ "$("$1" --version 2>&1)" = "$version" ]; }
tool_cache upstream-flanneld "$module" reports_version

echo "building upstream flanneld $version into $out (a cold build takes a few minutes)" >&2
start=$(date +%s)
dir=$(cd "$cache" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" { print $4 }')
[ -d "$dir" ] || { echo "build.sh: go mod download $module@$version gave no source directory" >&2; exit 1; }
src="$cache/src"
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
grep -q '_ "github.com/flannel-io/flannel/pkg/backend/tencentvpc"' "$src/main.go" ||
	{ echo "build.sh: main.go no longer imports tencentvpc; review the deviation above" >&2; exit 1; }
sed -i '\#_ "github.com/flannel-io/flannel/pkg/backend/tencentvpc"#d' "$src/main.go"

tmp="$cache/upstream-flanneld.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$src" && CGO_ENABLED=1 GOOS=linux GOARCH=amd64 GOFLAGS=-mod=mod go build -o "$tmp" \
	-ldflags "-s -w -X $module/pkg/version.Version=$version" .)
got=$("$tmp" --version 2>&1)
[ "$got" = "$version" ] || { echo "build.sh: built binary reports version $got, want $version" >&2; exit 1; }
mv "$tmp" "$out"
rm -rf "$src"
echo "built upstream flanneld $version in $(($(date +%s) - start))s" >&2
echo "$out"
