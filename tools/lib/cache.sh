# cache.sh: sourced by tools/*/build.sh, which build a tool the tests run
# from the Go module proxy and cache it OUTSIDE the clone, keyed by version.
#
#   tool_cache NAME MODULE [CHECK]
#
# Reads MODULE's version from the go.mod in $here (the calling script's
# directory) into $version, sets $cache (${WEFT_CACHE_DIR:-${XDG_CACHE_HOME:-
# $HOME/.cache}/weft}/NAME-VERSION) and $out ($cache/NAME), and takes the
# cache's lock for the rest of the script: concurrent callers serialise, and
# the second reuses the first one's result. If $out is already built (and
# the command CHECK, given its path, agrees), prints it and exits 0.
tool_cache() {
	local name=$1 module=$2 check=${3:-}
	version=$(awk -v m="$module" '$1 == m { print $2; exit }' "$here/go.mod")
	[ -n "$version" ] || { echo "build.sh: no $module requirement in $here/go.mod" >&2; exit 1; }
	cache="${WEFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weft}/$name-$version"
	out="$cache/$name"
	mkdir -p "$cache"
	exec 9>"$cache/.lock"
	flock 9
	if [ -x "$out" ] && { [ -z "$check" ] || "$check" "$out"; }; then
		echo "$out"
		exit 0
	fi
}
