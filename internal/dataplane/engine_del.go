package dataplane

import (
	"errors"
	"fmt"
	"syscall"
)

// The deletions phase: objects of ours that desired lacks (in a delta
// pass, only touched ones) are taken out of the index and deleted —
// routes, neighbours, FDB entries, then peers (engine_peers.go) and
// unused nexthop objects — except those on links about to be deleted,
// which go with their device.

// delRoutes deletes the routes desired no longer has, and leaves to
// delNexthops the objects of those deleted and any others of ours found
// unused. A route is
// deleted by itself before its object, although deleting the object would
// take the route along: the kernel announces a route it flushes that way
// with no RTM_DELROUTE, and whoever watches routes (we, `ip monitor`,
// other agents) would never learn it is gone.
func (p *pass) delRoutes(desired Wanted, gone map[string]bool, kr kernelRead, touched map[RouteKey]struct{}) {
	e := p.e
	stale := takeStale(e, routeTable,
		desired.WantedRoutes(),
		func(r instRoute) string { return r.Dev }, gone, touched)
	type del struct {
		k     RouteKey
		r     instRoute
		stray bool
	}
	var items []del
	var reqs []request
	for _, s := range stale {
		items = append(items, del{k: s.k, r: s.v})
		reqs = append(reqs, request{op: reqRouteDel, route: s.v})
	}
	for _, r := range kr.strays {
		if !gone[r.Dev] {
			items = append(items, del{r: r, stray: true})
			reqs = append(reqs, request{op: reqRouteDel, route: r})
		}
	}
	p.unusedNH = kr.nhStrays
	for i, it := range items {
		p.enqueue(reqs[i], func(err error) {
			// EINVAL for a route named with its object: the object is gone
			// ("Nexthop id does not exist"), and its routes went with it.
			if err == nil || alreadyGone(err) || (it.r.nhid != 0 && errors.Is(err, syscall.EINVAL)) {
				if err == nil {
					p.changes.RoutesRemoved++
				}
				if it.r.nhid != 0 && !gone[it.r.Dev] {
					e.mu.Lock()
					e.nhFreed = append(e.nhFreed, it.r.nhid)
					e.mu.Unlock()
				}
				return
			}
			p.fail(fmt.Errorf("delete route %s: %w", it.r.Route, err))
			if !it.stray {
				e.withIndex(func(x *instIndex) {
					if _, ok := x.routes.get(it.k); !ok {
						x.routes.set(it.k, it.r)
					}
				})
			}
		})
		p.flushIfFull()
	}
}

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
	e := p.e
	e.mu.Lock()
	if p.full || len(e.nhFreed) >= e.nhFreeBatch {
		unused = append(unused, e.nhFreed...)
		e.nhFreed = nil
	}
	e.mu.Unlock()
	nhReqs := make([]request, 0, len(unused))
	for _, id := range unused {
		nhReqs = append(nhReqs, request{op: reqNexthopDel, route: instRoute{nhid: id}})
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
func delStale[K comparable, V any](p *pass, stale []entry[K, V], m func(*instIndex) table[K, V], req func(V) request, removed *int, fail func(V, error)) {
	for _, s := range stale {
		k, v := s.k, s.v
		p.enqueue(req(v), func(err error) {
			switch {
			case err == nil:
				*removed++
			case !alreadyGone(err):
				p.e.withIndex(func(x *instIndex) {
					if _, ok := m(x).get(k); !ok {
						m(x).set(k, v)
					}
				})
				fail(v, err)
			}
		})
		p.flushIfFull()
	}
}

func (p *pass) delNeighs(desired Wanted, gone map[string]bool, touched map[NeighKey]struct{}) {
	m := neighTable
	stale := takeStale(p.e, m,
		desired.WantedNeighs(),
		func(v instNeigh) string { return v.Dev }, gone, touched)
	delStale(p, stale, m,
		func(nb instNeigh) request { return request{op: reqNeighDel, neigh: nb} },
		&p.changes.NeighsRemoved,
		func(nb instNeigh, err error) {
			p.fail(fmt.Errorf("delete neighbour %s dev %s: %w", nb.IP, nb.Dev, err))
		})
}

func (p *pass) delFDB(desired Wanted, gone map[string]bool, touched map[FDBKey]struct{}) {
	m := fdbTable
	stale := takeStale(p.e, m,
		desired.WantedFDB(),
		func(v instFDB) string { return v.Dev }, gone, touched)
	delStale(p, stale, m,
		func(f instFDB) request { return request{op: reqFDBDel, fdb: f} },
		&p.changes.FDBRemoved,
		func(f instFDB, err error) {
			p.fail(fmt.Errorf("delete fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Dev, err))
		})
}
