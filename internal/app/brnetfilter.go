package app

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"

	"github.com/weft-net/weft/internal/config"
)

// checkBridgeNetfilter checks that br_netfilter is loaded for network n;
// procSys is /proc/sys (os.DirFS("/proc/sys"), a fstest.MapFS in tests).
//
// Bridged pod traffic (pod to pod on one node, through the CNI bridge) is
// seen by iptables only when the module is loaded; without it kube-proxy's
// service NAT breaks for such traffic. kubeadm stopped checking for the
// module in Kubernetes 1.30, so upstream flanneld (in either subnet
// manager mode) refuses to start when the module's sysctl for an enabled
// family is missing, unless the network config asks for nftables. So do
// we, with an error naming the fix. We also warn when a sysctl is present
// but 0, which upstream does not look at. Other read errors are ignored,
// as upstream ignores them.
func checkBridgeNetfilter(log *slog.Logger, procSys fs.FS, n *config.Network) error {
	if n.EnableNFTables != nil && *n.EnableNFTables {
		return nil
	}
	names := bridgeSysctls(n)
	for _, name := range names {
		path := strings.ReplaceAll(name, ".", "/")
		b, err := fs.ReadFile(procSys, path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("br_netfilter is not loaded (/proc/sys/%s is missing): run 'modprobe br_netfilter', "+
				"list it in /etc/modules-load.d/ to keep it across reboots, and set sysctl %s=1",
				path, strings.Join(names, "=1 "))
		case err != nil:
			log.Debug("cannot read br_netfilter sysctl", "sysctl", name, "err", err)
		case strings.TrimSpace(string(b)) == "0":
			log.Warn("bridged pod traffic bypasses iptables; set the sysctl to 1", "sysctl", name, "value", 0)
		}
	}
	return nil
}

// bridgeSysctls names br_netfilter's sysctls for the families n enables.
func bridgeSysctls(n *config.Network) []string {
	var names []string
	if n.EnableIPv4 {
		names = append(names, "net.bridge.bridge-nf-call-iptables")
	}
	if n.EnableIPv6 {
		names = append(names, "net.bridge.bridge-nf-call-ip6tables")
	}
	return names
}
