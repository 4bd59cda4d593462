package dataplane

import (
	"iter"
	"net/netip"
)

// table is one kind of object in the index. Links, WireGuard peers and
// udp entries are few and kept in plain maps; routes, neighbours and FDB
// entries, one or more per peer, are packed: the map's key is packed
// (addresses in 17 bytes, device names as small numbers) and its value
// stores only what the key does not already say, in fixed-size fields;
// get hands out the whole entry again. Per peer that is 120 bytes of map
// slots where whole keys and entries took 304.
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

// packed is a table that stores each entry V as S under a packed key
// PK: key and unkey convert keys, pack and unpack entries (unpack given
// the key back).
type packed[K comparable, V any, PK comparable, S any] struct {
	m      map[PK]S
	key    func(K) PK
	unkey  func(PK) K
	pack   func(V) S
	unpack func(K, S) V
}

func (t *packed[K, V, PK, S]) get(k K) (V, bool) {
	s, ok := t.m[t.key(k)]
	if !ok {
		var zero V
		return zero, false
	}
	return t.unpack(k, s), true
}

func (t *packed[K, V, PK, S]) set(k K, v V) { t.m[t.key(k)] = t.pack(v) }
func (t *packed[K, V, PK, S]) del(k K)      { delete(t.m, t.key(k)) }
func (t *packed[K, V, PK, S]) size() int    { return len(t.m) }

func (t *packed[K, V, PK, S]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for pk, s := range t.m {
			k := t.unkey(pk)
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

// addr16 is an address in 17 bytes (netip.Addr takes 24): its 16
// bytes (IPv4 mapped) and its family, 0 for the invalid address. Zones
// are not kept: no address the kernel reports to us has one.
type addr16 struct {
	a   [16]byte
	fam uint8
}

func packAddr(a netip.Addr) addr16 {
	switch {
	case !a.IsValid():
		return addr16{}
	case a.Is4():
		return addr16{a.As16(), 4}
	}
	return addr16{a.As16(), 6}
}

func (p addr16) addr() netip.Addr {
	switch p.fam {
	case 0:
		return netip.Addr{}
	case 4:
		return netip.AddrFrom16(p.a).Unmap()
	}
	return netip.AddrFrom16(p.a)
}

// devIDs numbers the device names an index's packed keys mention: a
// handful (ours, and the underlay's for host-gw routes), never forgotten.
type devIDs struct {
	names []string
	ids   map[string]uint16
}

func (d *devIDs) id(name string) uint16 {
	if i, ok := d.ids[name]; ok {
		return i
	}
	if d.ids == nil {
		d.ids = map[string]uint16{}
	}
	i := uint16(len(d.names))
	d.names = append(d.names, name)
	d.ids[name] = i
	return i
}

func (d *devIDs) name(i uint16) string { return d.names[i] }

// routeKey16 is a RouteKey packed: 18 bytes for 32.
type routeKey16 struct {
	dst  addr16
	bits uint8
}

// packedRoute is an indexed route without its destination (the key).
type packedRoute struct {
	ifindex   int32
	prio      uint32 // the kernel's metric is a u32
	nhid      uint32
	gw        addr16
	dev       uint16
	proto     uint8 // rtm_protocol is a u8
	onLink    bool
	blackhole bool
}

func newRouteTable(d *devIDs) *packed[RouteKey, instRoute, routeKey16, packedRoute] {
	return &packed[RouteKey, instRoute, routeKey16, packedRoute]{
		m:     map[routeKey16]packedRoute{},
		key:   func(k RouteKey) routeKey16 { return routeKey16{packAddr(k.Dst.Addr()), uint8(k.Dst.Bits())} },
		unkey: func(p routeKey16) RouteKey { return RouteKey{netip.PrefixFrom(p.dst.addr(), int(p.bits))} },
		pack: func(r instRoute) packedRoute {
			return packedRoute{gw: packAddr(r.Gw), dev: d.id(r.Dev), ifindex: int32(r.ifindex), prio: uint32(r.prio),
				nhid: r.nhid, proto: uint8(r.proto), onLink: r.OnLink, blackhole: r.Blackhole}
		},
		unpack: func(k RouteKey, p packedRoute) instRoute {
			return instRoute{Route: Route{Dst: k.Dst, Gw: p.gw.addr(), Dev: d.name(p.dev), OnLink: p.onLink, Blackhole: p.blackhole},
				ifindex: int(p.ifindex), proto: int(p.proto), prio: int(p.prio), nhid: p.nhid}
		},
	}
}

// neighKey16 is a NeighKey packed: 19 bytes for 40.
type neighKey16 struct {
	ip  addr16
	dev uint16
}

// packedNeigh is an indexed neighbour without its device and address
// (the key).
type packedNeigh struct {
	ifindex int32
	mac     MAC
}

func newNeighTable(d *devIDs) *packed[NeighKey, instNeigh, neighKey16, packedNeigh] {
	return &packed[NeighKey, instNeigh, neighKey16, packedNeigh]{
		m:     map[neighKey16]packedNeigh{},
		key:   func(k NeighKey) neighKey16 { return neighKey16{packAddr(k.IP), d.id(k.Dev)} },
		unkey: func(p neighKey16) NeighKey { return NeighKey{Dev: d.name(p.dev), IP: p.ip.addr()} },
		pack:  func(n instNeigh) packedNeigh { return packedNeigh{mac: n.MAC, ifindex: int32(n.ifindex)} },
		unpack: func(k NeighKey, p packedNeigh) instNeigh {
			return instNeigh{Neigh: Neigh{Dev: k.Dev, IP: k.IP, MAC: p.mac}, ifindex: int(p.ifindex)}
		},
	}
}

// fdbKey16 is an FDBKey packed: 25 bytes for 48.
type fdbKey16 struct {
	dst addr16
	mac MAC
	dev uint16
}

// An indexed FDB entry is its key and its device's ifindex.
func newFDBTable(d *devIDs) *packed[FDBKey, instFDB, fdbKey16, int32] {
	return &packed[FDBKey, instFDB, fdbKey16, int32]{
		m:      map[fdbKey16]int32{},
		key:    func(k FDBKey) fdbKey16 { return fdbKey16{packAddr(k.Dst), k.MAC, d.id(k.Dev)} },
		unkey:  func(p fdbKey16) FDBKey { return FDBKey{Dev: d.name(p.dev), MAC: p.mac, Dst: p.dst.addr()} },
		pack:   func(f instFDB) int32 { return int32(f.ifindex) },
		unpack: func(k FDBKey, i int32) instFDB { return instFDB{FDB: k, ifindex: int(i)} },
	}
}

func routeTable(x *instIndex) table[RouteKey, instRoute] { return x.routes }
func neighTable(x *instIndex) table[NeighKey, instNeigh] { return x.neighs }
func fdbTable(x *instIndex) table[FDBKey, instFDB]       { return x.fdb }
