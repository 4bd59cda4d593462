package lab

import "path/filepath"

// Each host's WireGuard sockets and key live in its own directory.

// wgSocketDir is where WireGuard's tools (wgctrl, wg) look for the sockets
// of userspace devices. It is one directory per machine, but every lab
// host runs a device of the same name (flannel-wg), so each host's
// commands see a directory of their own there.
const wgSocketDir = "/run/wireguard"

// wireguardDir is h's stand-in for wgSocketDir.
func (h *Host) wireguardDir() string {
	return filepath.Join(filepath.Dir(h.SubnetFile), "wireguard")
}

// WireGuardSocket is the UAPI socket of h's userspace WireGuard device dev
// as seen from outside h's commands (they see it in /run/wireguard).
func (h *Host) WireGuardSocket(dev string) string {
	return filepath.Join(h.wireguardDir(), dev+".sock")
}

// flannelRunDir is flannel's directory on a machine (subnet.env, the
// WireGuard key, weft's status socket). Each lab host's commands see the
// directory of its subnet file there, as if it were a machine of its own:
// `weft status` without flags finds that host's flanneld.
const flannelRunDir = "/run/flannel"

// inNS returns the `ip` arguments that run name with args in h's network
// namespace, with h's own WireGuard socket directory and flannel
// directory: `ip netns exec` gives each command a private mount namespace
// (mounts made in it do not reach the host), in which h's directories are
// bind-mounted over wgSocketDir and flannelRunDir before the command
// starts.
func (h *Host) inNS(name string, args ...string) []string {
	script := `mkdir -p ` + wgSocketDir + ` ` + flannelRunDir +
		` && mount --bind "$0" ` + wgSocketDir + ` && mount --bind "$1" ` + flannelRunDir + ` && shift && exec "$@"`
	return append([]string{"netns", "exec", h.NS, "sh", "-c", script, h.wireguardDir(), filepath.Dir(h.SubnetFile), name}, args...)
}
