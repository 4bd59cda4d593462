package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// engine is the one reconcile algorithm, over a kernel (kernel.go): the
// index of what it installed, the phases of a pass (links; then additions
// FDB → neighbour → route; then deletions the other way round; nexthop
// objects; vanished links), the delta shortcut and its fallbacks. Netlink
// runs it over the real kernel, Fake over a simulated one. Its files go
// by phase: engine_links.go, engine_add.go, engine_del.go, and the index
// in engine_index.go.
//
// The index is shared by Reconcile and whoever watches the kernel for
// drift (Netlink.Subscribe, Fake's drift). Reconcile updates an entry
// before the write that makes it true and restores it if the write fails,
// so the notification our own write causes finds the index already
// agreeing and is ignored.
type engine struct {
	log  *slog.Logger
	kern kernel

	pass sync.Mutex // serialises Reconcile calls

	mu  sync.Mutex // guards idx and nhFreed
	idx *instIndex

	// resync is set when a notification (or a write's outcome) may have
	// been lost; the next Reconcile then re-reads the kernel even if not
	// asked to.
	resync atomic.Bool

	// nhOK: IPv4 gateway routes on our VXLAN devices go through nexthop
	// objects (nexthop_linux.go). nextNH and nhForeign are used under
	// pass; nhFreed (under mu) are objects of ours that no route uses any
	// more, deleted in bulk (see delNexthops).
	nhOK        bool
	nextNH      uint32
	nhForeign   map[uint32]struct{}
	nhFreed     []uint32
	nhFreeBatch int
}

func newEngine(log *slog.Logger, k kernel) *engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &engine{log: log, kern: k, idx: newIndex(), nhFreeBatch: nhFreeBatch, nhOK: k.nexthops()}
}

// Reconcile implements Reconciler.
func (e *engine) Reconcile(ctx context.Context, desired Wanted, full bool) (Changes, error) {
	return e.reconcile(ctx, desired, full, nil)
}

// ReconcileDelta implements Reconciler.
func (e *engine) ReconcileDelta(ctx context.Context, desired Wanted, touched *Delta) (Changes, error) {
	if touched == nil {
		touched = &Delta{} // nothing touched: links only
	}
	return e.reconcile(ctx, desired, false, touched)
}

// reconcile is Reconcile (touched nil: every key of desired and of the
// index) and ReconcileDelta (only the touched keys).
func (e *engine) reconcile(ctx context.Context, desired Wanted, full bool, touched *Delta) (Changes, error) {
	if desired == nil {
		return Changes{}, errors.New("reconcile: nil desired state")
	}
	e.pass.Lock()
	defer e.pass.Unlock()
	e.forgetEnded()
	p := &pass{e: e, ctx: ctx, ifindex: map[string]int{}}
	if e.resync.Swap(false) {
		// A notification may have been lost: the index cannot be trusted
		// for untouched keys either.
		full = true
	}
	if full {
		touched = nil
	}
	var kr kernelRead
	if full {
		var err error
		if kr, err = e.readAll(desired); err != nil {
			return Changes{}, err
		}
		p.ifindex, p.full = kr.byName, true
	}

	links := desired.WantedLinks()
	for _, name := range slices.Sorted(maps.Keys(links)) {
		if p.stopped() {
			break
		}
		if err := checkLink(name, links[name]); err != nil {
			p.fail(err)
			continue
		}
		p.ensureLink(links[name])
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
	p.addWGPeers(entries(desired.WantedWGPeers(), tw))
	p.addUDPPeers(entries(desired.WantedUDPPeers(), tu))
	p.addFDB(entries(desired.WantedFDB(), tf))
	p.addNeighs(entries(desired.WantedNeighs(), tn))
	p.addRoutes(entries(desired.WantedRoutes(), tr))
	e.kern.settled()
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

// readAll replaces the index by a full read of our links (those indexed
// and those desired) and what concerns us.
func (e *engine) readAll(desired Wanted) (kernelRead, error) {
	names := map[string]bool{}
	e.mu.Lock()
	for name := range e.idx.links {
		names[name] = true
	}
	e.mu.Unlock()
	for name := range desired.WantedLinks() {
		names[name] = true
	}
	x, kr, err := e.kern.read(names)
	if err != nil {
		e.resync.Store(true)
		return kr, fmt.Errorf("reconcile: %w", err)
	}
	e.mu.Lock()
	e.idx = x
	e.nhFreed = nil // the read finds every unused object of ours
	e.mu.Unlock()
	if e.nhOK {
		e.nhForeign = kr.nhForeign
		if kr.nhMax >= nexthopIDBase {
			e.nextNH = max(e.nextNH, kr.nhMax-nexthopIDBase+1)
		}
	}
	return kr, nil
}

// pass is one Reconcile call's working state.
type pass struct {
	e       *engine
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
	// q are the writes queued for the next flush, and done what to do
	// with each one's outcome.
	q    []request
	done []func(error)
}

func (p *pass) fail(err error) { p.errs = append(p.errs, err) }

// stopped reports (once, as an error) that ctx ended; kernel writes are
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
	l, ok := lookup(p.e, func(x *instIndex) map[string]instLink { return x.links }, dev)
	return ok && l.Kind == KindVXLAN
}

// resolve returns dev's ifindex, preferring our own links' (which may have
// just been recreated).
func (p *pass) resolve(dev string) (int, error) {
	if l, ok := lookup(p.e, func(x *instIndex) map[string]instLink { return x.links }, dev); ok {
		return l.index, nil
	}
	i, ok := p.ifindex[dev]
	if !ok {
		var err error
		if i, err = p.e.kern.ifindex(dev); err != nil {
			return 0, err
		}
		p.ifindex[dev] = i
	}
	if i == 0 {
		return 0, fmt.Errorf("device %s: %w", dev, ErrNoDevice)
	}
	return i, nil
}

// exec sends requests to the kernel and returns each one's outcome. An
// outcome that got lost leaves the kernel's state unknown: the next pass
// then re-reads it.
func (p *pass) exec(reqs []request) []error {
	if len(reqs) == 0 {
		return nil
	}
	errs, lost := p.e.kern.exec(reqs)
	if lost {
		p.e.resync.Store(true)
	}
	return errs
}

// enqueue queues a write for the pass's next flush, and what to do with
// its outcome.
func (p *pass) enqueue(req request, done func(error)) {
	p.q = append(p.q, req)
	p.done = append(p.done, done)
}

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
	reqs, done := p.q, p.done
	p.q, p.done = nil, nil
	for i, err := range p.exec(reqs) {
		done[i](err)
	}
	// The next chunk reuses the buffers (unless an outcome queued more):
	// a mass leave's chunks would otherwise grow new ones each time, a
	// quarter of what the daemon allocates then.
	if p.q == nil {
		clear(done) // what the closures hold
		p.q, p.done = reqs[:0], done[:0]
	}
}

// The nexthop IDs we allocate start at nexthopIDBase: the kernel's
// nexthop ID space is shared by every program in the namespace (FRR
// allocates its own from low numbers), and ours are created exclusively,
// so a clash is an error on our side, never an overwrite.
const (
	nexthopIDBase uint32 = 0x57000000
	nexthopIDSpan uint32 = 1 << 24
)

// nhFreeBatch is how many unused nexthop objects may wait for deletion
// (engine.nhFreeBatch; a field so that a test can make it small).
const nhFreeBatch = 8192

// usesNexthop reports whether Reconcile installs r through a nexthop
// object when nexthops are enabled.
func usesNexthop(r Route) bool {
	return !r.Blackhole && r.Dst.Addr().Is4() && r.Gw.IsValid() && r.Gw.Is4()
}

// allocNexthop returns the next ID of our range that no other program's
// object had at the last full read. IDs are handed out in sequence from
// past the highest of ours found, so one of ours is met again only after
// 2^24 allocations; the exclusive create then fails and the route is
// retried with the next ID on the following pass. Called under pass.
func (e *engine) allocNexthop() uint32 {
	for {
		id := nexthopIDBase + e.nextNH%nexthopIDSpan
		e.nextNH++
		if _, used := e.nhForeign[id]; !used {
			return id
		}
	}
}
