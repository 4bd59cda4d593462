// The upstream flanneld the interop and migration tests run beside ours:
// build.sh builds this requirement's version (not a dependency of weft).
module github.com/weft-net/weft/tools/upstream-flanneld

go 1.26

require (
	github.com/flannel-io/flannel v0.28.9
)
