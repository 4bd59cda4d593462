package dataplane

import (
	"net/netip"
	"testing"
)

// TestPackedTablesRoundTrip: what a packed table hands out is what was
// stored, for every shape of entry the index holds.
func TestPackedTablesRoundTrip(t *testing.T) {
	x := newIndex()
	routes := []instRoute{
		{Route: Route{Dst: netip.MustParsePrefix("10.5.2.0/24"), Gw: netip.MustParseAddr("10.5.2.0"), Dev: "flannel.1", OnLink: true}, ifindex: 7, proto: RouteProtocol, nhid: nexthopIDBase + 3},
		{Route: Route{Dst: netip.MustParsePrefix("10.5.3.0/24"), Gw: netip.MustParseAddr("192.168.0.3"), Dev: "eth0"}, ifindex: 2, proto: 4, prio: 100},
		{Route: Route{Dst: netip.MustParsePrefix("10.5.4.0/24"), Blackhole: true}, proto: RouteProtocol, prio: metricInt(BlackholeMetric)},
		{Route: Route{Dst: netip.MustParsePrefix("fd00:5:2::/64"), Gw: netip.MustParseAddr("fd00:5:2::"), Dev: "flannel-v6.1", OnLink: true}, ifindex: 8, proto: RouteProtocol, prio: 1024},
		{Route: Route{Dst: netip.MustParsePrefix("::ffff:10.0.0.0/104"), Gw: netip.MustParseAddr("::ffff:10.0.0.1"), Dev: "eth0"}, ifindex: 2, proto: RouteProtocol, prio: 1024},
		{Route: Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "flannel.1"}, ifindex: 7},
	}
	for _, r := range routes {
		x.routes.set(r.Key(), r)
	}
	for _, r := range routes {
		if got, ok := x.routes.get(r.Key()); !ok || got != r {
			t.Errorf("route %s: got %+v %v, want %+v", r.Route, got, ok, r)
		}
	}
	n := 0
	for k, r := range x.routes.all() {
		if k != r.Key() {
			t.Errorf("route under key %v is %v", k, r.Route)
		}
		n++
	}
	if n != len(routes) {
		t.Errorf("all yields %d routes, want %d", n, len(routes))
	}

	neighs := []instNeigh{
		{Neigh{Dev: "flannel.1", IP: netip.MustParseAddr("10.5.2.0"), MAC: MAC{2, 1, 2, 3, 4, 5}}, 7},
		{Neigh{Dev: "flannel-v6.1", IP: netip.MustParseAddr("fd00:5:2::"), MAC: MAC{2, 9, 9, 9, 9, 9}}, 8},
	}
	for _, nb := range neighs {
		x.neighs.set(nb.Key(), nb)
	}
	fdb := []instFDB{
		{FDB{Dev: "flannel.1", MAC: MAC{2, 1, 2, 3, 4, 5}, Dst: netip.MustParseAddr("192.168.0.2")}, 7},
		{FDB{Dev: "flannel-v6.1", MAC: MAC{2, 9, 9, 9, 9, 9}, Dst: netip.MustParseAddr("2001:db8::2")}, 8},
	}
	for _, f := range fdb {
		x.fdb.set(f.Key(), f)
	}
	for _, nb := range neighs {
		if got, ok := x.neighs.get(nb.Key()); !ok || got != nb {
			t.Errorf("neighbour %v: got %+v %v", nb.Neigh, got, ok)
		}
	}
	for _, f := range fdb {
		if got, ok := x.fdb.get(f.Key()); !ok || got != f {
			t.Errorf("fdb %v: got %+v %v", f.FDB, got, ok)
		}
	}
	if _, ok := x.neighs.get(NeighKey{Dev: "cni0", IP: netip.MustParseAddr("10.5.2.0")}); ok {
		t.Error("a neighbour found on another device")
	}
	x.dropDev("flannel.1")
	if x.routes.size() != 4 || x.neighs.size() != 1 || x.fdb.size() != 1 {
		t.Errorf("after dropping flannel.1: %d routes, %d neighbours, %d fdb entries; want 4, 1, 1",
			x.routes.size(), x.neighs.size(), x.fdb.size())
	}
}
