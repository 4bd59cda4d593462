// Command flannel is weft's CNI plugin, a drop-in for upstream's `flannel`
// plugin: install it as /opt/cni/bin/flannel next to the reference bridge,
// host-local, loopback and portmap plugins, and kube-flannel's
// cni-conf.json works unchanged. See package internal/cniplugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/internal/cniplugin"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	skel.PluginMainFuncs(cniplugin.Plugin{}.Funcs(), cniplugin.SupportedVersions(),
		"CNI plugin flannel (weft) "+version)
}
