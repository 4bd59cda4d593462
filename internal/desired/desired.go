// Package desired keeps the desired kernel state for a set of peers
// incrementally: a State (see its doc) that the daemon changes one lease
// event at a time and the dataplane reads in place.
package desired

import (
	"iter"
	"maps"
	"slices"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// State is the desired dataplane state kept up to date incrementally:
// the base (links and objects of our own, from PlanBase), each peer's
// contribution (from Peer) and fallback objects (the daemon's blackhole
// routes) are added and removed one source at a time, and every key whose
// value may have changed is recorded in a dataplane.Delta, so a lease
// event costs what that lease contributes, not what all K peers do.
//
// Two sources may declare the same key (two leases naming one VTEP MAC
// and public IP give identical FDB entries; overlapping leases the same
// neighbour). Exactly one value is desired per key, so the winner is
// fixed by a total order on sources, independent of arrival order: the
// base first, then peers by subnet (v4, then v6, as their store keys
// sort), then the fallback. The losers are remembered, and when the
// winner goes its place is taken by the next in that order — the entry a
// departing lease shared with another is not deleted. backend.Compose
// plans through a State too, so incremental and from-scratch planning
// agree.
//
// Each object is held once: in the contribution that declared it, in a
// slab indexed by a small handle. The per-kind tables map a key to a
// reference into the slab (8 bytes), which is also the key's owner; they
// are what the dataplane reads (State is a dataplane.Wanted), so the
// desired state is never copied into maps of values.
//
// State is not safe for concurrent use; the daemon's control goroutine
// owns it, and Reconcile reads it on that goroutine.
type State struct {
	// srcs is the slab: handle h is srcs[h/slabChunk][h%slabChunk];
	// hBase, hFallback, then peers. Fixed-size chunks grow it without
	// copying it, or holding twice its size, as one slice would.
	srcs [][]contribution
	n    uint32   // handles handed out
	free []uint32 // peer handles to reuse
	// byID finds a peer's handle by its lease ID (Handle, SetPeer,
	// RemovePeer): a reference table like the kinds', so an entry costs 8
	// bytes, the ID being read back from the contribution.
	byID  refTable[lease.ID]
	links map[string]dataplane.Link

	routes claims[dataplane.RouteKey, dataplane.Route]
	neighs claims[dataplane.NeighKey, dataplane.Neigh]
	fdb    claims[dataplane.FDBKey, dataplane.FDB]
	wg     claims[dataplane.WGPeerKey, dataplane.WGPeer]
	udp    claims[dataplane.UDPPeerKey, dataplane.UDPPeer]
}

// contribution is what one source declares, and its place in the order:
// 96 bytes in the slab, beside the objects' own arrays. The lease ID is
// the caller's (the daemon's peer record holds it), not a copy; the kinds
// a vxlan or host-gw peer never declares are behind a pointer.
type contribution struct {
	rank   uint8     // rankBase, rankPeer, rankFallback; rankFree in the free list
	id     *lease.ID // a peer's; nil for the base and the fallback
	routes []dataplane.Route
	neighs []dataplane.Neigh
	fdb    []dataplane.FDB
	rare   *rareObjs // nil when it declares none
}

// rareObjs are the kinds only some backends plan: WireGuard and udp peers.
type rareObjs struct {
	wg  []dataplane.WGPeer
	udp []dataplane.UDPPeer
}

// set makes o the contribution's objects.
func (c *contribution) set(o dataplane.Objects) {
	c.routes, c.neighs, c.fdb, c.rare = o.Routes, o.Neighs, o.FDB, nil
	if len(o.WGPeers)+len(o.UDPPeers) > 0 {
		c.rare = &rareObjs{wg: o.WGPeers, udp: o.UDPPeers}
	}
}

// objects returns the contribution's objects (sharing its arrays).
func (c *contribution) objects() dataplane.Objects {
	o := dataplane.Objects{Routes: c.routes, Neighs: c.neighs, FDB: c.fdb}
	if c.rare != nil {
		o.WGPeers, o.UDPPeers = c.rare.wg, c.rare.udp
	}
	return o
}

const (
	rankBase uint8 = iota
	rankPeer
	rankFallback
	rankFree
)

// The base and the fallback have fixed handles.
const (
	hBase uint32 = iota
	hFallback
)

const slabChunk = 256

// src returns h's contribution.
func (d *State) src(h uint32) *contribution { return &d.srcs[h/slabChunk][h%slabChunk] }

// ref is one object of one contribution: handle h, index i in its kind's
// slice.
type ref struct{ h, i uint32 }

// less orders two objects: by their contributions (see State), then,
// within one, by position (a source declaring a key twice holds it with
// its first object, as Compose would).
func (d *State) less(a, b ref) bool {
	if a.h == b.h {
		return a.i < b.i
	}
	x, y := d.src(a.h), d.src(b.h)
	if x.rank != y.rank {
		return x.rank < y.rank
	}
	return lease.CompareID(*x.id, *y.id) < 0
}

// New returns a State holding base's links and objects, sized
// for about peers peers.
func New(base *dataplane.State, peers int) *State {
	d := &State{
		links: maps.Clone(base.Links),
	}
	d.byID = newRefTable(peers, func(r ref) lease.ID { return *d.src(r.h).id })
	if d.links == nil {
		d.links = map[string]dataplane.Link{}
	}
	d.routes = newClaims(d, peers, dataplane.Route.Key, func(c *contribution) []dataplane.Route { return c.routes },
		func(t *dataplane.Delta) map[dataplane.RouteKey]struct{} { return t.Routes })
	d.neighs = newClaims(d, peers, dataplane.Neigh.Key, func(c *contribution) []dataplane.Neigh { return c.neighs },
		func(t *dataplane.Delta) map[dataplane.NeighKey]struct{} { return t.Neighs })
	d.fdb = newClaims(d, peers, dataplane.FDB.Key, func(c *contribution) []dataplane.FDB { return c.fdb },
		func(t *dataplane.Delta) map[dataplane.FDBKey]struct{} { return t.FDB })
	d.wg = newClaims(d, 0, dataplane.WGPeer.Key, func(c *contribution) []dataplane.WGPeer {
		if c.rare == nil {
			return nil
		}
		return c.rare.wg
	}, func(t *dataplane.Delta) map[dataplane.WGPeerKey]struct{} { return t.WGPeers })
	d.udp = newClaims(d, 0, dataplane.UDPPeer.Key, func(c *contribution) []dataplane.UDPPeer {
		if c.rare == nil {
			return nil
		}
		return c.rare.udp
	}, func(t *dataplane.Delta) map[dataplane.UDPPeerKey]struct{} { return t.UDPPeers })
	// Map order is fine here: the winner of a key does not depend on
	// the order sources are added in.
	var objs dataplane.Objects
	objs.Routes = slices.Collect(maps.Values(base.Routes))
	objs.Neighs = slices.Collect(maps.Values(base.Neighs))
	objs.FDB = slices.Collect(maps.Values(base.FDB))
	objs.WGPeers = slices.Collect(maps.Values(base.WGPeers))
	objs.UDPPeers = slices.Collect(maps.Values(base.UDPPeers))
	d.srcs = make([][]contribution, 0, (2+peers)/slabChunk+1)
	d.alloc(contribution{rank: rankBase}) // hBase
	d.src(hBase).set(objs)
	d.alloc(contribution{rank: rankFallback}) // hFallback
	d.add(hBase, nil)
	return d
}

// Copy copies the desired state into a dataplane.State: O(size), for
// tests and the status page. Reconcile reads the State itself.
func (d *State) Copy() *dataplane.State { return dataplane.StateOf(d) }

// Peers is the number of peers with a contribution.
func (d *State) Peers() int { return int(d.n) - len(d.free) - 2 }

// Handle returns the handle of id's contribution, if it has one.
func (d *State) Handle(id lease.ID) (uint32, bool) {
	r, ok := d.byID.get(id)
	return r.h, ok
}

// AddPeer adds the contribution of a peer that has none (see Handle),
// recording the keys that may have changed in touched (nil: not
// recorded), and returns its handle for UpdatePeer and DropPeer: a small
// number, reused once dropped, that callers may index by. id and objs
// are kept, not copied: the caller must not modify them afterwards (the
// daemon passes the ID in its immutable peer record, which is then held
// once).
func (d *State) AddPeer(id *lease.ID, objs dataplane.Objects, touched *dataplane.Delta) uint32 {
	h := d.alloc(contribution{rank: rankPeer, id: id})
	d.src(h).set(objs)
	d.byID.set(*id, ref{h: h})
	d.add(h, touched)
	return h
}

// UpdatePeer replaces h's contribution with objs, and the ID it holds
// with id (the same lease ID, in the caller's new record; kept as
// AddPeer's). An unchanged contribution (a renewal) touches nothing.
func (d *State) UpdatePeer(h uint32, id *lease.ID, objs dataplane.Objects, touched *dataplane.Delta) {
	c := d.src(h)
	c.id = id
	if c.objects().Equal(objs) {
		return
	}
	d.remove(h, touched)
	c.set(objs)
	d.add(h, touched)
}

// DropPeer withdraws h's contribution; h is free for reuse.
func (d *State) DropPeer(h uint32, touched *dataplane.Delta) {
	d.remove(h, touched)
	d.byID.del(*d.src(h).id)
	*d.src(h) = contribution{rank: rankFree}
	d.free = append(d.free, h)
}

// SetPeer adds or replaces peer's contribution, found by its lease ID.
func (d *State) SetPeer(peer lease.Lease, objs dataplane.Objects, touched *dataplane.Delta) {
	id := peer.ID()
	if h, ok := d.Handle(id); ok {
		d.UpdatePeer(h, &id, objs, touched)
		return
	}
	d.AddPeer(&id, objs, touched)
}

// alloc stores c under a free handle.
func (d *State) alloc(c contribution) uint32 {
	if n := len(d.free); n > 0 {
		h := d.free[n-1]
		d.free = d.free[:n-1]
		*d.src(h) = c
		return h
	}
	h := d.n
	if h%slabChunk == 0 {
		d.srcs = append(d.srcs, make([]contribution, slabChunk))
	}
	d.n++
	*d.src(h) = c
	return h
}

// RemovePeer drops id's contribution, if any.
func (d *State) RemovePeer(id lease.ID, touched *dataplane.Delta) {
	if h, ok := d.Handle(id); ok {
		d.DropPeer(h, touched)
	}
}

// SetFallback replaces the fallback objects: those that apply only where
// neither the base nor a peer declares the key (the daemon's blackhole
// routes for our own subnets, which must never displace a planned route).
func (d *State) SetFallback(objs dataplane.Objects, touched *dataplane.Delta) {
	d.remove(hFallback, touched)
	d.src(hFallback).set(objs)
	d.add(hFallback, touched)
}

// kind is one kind's claims, as add and remove use them.
type kind interface {
	claim(h uint32, touched *dataplane.Delta)
	withdraw(h uint32, touched *dataplane.Delta)
}

func (d *State) kinds() [5]kind { return [5]kind{&d.routes, &d.neighs, &d.fdb, &d.wg, &d.udp} }

// add claims every key of h's objects; remove withdraws them.
func (d *State) add(h uint32, touched *dataplane.Delta) {
	for _, k := range d.kinds() {
		k.claim(h, touched)
	}
}

func (d *State) remove(h uint32, touched *dataplane.Delta) {
	for _, k := range d.kinds() {
		k.withdraw(h, touched)
	}
}

var _ dataplane.Wanted = (*State)(nil)

// WantedLinks implements dataplane.Wanted.
func (d *State) WantedLinks() map[string]dataplane.Link { return d.links }

// WantedRoutes implements dataplane.Wanted.
func (d *State) WantedRoutes() dataplane.Table[dataplane.RouteKey, dataplane.Route] {
	return &d.routes
}

// WantedNeighs implements dataplane.Wanted.
func (d *State) WantedNeighs() dataplane.Table[dataplane.NeighKey, dataplane.Neigh] {
	return &d.neighs
}

// WantedFDB implements dataplane.Wanted.
func (d *State) WantedFDB() dataplane.Table[dataplane.FDBKey, dataplane.FDB] { return &d.fdb }

// WantedWGPeers implements dataplane.Wanted.
func (d *State) WantedWGPeers() dataplane.Table[dataplane.WGPeerKey, dataplane.WGPeer] {
	return &d.wg
}

// WantedUDPPeers implements dataplane.Wanted.
func (d *State) WantedUDPPeers() dataplane.Table[dataplane.UDPPeerKey, dataplane.UDPPeer] {
	return &d.udp
}

// claims tracks, for one kind of object, which contribution's object
// each key holds (live), and the other objects declaring it too.
type claims[K comparable, V any] struct {
	d      *State
	live   refTable[K]
	losers map[K][]ref // only for contested keys
	key    func(V) K
	pick   func(*contribution) []V
	// touched picks this kind's keys from a Delta.
	touched func(*dataplane.Delta) map[K]struct{}
}

func newClaims[K comparable, V any](d *State, n int, key func(V) K, pick func(*contribution) []V,
	touched func(*dataplane.Delta) map[K]struct{}) claims[K, V] {
	keyOf := func(r ref) K { return key(pick(d.src(r.h))[r.i]) }
	return claims[K, V]{d: d, live: newRefTable(n, keyOf), losers: map[K][]ref{}, key: key, pick: pick, touched: touched}
}

// claim and withdraw are add and remove with this kind's touched keys
// (none recorded for a nil Delta).
func (c *claims[K, V]) claim(h uint32, d *dataplane.Delta) { c.add(h, c.touchedIn(d)) }

func (c *claims[K, V]) withdraw(h uint32, d *dataplane.Delta) { c.remove(h, c.touchedIn(d)) }

func (c *claims[K, V]) touchedIn(d *dataplane.Delta) map[K]struct{} {
	if d == nil {
		return nil
	}
	return c.touched(d)
}

func (c *claims[K, V]) value(r ref) V { return c.pick(c.d.src(r.h))[r.i] }

// Get implements dataplane.Table.
func (c *claims[K, V]) Get(k K) (V, bool) {
	r, ok := c.live.get(k)
	if !ok {
		var zero V
		return zero, false
	}
	return c.value(r), true
}

// All implements dataplane.Table.
func (c *claims[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for r := range c.live.all {
			v := c.value(r)
			if !yield(c.key(v), v) {
				return
			}
		}
	}
}

// Len implements dataplane.Table.
func (c *claims[K, V]) Len() int { return c.live.n }

// add claims every key of h's objects of this kind.
func (c *claims[K, V]) add(h uint32, touched map[K]struct{}) {
	for i, v := range c.pick(c.d.src(h)) {
		k, r := c.key(v), ref{h, uint32(i)}
		w, ok := c.live.get(k)
		switch {
		case !ok:
		case c.d.less(r, w):
			c.losers[k] = append(c.losers[k], w)
		default:
			c.losers[k] = append(c.losers[k], r)
			continue
		}
		c.live.set(k, r)
		if touched != nil {
			touched[k] = struct{}{}
		}
	}
}

// remove withdraws h's claims; where h held a key, the next contribution
// in order takes it with its own object.
func (c *claims[K, V]) remove(h uint32, touched map[K]struct{}) {
	for _, v := range c.pick(c.d.src(h)) {
		k := c.key(v)
		w, ok := c.live.get(k)
		if !ok {
			continue
		}
		ls := c.losers[k]
		if w.h != h {
			if i := slices.IndexFunc(ls, func(r ref) bool { return r.h == h }); i >= 0 {
				c.setLosers(k, slices.Delete(ls, i, i+1))
			}
			continue
		}
		if touched != nil {
			touched[k] = struct{}{}
		}
		if len(ls) == 0 {
			c.live.del(k)
			continue
		}
		next := 0
		for i := range ls {
			if c.d.less(ls[i], ls[next]) {
				next = i
			}
		}
		c.live.set(k, ls[next])
		c.setLosers(k, slices.Delete(ls, next, next+1))
	}
}

func (c *claims[K, V]) setLosers(k K, ls []ref) {
	if len(ls) == 0 {
		delete(c.losers, k)
	} else {
		c.losers[k] = ls
	}
}
