package dataplane_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/dataplanetest"
)

// bigState is the standard topology's links with n IPv4 VXLAN peers
// (route, neighbour and FDB entry each): 3n objects, written in batches.
func bigState(h *nsHarness, n int) *dataplane.State {
	s := dataplanetest.NewTopology(h.u).State()
	s.Routes, s.Neighs, s.FDB = map[dataplane.RouteKey]dataplane.Route{}, map[dataplane.NeighKey]dataplane.Neigh{}, map[dataplane.FDBKey]dataplane.FDB{}
	for i := range n {
		hi, lo := byte(i>>8), byte(i)
		gw := netip.AddrFrom4([4]byte{10, 100 + hi, lo, 0})
		mac := dataplane.MAC{0x02, 0x44, 0, 1, hi, lo}
		s.AddRoute(dataplane.Route{Dst: netip.PrefixFrom(gw, 24), Gw: gw, Dev: dataplanetest.Dev4, OnLink: true})
		s.AddNeigh(dataplane.Neigh{Dev: dataplanetest.Dev4, IP: gw, MAC: mac})
		s.AddFDB(dataplane.FDB{Dev: dataplanetest.Dev4, MAC: mac, Dst: netip.AddrFrom4([4]byte{172, 16 + hi, lo, 1})})
	}
	return s
}

// A batch in which the kernel rejects one object installs all the others,
// reports that one alone, and retries only it.
func TestNetlinkBatchOneBadObject(t *testing.T) {
	h := newNS(t)
	want := bigState(h, 500)
	// Not on-link and no route to the gateway: the kernel refuses it
	// (the device is known, so only the kernel can tell).
	bad := dataplane.Route{Dst: netip.MustParsePrefix("10.99.0.0/24"), Gw: netip.MustParseAddr("10.98.0.1"), Dev: dataplanetest.Dev4}
	withBad := want.Clone()
	withBad.AddRoute(bad)

	c, err := h.dp.Reconcile(context.Background(), withBad, false)
	var errno syscall.Errno
	if err == nil || !errors.As(err, &errno) || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("Reconcile with an unreachable gateway: err = %v, want the kernel's errno for %s", err, bad)
	}
	if lines := strings.Count(err.Error(), "\n") + 1; lines != 1 {
		t.Errorf("Reconcile reported %d errors, want 1: %v", lines, err)
	}
	dataplanetest.WantChanges(t, "partial", c, dataplane.Changes{LinksAdded: 2, RoutesAdded: 500, NeighsAdded: 500, FDBAdded: 500})
	dataplanetest.WantKernel(t, h, want)

	// Only the failed route is retried, and it fails alone again.
	c, err = h.dp.Reconcile(context.Background(), withBad, false)
	if err == nil || !strings.Contains(err.Error(), bad.String()) {
		t.Errorf("retry: err = %v, want the route %s", err, bad)
	}
	dataplanetest.WantChanges(t, "retry", c, dataplane.Changes{})
	dataplanetest.WantChanges(t, "without it", dataplanetest.Reconcile(t, h.dp, want, false), dataplane.Changes{})
	dataplanetest.WantChanges(t, "full", dataplanetest.Reconcile(t, h.dp, want, true), dataplane.Changes{})
}

// 3,000 peers are 9,000 objects: many chunks per phase, each with its
// acks matched, both ways.
func TestNetlinkBatchLarge(t *testing.T) {
	h := newNS(t)
	const n = 3000
	want := bigState(h, n)
	dataplanetest.WantChanges(t, "create", dataplanetest.Reconcile(t, h.dp, want, true),
		dataplane.Changes{LinksAdded: 2, RoutesAdded: n, NeighsAdded: n, FDBAdded: n})
	dataplanetest.WantKernel(t, h, want)
	dataplanetest.WantChanges(t, "idempotent", dataplanetest.Reconcile(t, h.dp, want, true), dataplane.Changes{})

	// A fresh reconciler re-reads and changes nothing.
	dataplanetest.WantChanges(t, "restart", dataplanetest.Reconcile(t, h.newDP(), want, true), dataplane.Changes{})

	// Mass leave: all but the first 10 peers.
	few := bigState(h, 10)
	dataplanetest.WantChanges(t, "leave", dataplanetest.Reconcile(t, h.dp, few, false),
		dataplane.Changes{RoutesRemoved: n - 10, NeighsRemoved: n - 10, FDBRemoved: n - 10})
	dataplanetest.WantKernel(t, h, few)
	dataplanetest.WantChanges(t, "after leave", dataplanetest.Reconcile(t, h.dp, few, true), dataplane.Changes{})
}
