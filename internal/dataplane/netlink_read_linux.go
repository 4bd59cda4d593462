package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxDumpAttempts bounds retries of a dump the kernel flagged as
// interrupted (NLM_F_DUMP_INTR: the table changed while it was being read,
// so the result may be inconsistent). Under constant churn we give up
// rather than spin.
const maxDumpAttempts = 10

func dump[T any](what string, f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range maxDumpAttempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return v, fmt.Errorf("dump %s: %w", what, err)
	}
	return v, nil
}

// read builds an index from the kernel: the VXLAN devices among names,
// and on them main-table routes not installed by the kernel itself,
// permanent neighbours and FDB entries; plus main-table routes carrying
// RouteProtocol on any device. strays are duplicates of an indexed route
// key (same destination, another metric) that a full pass deletes.
// byName maps every device name to its ifindex. It implements kernel.
func (n *Netlink) read(names map[string]bool) (x *instIndex, kr kernelRead, err error) {
	x, kr.strays, kr.byName, err = n.readObjects(names)
	if err != nil {
		return nil, kr, err
	}
	// Even when we install plain routes, routes of ours may name objects
	// (made by a run that used them): those must be told from others'.
	nhs, err := n.dumpNexthops()
	if err != nil {
		if n.useNH {
			return nil, kr, err
		}
		nhs = nil // no nexthop objects on this kernel: no route names one
	}
	// Our objects, and which of them a route of ours names (the dump says
	// exactly which: dumpRoutes). A route naming an object that is not ours
	// keeps no nhid, so that deleting it never frees that object.
	ours := map[uint32]bool{}
	kr.nhForeign = map[uint32]struct{}{}
	for _, nh := range nhs {
		if nh.proto != uint8(RouteProtocol) {
			kr.nhForeign[nh.id] = struct{}{}
			continue
		}
		ours[nh.id] = false
		kr.nhMax = max(kr.nhMax, nh.id)
	}
	claim := func(r *instRoute) {
		if _, mine := ours[r.nhid]; !mine {
			r.nhid = 0
			return
		}
		ours[r.nhid] = true
	}
	for k, r := range x.routes.all() {
		claim(&r)
		x.routes.set(k, r)
	}
	for i := range kr.strays {
		claim(&kr.strays[i])
	}
	for id, used := range ours {
		if !used {
			kr.nhStrays = append(kr.nhStrays, id)
		}
	}
	return x, kr, nil
}

// readObjects reads our links and the routes, neighbours and FDB entries
// that concern us.
func (n *Netlink) readObjects(names map[string]bool) (x *instIndex, strays []instRoute, byName map[string]int, err error) {
	links, err := dump("links", n.h.LinkList)
	if err != nil {
		return nil, nil, nil, err
	}
	x = newIndex()
	byName = make(map[string]int, len(links))
	byIndex := make(map[int]string, len(links))
	ours := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		byName[a.Name], byIndex[a.Index] = a.Index, a.Name
		if !names[a.Name] {
			continue
		}
		if nl, ok := n.ourLink(l); ok {
			x.links[a.Name] = nl
			ours[a.Index] = a.Name
		}
	}
	if len(ours) > 0 {
		addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return n.h.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, nil, nil, err
		}
		for _, a := range addrs {
			name, ok := ours[a.LinkIndex]
			if p, valid := prefixFromIPNet(a.IPNet); ok && valid && isGlobal(p) {
				l := x.links[name]
				l.addrs = append(l.addrs, p)
				x.links[name] = l
			}
		}
		if err := n.readWG(x); err != nil {
			return nil, nil, nil, err
		}
		n.readUDP(x)
	}

	routes, err := n.dumpRoutes()
	if err != nil {
		return nil, nil, nil, err
	}
	for _, kr := range routes {
		r := kr.Route
		rec, ok := routeFromKernel(r, byIndex)
		if !ok {
			continue
		}
		rec.nhid = kr.nhid
		_, onOurs := ours[r.LinkIndex]
		// Routes the kernel derives from addresses (proto kernel), and the
		// fe80::/64 it adds to every IPv6 device, are not ours to collect.
		if r.Protocol != RouteProtocol && (!onOurs || r.Protocol == unix.RTPROT_KERNEL || rec.Dst.Addr().IsLinkLocalUnicast()) {
			continue
		}
		k := rec.Key()
		if old, dup := x.routes.get(k); dup {
			if old.proto == RouteProtocol && old.prio == routePriority(old.Route) {
				strays = append(strays, rec)
				continue
			}
			strays = append(strays, old)
		}
		x.routes.set(k, rec)
	}
	if len(ours) == 0 {
		return x, strays, byName, nil
	}

	// Each family is one dump of the whole table: the kernel ignores the
	// ifindex in a neighbour dump request unless strict checking is on, so
	// per-device requests would read everything once per device.
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6, unix.AF_BRIDGE} {
		neighs, err := dump("neighbours", func() ([]netlink.Neigh, error) { return n.h.NeighList(0, fam) })
		if err != nil {
			return nil, nil, nil, err
		}
		for _, nb := range neighs {
			dev, ok := ours[nb.LinkIndex]
			ip, okIP := addrFromIP(nb.IP)
			mac, okMAC := macFrom(nb.HardwareAddr)
			if !ok || !okIP || !okMAC || nb.State&unix.NUD_PERMANENT == 0 {
				continue
			}
			if nb.Family == unix.AF_BRIDGE {
				f := FDB{Dev: dev, MAC: mac, Dst: ip}
				x.fdb.set(f, instFDB{f, nb.LinkIndex})
			} else {
				nn := Neigh{Dev: dev, IP: ip, MAC: mac}
				x.neighs.set(nn.Key(), instNeigh{nn, nb.LinkIndex})
			}
		}
	}
	return x, strays, byName, nil
}

// dumpedRoute is a route as a dump reports it, with the nexthop object it
// names (0: none).
type dumpedRoute struct {
	netlink.Route
	nhid uint32
}

// dumpRoutes reads every route of both families. It parses the dump
// itself (parseRoute) rather than through the library, which does not
// report the nexthop object a route names: matching our routes to our
// objects by gateway and device instead would pair two routes through one
// gateway with each other's objects half the time. Tables other than main
// are dropped by routeFromKernel.
func (n *Netlink) dumpRoutes() ([]dumpedRoute, error) {
	return rawDump(n, "routes", unix.RTM_GETROUTE, &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC}}, unix.RTM_NEWROUTE,
		func(m []byte) (dumpedRoute, bool) {
			r, nhid, ok := parseRoute(m)
			return dumpedRoute{r, nhid}, ok
		})
}

// rawDump dumps one kind of object (request typ with header hdr, answers
// of type resType) on a socket of its own in n's namespace, and parses
// each answer with parse (false: skip it). It is for what the library's
// dumps do not report (nexthop objects; the object a route names).
func rawDump[T any](n *Netlink, what string, typ int, hdr nl.NetlinkRequestData, resType uint16, parse func([]byte) (T, bool)) ([]T, error) {
	s, err := nl.GetNetlinkSocketAt(n.ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	defer s.Close()
	return dump(what, func() ([]T, error) {
		req := nl.NewNetlinkRequest(typ, unix.NLM_F_DUMP)
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
		req.AddData(hdr)
		msgs, err := req.Execute(unix.NETLINK_ROUTE, resType)
		out := make([]T, 0, len(msgs))
		for _, m := range msgs {
			if v, ok := parse(m); ok {
				out = append(out, v)
			}
		}
		return out, err
	})
}

// readLink reads one device by name. found is false when it does not
// exist; known is false when it exists but is not of a kind we manage
// (ourLink).
func (n *Netlink) readLink(name string) (l instLink, found, known bool, err error) {
	link, err := n.h.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return instLink{}, false, false, nil
	}
	if err != nil {
		return instLink{}, false, false, fmt.Errorf("look up link %s: %w", name, err)
	}
	l, ok := n.ourLink(link)
	if !ok {
		return instLink{Link: Link{Name: name}, index: link.Attrs().Index}, true, false, nil
	}
	if l.Kind == KindWireGuard {
		if _, err := n.readWGLink(&l); err != nil {
			return instLink{}, false, false, err
		}
	}
	addrs, err := dump("addresses of "+name, func() ([]netlink.Addr, error) { return n.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return instLink{}, false, false, err
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok && isGlobal(p) {
			l.addrs = append(l.addrs, p)
		}
	}
	return l, true, true, nil
}

func fromVxlan(v *netlink.Vxlan) instLink {
	a := v.Attrs()
	local, _ := addrFromIP(v.SrcAddr)
	mac, _ := macFrom(a.HardwareAddr)
	return instLink{
		Link: Link{
			Name:        a.Name,
			VNI:         uint32(v.VxlanId),
			Port:        normPort(uint16(v.Port)),
			GBP:         v.GBP,
			Learning:    v.Learning,
			MTU:         a.MTU,
			MAC:         mac,
			Local:       local,
			ParentIndex: v.VtepDevIndex,
		},
		index: a.Index,
		up:    a.Flags&net.FlagUp != 0,
	}
}

// routeFromKernel converts a dumped or notified route. ok is false for
// what a State cannot express and Reconcile never installs: types other
// than unicast and blackhole, multipath routes, other tables, devices we
// cannot name.
func routeFromKernel(r netlink.Route, byIndex map[int]string) (instRoute, bool) {
	if r.Type == unix.RTN_BLACKHOLE && len(r.MultiPath) == 0 && (r.Table == 0 || r.Table == unix.RT_TABLE_MAIN) {
		// No device: the kernel reports none for IPv4 and lo for IPv6
		// (where every reject-type route hangs off the loopback device),
		// neither of which identifies the route. The index keeps ifindex 0.
		dst, ok := routeDst(r)
		if !ok {
			return instRoute{}, false
		}
		return instRoute{Route: Route{Dst: dst, Blackhole: true}, proto: int(r.Protocol), prio: r.Priority}, true
	}
	if r.Type != unix.RTN_UNICAST || r.LinkIndex == 0 || len(r.MultiPath) > 0 ||
		(r.Table != 0 && r.Table != unix.RT_TABLE_MAIN) {
		return instRoute{}, false
	}
	dev, ok := byIndex[r.LinkIndex]
	if !ok {
		return instRoute{}, false
	}
	dst, ok := routeDst(r)
	if !ok {
		return instRoute{}, false
	}
	gw, _ := addrFromIP(r.Gw)
	return instRoute{
		Route:   Route{Dst: dst, Gw: gw, Dev: dev, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0},
		ifindex: r.LinkIndex,
		proto:   int(r.Protocol),
		prio:    r.Priority,
	}, true
}

// routeDst returns r's destination; the kernel omits RTA_DST for a
// default route, which the library reports as a nil Dst.
func routeDst(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst != nil {
		return prefixFromIPNet(r.Dst)
	}
	switch r.Family {
	case unix.AF_INET:
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
	case unix.AF_INET6:
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0), true
	}
	return netip.Prefix{}, false
}

func (r instRoute) netlink() *netlink.Route {
	if r.Blackhole {
		// `ip route add blackhole DST proto 87 metric M`: no device, scope
		// universe, as iproute2 sends it.
		return &netlink.Route{
			Dst:      ipNet(r.Dst),
			Table:    unix.RT_TABLE_MAIN,
			Protocol: netlink.RouteProtocol(r.proto),
			Priority: r.prio,
			Type:     unix.RTN_BLACKHOLE,
		}
	}
	nr := &netlink.Route{
		LinkIndex: r.ifindex,
		Dst:       ipNet(r.Dst),
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  netlink.RouteProtocol(r.proto),
		Priority:  r.prio,
		Type:      unix.RTN_UNICAST,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		// What `ip route add … dev X` does for a device route: the
		// destination is directly reachable on the link.
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func (nb instNeigh) netlink() *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    nb.ifindex,
		Family:       family(nb.IP),
		State:        unix.NUD_PERMANENT,
		IP:           nb.IP.AsSlice(),
		HardwareAddr: net.HardwareAddr(nb.MAC[:]),
	}
}

// netlink returns the FDB entry as `bridge fdb replace MAC dev D dst IP
// self permanent` sends it (fdbAddFlags): NTF_SELF addresses the VXLAN
// driver's own table rather than a bridge master.
func (f instFDB) netlink() *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.ifindex,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        unix.NUD_PERMANENT,
		IP:           f.Dst.AsSlice(),
		HardwareAddr: net.HardwareAddr(f.MAC[:]),
	}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func addrFromIP(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := addrFromIP(n.IP)
	ones, bits := n.Mask.Size()
	if !ok || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func macFrom(hw net.HardwareAddr) (MAC, bool) {
	if len(hw) != len(MAC{}) {
		return MAC{}, false
	}
	return MAC(hw), true
}
