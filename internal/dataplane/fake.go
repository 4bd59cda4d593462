package dataplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Reconciler over a simulated kernel, with the same
// semantics as Netlink: an index of what it installed, writes only for the
// difference, a kernel read only on a full Reconcile (so a non-full one
// does not see drift), objects vanishing with their device, and routes
// recognised as ours by device or protocol. Tests cause drift with the
// Delete* and Add* methods and inspect the kernel with Kernel or Dump.
type Fake struct {
	k   *fakeKernel
	idx fakeTables // guarded by k.mu
}

var _ Reconciler = (*Fake)(nil)

// Route protocols the Fake distinguishes, as rtm_protocol values.
const (
	fakeProtoKernel = 2 // RTPROT_KERNEL: derived from an address
	fakeProtoBoot   = 3 // RTPROT_BOOT: `ip route add` without proto
)

type fakeKernel struct {
	mu       sync.Mutex
	next     int // last ifindex handed out
	t        fakeTables
	other    map[string]int // non-VXLAN devices: name → ifindex
	watchers map[*fakeWatcher]bool
	lacks    map[LinkKind]bool // kinds this kernel cannot create
}

// LackKind makes the simulated kernel refuse to create devices of kind, as
// a kernel without the module does (ipip here): ErrKernelLacks.
func (f *Fake) LackKind(kind LinkKind) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if f.k.lacks == nil {
		f.k.lacks = map[LinkKind]bool{}
	}
	f.k.lacks[kind] = true
}

// fakeWatcher is one Subscribe call: drift on objects in f's index drops
// them from it and calls kick, as Netlink's subscription does.
type fakeWatcher struct {
	f    *Fake
	kick func()
}

type fakeLink struct {
	Link  // Addr unused; see addrs
	index int
	up    bool
	addrs []netip.Prefix
}

type fakeRoute struct {
	Route
	proto int
}

type fakeTables struct {
	links    map[string]fakeLink
	routes   map[RouteKey]fakeRoute
	neighs   map[NeighKey]Neigh
	fdb      map[FDBKey]FDB
	wgPeers  map[WGPeerKey]fakeWGPeer
	udpPeers map[UDPPeerKey]UDPPeer
}

func newFakeTables() fakeTables {
	return fakeTables{
		links:    map[string]fakeLink{},
		routes:   map[RouteKey]fakeRoute{},
		neighs:   map[NeighKey]Neigh{},
		fdb:      map[FDBKey]FDB{},
		wgPeers:  map[WGPeerKey]fakeWGPeer{},
		udpPeers: map[UDPPeerKey]UDPPeer{},
	}
}

func (t fakeTables) dropDev(dev string) {
	maps.DeleteFunc(t.routes, func(_ RouteKey, r fakeRoute) bool { return r.Dev == dev })
	maps.DeleteFunc(t.neighs, func(_ NeighKey, n Neigh) bool { return n.Dev == dev })
	maps.DeleteFunc(t.fdb, func(f FDBKey, _ FDB) bool { return f.Dev == dev })
	maps.DeleteFunc(t.wgPeers, func(k WGPeerKey, _ fakeWGPeer) bool { return k.Dev == dev })
	maps.DeleteFunc(t.udpPeers, func(k UDPPeerKey, _ UDPPeer) bool { return k.Dev == dev })
}

// NewFake returns a Fake over an empty simulated kernel.
func NewFake() *Fake {
	return &Fake{
		k:   &fakeKernel{t: newFakeTables(), other: map[string]int{}, watchers: map[*fakeWatcher]bool{}},
		idx: newFakeTables(),
	}
}

// Restart returns a new Fake over the same simulated kernel with an empty
// index, as a restarted daemon would find it: without its udp devices,
// which end with the process.
func (f *Fake) Restart() *Fake {
	f.k.mu.Lock()
	f.k.dropUDPLinks()
	f.k.mu.Unlock()
	return &Fake{k: f.k, idx: newFakeTables()}
}

// AddDevice adds a non-VXLAN device (an underlay) and returns its ifindex.
func (f *Fake) AddDevice(name string) int {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if i, ok := f.k.other[name]; ok {
		return i
	}
	f.k.next++
	f.k.other[name] = f.k.next
	return f.k.next
}

// LinkIndex returns the ifindex of device name, or 0.
func (f *Fake) LinkIndex(name string) int {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if l, ok := f.k.t.links[name]; ok {
		return l.index
	}
	return f.k.other[name]
}

// Kernel returns a copy of everything in the simulated kernel, including
// routes that are not ours. Links show their addresses as withAddrs does.
func (f *Fake) Kernel() *State {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	return f.k.t.state()
}

// Dump returns what a full Reconcile would consider its own given links,
// like Netlink.Dump.
func (f *Fake) Dump(links ...string) *State {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	return f.k.read(links).state()
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

// Subscribe reports drift caused by the Delete* and AddKernelNeigh
// methods on objects in f's index until ctx ends, like
// Netlink.Subscribe: it drops them from the index and calls kick. kick is
// also called once at the start.
func (f *Fake) Subscribe(ctx context.Context, kick func()) error {
	w := &fakeWatcher{f: f, kick: kick}
	f.k.mu.Lock()
	f.k.watchers[w] = true
	f.k.mu.Unlock()
	kick()
	<-ctx.Done()
	f.k.mu.Lock()
	delete(f.k.watchers, w)
	f.k.mu.Unlock()
	return nil
}

// drift applies a change behind the Reconcilers' backs and notifies the
// subscribed ones whose index held the object (notice drops it there).
func (k *fakeKernel) drift(change func(), notice func(idx fakeTables) bool) {
	k.mu.Lock()
	change()
	var kicks []func()
	for w := range k.watchers {
		if notice(w.f.idx) {
			kicks = append(kicks, w.kick)
		}
	}
	k.mu.Unlock()
	for _, kick := range kicks {
		kick()
	}
}

// deleted drops key from m, reporting whether it was there.
func deleted[K comparable, V any](m map[K]V, key K) bool {
	_, ok := m[key]
	delete(m, key)
	return ok
}

// DeleteRoute, DeleteNeigh, DeleteFDB and DeleteLink remove an object
// behind the Reconciler's back; deleting a link removes what is on it.
func (f *Fake) DeleteRoute(key RouteKey) {
	f.k.drift(func() { delete(f.k.t.routes, key) }, func(x fakeTables) bool { return deleted(x.routes, key) })
}

// DeleteNeigh removes a neighbour entry.
func (f *Fake) DeleteNeigh(key NeighKey) {
	f.k.drift(func() { delete(f.k.t.neighs, key) }, func(x fakeTables) bool { return deleted(x.neighs, key) })
}

// DeleteFDB removes an FDB entry.
func (f *Fake) DeleteFDB(key FDBKey) {
	f.k.drift(func() { delete(f.k.t.fdb, key) }, func(x fakeTables) bool { return deleted(x.fdb, key) })
}

// DeleteLink removes a device and everything on it.
func (f *Fake) DeleteLink(name string) {
	f.k.drift(func() {
		f.k.deleteLink(name)
		delete(f.k.other, name)
	}, func(x fakeTables) bool {
		x.dropDev(name)
		return deleted(x.links, name)
	})
}

// LinkByName returns the VXLAN or WireGuard device name as the kernel has
// it (addresses as withAddrs shows them), like Netlink.LinkByName.
func (f *Fake) LinkByName(name string) (Link, bool, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	l, ok := f.k.t.links[name]
	if !ok {
		return Link{}, false, nil
	}
	return withAddrs(l.Link, l.addrs), true, nil
}

// AddForeignRoute adds a route as an administrator would (`ip route add`,
// protocol boot).
func (f *Fake) AddForeignRoute(r Route) error { return f.AddKernelRoute(r, false) }

// AddKernelRoute adds a route behind the Reconciler's back; ours says
// whether it carries RouteProtocol (as one left by an earlier run does).
func (f *Fake) AddKernelRoute(r Route, ours bool) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	proto := fakeProtoBoot
	if ours {
		proto = RouteProtocol
	}
	return f.k.addRoute(fakeRoute{r, proto})
}

// AddKernelNeigh adds or overwrites a permanent neighbour behind the
// Reconciler's back; overwriting one of ours with another MAC is drift.
func (f *Fake) AddKernelNeigh(n Neigh) error {
	var err error
	f.k.drift(func() { err = f.k.setNeigh(n) }, func(x fakeTables) bool {
		old, ok := x.neighs[n.Key()]
		return err == nil && ok && old != n && deleted(x.neighs, n.Key())
	})
	return err
}

// AddKernelFDB adds an FDB entry behind the Reconciler's back.
func (f *Fake) AddKernelFDB(e FDB) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	return f.k.appendFDB(e)
}

func (k *fakeKernel) exists(dev string) bool {
	_, vx := k.t.links[dev]
	_, other := k.other[dev]
	return vx || other
}

func (k *fakeKernel) deleteLink(name string) {
	delete(k.t.links, name)
	k.t.dropDev(name)
}

func (k *fakeKernel) addRoute(r fakeRoute) error {
	if !r.Blackhole && !k.exists(r.Dev) {
		return fmt.Errorf("device %s: %w", r.Dev, ErrNoDevice)
	}
	k.t.routes[r.Key()] = r
	return nil
}

func (k *fakeKernel) setNeigh(n Neigh) error {
	if !k.exists(n.Dev) {
		return fmt.Errorf("device %s: %w", n.Dev, ErrNoDevice)
	}
	k.t.neighs[n.Key()] = n
	return nil
}

func (k *fakeKernel) appendFDB(e FDB) error {
	if _, ok := k.t.links[e.Dev]; !ok {
		return fmt.Errorf("device %s: %w", e.Dev, ErrNoDevice)
	}
	k.t.fdb[e] = e
	return nil
}

// read is the Fake's kernel dump, with Netlink.read's selection rules.
func (k *fakeKernel) read(links []string) fakeTables {
	t := newFakeTables()
	for _, name := range links {
		if l, ok := k.t.links[name]; ok {
			l.addrs = slices.Clone(l.addrs)
			t.links[name] = l
		}
	}
	for key, r := range k.t.routes {
		_, onOurs := t.links[r.Dev]
		if r.proto == RouteProtocol || (onOurs && r.proto != fakeProtoKernel) {
			t.routes[key] = r
		}
	}
	for key, n := range k.t.neighs {
		if _, ok := t.links[n.Dev]; ok {
			t.neighs[key] = n
		}
	}
	for key, e := range k.t.fdb {
		if _, ok := t.links[e.Dev]; ok {
			t.fdb[key] = e
		}
	}
	for key, p := range k.t.wgPeers {
		if l, ok := t.links[p.Dev]; ok && l.Kind == KindWireGuard {
			t.wgPeers[key] = p
		}
	}
	for key, p := range k.t.udpPeers {
		if l, ok := t.links[p.Dev]; ok && l.Kind == KindUDP {
			t.udpPeers[key] = p
		}
	}
	return t
}

// Reconcile implements Reconciler.
func (f *Fake) Reconcile(ctx context.Context, desired *State, full bool) (Changes, error) {
	return f.reconcile(ctx, desired, full, nil)
}

// ReconcileDelta implements Reconciler, with Netlink's fallbacks.
func (f *Fake) ReconcileDelta(ctx context.Context, desired *State, touched *Delta) (Changes, error) {
	if touched == nil {
		touched = &Delta{}
	}
	return f.reconcile(ctx, desired, false, touched)
}

func (f *Fake) reconcile(ctx context.Context, desired *State, full bool, touched *Delta) (Changes, error) {
	if desired == nil {
		return Changes{}, errors.New("reconcile: nil desired state")
	}
	if err := ctx.Err(); err != nil {
		return Changes{}, err
	}
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if full {
		touched = nil
		names := slices.Collect(maps.Keys(desired.Links))
		names = append(names, slices.Collect(maps.Keys(f.idx.links))...)
		f.idx = k.read(names)
	}
	var (
		c    Changes
		errs []error
	)
	for _, name := range slices.Sorted(maps.Keys(desired.Links)) {
		want := desired.Links[name]
		if err := checkLink(name, want); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := f.ensureLink(want, &c); err != nil {
			errs = append(errs, err)
		}
	}
	gone := map[string]bool{}
	for name := range f.idx.links {
		if _, ok := desired.Links[name]; !ok {
			gone[name] = true
		}
	}
	if touched != nil && (linkWrites(c) > 0 || len(errs) > 0 || len(gone) > 0) {
		touched = nil // as Netlink: objects on a changed link were not touched
	}
	var tr map[RouteKey]struct{}
	var tn map[NeighKey]struct{}
	var tf map[FDBKey]struct{}
	var tw map[WGPeerKey]struct{}
	var tu map[UDPPeerKey]struct{}
	if touched != nil {
		tr, tn, tf = nonNil(touched.Routes), nonNil(touched.Neighs), nonNil(touched.FDB)
		tw, tu = nonNil(touched.WGPeers), nonNil(touched.UDPPeers)
	}

	errs = append(errs, f.addWGPeers(entries(desired.WGPeers, tw), &c)...)
	errs = append(errs, f.addUDPPeers(entries(desired.UDPPeers, tu), &c)...)
	for key, e := range entries(desired.FDB, tf) {
		if _, ok := f.idx.fdb[key]; ok {
			continue
		}
		err := checkFDB(key, e)
		if err == nil {
			err = k.appendFDB(e)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("add fdb %s dst %s: %w", e.MAC, e.Dst, err))
			continue
		}
		f.idx.fdb[key] = e
		c.FDBAdded++
	}
	for key, n := range entries(desired.Neighs, tn) {
		if old, ok := f.idx.neighs[key]; ok && old == n {
			continue
		}
		err := checkNeigh(key, n)
		if err == nil {
			err = k.setNeigh(n)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set neighbour %s: %w", n.IP, err))
			continue
		}
		f.idx.neighs[key] = n
		c.NeighsAdded++
	}
	for key, r := range entries(desired.Routes, tr) {
		want := fakeRoute{r, RouteProtocol}
		if old, ok := f.idx.routes[key]; ok && old == want {
			continue
		}
		err := checkRoute(key, r)
		if err == nil {
			err = k.addRoute(want)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("replace route %s: %w", r.Dst, err))
			continue
		}
		f.idx.routes[key] = want
		c.RoutesAdded++
	}

	for key, r := range entries(f.idx.routes, tr) {
		if _, ok := desired.Routes[key]; !ok && !gone[r.Dev] {
			delete(f.idx.routes, key)
			if cur, ok := k.t.routes[key]; ok && cur == r {
				delete(k.t.routes, key)
				c.RoutesRemoved++
			}
		}
	}
	f.delWGPeers(desired, gone, tw, &c)
	f.delUDPPeers(desired, gone, tu, &c)
	for key, n := range entries(f.idx.neighs, tn) {
		if _, ok := desired.Neighs[key]; !ok && !gone[n.Dev] {
			delete(f.idx.neighs, key)
			if _, ok := k.t.neighs[key]; ok {
				delete(k.t.neighs, key)
				c.NeighsRemoved++
			}
		}
	}
	for key, e := range entries(f.idx.fdb, tf) {
		if _, ok := desired.FDB[key]; !ok && !gone[e.Dev] {
			delete(f.idx.fdb, key)
			if _, ok := k.t.fdb[key]; ok {
				delete(k.t.fdb, key)
				c.FDBRemoved++
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		delete(f.idx.links, name)
		f.idx.dropDev(name)
		if _, ok := k.t.links[name]; ok {
			k.deleteLink(name)
			c.LinksRemoved++
		}
	}
	return c, errors.Join(errs...)
}

func (f *Fake) ensureLink(want Link, c *Changes) error {
	k, name := f.k, want.Name
	if have, ok := f.idx.links[name]; ok && linkSatisfied(want, have.Link, have.up, have.addrs) {
		return nil
	}
	have, ok := f.idx.links[name]
	if !ok {
		have, ok = k.t.links[name]
		if _, other := k.other[name]; other {
			// A device of another type under our name: the real kernel
			// would report it as not VXLAN, and Netlink replaces it.
			delete(k.other, name)
			k.t.dropDev(name)
			c.LinksRemoved++
		}
	}
	if ok && !sameIdentity(want, have.Link) {
		delete(f.idx.links, name)
		f.idx.dropDev(name)
		k.deleteLink(name)
		c.LinksRemoved++
		ok = false
	}
	created := !ok
	if cur, exists := k.t.links[name]; !created && (!exists || cur.index != have.index) {
		// The index is stale (drift a non-full pass does not see): writes
		// to the old ifindex fail as they would in the kernel.
		return fmt.Errorf("update link %s: %w", name, ErrNoDevice)
	}
	if created && k.lacks[want.Kind] {
		return fmt.Errorf("create link %s: %w: %s", name, ErrKernelLacks, want.Kind)
	}
	if created {
		k.next++
		have = newFakeLink(want, k.next)
		c.LinksAdded++
	}
	wrote := false
	if want.MTU != 0 && want.MTU != have.MTU {
		have.MTU, wrote = want.MTU, true
	}
	if !want.MAC.IsZero() && want.MAC != have.MAC {
		// As the kernel does: a new device address flushes the device's
		// neighbour entries, permanent ones included.
		have.MAC, wrote = want.MAC, true
		for _, t := range []fakeTables{k.t, f.idx} {
			maps.DeleteFunc(t.neighs, func(_ NeighKey, n Neigh) bool { return n.Dev == name })
		}
	}
	for _, a := range []netip.Prefix{want.Addr, want.Addr2} {
		if a.IsValid() && !slices.Contains(have.addrs, a) {
			have.addrs, wrote = append(slices.Clone(have.addrs), a), true
		}
	}
	if stale := staleLinkAddrs(want, have.addrs); len(stale) > 0 {
		have.addrs = slices.DeleteFunc(slices.Clone(have.addrs), func(p netip.Prefix) bool { return slices.Contains(stale, p) })
		wrote = true
	}
	if !have.up {
		have.up, wrote = true, true
	}
	if want.Kind == KindWireGuard && fixFakeWG(want, &have) {
		wrote = true
	}
	if want.TxChecksum != OffloadAsIs && want.TxChecksum != have.TxChecksum {
		have.TxChecksum, wrote = want.TxChecksum, true
	}
	if wrote && !created {
		c.LinksUpdated++
	}
	k.t.links[name] = have
	f.idx.links[name] = have
	return nil
}
