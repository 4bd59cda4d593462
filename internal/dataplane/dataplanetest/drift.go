package dataplanetest

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
)

func testDrift(t *testing.T, h Harness) {
	tp := setup(t, h)
	want := tp.State()
	h.DeleteRoute(dataplane.RouteKey{Dst: Subnet4(1)})
	h.DeleteRoute(dataplane.RouteKey{Dst: Subnet4(3)}) // on the underlay
	h.DeleteNeigh(dataplane.NeighKey{Dev: Dev6, IP: Subnet6(1).Addr()})
	for f := range want.FDB {
		if f.Dev == Dev4 && f.MAC[4] == 2 {
			h.DeleteFDB(f)
		}
	}
	WantChanges(t, "non-full", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})
	if cmp.Equal(want.Lines(), h.Dump(Dev4, Dev6).Lines()) {
		t.Fatal("drift did not happen")
	}
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true),
		dataplane.Changes{RoutesAdded: 2, NeighsAdded: 1, FDBAdded: 1})
	WantKernel(t, h, want)
}

func testLinkDeleted(t *testing.T, h Harness) {
	tp := setup(t, h)
	h.DeleteLink(Dev4)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), tp.State(), true),
		dataplane.Changes{LinksAdded: 1, RoutesAdded: 2, NeighsAdded: 2, FDBAdded: 2})
	WantKernel(t, h, tp.State())
}

// stale adds objects a full reconcile must collect (ours: on our devices,
// or carrying our protocol) and a foreign route it must leave alone; it
// returns the foreign route's destination.
func stale(h Harness, tp *Topology) netip.Prefix {
	u := h.Underlay()
	mac := dataplane.MAC{0x02, 0x44, 0, 0, 9, 9}
	h.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.99.0.0/24"), Dev: Dev4}, false)
	h.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("fd10:99::/64"), Dev: Dev6}, true)
	h.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.98.0.0/24"), Gw: tp.peerPublic(u.Addr4, 8), Dev: u.Name}, true)
	h.AddNeigh(dataplane.Neigh{Dev: Dev4, IP: netip.MustParseAddr("10.244.9.0"), MAC: mac})
	h.AddFDB(dataplane.FDB{Dev: Dev4, MAC: mac, Dst: tp.peerPublic(u.Addr4, 9)})
	h.AddFDB(dataplane.FDB{Dev: Dev6, MAC: mac, Dst: tp.peerPublic(u.Addr6, 9)})
	foreign := netip.MustParsePrefix("10.97.0.0/24")
	h.AddRoute(dataplane.Route{Dst: foreign, Gw: tp.peerPublic(u.Addr4, 7), Dev: u.Name}, false)
	return foreign
}

// collected is what a full reconcile deletes after stale.
func collected() dataplane.Changes {
	return dataplane.Changes{RoutesRemoved: 3, NeighsRemoved: 1, FDBRemoved: 2}
}

func testGC(t *testing.T, h Harness) {
	tp := setup(t, h)
	foreign := stale(h, tp)
	WantChanges(t, "non-full", Reconcile(t, h.Reconciler(), tp.State(), false), dataplane.Changes{})
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), tp.State(), true), collected())
	WantKernel(t, h, tp.State())
	if !h.HasRoute(foreign) {
		t.Errorf("foreign route %s was deleted", foreign)
	}
}

func testRestartGC(t *testing.T, h Harness) {
	tp := setup(t, h)
	foreign := stale(h, tp)
	delete(tp.Peers, 2)
	want := collected()
	want.RoutesRemoved += 2
	want.NeighsRemoved += 2
	want.FDBRemoved += 2
	WantChanges(t, "restart", Reconcile(t, h.Restart(), tp.State(), true), want)
	WantKernel(t, h, tp.State())
	if !h.HasRoute(foreign) {
		t.Errorf("foreign route %s was deleted", foreign)
	}
}

func testRestart(t *testing.T, h Harness) {
	tp := setup(t, h)
	r := h.Restart()
	WantChanges(t, "restart", Reconcile(t, r, tp.State(), true), dataplane.Changes{})
	WantChanges(t, "after restart", Reconcile(t, r, tp.State(), false), dataplane.Changes{})
	WantKernel(t, h, tp.State())
}

// testAdopt: a fresh instance (no index) adopts a matching device without
// touching it, and fixes one whose mutable attributes differ in place.
func testAdopt(t *testing.T, h Harness) {
	tp := setup(t, h)
	idx4, idx6 := h.LinkIndex(Dev4), h.LinkIndex(Dev6)
	tp.MTU6 = 1400
	links := dataplane.NewState()
	for name, l := range tp.State().Links {
		links.Links[name] = l
	}
	WantChanges(t, "adopt", Reconcile(t, h.Restart(), links, false), dataplane.Changes{LinksUpdated: 1})
	if h.LinkIndex(Dev4) != idx4 || h.LinkIndex(Dev6) != idx6 {
		t.Errorf("links recreated instead of adopted")
	}
	tp.VNI6 = 6
	links.Links[Dev6] = tp.State().Links[Dev6]
	WantChanges(t, "replace", Reconcile(t, h.Restart(), links, false), dataplane.Changes{LinksRemoved: 1, LinksAdded: 1})
	WantKernel(t, h, objectsOff(tp.State(), Dev6))
}
