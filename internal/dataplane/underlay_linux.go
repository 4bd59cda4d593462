package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkByName returns the current attributes of the VXLAN or WireGuard
// device name (addresses as withAddrs shows them); ok is false if there is
// no such device or it is of another kind. The daemon reuses an existing
// VXLAN device's MAC so peers' FDB entries stay valid across restarts.
func (n *Netlink) LinkByName(name string) (l Link, ok bool, err error) {
	rec, found, known, err := n.readLink(name)
	if err != nil || !found || !known {
		return Link{}, false, err
	}
	return withAddrs(rec.Link, rec.addrs), true, nil
}

// Interfaces lists the namespace's devices with their global-scope
// addresses, ordered by ifindex.
func (n *Netlink) Interfaces() ([]Interface, error) {
	links, err := dump("links", n.h.LinkList)
	if err != nil {
		return nil, err
	}
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return n.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	byIndex := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok && a.Scope == unix.RT_SCOPE_UNIVERSE {
			byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], p)
		}
	}
	out := make([]Interface, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		out = append(out, Interface{
			Index: a.Index,
			Name:  a.Name,
			MTU:   a.MTU,
			Up:    a.Flags&net.FlagUp != 0,
			Addrs: byIndex[a.Index],
		})
	}
	slices.SortFunc(out, func(a, b Interface) int { return a.Index - b.Index })
	return out, nil
}

// RouteTo asks the kernel (`ip route get`) which device and source address
// it would use to reach dst.
func (n *Netlink) RouteTo(dst netip.Addr) (ifIndex int, src netip.Addr, err error) {
	if !dst.IsValid() {
		return 0, netip.Addr{}, fmt.Errorf("route get: invalid destination")
	}
	routes, err := n.h.RouteGet(dst.AsSlice())
	if err != nil {
		return 0, netip.Addr{}, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return 0, netip.Addr{}, fmt.Errorf("route get %s: no route", dst)
	}
	src, _ = addrFromIP(routes[0].Src)
	return routes[0].LinkIndex, src, nil
}

// DefaultRouteInterfaces returns the ifindex of the device carrying the
// main table's default route for IPv4 and for IPv6 (the lowest metric
// wins; for a multipath route its first hop); 0 where there is none.
func (n *Netlink) DefaultRouteInterfaces() (v4idx, v6idx int, err error) {
	pick := func(family int) (int, error) {
		routes, err := dump("routes", func() ([]netlink.Route, error) { return n.h.RouteList(nil, family) })
		if err != nil {
			return 0, err
		}
		best, bestPrio := 0, 0
		for _, r := range routes {
			dst, ok := routeDst(r)
			if !ok || dst.Bits() != 0 || r.Type != unix.RTN_UNICAST {
				continue
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if idx != 0 && (best == 0 || r.Priority < bestPrio) {
				best, bestPrio = idx, r.Priority
			}
		}
		return best, nil
	}
	if v4idx, err = pick(netlink.FAMILY_V4); err != nil {
		return 0, 0, err
	}
	if v6idx, err = pick(netlink.FAMILY_V6); err != nil {
		return 0, 0, err
	}
	return v4idx, v6idx, nil
}
