package dataplane

import (
	"errors"
	"iter"
	"net/netip"
	"syscall"
)

// The index is what the engine believes it has installed, with the kernel
// detail needed to recognise (and delete) exactly that object again: the
// ifindex it lives on, and for routes the protocol and metric. Keys are the
// State keys, so the diff against a desired State is map lookups.
type (
	instLink struct {
		Link  // as the kernel reports it; Addr is unused (see addrs)
		index int
		up    bool
		addrs []netip.Prefix // global-scope addresses on the device
		user  bool           // a userspace WireGuard device (its TUN)
	}
	instRoute struct {
		Route
		ifindex int
		proto   int
		prio    int
		nhid    uint32 // the nexthop object it uses; 0: a plain route
	}
	instNeigh struct {
		Neigh
		ifindex int
	}
	instFDB struct {
		FDB
		ifindex int
	}
	instIndex struct {
		links   map[string]instLink
		routes  *packed[RouteKey, instRoute, routeKey16, packedRoute]
		neighs  *packed[NeighKey, instNeigh, neighKey16, packedNeigh]
		fdb     *packed[FDBKey, instFDB, fdbKey16, int32]
		wgPeers plain[WGPeerKey, instWGPeer]
		// udpPeers are the tables of our udp devices (udp_linux.go).
		udpPeers plain[UDPPeerKey, UDPPeer]
	}
)

func newIndex() *instIndex {
	devs := &devIDs{}
	return &instIndex{
		links:    map[string]instLink{},
		routes:   newRouteTable(devs),
		neighs:   newNeighTable(devs),
		fdb:      newFDBTable(devs),
		wgPeers:  plain[WGPeerKey, instWGPeer]{},
		udpPeers: plain[UDPPeerKey, UDPPeer]{},
	}
}

// dropDev forgets every object on dev: the kernel removes routes,
// neighbours and FDB entries together with their device.
func (x *instIndex) dropDev(dev string) {
	deleteFunc(x.routes, func(_ RouteKey, r instRoute) bool { return r.Dev == dev })
	deleteFunc(x.neighs, func(_ NeighKey, n instNeigh) bool { return n.Dev == dev })
	deleteFunc(x.fdb, func(_ FDBKey, f instFDB) bool { return f.Dev == dev })
	for k := range x.wgPeers {
		if k.Dev == dev {
			delete(x.wgPeers, k)
		}
	}
	for k := range x.udpPeers {
		if k.Dev == dev {
			delete(x.udpPeers, k)
		}
	}
}

// devName returns the name of our link with the given ifindex, or "".
func (x *instIndex) devName(ifindex int) string {
	for name, l := range x.links {
		if l.index == ifindex {
			return name
		}
	}
	return ""
}

func (x *instIndex) state() *State {
	s := NewState()
	for name, l := range x.links {
		s.Links[name] = withAddrs(l.Link, l.addrs)
	}
	for k, r := range x.routes.all() {
		s.Routes[k] = r.Route
	}
	for k, n := range x.neighs.all() {
		s.Neighs[k] = n.Neigh
	}
	for k, f := range x.fdb.all() {
		s.FDB[k] = f.FDB
	}
	for k, p := range x.wgPeers {
		s.WGPeers[k] = p.WGPeer
	}
	for k, p := range x.udpPeers {
		s.UDPPeers[k] = p
	}
	return s
}

// defaultPriority is the metric the kernel gives a route added without
// one: 0 for IPv4, IP6_RT_PRIO_USER (1024) for IPv6. Recording it lets the
// index match what a dump reports.
func defaultPriority(dst netip.Prefix) int {
	if dst.Addr().Is4() {
		return 0
	}
	return 1024
}

// routePriority is the metric Reconcile installs r with.
func routePriority(r Route) int {
	if r.Blackhole {
		return metricInt(BlackholeMetric)
	}
	return defaultPriority(r.Dst)
}

// metricInt converts a metric to the library's int. The kernel's is a
// u32; on 32-bit platforms a large one wraps negative, the same way the
// library converts what it reads back, so index and dump still agree.
func metricInt(m uint32) int { return int(m) }

// instWGPeer is a peer as read back or written, normalised (normWGPeer).
// more is set when the device holds allowed IPs a WGPeer cannot express
// (more than two, or an unparseable one): such a peer never equals a
// declared one, and the next write replaces its allowed IPs.
type instWGPeer struct {
	WGPeer
	more bool
}

// is reports whether the device's peer h is the declared peer p.
func (h instWGPeer) is(p WGPeer) bool { return !h.more && h.WGPeer == normWGPeer(p) }

// lookup reads one index entry. The add phase checks the index before
// resolving the device, so an unchanged object costs no kernel round trip.
func lookup[K comparable, V any](e *engine, m func(*instIndex) map[K]V, k K) (V, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := m(e.idx)[k]
	return v, ok
}

// restoreEntry undoes an optimistic index update after a failed write,
// unless the entry changed meanwhile.
func restoreEntry[K comparable, V comparable](m table[K, V], k K, want, old V, had bool) {
	if cur, ok := m.get(k); !ok || cur != want {
		return
	}
	if had {
		m.set(k, old)
	} else {
		m.del(k)
	}
}

// withIndex runs f on the index under its lock.
func (e *engine) withIndex(f func(*instIndex)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(e.idx)
}

// forgetLink drops a link and everything on it from the index.
func (e *engine) forgetLink(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.idx.links, name)
	e.idx.dropDev(name)
}

// alreadyGone reports a deletion that failed because the object (ESRCH
// for routes, ENOENT for neighbours) or its device (ENODEV) no longer
// exists: the state we wanted is reached.
func alreadyGone(err error) bool {
	return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV)
}

// entry is one index entry taken out of it.
type entry[K comparable, V any] struct {
	k K
	v V
}

// stale yields the entries of m that desired lacks and that are not on a
// device about to be deleted, each taken out of the index before it is
// yielded. With touched non-nil only those keys are considered (a delta
// pass), so the cost follows the change rather than the index. The index
// lock is held while looking and released around each yield, where the
// caller queues the deletion (and flushes a chunk's worth), so a mass
// leave never holds its stale entries in a list: at 20,000 peers that was
// ~3 MiB at the heap's peak.
func stale[K comparable, V any, D any](e *engine, m func(*instIndex) table[K, V], desired Table[K, D], dev func(V) string, gone map[string]bool, touched map[K]struct{}) iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		e.mu.Lock()
		defer e.mu.Unlock()
		idx := m(e.idx) // replaced only by a full read, under pass
		take := func(k K, v V) bool {
			if _, want := desired.Get(k); want || gone[dev(v)] {
				return true
			}
			idx.del(k)
			e.mu.Unlock()
			defer e.mu.Lock()
			return yield(k, v)
		}
		if touched != nil {
			for k := range touched {
				if v, ok := idx.get(k); ok && !take(k, v) {
					return
				}
			}
			return
		}
		// Deleting (or a failed deletion putting back) an entry while
		// ranging over the map is allowed; all its accesses hold the lock.
		for k, v := range idx.all() {
			if !take(k, v) {
				return
			}
		}
	}
}

// takeStale takes the stale entries (see stale) all at once, for the
// kinds written per device (WireGuard and udp peers: few).
func takeStale[K comparable, V any, D any](e *engine, m func(*instIndex) table[K, V], desired Table[K, D], dev func(V) string, gone map[string]bool, touched map[K]struct{}) []entry[K, V] {
	var out []entry[K, V]
	for k, v := range stale(e, m, desired, dev, gone, touched) {
		out = append(out, entry[K, V]{k, v})
	}
	return out
}
