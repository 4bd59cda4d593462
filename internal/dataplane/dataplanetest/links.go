package dataplanetest

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
)

func testInPlace(t *testing.T, h Harness) {
	tp := setup(t, h)
	idx4, idx6 := h.LinkIndex(Dev4), h.LinkIndex(Dev6)
	tp.MTU4, tp.MAC4 = 1400, dataplane.MAC{0x02, 0xaa, 0, 0, 0, 0xee}
	tp.MTU6 = 1380
	// A new MAC flushes the device's neighbours (permanent ones too), so
	// they are written again.
	WantChanges(t, "mtu+mac", Reconcile(t, h.Reconciler(), tp.State(), false), dataplane.Changes{LinksUpdated: 2, NeighsAdded: 2})
	WantKernel(t, h, tp.State())
	if h.LinkIndex(Dev4) != idx4 || h.LinkIndex(Dev6) != idx6 {
		t.Errorf("ifindex changed: %s %d→%d, %s %d→%d", Dev4, idx4, h.LinkIndex(Dev4), Dev6, idx6, h.LinkIndex(Dev6))
	}
}

// testReaddress: a device's address changes in place (a new lease), and
// the routes through it stay: the kernel flushes, unannounced, every IPv4
// route through a device that loses its last IPv4 address, so the new
// address must be in before the old one goes.
func testReaddress(t *testing.T, h Harness) {
	tp := setup(t, h)
	want := tp.State()
	for name, a := range map[string]netip.Prefix{
		Dev4: netip.MustParsePrefix("10.244.0.5/32"), Dev6: netip.MustParsePrefix("fd10:244::5/128"),
	} {
		l := want.Links[name]
		l.Addr = a
		want.Links[name] = l
	}
	WantChanges(t, "address", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksUpdated: 2})
	WantKernel(t, h, want)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
}

func testIdentityChange(t *testing.T, h Harness) {
	tp := setup(t, h)
	idx4 := h.LinkIndex(Dev4)
	tp.VNI4 = 4
	WantChanges(t, "vni", Reconcile(t, h.Reconciler(), tp.State(), false),
		dataplane.Changes{LinksRemoved: 1, LinksAdded: 1, RoutesAdded: 2, NeighsAdded: 2, FDBAdded: 2})
	WantKernel(t, h, tp.State())
	if h.LinkIndex(Dev4) == idx4 {
		t.Errorf("%s was not recreated (ifindex %d)", Dev4, idx4)
	}
	WantChanges(t, "again full", Reconcile(t, h.Reconciler(), tp.State(), true), dataplane.Changes{})
}

// objectsOff returns s without the routes, neighbours and FDB entries on
// dev: what remains after the kernel deletes the device.
func objectsOff(s *dataplane.State, dev string) *dataplane.State {
	s = s.Clone()
	for k, r := range s.Routes {
		if r.Dev == dev {
			delete(s.Routes, k)
		}
	}
	for k, n := range s.Neighs {
		if n.Dev == dev {
			delete(s.Neighs, k)
		}
	}
	for k := range s.FDB {
		if k.Dev == dev {
			delete(s.FDB, k)
		}
	}
	return s
}

func testLinkRemoval(t *testing.T, h Harness) {
	tp := setup(t, h)
	want := objectsOff(tp.State(), Dev6)
	delete(want.Links, Dev6)
	// The device's routes, neighbours and FDB entries go with it.
	WantChanges(t, "remove link", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksRemoved: 1})
	WantKernel(t, h, want)
	if h.LinkIndex(Dev6) != 0 {
		t.Errorf("%s still exists", Dev6)
	}
}
