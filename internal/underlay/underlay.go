// Package underlay chooses the interface that carries traffic between
// hosts, as flanneld's --iface, --iface-regex, --iface-can-reach and
// --public-ip(v6) describe, in upstream's order (see Select); with none of
// the first three, the default route's interface.
package underlay

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

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

// Select returns the chosen underlay, in upstream flanneld's order: each
// --iface candidate, then each --iface-regex, then --iface-can-reach; the
// first that names an interface with an address of every family in use
// wins. When any of these is given and none matches, selection fails (no
// fallback to the default route), with every miss in the error. With none
// given, the interface holding --public-ip (else --public-ipv6) is used,
// that address being the encapsulation source, as upstream; failing that,
// the default route's interface. (Upstream exits when no interface holds
// the public address; we keep the default route, which behind NAT is the
// interface that reaches it.)
func Select(sys System, o Options) (backend.Underlay, error) {
	ifs, err := sys.Interfaces()
	if err != nil {
		return backend.Underlay{}, fmt.Errorf("list interfaces: %w", err)
	}
	sort.Slice(ifs, func(i, j int) bool { return ifs[i].Index < ifs[j].Index })
	if len(o.Ifaces) == 0 && len(o.Regexes) == 0 && !o.CanReach.IsValid() {
		return byDefault(sys, ifs, o)
	}
	var misses []string
	// try reports whether candidate ifc (nil: nothing matched) is usable.
	try := func(flag, spec string, ifc *dataplane.Interface, local []netip.Addr) (backend.Underlay, bool) {
		if ifc == nil {
			misses = append(misses, fmt.Sprintf("%s %s: no match", flag, spec))
			return backend.Underlay{}, false
		}
		u, err := describe(*ifc, local, o)
		if err != nil {
			misses = append(misses, fmt.Sprintf("%s %s: %v", flag, spec, err))
			return backend.Underlay{}, false
		}
		return u, true
	}
	for _, spec := range o.Ifaces {
		ifc, local := findSpec(ifs, spec)
		if u, ok := try("--iface", spec, ifc, local); ok {
			return u, nil
		}
	}
	for _, expr := range o.Regexes {
		re, err := regexp.Compile(expr)
		if err != nil {
			return backend.Underlay{}, fmt.Errorf("--iface-regex %q: %w", expr, err)
		}
		ifc, local := findRegex(ifs, re, o)
		if u, ok := try("--iface-regex", expr, ifc, local); ok {
			return u, nil
		}
	}
	if o.CanReach.IsValid() {
		idx, src, err := sys.RouteTo(o.CanReach)
		if err != nil {
			misses = append(misses, fmt.Sprintf("--iface-can-reach %s: %v", o.CanReach, err))
		} else if u, ok := try("--iface-can-reach", o.CanReach.String(), byIndex(ifs, idx), addrs(src)); ok {
			return u, nil
		}
	}
	return backend.Underlay{}, fmt.Errorf("no usable interface: %s", strings.Join(misses, "; "))
}

// byDefault selects without --iface, --iface-regex or --iface-can-reach:
// the interface holding the public address(es), else the default route's.
func byDefault(sys System, ifs []dataplane.Interface, o Options) (backend.Underlay, error) {
	var held4, held6 *dataplane.Interface
	if o.IPv4 && o.PublicIP.IsValid() {
		held4 = holder(ifs, o.PublicIP)
	}
	if o.IPv6 && o.PublicIPv6.IsValid() {
		held6 = holder(ifs, o.PublicIPv6)
	}
	switch {
	case held4 != nil && held6 != nil && held4.Index != held6.Index:
		return backend.Underlay{}, fmt.Errorf("--public-ip %s is on %s but --public-ipv6 %s is on %s: they must be on one interface (or choose it with --iface)",
			o.PublicIP, held4.Name, o.PublicIPv6, held6.Name)
	case held4 != nil:
		local := []netip.Addr{o.PublicIP}
		if held6 != nil {
			local = append(local, o.PublicIPv6)
		}
		return describe(*held4, local, o)
	case held6 != nil:
		return describe(*held6, []netip.Addr{o.PublicIPv6}, o)
	}
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
	chosen := byIndex(ifs, idx)
	if chosen == nil {
		return backend.Underlay{}, fmt.Errorf("default route uses unknown interface %d", idx)
	}
	return describe(*chosen, nil, o)
}

// holder returns the interface that has address a.
func holder(ifs []dataplane.Interface, a netip.Addr) *dataplane.Interface {
	for i := range ifs {
		for _, p := range ifs[i].Addrs {
			if p.Addr() == a {
				return &ifs[i]
			}
		}
	}
	return nil
}

func addrs(a netip.Addr) []netip.Addr {
	if a.IsValid() {
		return []netip.Addr{a}
	}
	return nil
}

// describe builds the underlay over ifc; local are addresses named by the
// selection (an --iface address, a regex match, the public address) that
// take the place of the interface's first address of their family.
func describe(ifc dataplane.Interface, local []netip.Addr, o Options) (backend.Underlay, error) {
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
	for _, a := range local {
		if a.Is4() {
			u.LocalIP = a
		} else {
			u.LocalIPv6 = a
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

func findSpec(ifs []dataplane.Interface, spec string) (*dataplane.Interface, []netip.Addr) {
	if ip, err := netip.ParseAddr(spec); err == nil {
		return holder(ifs, ip), []netip.Addr{ip}
	}
	for i := range ifs {
		if ifs[i].Name == spec {
			return &ifs[i], nil
		}
	}
	return nil, nil
}

// findRegex matches re as upstream does: first against the addresses of
// every interface (of the families in use; with both, an interface needs a
// match in each), then against the names.
func findRegex(ifs []dataplane.Interface, re *regexp.Regexp, o Options) (*dataplane.Interface, []netip.Addr) {
	match := func(ifc dataplane.Interface, v6 bool) (netip.Addr, bool) {
		for _, p := range ifc.Addrs {
			if a := p.Addr(); a.Is6() == v6 && re.MatchString(a.String()) {
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	for i := range ifs {
		var local []netip.Addr
		ok := true
		for _, v6 := range []bool{false, true} {
			if v6 && !o.IPv6 || !v6 && !o.IPv4 {
				continue
			}
			a, found := match(ifs[i], v6)
			ok = ok && found
			local = append(local, a)
		}
		if ok && len(local) > 0 {
			return &ifs[i], local
		}
	}
	for i := range ifs {
		if re.MatchString(ifs[i].Name) {
			return &ifs[i], nil
		}
	}
	return nil, nil
}

func byIndex(ifs []dataplane.Interface, idx int) *dataplane.Interface {
	for i := range ifs {
		if ifs[i].Index == idx {
			return &ifs[i]
		}
	}
	return nil
}
