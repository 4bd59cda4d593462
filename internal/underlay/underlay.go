// Package underlay chooses the interface that carries traffic between
// hosts, as flanneld's --iface, --iface-regex, --iface-can-reach and
// --public-ip(v6) describe, falling back to the default route's interface.
package underlay

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/dataplane"
)

// System is what selection needs from the host (dataplane.Netlink has it).
type System interface {
	Interfaces() ([]dataplane.Interface, error)
	RouteTo(dst netip.Addr) (ifIndex int, src netip.Addr, err error)
	DefaultRouteInterfaces() (v4, v6 int, err error)
}

// Options are the selection flags.
type Options struct {
	Ifaces               []string // names or IPs, first match wins
	Regexes              []string // matched against names and addresses
	CanReach             netip.Addr
	PublicIP, PublicIPv6 netip.Addr
	IPv4, IPv6           bool // which families the network uses
}

// Select returns the chosen underlay.
func Select(sys System, o Options) (backend.Underlay, error) {
	ifs, err := sys.Interfaces()
	if err != nil {
		return backend.Underlay{}, fmt.Errorf("list interfaces: %w", err)
	}
	sort.Slice(ifs, func(i, j int) bool { return ifs[i].Index < ifs[j].Index })
	var (
		chosen *dataplane.Interface
		byIP   netip.Addr // the address named by --iface/--iface-regex, if any
	)
	switch {
	case len(o.Ifaces) > 0:
		for _, spec := range o.Ifaces {
			if chosen, byIP = findSpec(ifs, spec); chosen != nil {
				break
			}
		}
		if chosen == nil {
			return backend.Underlay{}, fmt.Errorf("--iface: none of %q exists (as an interface name or address)", o.Ifaces)
		}
	case len(o.Regexes) > 0:
		for _, expr := range o.Regexes {
			re, err := regexp.Compile(expr)
			if err != nil {
				return backend.Underlay{}, fmt.Errorf("--iface-regex: %q: %w", expr, err)
			}
			if chosen, byIP = findRegex(ifs, re); chosen != nil {
				break
			}
		}
		if chosen == nil {
			return backend.Underlay{}, fmt.Errorf("--iface-regex: no interface name or address matches %q", o.Regexes)
		}
	case o.CanReach.IsValid():
		idx, src, err := sys.RouteTo(o.CanReach)
		if err != nil {
			return backend.Underlay{}, fmt.Errorf("--iface-can-reach %s: %w", o.CanReach, err)
		}
		chosen, byIP = byIndex(ifs, idx), src
		if chosen == nil {
			return backend.Underlay{}, fmt.Errorf("--iface-can-reach %s: route uses unknown interface %d", o.CanReach, idx)
		}
	default:
		v4, v6, err := sys.DefaultRouteInterfaces()
		if err != nil {
			return backend.Underlay{}, fmt.Errorf("find default route interface: %w", err)
		}
		idx := v4
		if !o.IPv4 || idx == 0 {
			idx = v6
		}
		if idx == 0 {
			return backend.Underlay{}, errors.New("no default route: name the interface with --iface")
		}
		chosen = byIndex(ifs, idx)
		if chosen == nil {
			return backend.Underlay{}, fmt.Errorf("default route uses unknown interface %d", idx)
		}
	}
	return describe(*chosen, byIP, o)
}

func describe(ifc dataplane.Interface, byIP netip.Addr, o Options) (backend.Underlay, error) {
	u := backend.Underlay{Index: ifc.Index, Name: ifc.Name, MTU: ifc.MTU}
	for _, p := range ifc.Addrs {
		u.Prefixes = append(u.Prefixes, p.Masked())
		a := p.Addr()
		switch {
		case a.Is4() && !u.LocalIP.IsValid():
			u.LocalIP = a
		case a.Is6() && !a.IsLinkLocalUnicast() && !u.LocalIPv6.IsValid():
			u.LocalIPv6 = a
		}
	}
	if byIP.IsValid() {
		if byIP.Is4() {
			u.LocalIP = byIP
		} else {
			u.LocalIPv6 = byIP
		}
	}
	u.PublicIP, u.PublicIPv6 = u.LocalIP, u.LocalIPv6
	if o.PublicIP.IsValid() {
		u.PublicIP = o.PublicIP
	}
	if o.PublicIPv6.IsValid() {
		u.PublicIPv6 = o.PublicIPv6
	}
	if o.IPv4 && !u.PublicIP.IsValid() {
		return u, fmt.Errorf("interface %s has no IPv4 address (the network has IPv4 enabled)", ifc.Name)
	}
	if o.IPv6 && !u.PublicIPv6.IsValid() {
		return u, fmt.Errorf("interface %s has no global IPv6 address (the network has IPv6 enabled)", ifc.Name)
	}
	if u.MTU <= 0 {
		return u, fmt.Errorf("interface %s reports MTU %d", ifc.Name, u.MTU)
	}
	return u, nil
}

func findSpec(ifs []dataplane.Interface, spec string) (*dataplane.Interface, netip.Addr) {
	if ip, err := netip.ParseAddr(spec); err == nil {
		for i := range ifs {
			for _, p := range ifs[i].Addrs {
				if p.Addr() == ip {
					return &ifs[i], ip
				}
			}
		}
		return nil, netip.Addr{}
	}
	for i := range ifs {
		if ifs[i].Name == spec {
			return &ifs[i], netip.Addr{}
		}
	}
	return nil, netip.Addr{}
}

func findRegex(ifs []dataplane.Interface, re *regexp.Regexp) (*dataplane.Interface, netip.Addr) {
	for i := range ifs {
		for _, p := range ifs[i].Addrs {
			if re.MatchString(p.Addr().String()) {
				return &ifs[i], p.Addr()
			}
		}
		if re.MatchString(ifs[i].Name) {
			return &ifs[i], netip.Addr{}
		}
	}
	return nil, netip.Addr{}
}

func byIndex(ifs []dataplane.Interface, idx int) *dataplane.Interface {
	for i := range ifs {
		if ifs[i].Index == idx {
			return &ifs[i]
		}
	}
	return nil
}
