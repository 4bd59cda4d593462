package dataplanetest

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
)

func testCreate(t *testing.T, h Harness) {
	tp := NewTopology(h.Underlay())
	// Non-full from an empty index: the path a daemon's first kick takes.
	WantChanges(t, "create", Reconcile(t, h.Reconciler(), tp.State(), false), created())
	WantKernel(t, h, tp.State())
}

func testIdempotent(t *testing.T, h Harness) {
	tp := setup(t, h)
	WantChanges(t, "again", Reconcile(t, h.Reconciler(), tp.State(), false), dataplane.Changes{})
	WantChanges(t, "again full", Reconcile(t, h.Reconciler(), tp.State(), true), dataplane.Changes{})
	WantKernel(t, h, tp.State())
}

func testPeerMACChange(t *testing.T, h Harness) {
	tp := setup(t, h)
	tp.Peers[1] = 0x99 // peer 1 restarted with new VTEP MACs
	want := tp.State()
	WantChanges(t, "mac change", Reconcile(t, h.Reconciler(), want, false),
		dataplane.Changes{NeighsAdded: 2, FDBAdded: 2, FDBRemoved: 2})
	WantKernel(t, h, want)
}

// testPeerAddressChange: a peer moved to another public address and kept
// its VTEP MACs. The kernel keeps one remote per unicast MAC: the new
// entry must take the old one's place, and deleting the old one must not
// take the MAC away. The same by a complete diff, a delta pass and a full
// pass after a restart (the old entry read from the kernel).
func testPeerAddressChange(t *testing.T, h Harness) {
	tp := setup(t, h)
	moved := dataplane.Changes{FDBAdded: 2, FDBRemoved: 2}
	tp.Moved = map[int]int{1: 41}
	want := tp.State()
	WantChanges(t, "moved", Reconcile(t, h.Reconciler(), want, false), moved)
	WantKernel(t, h, want)

	before := want
	tp.Moved = map[int]int{1: 42}
	want = tp.State()
	WantChanges(t, "moved, delta", must(t)(h.Reconciler().ReconcileDelta(context.Background(), want, touchedBetween(before, want))), moved)
	WantKernel(t, h, want)

	tp.Moved = map[int]int{1: 43}
	want = tp.State()
	WantChanges(t, "moved, full after a restart", Reconcile(t, h.Restart(), want, true), moved)
	WantKernel(t, h, want)
}

func testPeerRemoval(t *testing.T, h Harness) {
	tp := setup(t, h)
	delete(tp.Peers, 2)
	WantChanges(t, "remove peer 2", Reconcile(t, h.Reconciler(), tp.State(), false),
		dataplane.Changes{RoutesRemoved: 2, NeighsRemoved: 2, FDBRemoved: 2})
	WantKernel(t, h, tp.State())
	delete(tp.Peers, 3) // the direct-routing peer
	WantChanges(t, "remove peer 3", Reconcile(t, h.Reconciler(), tp.State(), false),
		dataplane.Changes{RoutesRemoved: 2, NeighsRemoved: 1, FDBRemoved: 1})
	WantKernel(t, h, tp.State())
	if h.HasRoute(Subnet4(3)) {
		t.Errorf("direct route to %s survived", Subnet4(3))
	}
}

func testPartialFailure(t *testing.T, h Harness) {
	tp := NewTopology(h.Underlay())
	want := tp.State()
	bad := dataplane.Route{Dst: netip.MustParsePrefix("10.50.0.0/24"), Dev: "missing0"}
	withBad := want.Clone()
	withBad.AddRoute(bad)
	c, err := h.Reconciler().Reconcile(context.Background(), withBad, false)
	if !errors.Is(err, dataplane.ErrNoDevice) {
		t.Errorf("Reconcile with a route on a missing device: err = %v, want ErrNoDevice", err)
	}
	WantChanges(t, "partial", c, created())
	WantKernel(t, h, want)
	// Only the failed route is retried.
	c, err = h.Reconciler().Reconcile(context.Background(), withBad, false)
	if !errors.Is(err, dataplane.ErrNoDevice) {
		t.Errorf("retry: err = %v, want ErrNoDevice", err)
	}
	WantChanges(t, "retry", c, dataplane.Changes{})
	WantChanges(t, "without it", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})
}

func testInvalid(t *testing.T, h Harness) {
	tp := setup(t, h)
	if _, err := h.Reconciler().Reconcile(context.Background(), nil, false); err == nil {
		t.Error("nil desired state: no error")
	}
	bad := tp.State()
	p := netip.MustParsePrefix("10.60.0.1/24") // host bits set
	bad.Routes[dataplane.RouteKey{Dst: p}] = dataplane.Route{Dst: p, Dev: Dev4}
	bad.Neighs[dataplane.NeighKey{Dev: Dev4}] = dataplane.Neigh{Dev: Dev4}
	c, err := h.Reconciler().Reconcile(context.Background(), bad, false)
	if err == nil {
		t.Error("invalid objects: no error")
	}
	WantChanges(t, "invalid", c, dataplane.Changes{})
	WantKernel(t, h, tp.State())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Reconciler().Reconcile(ctx, tp.State(), false); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v, want context.Canceled", err)
	}
}

// testBlackhole: the blackhole routes for this host's own subnets (the
// daemon's --ip-blackhole-route) are created, adopted by a restart,
// repaired by a full pass, and removed when no longer desired — also by a
// restarted instance, which knows them only by their route protocol.
func testBlackhole(t *testing.T, h Harness) {
	tp := setup(t, h)
	want := tp.State()
	bh := []dataplane.Route{{Dst: Subnet4(0), Blackhole: true}, {Dst: Subnet6(0), Blackhole: true}}
	for _, r := range bh {
		want.AddRoute(r)
	}
	WantChanges(t, "add", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{RoutesAdded: 2})
	WantKernel(t, h, want)
	WantChanges(t, "again full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})

	h.DeleteRoute(bh[0].Key())
	if h.HasRoute(bh[0].Dst) {
		t.Fatalf("drift: %s not deleted", bh[0])
	}
	WantChanges(t, "non-full", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{RoutesAdded: 1})
	WantKernel(t, h, want)

	r := h.Restart()
	WantChanges(t, "restart", Reconcile(t, r, want, true), dataplane.Changes{})
	WantChanges(t, "remove", Reconcile(t, r, tp.State(), false), dataplane.Changes{RoutesRemoved: 2})
	WantKernel(t, h, tp.State())
	for _, b := range bh {
		if h.HasRoute(b.Dst) {
			t.Errorf("%s survived its removal", b)
		}
	}

	WantChanges(t, "add again", Reconcile(t, r, want, false), dataplane.Changes{RoutesAdded: 2})
	WantChanges(t, "restart without them", Reconcile(t, h.Restart(), tp.State(), true), dataplane.Changes{RoutesRemoved: 2})
	WantKernel(t, h, tp.State())
}
