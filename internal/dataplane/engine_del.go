package dataplane

import (
	"errors"
	"fmt"
	"iter"
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
	p.unusedNH = kr.nhStrays
	// Each request is made as its entry is taken, and a chunk flushed at
	// a time: a mass leave of 20,000 peers holds neither all the taken
	// entries nor all their requests.
	del := func(k RouteKey, r instRoute, stray bool) {
		p.enqueue(request{op: reqRouteDel, route: r}, func(err error) {
			// EINVAL for a route named with its object: the object is gone
			// ("Nexthop id does not exist"), and its routes went with it.
			if err == nil || alreadyGone(err) || (r.nhid != 0 && errors.Is(err, syscall.EINVAL)) {
				if err == nil {
					p.changes.RoutesRemoved++
				}
				if r.nhid != 0 && !gone[r.Dev] {
					e.mu.Lock()
					e.nhFreed = append(e.nhFreed, r.nhid)
					e.mu.Unlock()
				}
				return
			}
			p.fail(fmt.Errorf("delete route %s: %w", r.Route, err))
			if !stray {
				e.withIndex(func(x *instIndex) {
					if _, ok := x.routes.get(k); !ok {
						x.routes.set(k, r)
					}
				})
			}
		})
		p.flushIfFull()
	}
	for k, r := range stale(e, routeTable, desired.WantedRoutes(), func(r instRoute) string { return r.Dev }, gone, touched) {
		del(k, r, false)
	}
	for _, r := range kr.strays {
		if !gone[r.Dev] {
			del(RouteKey{}, r, true)
		}
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

// delStale queues the deletion of stale neighbours or FDB entries as
// they are taken; at the flush, those whose deletion failed go back into
// the index.
func delStale[K comparable, V any](p *pass, stale iter.Seq2[K, V], m func(*instIndex) table[K, V], req func(V) request, removed *int, fail func(V, error)) {
	for k, v := range stale {
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
	delStale(p, stale(p.e, m, desired.WantedNeighs(), func(v instNeigh) string { return v.Dev }, gone, touched), m,
		func(nb instNeigh) request { return request{op: reqNeighDel, neigh: nb} },
		&p.changes.NeighsRemoved,
		func(nb instNeigh, err error) {
			p.fail(fmt.Errorf("delete neighbour %s dev %s: %w", nb.IP, nb.Dev, err))
		})
}

func (p *pass) delFDB(desired Wanted, gone map[string]bool, touched map[FDBKey]struct{}) {
	m := fdbTable
	delStale(p, stale(p.e, m, desired.WantedFDB(), func(v instFDB) string { return v.Dev }, gone, touched), m,
		func(f instFDB) request { return request{op: reqFDBDel, fdb: f} },
		&p.changes.FDBRemoved,
		func(f instFDB, err error) {
			p.fail(fmt.Errorf("delete fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Dev, err))
		})
}
