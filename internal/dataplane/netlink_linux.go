package dataplane

import (
	"github.com/safchain/ethtool"

	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netlink reconciles one network namespace through a netlink handle bound
// to it, so no OS thread ever switches namespace for a write.
//
// The index (what we installed) is shared by Reconcile and the Subscribe
// goroutine. Reconcile updates an entry before the write that makes it
// true and restores it if the write fails, so the notification our own
// write causes finds the index already agreeing and is ignored.
type Netlink struct {
	log *slog.Logger
	ns  netns.NsHandle
	h   *netlink.Handle
	w   *nlWriter // batched route, neighbour and FDB writes; used under pass

	pass sync.Mutex // serialises Reconcile calls

	mu  sync.Mutex // guards idx
	idx *nlIndex

	// resync is set when a notification may have been lost; the next
	// Reconcile then re-reads the kernel even if not asked to.
	resync atomic.Bool

	// nhOK: IPv4 gateway routes go through nexthop objects
	// (nexthop_linux.go). nextNH and nhForeign are used under pass;
	// nhFreed (under mu) are objects of ours that no route uses any more,
	// deleted in bulk (see delNexthops).
	nhOK        bool
	nextNH      uint32
	nhForeign   map[uint32]struct{}
	nhFreed     []uint32
	nhFreeBatch int
	// notes counts the notifications Subscribe has read.
	notes atomic.Uint64
	// upPending (under mu): devices our routes use that came back up and
	// whose connected route is awaited (netlink_flap_linux.go).
	upPending map[int]bool

	wg  *wgState  // WireGuard devices (wireguard_linux.go)
	udp *udpState // udp devices (udp_linux.go)

	eth *ethtool.Ethtool // opened on first use, under pass (txcsum_linux.go)
}

// NetlinkOption adjusts a Netlink.
type NetlinkOption func(*netlinkOptions)

type netlinkOptions struct {
	plainRoutes bool
	wgMode      string
	wgCreate    func(name string, mtu int) (WGDevice, error)
	udpCreate   func(UDPSpec) (UDPDevice, error)
	udpView     []UDPStatus
}

// PlainRoutes makes Netlink install every route as a plain route, as on a
// kernel without nexthop objects, instead of giving IPv4 gateway routes a
// nexthop object each.
func PlainRoutes() NetlinkOption { return func(o *netlinkOptions) { o.plainRoutes = true } }

// UsesNexthops reports whether IPv4 gateway routes go through nexthop
// objects.
func (n *Netlink) UsesNexthops() bool { return n.nhOK }

var _ Reconciler = (*Netlink)(nil)

// NewNetlink returns a Netlink for namespace ns (netns.None(): the
// caller's). ns must stay open until Close.
func NewNetlink(log *slog.Logger, ns netns.NsHandle, opts ...NetlinkOption) (*Netlink, error) {
	var o netlinkOptions
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wg, err := newWGState(o)
	if err != nil {
		return nil, err
	}
	var h *netlink.Handle
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	w, err := newWriter(ns)
	if err != nil {
		h.Close()
		return nil, err
	}
	n := &Netlink{log: log, ns: ns, h: h, w: w, idx: newIndex(), nhFreeBatch: nhFreeBatch, wg: wg, udp: newUDPState(o)}
	if !o.plainRoutes {
		ok, why := n.nexthopsUsable()
		n.nhOK = ok
		if !ok {
			log.Info("installing plain routes", "component", "dataplane", "reason", why)
		}
	}
	return n, nil
}

// Close ends the userspace WireGuard devices n serves and releases the
// netlink sockets.
func (n *Netlink) Close() {
	n.closeWG()
	n.closeUDP()
	if n.eth != nil {
		n.eth.Close()
	}
	n.h.Close()
	n.w.close()
}

// Dump reads from the kernel what Reconcile would consider its own given
// links: those VXLAN and WireGuard devices (addresses as withAddrs shows
// them), the routes not made by the kernel itself, permanent neighbours,
// FDB entries and WireGuard peers on them, and main-table routes carrying
// RouteProtocol on any device. It does not change the index.
func (n *Netlink) Dump(links ...string) (*State, error) {
	names := map[string]bool{}
	for _, l := range links {
		names[l] = true
	}
	x, _, err := n.read(names)
	if err != nil {
		return nil, err
	}
	return x.state(), nil
}

// Reconcile implements Reconciler.
func (n *Netlink) Reconcile(ctx context.Context, desired *State, full bool) (Changes, error) {
	return n.reconcile(ctx, desired, full, nil)
}

// ReconcileDelta implements Reconciler.
func (n *Netlink) ReconcileDelta(ctx context.Context, desired *State, touched *Delta) (Changes, error) {
	if touched == nil {
		touched = &Delta{} // nothing touched: links only
	}
	return n.reconcile(ctx, desired, false, touched)
}

// reconcile is Reconcile (touched nil: every key of desired and of the
// index) and ReconcileDelta (only the touched keys).
func (n *Netlink) reconcile(ctx context.Context, desired *State, full bool, touched *Delta) (Changes, error) {
	if desired == nil {
		return Changes{}, errors.New("reconcile: nil desired state")
	}
	n.pass.Lock()
	defer n.pass.Unlock()
	n.reapWG()
	n.reapUDP()
	p := &pass{n: n, ctx: ctx, ifindex: map[string]int{}}
	if n.resync.Swap(false) {
		// A notification may have been lost: the index cannot be trusted
		// for untouched keys either.
		full = true
	}
	if full {
		touched = nil
	}
	var kr kernelRead
	if full {
		names := map[string]bool{}
		n.mu.Lock()
		for name := range n.idx.links {
			names[name] = true
		}
		n.mu.Unlock()
		for name := range desired.Links {
			names[name] = true
		}
		x, r, err := n.read(names)
		if err != nil {
			n.resync.Store(true)
			return Changes{}, fmt.Errorf("reconcile: %w", err)
		}
		n.mu.Lock()
		n.idx = x
		n.nhFreed = nil // the read finds every unused object of ours
		n.mu.Unlock()
		kr, p.ifindex, p.full = r, r.byName, true
		if n.nhOK {
			n.nhForeign = r.nhForeign
			if r.nhMax >= nexthopIDBase {
				n.nextNH = max(n.nextNH, r.nhMax-nexthopIDBase+1)
			}
		}
	}

	for _, name := range slices.Sorted(maps.Keys(desired.Links)) {
		if p.stopped() {
			break
		}
		if err := checkLink(name, desired.Links[name]); err != nil {
			p.fail(err)
			continue
		}
		p.ensureLink(desired.Links[name])
	}
	gone := p.goneLinks(desired)
	if touched != nil && (linkWrites(p.changes) > 0 || len(p.errs) > 0 || len(gone) > 0) {
		// A created, replaced or re-addressed link lost (or may lose) the
		// objects on it, whose keys nobody touched: diff everything.
		touched = nil
	}
	// Adds run FDB → neighbour → route, so a new route never points at a
	// next hop the VXLAN driver cannot resolve yet; deletions run the
	// other way round.
	var tr map[RouteKey]struct{}
	var tn map[NeighKey]struct{}
	var tf map[FDBKey]struct{}
	var tw map[WGPeerKey]struct{}
	var tu map[UDPPeerKey]struct{}
	if touched != nil {
		tr, tn, tf = nonNil(touched.Routes), nonNil(touched.Neighs), nonNil(touched.FDB)
		tw, tu = nonNil(touched.WGPeers), nonNil(touched.UDPPeers)
	}
	// WireGuard peers first: a route into a WireGuard device sends
	// traffic nowhere until the peer that takes it is there.
	p.addWGPeers(entries(desired.WGPeers, tw))
	p.addUDPPeers(entries(desired.UDPPeers, tu))
	p.addFDB(entries(desired.FDB, tf))
	p.addNeighs(entries(desired.Neighs, tn))
	p.addRoutes(entries(desired.Routes, tr))
	p.greetWGPeers()
	// Deletions are not interrupted once started: each takes its batch
	// out of the index first, and stopping halfway would lose track of
	// objects still in the kernel.
	if p.stopped() {
		return p.changes, errors.Join(p.errs...)
	}
	p.delRoutes(desired, gone, kr, tr)
	p.delNeighs(desired, gone, tn)
	p.delFDB(desired, gone, tf)
	p.flush()
	p.delWGPeers(desired, gone, tw)
	p.delUDPPeers(desired, gone, tu)
	p.delNexthops()
	p.delLinks(gone)
	return p.changes, errors.Join(p.errs...)
}

// pass is one Reconcile call's working state.
type pass struct {
	n       *Netlink
	ctx     context.Context
	changes Changes
	errs    []error
	// ifindex caches name → ifindex for devices that are not ours
	// (0: does not exist), so each is looked up once per pass.
	ifindex map[string]int
	// unusedNH are the unused nexthop objects of ours a full read found,
	// for delNexthops; full says the pass read the kernel.
	unusedNH []uint32
	full     bool
	// q are the writes queued for the next flush.
	q []queued
	// greet are peers written to a new WireGuard device, to be greeted
	// once routes are in (greetWGPeers): the first allowed address of each.
	greet []netip.Addr
}

func (p *pass) fail(err error) { p.errs = append(p.errs, err) }

// stopped reports (once, as an error) that ctx ended; netlink writes are
// not cancellable, so the pass stops between objects.
func (p *pass) stopped() bool {
	err := p.ctx.Err()
	if err != nil && !slices.ContainsFunc(p.errs, func(e error) bool { return e == err }) {
		p.fail(err)
	}
	return err != nil
}

// ownLink reports whether dev is one of our VXLAN devices. Only routes
// on those get nexthop objects (WireGuard devices carry a few device
// routes, one per peer subnet, which need none): the kernel flushes an object, and the
// routes using it, without a notification when its device loses carrier,
// where a plain IPv4 route only turns linkdown. On the underlay (host-gw,
// DirectRouting routes) a cable or switch flap would then drop the routes
// until the next full pass. A VXLAN device has no carrier of its own (it
// follows the admin state, whose loss flushes plain routes as well), and
// it is where thousands of routes share one device (nexthop_linux.go).
func (p *pass) ownLink(dev string) bool {
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	l, ok := p.n.idx.links[dev]
	return ok && l.Kind == KindVXLAN
}

// resolve returns dev's ifindex, preferring our own links' (which may have
// just been recreated).
func (p *pass) resolve(dev string) (int, error) {
	p.n.mu.Lock()
	l, ok := p.n.idx.links[dev]
	p.n.mu.Unlock()
	if ok {
		return l.index, nil
	}
	i, ok := p.ifindex[dev]
	if !ok {
		link, err := p.n.h.LinkByName(dev)
		switch {
		case errors.As(err, &netlink.LinkNotFoundError{}):
		case err != nil:
			return 0, fmt.Errorf("look up device %s: %w", dev, err)
		default:
			i = link.Attrs().Index
		}
		p.ifindex[dev] = i
	}
	if i == 0 {
		return 0, fmt.Errorf("device %s: %w", dev, ErrNoDevice)
	}
	return i, nil
}

// exec sends a phase's requests in batches (see nlWriter) and returns
// each one's outcome. An ack that got lost leaves the kernel's state
// unknown: the next pass then re-reads it.
func (p *pass) exec(reqs []request) []error {
	if len(reqs) == 0 {
		return nil
	}
	errs, lost := p.n.w.exec(reqs)
	if lost {
		p.n.resync.Store(true)
	}
	return errs
}

// added is one queued write of the add phase: the index entry it makes
// true and the one it replaces.
type added[K comparable, V comparable] struct {
	k         K
	want, old V
	had       bool
}

// queueAdds records the entries in the index now (before the writes, so
// the notifications they cause find it agreeing) and queues their
// requests; at the flush, an entry whose write failed is restored, and
// ok or fail is called for each.
func queueAdds[K comparable, V comparable](p *pass, m func(*nlIndex) map[K]V, items []added[K, V], reqs []request, ok func(added[K, V]), fail func(added[K, V], error)) {
	if len(items) == 0 {
		return
	}
	p.n.withIndex(func(x *nlIndex) {
		for _, it := range items {
			m(x)[it.k] = it.want
		}
	})
	for i, it := range items {
		p.enqueue(reqs[i], func(err error) {
			if err != nil {
				p.n.withIndex(func(x *nlIndex) { restoreEntry(m(x), it.k, it.want, it.old, it.had) })
				fail(it, err)
				return
			}
			ok(it)
		})
	}
}

// queued is a write waiting for the pass's next flush, and what to do
// with its outcome.
type queued struct {
	req  request
	done func(error)
}

func (p *pass) enqueue(req request, done func(error)) { p.q = append(p.q, queued{req, done}) }

// passChunk bounds how many objects a pass prepares before writing them:
// a pass over 20,000 peers would otherwise hold every prepared write of a
// phase at once (tens of MiB at the moment the heap peaks).
const passChunk = 1024

// flushIfFull flushes once a chunk's worth of writes is queued.
func (p *pass) flushIfFull() {
	if len(p.q) >= passChunk {
		p.flush()
	}
}

// flush sends every queued write, in order, in as few datagrams as the
// batch limits allow, and hands each its outcome. A pass flushes twice
// in its add phase (FDB entries, neighbours and nexthop objects; then
// the routes, which must not name an object that failed) and twice in
// its delete phase (routes, neighbours, FDB entries; then the objects of
// the routes deleted), so a single join or leave costs two round trips
// to the kernel, not one per kind of object.
func (p *pass) flush() {
	if len(p.q) == 0 {
		return
	}
	q := p.q
	p.q = nil
	reqs := make([]request, len(q))
	for i := range q {
		reqs[i] = q[i].req
	}
	for i, err := range p.exec(reqs) {
		q[i].done(err)
	}
}

func (p *pass) addFDB(desired iter.Seq2[FDBKey, FDB]) {
	n := p.n
	var items []added[FDBKey, nlFDB]
	var reqs []request
	for k, f := range desired {
		if p.stopped() {
			break
		}
		if err := checkFDB(k, f); err != nil {
			p.fail(err)
			continue
		}
		old, had := lookup(n, func(x *nlIndex) map[FDBKey]nlFDB { return x.fdb }, k)
		if had && old.FDB == f {
			continue
		}
		ifi, err := p.resolve(f.Dev)
		if err != nil {
			p.fail(fmt.Errorf("add fdb %s dst %s: %w", f.MAC, f.Dst, err))
			continue
		}
		want := nlFDB{f, ifi}
		items = append(items, added[FDBKey, nlFDB]{k, want, old, had})
		reqs = append(reqs, func() *nl.NetlinkRequest {
			return neighRequest(want.netlink(), unix.RTM_NEWNEIGH, fdbAddFlags(f.MAC))
		})
		if len(items) == passChunk {
			items, reqs = p.queueFDB(items, reqs)
		}
	}
	p.queueFDB(items, reqs)
}

// fdbAddFlags are the flags that add f: the VXLAN driver keeps one remote
// per unicast MAC, and `bridge fdb append` of a unicast MAC it already
// has is a silent no-op. So a peer that kept its VTEP MAC but moved to
// another public address would keep the old remote, and the deletion of
// the old entry that follows in the same pass would remove the MAC
// altogether until the next full pass: a unicast MAC is replaced
// (`bridge fdb replace`; the later deletion of the old remote then finds
// nothing to remove). Only the all-zero and multicast MACs, which flood,
// can have several remotes, appended.
func fdbAddFlags(mac MAC) int {
	if mac.IsZero() || mac[0]&1 == 1 {
		return unix.NLM_F_CREATE | unix.NLM_F_APPEND
	}
	return unix.NLM_F_CREATE | unix.NLM_F_REPLACE
}

func (p *pass) queueFDB(items []added[FDBKey, nlFDB], reqs []request) ([]added[FDBKey, nlFDB], []request) {
	queueAdds(p, func(x *nlIndex) map[FDBKey]nlFDB { return x.fdb }, items, reqs,
		func(added[FDBKey, nlFDB]) { p.changes.FDBAdded++ },
		func(it added[FDBKey, nlFDB], err error) {
			f := it.want
			p.fail(fmt.Errorf("add fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Dev, err))
		})
	p.flushIfFull()
	return items[:0], reqs[:0]
}

func (p *pass) addNeighs(desired iter.Seq2[NeighKey, Neigh]) {
	n := p.n
	var items []added[NeighKey, nlNeigh]
	var reqs []request
	for k, nb := range desired {
		if p.stopped() {
			break
		}
		if err := checkNeigh(k, nb); err != nil {
			p.fail(err)
			continue
		}
		old, had := lookup(n, func(x *nlIndex) map[NeighKey]nlNeigh { return x.neighs }, k)
		if had && old.Neigh == nb {
			continue
		}
		ifi, err := p.resolve(nb.Dev)
		if err != nil {
			p.fail(fmt.Errorf("add neighbour %s: %w", nb.IP, err))
			continue
		}
		want := nlNeigh{nb, ifi}
		items = append(items, added[NeighKey, nlNeigh]{k, want, old, had})
		// NeighSet is `ip neigh replace`: it overwrites a learnt or stale
		// entry for the same address in one write.
		reqs = append(reqs, func() *nl.NetlinkRequest {
			return neighRequest(want.netlink(), unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
		})
		if len(items) == passChunk {
			items, reqs = p.queueNeighs(items, reqs)
		}
	}
	p.queueNeighs(items, reqs)
}

func (p *pass) queueNeighs(items []added[NeighKey, nlNeigh], reqs []request) ([]added[NeighKey, nlNeigh], []request) {
	queueAdds(p, func(x *nlIndex) map[NeighKey]nlNeigh { return x.neighs }, items, reqs,
		func(added[NeighKey, nlNeigh]) { p.changes.NeighsAdded++ },
		func(it added[NeighKey, nlNeigh], err error) {
			nb := it.want
			p.fail(fmt.Errorf("set neighbour %s lladdr %s dev %s: %w", nb.IP, nb.MAC, nb.Dev, err))
		})
	p.flushIfFull()
	return items[:0], reqs[:0]
}

func (p *pass) addRoutes(desired iter.Seq2[RouteKey, Route]) {
	n := p.n
	var items []added[RouteKey, nlRoute]
	var nhReqs []request
	var nhItems []int // index in items of each nexthop request
	for k, r := range desired {
		if p.stopped() {
			break
		}
		if err := checkRoute(k, r); err != nil {
			p.fail(err)
			continue
		}
		prio := routePriority(r)
		old, had := lookup(n, func(x *nlIndex) map[RouteKey]nlRoute { return x.routes }, k)
		if had && old.Route == r && old.proto == RouteProtocol && old.prio == prio {
			continue
		}
		ifi := 0 // a blackhole has no device
		if !r.Blackhole {
			var err error
			if ifi, err = p.resolve(r.Dev); err != nil {
				p.fail(fmt.Errorf("add route %s: %w", r.Dst, err))
				continue
			}
		}
		want := nlRoute{Route: r, ifindex: ifi, proto: RouteProtocol, prio: prio}
		if n.nhOK && usesNexthop(r) && p.ownLink(r.Dev) {
			// A fresh object even when only the metric changed: the old
			// one goes with the old route.
			want.nhid = n.allocNexthop()
			nhItems = append(nhItems, len(items))
			nhReqs = append(nhReqs, func() *nl.NetlinkRequest { return nexthopRequest(want.nhid, ifi, r.Gw, r.OnLink) })
		}
		items = append(items, added[RouteKey, nlRoute]{k, want, old, had})
		if len(items) == passChunk {
			p.writeRoutes(items, nhReqs, nhItems)
			items, nhReqs, nhItems = items[:0], nhReqs[:0], nhItems[:0]
		}
	}
	// Always, even with no routes left: this flush also sends the FDB
	// entries and neighbours queued before.
	p.writeRoutes(items, nhReqs, nhItems)
}

// writeRoutes writes a chunk of routes: their nexthop objects (with
// whatever FDB entries and neighbours are queued), then the routes, then
// the cleanups the replacements leave.
func (p *pass) writeRoutes(items []added[RouteKey, nlRoute], nhReqs []request, nhItems []int) {
	// The nexthop objects go with the FDB entries and neighbours queued
	// before them; the routes only once their objects are in: a route
	// must not name an object whose create failed (EEXIST: one of another
	// program's, made since our last read).
	failed := map[int]bool{}
	for i, req := range nhReqs {
		idx := nhItems[i]
		p.enqueue(req, func(err error) {
			if err != nil {
				failed[idx] = true
				p.fail(fmt.Errorf("add nexthop %d for route %s: %w", items[idx].want.nhid, items[idx].want.Route, err))
			}
		})
	}
	p.flush()
	reqs := make([]request, 0, len(items))
	kept := items[:0]
	for i, it := range items {
		if failed[i] {
			continue
		}
		kept = append(kept, it)
		// RouteReplace: `ip route replace`.
		reqs = append(reqs, func() *nl.NetlinkRequest {
			return routeRequest(it.want.netlink(), it.want.nhid, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
		})
	}
	// Replace matches on metric; a route of ours with another metric is a
	// separate kernel object and still there once its successor is in. A
	// replaced route's nexthop object is left unused. Both are deleted
	// once the new route is in, as is the new object of a route that
	// could not be written.
	type cleanup struct {
		what  string
		route bool // a route (counted as removed), not a nexthop object
	}
	var cleanups []cleanup
	var dels []request
	queueAdds(p, func(x *nlIndex) map[RouteKey]nlRoute { return x.routes }, kept, reqs,
		func(it added[RouteKey, nlRoute]) {
			p.changes.RoutesAdded++
			if !it.had {
				return
			}
			if it.old.prio != it.want.prio {
				cleanups = append(cleanups, cleanup{fmt.Sprintf("route %s metric %d", it.old.Dst, it.old.prio), true})
				dels = append(dels, func() *nl.NetlinkRequest { return routeRequest(it.old.netlink(), it.old.nhid, unix.RTM_DELROUTE, 0) })
			}
			if it.old.nhid != 0 {
				cleanups = append(cleanups, cleanup{what: fmt.Sprintf("nexthop %d of route %s", it.old.nhid, it.old.Dst)})
				dels = append(dels, func() *nl.NetlinkRequest { return nexthopDelRequest(it.old.nhid) })
			}
		},
		func(it added[RouteKey, nlRoute], err error) {
			p.fail(fmt.Errorf("replace route %s: %w", it.want.Route, err))
			if it.want.nhid != 0 {
				cleanups = append(cleanups, cleanup{what: fmt.Sprintf("nexthop %d", it.want.nhid)})
				dels = append(dels, func() *nl.NetlinkRequest { return nexthopDelRequest(it.want.nhid) })
			}
		})
	p.flush()
	for i, err := range p.exec(dels) {
		if err != nil && !alreadyGone(err) {
			p.fail(fmt.Errorf("delete %s: %w", cleanups[i].what, err))
		} else if err == nil && cleanups[i].route {
			p.changes.RoutesRemoved++
		}
	}
}

// lookup reads one index entry. The add phase checks the index before
// resolving the device, so an unchanged object costs no kernel round trip.
func lookup[K comparable, V any](n *Netlink, m func(*nlIndex) map[K]V, k K) (V, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := m(n.idx)[k]
	return v, ok
}

// restoreEntry undoes an optimistic index update after a failed write,
// unless the entry changed meanwhile.
func restoreEntry[K comparable, V comparable](m map[K]V, k K, want, old V, had bool) {
	if cur, ok := m[k]; !ok || cur != want {
		return
	}
	if had {
		m[k] = old
	} else {
		delete(m, k)
	}
}

// withIndex runs f on the index under its lock.
func (n *Netlink) withIndex(f func(*nlIndex)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n.idx)
}

// alreadyGone reports a deletion that failed because the object (ESRCH
// for routes, ENOENT for neighbours) or its device (ENODEV) no longer
// exists: the state we wanted is reached.
func alreadyGone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

// takeStale removes from m, under the index lock, the entries desired
// lacks and that are not on a device about to be deleted, and returns them.
// With touched non-nil only those keys are considered (a delta pass), so
// the cost follows the change rather than the index.
func takeStale[K comparable, V any](n *Netlink, m func(*nlIndex) map[K]V, want func(K) bool, dev func(V) string, gone map[string]bool, touched map[K]struct{}) map[K]V {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[K]V{}
	idx := m(n.idx)
	if touched != nil {
		for k := range touched {
			if v, ok := idx[k]; ok && !want(k) && !gone[dev(v)] {
				out[k] = v
				delete(idx, k)
			}
		}
		return out
	}
	for k, v := range idx {
		if !want(k) && !gone[dev(v)] {
			out[k] = v
			delete(idx, k)
		}
	}
	return out
}

// delRoutes deletes the routes desired no longer has, and leaves to
// delNexthops the objects of those deleted and any others of ours found
// unused. A route is
// deleted by itself before its object, although deleting the object would
// take the route along: the kernel announces a route it flushes that way
// with no RTM_DELROUTE, and whoever watches routes (we, `ip monitor`,
// other agents) would never learn it is gone.
func (p *pass) delRoutes(desired *State, gone map[string]bool, kr kernelRead, touched map[RouteKey]struct{}) {
	n := p.n
	stale := takeStale(n, func(x *nlIndex) map[RouteKey]nlRoute { return x.routes },
		func(k RouteKey) bool { _, ok := desired.Routes[k]; return ok },
		func(r nlRoute) string { return r.Dev }, gone, touched)
	type del struct {
		k     RouteKey
		r     nlRoute
		stray bool
	}
	var items []del
	var reqs []request
	for k, r := range stale {
		items = append(items, del{k: k, r: r})
		reqs = append(reqs, func() *nl.NetlinkRequest { return routeRequest(r.netlink(), r.nhid, unix.RTM_DELROUTE, 0) })
	}
	for _, r := range kr.strays {
		if !gone[r.Dev] {
			items = append(items, del{r: r, stray: true})
			reqs = append(reqs, func() *nl.NetlinkRequest { return routeRequest(r.netlink(), r.nhid, unix.RTM_DELROUTE, 0) })
		}
	}
	p.unusedNH = kr.nhStrays
	for i, it := range items {
		p.enqueue(reqs[i], func(err error) {
			// EINVAL for a route named with its object: the object is gone
			// ("Nexthop id does not exist"), and its routes went with it.
			if err == nil || alreadyGone(err) || (it.r.nhid != 0 && errors.Is(err, unix.EINVAL)) {
				if err == nil {
					p.changes.RoutesRemoved++
				}
				if it.r.nhid != 0 && !gone[it.r.Dev] {
					n.mu.Lock()
					n.nhFreed = append(n.nhFreed, it.r.nhid)
					n.mu.Unlock()
				}
				return
			}
			p.fail(fmt.Errorf("delete route %s: %w", it.r.Route, err))
			if !it.stray {
				n.withIndex(func(x *nlIndex) {
					if _, ok := x.routes[it.k]; !ok {
						x.routes[it.k] = it.r
					}
				})
			}
		})
		p.flushIfFull()
	}
}

// nhFreeBatch is how many unused nexthop objects may wait for deletion
// (Netlink.nhFreeBatch; a field so that a test can make it small).
const nhFreeBatch = 8192

// delNexthops deletes unused nexthop objects of ours: those a full read
// found, and those freed since (routes deleted, or lost by the kernel) once
// nhFreeBatch have accumulated. Nothing looks at an unused object, so
// deleting it is not worth a write on the way of the changes that matter:
// during a mass leave it would be a fourth write per peer beside the
// route, neighbour and FDB entry. Full passes (start, every
// --resync-period) collect the rest: the strays their read found and
// those their own route deletions freed — a restart among peers that left
// while the daemon was down leaves none of their objects behind until the
// next resync (TestCrashMidBurst); a restart finds the others as strays.
func (p *pass) delNexthops() {
	unused := p.unusedNH
	n := p.n
	n.mu.Lock()
	if p.full || len(n.nhFreed) >= n.nhFreeBatch {
		unused = append(unused, n.nhFreed...)
		n.nhFreed = nil
	}
	n.mu.Unlock()
	nhReqs := make([]request, 0, len(unused))
	for _, id := range unused {
		nhReqs = append(nhReqs, func() *nl.NetlinkRequest { return nexthopDelRequest(id) })
	}
	for i, err := range p.exec(nhReqs) {
		if err != nil && !alreadyGone(err) {
			p.fail(fmt.Errorf("delete unused nexthop %d: %w", unused[i], err))
		}
	}
}

// delStale queues the deletion of the taken stale neighbours or FDB
// entries; at the flush, those whose deletion failed go back into the
// index.
func delStale[K comparable, V any](p *pass, stale map[K]V, m func(*nlIndex) map[K]V, req func(V) *nl.NetlinkRequest, removed *int, fail func(V, error)) {
	for k, v := range stale {
		p.enqueue(func() *nl.NetlinkRequest { return req(v) }, func(err error) {
			switch {
			case err == nil:
				*removed++
			case !alreadyGone(err):
				p.n.withIndex(func(x *nlIndex) {
					if _, ok := m(x)[k]; !ok {
						m(x)[k] = v
					}
				})
				fail(v, err)
			}
		})
		p.flushIfFull()
	}
}

func (p *pass) delNeighs(desired *State, gone map[string]bool, touched map[NeighKey]struct{}) {
	m := func(x *nlIndex) map[NeighKey]nlNeigh { return x.neighs }
	stale := takeStale(p.n, m,
		func(k NeighKey) bool { _, ok := desired.Neighs[k]; return ok },
		func(v nlNeigh) string { return v.Dev }, gone, touched)
	delStale(p, stale, m,
		func(nb nlNeigh) *nl.NetlinkRequest { return neighRequest(nb.netlink(), unix.RTM_DELNEIGH, 0) },
		&p.changes.NeighsRemoved,
		func(nb nlNeigh, err error) { p.fail(fmt.Errorf("delete neighbour %s dev %s: %w", nb.IP, nb.Dev, err)) })
}

func (p *pass) delFDB(desired *State, gone map[string]bool, touched map[FDBKey]struct{}) {
	m := func(x *nlIndex) map[FDBKey]nlFDB { return x.fdb }
	stale := takeStale(p.n, m,
		func(k FDBKey) bool { _, ok := desired.FDB[k]; return ok },
		func(v nlFDB) string { return v.Dev }, gone, touched)
	delStale(p, stale, m,
		func(f nlFDB) *nl.NetlinkRequest { return neighRequest(f.netlink(), unix.RTM_DELNEIGH, 0) },
		&p.changes.FDBRemoved,
		func(f nlFDB, err error) {
			p.fail(fmt.Errorf("delete fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Dev, err))
		})
}
