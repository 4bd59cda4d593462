#!/usr/bin/env bash
# deps.sh: installs the Debian packages that `make demo`, `make test` and
# .ci/run need, when a command they provide is missing. The one list of them.
#
#   deps.sh            install what is missing (needs root and apt-get)
#   deps.sh --check    only report what is missing; exit 1 if anything is
#
# command:package pairs. The demo runs ip, ping and iperf3 inside network
# namespaces; the tests add iptables (legacy and nft), nft, curl and wg (to
# check that WireGuard's own tool sees our devices, kernel or userspace); gcc and
# the libc headers build upstream flanneld (its udp backend is cgo) for the
# interop and migration tests; flock serialises the cached tool builds.
set -euo pipefail
pairs=(
	ip:iproute2
	bridge:iproute2
	ping:iputils-ping
	iperf3:iperf3
	iptables:iptables
	iptables-legacy:iptables
	nft:nftables
	curl:curl
	wg:wireguard-tools
	flock:util-linux
	gcc:gcc
	/usr/include/stdio.h:libc6-dev
)
need=()
for pair in "${pairs[@]}"; do
	cmd=${pair%%:*} pkg=${pair#*:}
	case $cmd in
	/*) [ -e "$cmd" ] && continue ;;
	*) command -v "$cmd" >/dev/null 2>&1 && continue ;;
	esac
	[[ " ${need[*]-} " == *" $pkg "* ]] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "${1-}" = --check ]; then
	echo "missing Debian packages: ${need[*]}" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "deps.sh: missing Debian packages: ${need[*]} (run as root on Debian/Ubuntu to install them, or install them yourself)" >&2
	exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
