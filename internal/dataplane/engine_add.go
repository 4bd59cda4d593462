package dataplane

import (
	"fmt"
	"iter"
)

// The additions phase: desired objects the index lacks or has otherwise
// are written — WireGuard and udp peers first (engine_peers.go), then FDB
// entries, neighbours and routes with their nexthop objects — each
// recorded in the index before its write and restored if the write fails.

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
func queueAdds[K comparable, V comparable](p *pass, m func(*instIndex) table[K, V], items []added[K, V], reqs []request, ok func(added[K, V]), fail func(added[K, V], error)) {
	if len(items) == 0 {
		return
	}
	p.e.withIndex(func(x *instIndex) {
		for _, it := range items {
			m(x).set(it.k, it.want)
		}
	})
	for i, it := range items {
		p.enqueue(reqs[i], func(err error) {
			if err != nil {
				p.e.withIndex(func(x *instIndex) { restoreEntry(m(x), it.k, it.want, it.old, it.had) })
				fail(it, err)
				return
			}
			ok(it)
		})
	}
}

// differ is a desired entry the index does not have as wanted, with the
// entry the index has (had false: none).
type differ[K comparable, V any, I any] struct {
	k   K
	v   V
	old I
	had bool
}

// scanRun is how many unchanged entries differing compares under one
// hold of the index lock.
const scanRun = 256

// differing yields the entries of desired that pass check and that the
// index (m) does not have as wanted (same). It compares them under one
// hold of the index lock per run of unchanged entries, released around
// each yield (where the caller resolves devices and queues writes) and
// every scanRun entries, so an unchanged object costs one map lookup
// while notifications still get the lock. It stops, once ctx ends, before
// the next write.
func differing[K comparable, V any, I any](p *pass, desired iter.Seq2[K, V], m func(*instIndex) table[K, I], check func(K, V) error, same func(I, V) bool) iter.Seq[differ[K, V, I]] {
	return func(yield func(differ[K, V, I]) bool) {
		e := p.e
		if p.stopped() {
			return
		}
		e.mu.Lock()
		idx := m(e.idx) // replaced only by a full read, under pass
		n := 0
		for k, v := range desired {
			if n++; n%scanRun == 0 {
				e.mu.Unlock()
				if p.stopped() {
					return
				}
				e.mu.Lock()
			}
			if err := check(k, v); err != nil {
				p.fail(err)
				continue
			}
			old, had := idx.get(k)
			if had && same(old, v) {
				continue
			}
			e.mu.Unlock()
			if p.stopped() || !yield(differ[K, V, I]{k, v, old, had}) {
				return
			}
			e.mu.Lock()
		}
		e.mu.Unlock()
	}
}

func (p *pass) addFDB(desired iter.Seq2[FDBKey, FDB]) {
	var items []added[FDBKey, instFDB]
	var reqs []request
	for d := range differing(p, desired, fdbTable,
		checkFDB, func(old instFDB, f FDB) bool { return old.FDB == f }) {
		k, f, old, had := d.k, d.v, d.old, d.had
		ifi, err := p.resolve(f.Dev)
		if err != nil {
			p.fail(fmt.Errorf("add fdb %s dst %s: %w", f.MAC, f.Dst, err))
			continue
		}
		want := instFDB{f, ifi}
		items = append(items, added[FDBKey, instFDB]{k, want, old, had})
		reqs = append(reqs, request{op: reqFDBAdd, fdb: want})
		if len(items) == passChunk {
			items, reqs = p.queueFDB(items, reqs)
		}
	}
	p.queueFDB(items, reqs)
}

func (p *pass) queueFDB(items []added[FDBKey, instFDB], reqs []request) ([]added[FDBKey, instFDB], []request) {
	queueAdds(p, fdbTable, items, reqs,
		func(added[FDBKey, instFDB]) { p.changes.FDBAdded++ },
		func(it added[FDBKey, instFDB], err error) {
			f := it.want
			p.fail(fmt.Errorf("add fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Dev, err))
		})
	p.flushIfFull()
	return items[:0], reqs[:0]
}

func (p *pass) addNeighs(desired iter.Seq2[NeighKey, Neigh]) {
	var items []added[NeighKey, instNeigh]
	var reqs []request
	for d := range differing(p, desired, neighTable,
		checkNeigh, func(old instNeigh, nb Neigh) bool { return old.Neigh == nb }) {
		k, nb, old, had := d.k, d.v, d.old, d.had
		ifi, err := p.resolve(nb.Dev)
		if err != nil {
			p.fail(fmt.Errorf("add neighbour %s: %w", nb.IP, err))
			continue
		}
		want := instNeigh{nb, ifi}
		items = append(items, added[NeighKey, instNeigh]{k, want, old, had})
		// `ip neigh replace`: it overwrites a learnt or stale entry for
		// the same address in one write.
		reqs = append(reqs, request{op: reqNeighReplace, neigh: want})
		if len(items) == passChunk {
			items, reqs = p.queueNeighs(items, reqs)
		}
	}
	p.queueNeighs(items, reqs)
}

func (p *pass) queueNeighs(items []added[NeighKey, instNeigh], reqs []request) ([]added[NeighKey, instNeigh], []request) {
	queueAdds(p, neighTable, items, reqs,
		func(added[NeighKey, instNeigh]) { p.changes.NeighsAdded++ },
		func(it added[NeighKey, instNeigh], err error) {
			nb := it.want
			p.fail(fmt.Errorf("set neighbour %s lladdr %s dev %s: %w", nb.IP, nb.MAC, nb.Dev, err))
		})
	p.flushIfFull()
	return items[:0], reqs[:0]
}

func (p *pass) addRoutes(desired iter.Seq2[RouteKey, Route]) {
	e := p.e
	var items []added[RouteKey, instRoute]
	var nhReqs []request
	var nhItems []int // index in items of each nexthop request
	for d := range differing(p, desired, routeTable, checkRoute,
		func(old instRoute, r Route) bool {
			return old.Route == r && old.proto == RouteProtocol && old.prio == routePriority(r)
		}) {
		k, r, old, had := d.k, d.v, d.old, d.had
		prio := routePriority(r)
		ifi := 0 // a blackhole has no device
		if !r.Blackhole {
			var err error
			if ifi, err = p.resolve(r.Dev); err != nil {
				p.fail(fmt.Errorf("add route %s: %w", r.Dst, err))
				continue
			}
		}
		want := instRoute{Route: r, ifindex: ifi, proto: RouteProtocol, prio: prio}
		if e.nhOK && usesNexthop(r) && p.ownLink(r.Dev) {
			// A fresh object even when only the metric changed: the old
			// one goes with the old route.
			want.nhid = e.allocNexthop()
			nhItems = append(nhItems, len(items))
			nhReqs = append(nhReqs, request{op: reqNexthopAdd, route: want})
		}
		items = append(items, added[RouteKey, instRoute]{k, want, old, had})
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
func (p *pass) writeRoutes(items []added[RouteKey, instRoute], nhReqs []request, nhItems []int) {
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
		reqs = append(reqs, request{op: reqRouteReplace, route: it.want})
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
	queueAdds(p, routeTable, kept, reqs,
		func(it added[RouteKey, instRoute]) {
			p.changes.RoutesAdded++
			if !it.had {
				return
			}
			if it.old.prio != it.want.prio {
				cleanups = append(cleanups, cleanup{fmt.Sprintf("route %s metric %d", it.old.Dst, it.old.prio), true})
				dels = append(dels, request{op: reqRouteDel, route: it.old})
			}
			if it.old.nhid != 0 {
				cleanups = append(cleanups, cleanup{what: fmt.Sprintf("nexthop %d of route %s", it.old.nhid, it.old.Dst)})
				dels = append(dels, request{op: reqNexthopDel, route: it.old})
			}
		},
		func(it added[RouteKey, instRoute], err error) {
			p.fail(fmt.Errorf("replace route %s: %w", it.want.Route, err))
			if it.want.nhid != 0 {
				cleanups = append(cleanups, cleanup{what: fmt.Sprintf("nexthop %d", it.want.nhid)})
				dels = append(dels, request{op: reqNexthopDel, route: it.want})
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
