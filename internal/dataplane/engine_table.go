package dataplane

import (
	"iter"
	"net/netip"
)

// table is one kind of object in the index. Links, WireGuard peers and
// udp entries are few and kept in plain maps; routes, neighbours and FDB
// entries, one or more per peer, are packed: the map stores only what
// the key does not already say, in fixed-size fields, and get hands out
// the whole entry again. At 20,000 peers that is 5 MB less than storing
// the entries whole beside their keys.
type table[K comparable, V any] interface {
	get(k K) (V, bool)
	set(k K, v V)
	del(k K)
	all() iter.Seq2[K, V]
	size() int
}

// plain is a table over a map.
type plain[K comparable, V any] map[K]V

func (m plain[K, V]) get(k K) (V, bool) { v, ok := m[k]; return v, ok }
func (m plain[K, V]) set(k K, v V)      { m[k] = v }
func (m plain[K, V]) del(k K)           { delete(m, k) }
func (m plain[K, V]) size() int         { return len(m) }
func (m plain[K, V]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for k, v := range m {
			if !yield(k, v) {
				return
			}
		}
	}
}

// packed is a table storing S for each entry V (pack and unpack convert,
// unpack given the key back).
type packed[K comparable, V any, S any] struct {
	m      map[K]S
	pack   func(V) S
	unpack func(K, S) V
}

func (t *packed[K, V, S]) get(k K) (V, bool) {
	s, ok := t.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	return t.unpack(k, s), true
}

func (t *packed[K, V, S]) set(k K, v V) { t.m[k] = t.pack(v) }
func (t *packed[K, V, S]) del(k K)      { delete(t.m, k) }
func (t *packed[K, V, S]) size() int    { return len(t.m) }

func (t *packed[K, V, S]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for k, s := range t.m {
			if !yield(k, t.unpack(k, s)) {
				return
			}
		}
	}
}

// deleteFunc deletes the entries f returns true for.
func deleteFunc[K comparable, V any](t table[K, V], f func(K, V) bool) {
	for k, v := range t.all() {
		if f(k, v) {
			t.del(k)
		}
	}
}

// taken deletes k from t and reports whether it was there.
func taken[K comparable, V any](t table[K, V], k K) bool {
	_, ok := t.get(k)
	t.del(k)
	return ok
}

// packedRoute is an indexed route without its destination (the key).
type packedRoute struct {
	gw        netip.Addr
	dev       string
	ifindex   int32
	prio      uint32 // the kernel's metric is a u32
	nhid      uint32
	proto     uint8 // rtm_protocol is a u8
	onLink    bool
	blackhole bool
}

func newRouteTable() *packed[RouteKey, instRoute, packedRoute] {
	return &packed[RouteKey, instRoute, packedRoute]{
		m: map[RouteKey]packedRoute{},
		pack: func(r instRoute) packedRoute {
			return packedRoute{gw: r.Gw, dev: r.Dev, ifindex: int32(r.ifindex), prio: uint32(r.prio), nhid: r.nhid,
				proto: uint8(r.proto), onLink: r.OnLink, blackhole: r.Blackhole}
		},
		unpack: func(k RouteKey, p packedRoute) instRoute {
			return instRoute{Route: Route{Dst: k.Dst, Gw: p.gw, Dev: p.dev, OnLink: p.onLink, Blackhole: p.blackhole},
				ifindex: int(p.ifindex), proto: int(p.proto), prio: int(p.prio), nhid: p.nhid}
		},
	}
}

// packedNeigh is an indexed neighbour without its device and address
// (the key).
type packedNeigh struct {
	mac     MAC
	ifindex int32
}

func newNeighTable() *packed[NeighKey, instNeigh, packedNeigh] {
	return &packed[NeighKey, instNeigh, packedNeigh]{
		m:    map[NeighKey]packedNeigh{},
		pack: func(n instNeigh) packedNeigh { return packedNeigh{mac: n.MAC, ifindex: int32(n.ifindex)} },
		unpack: func(k NeighKey, p packedNeigh) instNeigh {
			return instNeigh{Neigh: Neigh{Dev: k.Dev, IP: k.IP, MAC: p.mac}, ifindex: int(p.ifindex)}
		},
	}
}

// An indexed FDB entry is its key and its device's ifindex.
func newFDBTable() *packed[FDBKey, instFDB, int32] {
	return &packed[FDBKey, instFDB, int32]{
		m:      map[FDBKey]int32{},
		pack:   func(f instFDB) int32 { return int32(f.ifindex) },
		unpack: func(k FDBKey, i int32) instFDB { return instFDB{FDB: k, ifindex: int(i)} },
	}
}

func routeTable(x *instIndex) table[RouteKey, instRoute] { return x.routes }
func neighTable(x *instIndex) table[NeighKey, instNeigh] { return x.neighs }
func fdbTable(x *instIndex) table[FDBKey, instFDB]       { return x.fdb }
