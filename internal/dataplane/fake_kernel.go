package dataplane

import (
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"syscall"
)

// The Fake's simulated kernel: the kernel seam (kernel.go) over in-memory
// tables, with kernel semantics only. A device has an ifindex that is
// never reused, so a write naming a device that was deleted (and perhaps
// made again) fails with ENODEV as it would in the kernel; objects live
// on a device and vanish with it; a new device address flushes the
// device's neighbours; a read shows what Netlink's read would.

// Route protocols the simulated kernel distinguishes, as rtm_protocol
// values.
const (
	fakeProtoKernel = 2 // RTPROT_KERNEL: derived from an address
	fakeProtoBoot   = 3 // RTPROT_BOOT: `ip route add` without proto
)

// fakeTables are the simulated kernel's objects. Links are ours (VXLAN,
// WireGuard, ipip, udp devices); other devices are in fakeKernel.other.
type fakeTables struct {
	links    map[string]instLink
	routes   map[RouteKey]instRoute
	neighs   map[NeighKey]Neigh
	fdb      map[FDBKey]FDB
	wgPeers  map[WGPeerKey]fakeWGPeer
	udpPeers map[UDPPeerKey]UDPPeer
}

func newFakeTables() fakeTables {
	return fakeTables{
		links:    map[string]instLink{},
		routes:   map[RouteKey]instRoute{},
		neighs:   map[NeighKey]Neigh{},
		fdb:      map[FDBKey]FDB{},
		wgPeers:  map[WGPeerKey]fakeWGPeer{},
		udpPeers: map[UDPPeerKey]UDPPeer{},
	}
}

// dropDev removes what is on device dev, as the kernel does when the
// device goes.
func (t fakeTables) dropDev(dev string) {
	maps.DeleteFunc(t.routes, func(_ RouteKey, r instRoute) bool { return r.Dev == dev })
	maps.DeleteFunc(t.neighs, func(_ NeighKey, n Neigh) bool { return n.Dev == dev })
	maps.DeleteFunc(t.fdb, func(f FDBKey, _ FDB) bool { return f.Dev == dev })
	maps.DeleteFunc(t.wgPeers, func(k WGPeerKey, _ fakeWGPeer) bool { return k.Dev == dev })
	maps.DeleteFunc(t.udpPeers, func(k UDPPeerKey, _ UDPPeer) bool { return k.Dev == dev })
}

func (t fakeTables) state() *State {
	s := NewState()
	for name, l := range t.links {
		s.Links[name] = withAddrs(l.Link, l.addrs)
	}
	for k, r := range t.routes {
		s.Routes[k] = r.Route
	}
	maps.Copy(s.Neighs, t.neighs)
	maps.Copy(s.FDB, t.fdb)
	for k, p := range t.wgPeers {
		s.WGPeers[k] = p.WGPeer
	}
	maps.Copy(s.UDPPeers, t.udpPeers)
	return s
}

var _ kernel = (*fakeKernel)(nil)

// errNoDevice is what a write naming a device that does not exist (by
// name) fails with.
func errNoDevice(dev string) error { return fmt.Errorf("device %s: %w", dev, ErrNoDevice) }

// errGoneIndex is what a write to an ifindex no device has fails with.
func errGoneIndex(i int) error { return fmt.Errorf("ifindex %d: %w", i, syscall.ENODEV) }

// index returns device name's ifindex (0: none). Called under mu.
func (k *fakeKernel) index(name string) int {
	if l, ok := k.t.links[name]; ok {
		return l.index
	}
	return k.other[name]
}

// on reports whether dev is the device with ifindex i. Called under mu.
func (k *fakeKernel) on(dev string, i int) bool { return i != 0 && k.index(dev) == i }

func (k *fakeKernel) deleteLink(name string) {
	delete(k.t.links, name)
	k.t.dropDev(name)
}

func (k *fakeKernel) nexthops() bool   { return false } // plain routes only
func (k *fakeKernel) reap() []instLink { return nil }   // no device ends by itself
func (k *fakeKernel) settled()         {}
func (k *fakeKernel) fits(instLink) bool {
	return true // one implementation of each kind
}

func (k *fakeKernel) ifindex(dev string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.index(dev), nil
}

// read is the simulated kernel's dump, with Netlink.read's selection
// rules: our links among names, routes not derived by the kernel on them
// and routes carrying RouteProtocol anywhere, permanent neighbours, FDB
// entries and peers on them.
func (k *fakeKernel) read(names map[string]bool) (*instIndex, kernelRead, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	x := newIndex()
	kr := kernelRead{byName: maps.Clone(k.other)}
	for name, l := range k.t.links {
		kr.byName[name] = l.index
		if names[name] {
			l.addrs = slices.Clone(l.addrs)
			x.links[name] = l
		}
	}
	for key, r := range k.t.routes {
		_, onOurs := x.links[r.Dev]
		if r.proto == RouteProtocol || (onOurs && r.proto != fakeProtoKernel) {
			x.routes.set(key, r)
		}
	}
	for key, n := range k.t.neighs {
		if l, ok := x.links[n.Dev]; ok {
			x.neighs.set(key, instNeigh{n, l.index})
		}
	}
	for key, e := range k.t.fdb {
		if l, ok := x.links[e.Dev]; ok {
			x.fdb.set(key, instFDB{e, l.index})
		}
	}
	for key, p := range k.t.wgPeers {
		if l, ok := x.links[p.Dev]; ok && l.Kind == KindWireGuard {
			x.wgPeers[key] = instWGPeer{WGPeer: p.WGPeer}
		}
	}
	for key, p := range k.t.udpPeers {
		if l, ok := x.links[p.Dev]; ok && l.Kind == KindUDP {
			x.udpPeers[key] = p
		}
	}
	return x, kr, nil
}

// exec carries out object requests, each on its own; no outcome is ever
// lost.
func (k *fakeKernel) exec(reqs []request) ([]error, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	errs := make([]error, len(reqs))
	for i := range reqs {
		errs[i] = k.do(&reqs[i])
	}
	return errs, false
}

func (k *fakeKernel) do(req *request) error {
	switch req.op {
	case reqRouteReplace, reqRouteDel:
		r := req.route
		if !r.Blackhole && !k.on(r.Dev, r.ifindex) {
			return errGoneIndex(r.ifindex)
		}
		if req.op == reqRouteReplace {
			r.nhid = 0
			k.t.routes[r.Key()] = r
			return nil
		}
		// A deletion names the route exactly: metric, protocol, next hop.
		if cur, ok := k.t.routes[r.Key()]; !ok || cur.Route != r.Route || cur.prio != r.prio || cur.proto != r.proto {
			return fmt.Errorf("route %s: %w", r.Dst, syscall.ESRCH)
		}
		delete(k.t.routes, r.Key())
	case reqNeighReplace, reqNeighDel:
		n := req.neigh
		if !k.on(n.Dev, n.ifindex) {
			return errGoneIndex(n.ifindex)
		}
		if req.op == reqNeighReplace {
			k.t.neighs[n.Key()] = n.Neigh
		} else if !deleted(k.t.neighs, n.Key()) {
			return fmt.Errorf("neighbour %s: %w", n.IP, syscall.ENOENT)
		}
	case reqFDBAdd, reqFDBDel:
		f := req.fdb
		if !k.on(f.Dev, f.ifindex) {
			return errGoneIndex(f.ifindex)
		}
		if _, vx := k.t.links[f.Dev]; !vx {
			return fmt.Errorf("fdb on %s: %w", f.Dev, syscall.EOPNOTSUPP)
		}
		if req.op == reqFDBAdd {
			k.t.fdb[f.FDB] = f.FDB
		} else if !deleted(k.t.fdb, f.FDB) {
			return fmt.Errorf("fdb %s: %w", f.MAC, syscall.ENOENT)
		}
	default:
		return fmt.Errorf("nexthop objects: %w", syscall.EOPNOTSUPP)
	}
	return nil
}

func (k *fakeKernel) readLink(name string) (instLink, bool, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l, ok := k.t.links[name]; ok {
		l.addrs = slices.Clone(l.addrs)
		return l, true, true, nil
	}
	if i, ok := k.other[name]; ok {
		// A device of a kind we do not manage under our name.
		return instLink{Link: Link{Name: name}, index: i}, true, false, nil
	}
	return instLink{}, false, false, nil
}

func (k *fakeKernel) addLink(want Link) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lacks[want.Kind] {
		return fmt.Errorf("%w: %s", ErrKernelLacks, want.Kind)
	}
	if k.index(want.Name) != 0 {
		return fmt.Errorf("link %s: %w", want.Name, syscall.EEXIST)
	}
	k.next++
	k.t.links[want.Name] = newFakeLink(want, k.next)
	return nil
}

func (k *fakeKernel) removeLink(name string, l instLink) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.on(name, l.index) {
		return errGoneIndex(l.index)
	}
	k.deleteLink(name)
	delete(k.other, name)
	return nil
}

func (k *fakeKernel) setLink(l instLink, w linkWrite) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, ok := k.t.links[l.Name]
	if !ok || cur.index != l.index {
		return errGoneIndex(l.index)
	}
	switch w.op {
	case linkMTU:
		cur.MTU = w.mtu
	case linkMAC:
		// A new device address flushes the device's neighbour entries,
		// permanent ones included.
		cur.MAC = w.mac
		maps.DeleteFunc(k.t.neighs, func(_ NeighKey, n Neigh) bool { return n.Dev == l.Name })
	case linkAddrAdd:
		if slices.Contains(cur.addrs, w.addr) {
			return syscall.EEXIST
		}
		cur.addrs = append(slices.Clone(cur.addrs), w.addr)
	case linkAddrDel:
		if !slices.Contains(cur.addrs, w.addr) {
			return syscall.EADDRNOTAVAIL
		}
		cur.addrs = slices.DeleteFunc(slices.Clone(cur.addrs), func(p netip.Prefix) bool { return p == w.addr })
	case linkUp:
		cur.up = true
	case linkWG:
		if cur.Kind != KindWireGuard {
			return fmt.Errorf("%s is not a WireGuard device: %w", l.Name, syscall.EOPNOTSUPP)
		}
		if w.port != 0 {
			cur.Port = w.port
		}
		if w.key != (WGKey{}) {
			cur.PrivateKey = w.key
		}
	case linkTxChecksum:
		cur.TxChecksum = w.csum
	}
	k.t.links[l.Name] = cur
	return nil
}

func (k *fakeKernel) txChecksum(name string) (Offload, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.t.links[name]
	if !ok {
		return OffloadAsIs, errNoDevice(name)
	}
	return l.TxChecksum, nil
}

// errNoPeerDevice is what a peer write to a device that is gone fails
// with: ErrNoDevice, and fs.ErrNotExist as wgctrl reports it.
func errNoPeerDevice(dev string) error {
	return fmt.Errorf("device %s: %w (%w)", dev, ErrNoDevice, fs.ErrNotExist)
}
