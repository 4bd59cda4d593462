package doctor

import (
	"net/netip"
)

// Host is the machine as the checks see it: reads, and the few writes
// --fix makes. The real one (NewHost) reads the calling process's network
// namespace; tests use a fake.
type Host interface {
	// Sysctl reads /proc/sys/<name> ("net/ipv4/ip_forward"); an error
	// wrapping fs.ErrNotExist when it does not exist.
	Sysctl(name string) (string, error)
	SetSysctl(name, value string) error
	Links() ([]Link, error)
	// Routes returns the IPv4 and IPv6 routes of every table but local.
	Routes() ([]Route, error)
	// TxChecksum reads a device's tx-checksum-ip-generic.
	TxChecksum(dev string) (bool, error)
	SetTxChecksum(dev string, on bool) error
	KernelRelease() string
	// Processes lists the processes in this network namespace.
	Processes() ([]Process, error)
	ReadFile(path string) ([]byte, error)
	// Forward reads the filter table's FORWARD chain (iptables).
	Forward() (Chain, error)
}

// Link is a network device.
type Link struct {
	Name string
	// Kind is netlink's kind ("vxlan", "ipip", "gre", "wireguard",
	// "bridge", "veth", …; "" for a physical device).
	Kind  string
	Index int
	MTU   int
	// Parent is the index of the device a tunnel sends through (vxlan's
	// dev, ipip's link), 0 if none.
	Parent int
}

// Route is a route.
type Route struct {
	Dst      netip.Prefix
	Dev      string
	Gw       netip.Addr
	Protocol int
	Table    int
	Type     string // "unicast", "blackhole", …
}

// Process is a running program.
type Process struct {
	PID     int
	Name    string // comm
	Cmdline []string
}

// Chain is an iptables chain: its policy and rules (`iptables -S`).
type Chain struct {
	Policy string
	Rules  []string
}
