package dataplanetest

import (
	"context"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
)

// touchedBetween is the Delta a caller tracking changes would pass: every
// route, neighbour and FDB key whose value differs between from and to,
// including keys only one of them has.
func touchedBetween(from, to *dataplane.State) *dataplane.Delta {
	d := dataplane.NewDelta()
	touch(d.Routes, from.Routes, to.Routes)
	touch(d.Neighs, from.Neighs, to.Neighs)
	touch(d.FDB, from.FDB, to.FDB)
	touch(d.WGPeers, from.WGPeers, to.WGPeers)
	touch(d.UDPPeers, from.UDPPeers, to.UDPPeers)
	return d
}

func touch[K, V comparable](out map[K]struct{}, a, b map[K]V) {
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out[k] = struct{}{}
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out[k] = struct{}{}
		}
	}
}

// testDelta: a delta pass over the keys that changed reaches the kernel
// state a complete diff reaches, with the same writes — touched keys that
// desired lacks are deleted — and looks at nothing else: drift on an
// untouched key is left to complete and full passes.
func testDelta(t *testing.T, h Harness) {
	tp := setup(t, h)
	before := tp.State()
	delete(tp.Peers, 2) // a leave, on both families
	tp.Peers[1] = 0x99  // a peer restarted with new VTEP MACs
	tp.Peers[4] = 4     // a join
	want := tp.State()
	touched := touchedBetween(before, want)
	ctx := context.Background()

	// The writes are those testPeerRemoval, testPeerMACChange and
	// testCreate expect of a complete diff for each change.
	c, err := h.Reconciler().ReconcileDelta(ctx, want, touched)
	if err != nil {
		t.Fatalf("ReconcileDelta: %v", err)
	}
	WantChanges(t, "delta", c, dataplane.Changes{
		RoutesAdded: 2, RoutesRemoved: 2,
		NeighsAdded: 4, NeighsRemoved: 2,
		FDBAdded: 4, FDBRemoved: 4,
	})
	WantKernel(t, h, want)
	WantChanges(t, "complete diff after delta", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})
	WantChanges(t, "full after delta", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})

	// A touched key absent from desired and from the kernel is a no-op;
	// nothing touched writes nothing even where the kernel drifted.
	extra := dataplane.NewDelta()
	extra.Routes[dataplane.RouteKey{Dst: Subnet4(2)}] = struct{}{}
	WantChanges(t, "stale key", must(t)(h.Reconciler().ReconcileDelta(ctx, want, extra)), dataplane.Changes{})
	h.DeleteRoute(dataplane.RouteKey{Dst: Subnet4(4)})
	WantChanges(t, "untouched drift", must(t)(h.Reconciler().ReconcileDelta(ctx, want, dataplane.NewDelta())), dataplane.Changes{})
	WantChanges(t, "full repairs it", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{RoutesAdded: 1})
	WantKernel(t, h, want)
}

// testDeltaLinkChange: a new device MAC makes the kernel flush the
// device's neighbours, whose keys nobody touched; the delta pass notices
// the link write and diffs everything, as a complete diff would.
func testDeltaLinkChange(t *testing.T, h Harness) {
	tp := setup(t, h)
	tp.MTU4, tp.MAC4 = 1400, dataplane.MAC{0x02, 0xaa, 0, 0, 0, 0xee}
	c, err := h.Reconciler().ReconcileDelta(context.Background(), tp.State(), dataplane.NewDelta())
	if err != nil {
		t.Fatalf("ReconcileDelta: %v", err)
	}
	WantChanges(t, "mtu+mac", c, dataplane.Changes{LinksUpdated: 1, NeighsAdded: 2})
	WantKernel(t, h, tp.State())
	// A device no longer desired is deleted with what is on it.
	want := objectsOff(tp.State(), Dev6)
	delete(want.Links, Dev6)
	c, err = h.Reconciler().ReconcileDelta(context.Background(), want, nil)
	if err != nil {
		t.Fatalf("ReconcileDelta: %v", err)
	}
	WantChanges(t, "remove link", c, dataplane.Changes{LinksRemoved: 1})
	WantKernel(t, h, want)
}
