package dataplane

import (
	"context"
	"sync"
)

// Fake is an in-memory Reconciler: the engine (the same diff Netlink
// runs) over a simulated kernel (fake_kernel.go) that has only kernel
// semantics — objects vanish with their device, a new device address
// flushes its neighbours, a write to a device that is gone fails, a
// kernel read shows what Netlink's would. Tests cause drift with the
// Delete* and Add* methods and inspect the kernel with Kernel or Dump.
type Fake struct {
	*engine
	k *fakeKernel
}

var _ Reconciler = (*Fake)(nil)

// NewFake returns a Fake over an empty simulated kernel.
func NewFake() *Fake {
	return newFakeOver(&fakeKernel{t: newFakeTables(), other: map[string]int{}, watchers: map[*fakeWatcher]bool{}})
}

func newFakeOver(k *fakeKernel) *Fake { return &Fake{engine: newEngine(nil, k), k: k} }

// Restart returns a new Fake over the same simulated kernel with an empty
// index, as a restarted daemon would find it: without its udp devices,
// which end with the process.
func (f *Fake) Restart() *Fake {
	f.k.mu.Lock()
	f.k.dropUDPLinks()
	f.k.mu.Unlock()
	return newFakeOver(f.k)
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

// AddDevice adds a device that is not ours (an underlay) and returns its
// ifindex.
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
	return f.k.index(name)
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
	names := map[string]bool{}
	for _, l := range links {
		names[l] = true
	}
	x, _, _ := f.k.read(names)
	return x.state()
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

// fakeWatcher is one Subscribe call: drift on objects in its engine's
// index drops them from it and calls kick, as Netlink's subscription
// does.
type fakeWatcher struct {
	e    *engine
	kick func()
}

// Subscribe reports drift caused by the Delete* and AddKernelNeigh
// methods on objects in f's index until ctx ends, like
// Netlink.Subscribe: it drops them from the index and calls kick. kick is
// also called once at the start.
func (f *Fake) Subscribe(ctx context.Context, kick func()) error {
	w := &fakeWatcher{e: f.engine, kick: kick}
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
func (k *fakeKernel) drift(change func(), notice func(idx *instIndex) bool) {
	k.mu.Lock()
	change()
	ws := make([]*fakeWatcher, 0, len(k.watchers))
	for w := range k.watchers {
		ws = append(ws, w)
	}
	k.mu.Unlock()
	for _, w := range ws {
		w.e.mu.Lock()
		noticed := notice(w.e.idx)
		w.e.mu.Unlock()
		if noticed {
			w.kick()
		}
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
	f.k.drift(func() { delete(f.k.t.routes, key) }, func(x *instIndex) bool { return taken(x.routes, key) })
}

// DeleteNeigh removes a neighbour entry.
func (f *Fake) DeleteNeigh(key NeighKey) {
	f.k.drift(func() { delete(f.k.t.neighs, key) }, func(x *instIndex) bool { return taken(x.neighs, key) })
}

// DeleteFDB removes an FDB entry.
func (f *Fake) DeleteFDB(key FDBKey) {
	f.k.drift(func() { delete(f.k.t.fdb, key) }, func(x *instIndex) bool { return taken(x.fdb, key) })
}

// DeleteLink removes a device and everything on it.
func (f *Fake) DeleteLink(name string) {
	f.k.drift(func() {
		f.k.deleteLink(name)
		delete(f.k.other, name)
	}, func(x *instIndex) bool {
		x.dropDev(name)
		return deleted(x.links, name)
	})
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
	ir := instRoute{Route: r, proto: proto, prio: routePriority(r)}
	if !r.Blackhole {
		if ir.ifindex = f.k.index(r.Dev); ir.ifindex == 0 {
			return errNoDevice(r.Dev)
		}
	}
	f.k.t.routes[r.Key()] = ir
	return nil
}

// AddKernelNeigh adds or overwrites a permanent neighbour behind the
// Reconciler's back; overwriting one of ours with another MAC is drift.
func (f *Fake) AddKernelNeigh(n Neigh) error {
	var err error
	f.k.drift(func() {
		if f.k.index(n.Dev) == 0 {
			err = errNoDevice(n.Dev)
			return
		}
		f.k.t.neighs[n.Key()] = n
	}, func(x *instIndex) bool {
		old, ok := x.neighs.get(n.Key())
		return err == nil && ok && old.Neigh != n && taken(x.neighs, n.Key())
	})
	return err
}

// AddKernelFDB adds an FDB entry behind the Reconciler's back.
func (f *Fake) AddKernelFDB(e FDB) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if _, ok := f.k.t.links[e.Dev]; !ok {
		return errNoDevice(e.Dev)
	}
	f.k.t.fdb[e] = e
	return nil
}

// fakeKernel is the simulated kernel (fake_kernel.go).
type fakeKernel struct {
	mu       sync.Mutex
	next     int // last ifindex handed out
	t        fakeTables
	other    map[string]int // devices that are not ours: name → ifindex
	watchers map[*fakeWatcher]bool
	lacks    map[LinkKind]bool // kinds this kernel cannot create
}
