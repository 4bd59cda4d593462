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

// inNS returns the `ip` arguments that run name with args in h's network
// namespace, with h's own WireGuard socket directory: `ip netns exec`
// gives each command a private mount namespace (mounts made in it do not
// reach the host), in which h's directory is bind-mounted over
// wgSocketDir before the command starts.
func (h *Host) inNS(name string, args ...string) []string {
	script := `mkdir -p ` + wgSocketDir + ` && mount --bind "$0" ` + wgSocketDir + ` && exec "$@"`
	return append([]string{"netns", "exec", h.NS, "sh", "-c", script, h.wireguardDir(), name}, args...)
}
