package dataplane

import "net/netip"

// Interface describes a host network device, as underlay selection
// (--iface, --iface-regex, the default route's device) needs it.
type Interface struct {
	Index int
	Name  string
	MTU   int
	Up    bool
	// Addrs are the device's global-scope addresses.
	Addrs []netip.Prefix
}
