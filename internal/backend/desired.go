package backend

import (
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Desired is the desired dataplane.State kept up to date incrementally:
// the base (links and objects of our own, from PlanBase), each peer's
// contribution (from PlanPeer) and fallback objects (the daemon's
// blackhole routes) are added and removed one source at a time, and every
// key whose value may have changed is recorded in a dataplane.Delta, so a
// lease event costs what that lease contributes, not what all K peers do.
//
// Two sources may declare the same key (two leases naming one VTEP MAC
// and public IP give identical FDB entries; overlapping leases the same
// neighbour). Exactly one value is desired per key, so the winner is
// fixed by a total order on sources, independent of arrival order: the
// base first, then peers by subnet (v4, then v6, as their store keys
// sort), then the fallback. The losers are remembered, and when the
// winner goes its place is taken by the next in that order — the entry a
// departing lease shared with another is not deleted. Plan (Compose) uses
// the same rule, so incremental and from-scratch planning agree.
//
// Desired is not safe for concurrent use; the daemon's control goroutine
// owns it. State returns the live map set, which is mutated in place.
type Desired struct {
	state    *dataplane.State
	base     contribution
	fallback contribution
	peers    map[lease.ID]*contribution

	routes claims[dataplane.RouteKey, dataplane.Route]
	neighs claims[dataplane.NeighKey, dataplane.Neigh]
	fdb    claims[dataplane.FDBKey, dataplane.FDB]
	wg     claims[dataplane.WGPeerKey, dataplane.WGPeer]
	udp    claims[dataplane.UDPPeerKey, dataplane.UDPPeer]
}

// source identifies who declared an object; see Desired for the order.
// Each source exists once, inside its contribution, and the claims refer
// to it by pointer: a key's owner then costs 8 bytes in the claim maps
// instead of the 72 of the value (three maps of K keys each).
type source struct {
	rank uint8 // rankBase, rankPeer or rankFallback
	id   lease.ID
}

// contribution is what one source declares.
type contribution struct {
	src  source
	objs dataplane.Objects
}

const (
	rankBase uint8 = iota
	rankPeer
	rankFallback
)

func (a *source) less(b *source) bool {
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return CompareID(a.id, b.id) < 0
}

// CompareID orders lease IDs by their v4 subnet, then their v6 subnet
// (address, then prefix length): the order of their store keys, and the
// order in which conflicting peers win (the smaller first).
func CompareID(a, b lease.ID) int {
	if c := comparePrefix(a.V4, b.V4); c != 0 {
		return c
	}
	return comparePrefix(a.V6, b.V6)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// NewDesired returns a Desired holding base's links and objects, sized
// for about peers peers.
func NewDesired(base *dataplane.State, peers int) *Desired {
	s := dataplane.NewStateSized(len(base.Links), peers)
	for name, l := range base.Links {
		s.Links[name] = l
	}
	d := &Desired{
		state:  s,
		peers:  make(map[lease.ID]*contribution, peers),
		routes: newClaims[dataplane.RouteKey, dataplane.Route](s.Routes, peers),
		neighs: newClaims[dataplane.NeighKey, dataplane.Neigh](s.Neighs, peers),
		fdb:    newClaims[dataplane.FDBKey, dataplane.FDB](s.FDB, peers),
		wg:     newClaims[dataplane.WGPeerKey, dataplane.WGPeer](s.WGPeers, 0),
		udp:    newClaims[dataplane.UDPPeerKey, dataplane.UDPPeer](s.UDPPeers, 0),
	}
	// Map order is fine here: the winner of a key does not depend on
	// the order sources are added in.
	for _, r := range base.Routes {
		d.base.objs.AddRoute(r)
	}
	for _, n := range base.Neighs {
		d.base.objs.AddNeigh(n)
	}
	for _, f := range base.FDB {
		d.base.objs.AddFDB(f)
	}
	for _, p := range base.WGPeers {
		d.base.objs.AddWGPeer(p)
	}
	for _, p := range base.UDPPeers {
		d.base.objs.AddUDPPeer(p)
	}
	d.base.src = source{rank: rankBase}
	d.fallback.src = source{rank: rankFallback}
	d.add(&d.base.src, d.base.objs, nil)
	return d
}

// State is the desired state. It is live: later calls change it in place,
// so callers on other goroutines must not keep it (copy or render it on
// the owning goroutine instead).
func (d *Desired) State() *dataplane.State { return d.state }

// Peers is the number of peers with a contribution.
func (d *Desired) Peers() int { return len(d.peers) }

// SetPeer replaces peer's contribution with objs, recording the keys that
// may have changed in touched (nil: not recorded). An unchanged
// contribution (a renewal) touches nothing.
func (d *Desired) SetPeer(peer lease.Lease, objs dataplane.Objects, touched *dataplane.Delta) {
	id := peer.ID()
	c, ok := d.peers[id]
	if ok {
		if c.objs.Equal(objs) {
			return
		}
		d.remove(&c.src, c.objs, touched)
	} else {
		c = &contribution{src: source{rank: rankPeer, id: id}}
		d.peers[id] = c
	}
	c.objs = objs
	d.add(&c.src, objs, touched)
}

// RemovePeer drops id's contribution, if any.
func (d *Desired) RemovePeer(id lease.ID, touched *dataplane.Delta) {
	c, ok := d.peers[id]
	if !ok {
		return
	}
	delete(d.peers, id)
	d.remove(&c.src, c.objs, touched)
}

// SetFallback replaces the fallback objects: those that apply only where
// neither the base nor a peer declares the key (the daemon's blackhole
// routes for our own subnets, which must never displace a planned route).
func (d *Desired) SetFallback(objs dataplane.Objects, touched *dataplane.Delta) {
	d.remove(&d.fallback.src, d.fallback.objs, touched)
	d.fallback.objs = objs
	d.add(&d.fallback.src, objs, touched)
}

// objects returns what src declared.
func (d *Desired) objects(src *source) dataplane.Objects {
	switch src.rank {
	case rankBase:
		return d.base.objs
	case rankFallback:
		return d.fallback.objs
	}
	if c, ok := d.peers[src.id]; ok {
		return c.objs
	}
	return dataplane.Objects{}
}

func (d *Desired) add(src *source, o dataplane.Objects, touched *dataplane.Delta) {
	var tr map[dataplane.RouteKey]struct{}
	var tn map[dataplane.NeighKey]struct{}
	var tf map[dataplane.FDBKey]struct{}
	var tw map[dataplane.WGPeerKey]struct{}
	var tu map[dataplane.UDPPeerKey]struct{}
	if touched != nil {
		tr, tn, tf, tw, tu = touched.Routes, touched.Neighs, touched.FDB, touched.WGPeers, touched.UDPPeers
	}
	for _, r := range o.Routes {
		d.routes.add(src, r.Key(), r, tr)
	}
	for _, p := range o.UDPPeers {
		d.udp.add(src, p.Key(), p, tu)
	}
	for _, n := range o.Neighs {
		d.neighs.add(src, n.Key(), n, tn)
	}
	for _, f := range o.FDB {
		d.fdb.add(src, f.Key(), f, tf)
	}
	for _, p := range o.WGPeers {
		d.wg.add(src, p.Key(), p, tw)
	}
}

func (d *Desired) remove(src *source, o dataplane.Objects, touched *dataplane.Delta) {
	var tr map[dataplane.RouteKey]struct{}
	var tn map[dataplane.NeighKey]struct{}
	var tf map[dataplane.FDBKey]struct{}
	var tw map[dataplane.WGPeerKey]struct{}
	var tu map[dataplane.UDPPeerKey]struct{}
	if touched != nil {
		tr, tn, tf, tw, tu = touched.Routes, touched.Neighs, touched.FDB, touched.WGPeers, touched.UDPPeers
	}
	for _, p := range o.UDPPeers {
		d.udp.remove(src, p.Key(), tu, func(s *source) (dataplane.UDPPeer, bool) {
			return find(d.objects(s).UDPPeers, p.Key(), dataplane.UDPPeer.Key)
		})
	}
	for _, r := range o.Routes {
		d.routes.remove(src, r.Key(), tr, func(s *source) (dataplane.Route, bool) {
			return find(d.objects(s).Routes, r.Key(), dataplane.Route.Key)
		})
	}
	for _, n := range o.Neighs {
		d.neighs.remove(src, n.Key(), tn, func(s *source) (dataplane.Neigh, bool) {
			return find(d.objects(s).Neighs, n.Key(), dataplane.Neigh.Key)
		})
	}
	for _, f := range o.FDB {
		d.fdb.remove(src, f.Key(), tf, func(s *source) (dataplane.FDB, bool) {
			return find(d.objects(s).FDB, f.Key(), dataplane.FDB.Key)
		})
	}
	for _, p := range o.WGPeers {
		d.wg.remove(src, p.Key(), tw, func(s *source) (dataplane.WGPeer, bool) {
			return find(d.objects(s).WGPeers, p.Key(), dataplane.WGPeer.Key)
		})
	}
}

// find returns the object with key k among a source's few objects.
func find[K comparable, V any](objs []V, k K, key func(V) K) (V, bool) {
	for _, v := range objs {
		if key(v) == k {
			return v, true
		}
	}
	var zero V
	return zero, false
}

// claims tracks, for one kind of object, which source's value each key
// holds in the live map, and the other sources that declare it too.
type claims[K comparable, V any] struct {
	live   map[K]V
	winner map[K]*source
	losers map[K][]*source // only for contested keys
}

func newClaims[K comparable, V any](live map[K]V, n int) claims[K, V] {
	return claims[K, V]{live: live, winner: make(map[K]*source, n), losers: map[K][]*source{}}
}

func (c *claims[K, V]) add(src *source, k K, v V, touched map[K]struct{}) {
	w, ok := c.winner[k]
	switch {
	case !ok:
		c.winner[k] = src
	case src.less(w):
		c.losers[k] = append(c.losers[k], w)
		c.winner[k] = src
	default:
		c.losers[k] = append(c.losers[k], src)
		return
	}
	c.live[k] = v
	if touched != nil {
		touched[k] = struct{}{}
	}
}

// remove withdraws src's claim on k; if src held it, the next source in
// order takes it with its own value (value looks it up).
func (c *claims[K, V]) remove(src *source, k K, touched map[K]struct{}, value func(*source) (V, bool)) {
	w, ok := c.winner[k]
	if !ok {
		return
	}
	ls := c.losers[k]
	if w != src {
		if i := slices.Index(ls, src); i >= 0 {
			ls = slices.Delete(ls, i, i+1)
			c.setLosers(k, ls)
		}
		return
	}
	if touched != nil {
		touched[k] = struct{}{}
	}
	if len(ls) == 0 {
		delete(c.winner, k)
		delete(c.live, k)
		return
	}
	next := 0
	for i := range ls {
		if ls[i].less(ls[next]) {
			next = i
		}
	}
	w = ls[next]
	c.setLosers(k, slices.Delete(ls, next, next+1))
	c.winner[k] = w
	if v, ok := value(w); ok {
		c.live[k] = v
	} else { // cannot happen: a loser's claim comes from its objects
		delete(c.winner, k)
		delete(c.live, k)
	}
}

func (c *claims[K, V]) setLosers(k K, ls []*source) {
	if len(ls) == 0 {
		delete(c.losers, k)
	} else {
		c.losers[k] = ls
	}
}

// Compose plans the complete desired state for self and peers: PlanBase,
// then every peer's objects, with Desired's winner rule for keys declared
// twice; peers that Peer refuses are left out. It is what Desired reaches
// one event at a time, so table tests of it cover the per-peer planners
// the daemon uses.
func Compose(b Backend, self lease.Lease, peers []lease.Lease) *dataplane.State {
	d := NewDesired(b.PlanBase(self), len(peers))
	for _, p := range peers {
		if objs, err := b.Peer(self, p); err == nil {
			d.SetPeer(p, objs, nil)
		}
	}
	return d.State()
}
