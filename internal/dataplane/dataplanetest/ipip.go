package dataplanetest

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
)

// DevIPIP is the ipip backend's device, as upstream names it.
const DevIPIP = "flannel.ipip"

func ipipCases() []struct {
	name string
	fn   func(t *testing.T, h Harness)
} {
	return []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"IPIPCreateIdempotentRestart", testIPIPCreate},
		{"IPIPInPlaceAndIdentity", testIPIPChange},
		{"IPIPPeersAndRemoval", testIPIPPeers},
	}
}

// ipipState is an ipip host: flannel.ipip with our subnet's address, and
// per peer id a route via its public address, on-link through the tunnel
// (peer 3 directly over the underlay, as DirectRouting plans it).
func ipipState(u Underlay, mtu int, peers ...int) *dataplane.State {
	s := dataplane.NewState()
	s.Links[DevIPIP] = dataplane.Link{Kind: dataplane.KindIPIP, Name: DevIPIP, MTU: mtu,
		Local: u.Addr4.Addr(), Addr: netip.PrefixFrom(Subnet4(0).Addr(), 32)}
	for _, id := range peers {
		r := dataplane.Route{Dst: Subnet4(id), Gw: peerAddr(u.Addr4, id), Dev: DevIPIP, OnLink: true}
		if id == 3 {
			r.Dev, r.OnLink = u.Name, false
		}
		s.AddRoute(r)
	}
	return s
}

// ipipOrLacks builds s, or, when the kernel has no ipip module, says so
// plainly and ends the case: the kernel cannot run it (the fake always
// does).
func ipipOrLacks(t *testing.T, h Harness, s *dataplane.State) dataplane.Changes {
	t.Helper()
	c, err := h.Reconciler().Reconcile(context.Background(), s, false)
	if errors.Is(err, dataplane.ErrKernelLacks) {
		t.Skipf("this kernel has no ipip module, so it cannot create %s (%v); the same case passes against the fake kernel", DevIPIP, err)
	}
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return c
}

func wantIPIP(t *testing.T, h Harness, want *dataplane.State) {
	t.Helper()
	if d := cmp.Diff(want.Lines(), h.Dump(DevIPIP).Lines()); d != "" {
		t.Errorf("kernel (-want +got):\n%s", d)
	}
}

func testIPIPCreate(t *testing.T, h Harness) {
	s := ipipState(h.Underlay(), 1480, 1, 2, 3)
	WantChanges(t, "create", ipipOrLacks(t, h, s), dataplane.Changes{LinksAdded: 1, RoutesAdded: 3})
	wantIPIP(t, h, s)
	WantChanges(t, "again", Reconcile(t, h.Reconciler(), s, false), dataplane.Changes{})
	WantChanges(t, "again full", Reconcile(t, h.Reconciler(), s, true), dataplane.Changes{})
	WantChanges(t, "after a restart", Reconcile(t, h.Restart(), s, true), dataplane.Changes{})
	wantIPIP(t, h, s)
}

// testIPIPChange: MTU and address are fixed in place; another local
// address is another tunnel: the device is replaced and its routes
// written again.
func testIPIPChange(t *testing.T, h Harness) {
	s := ipipState(h.Underlay(), 1480, 1)
	ipipOrLacks(t, h, s)
	l := s.Links[DevIPIP]
	l.MTU, l.Addr = 1400, netip.PrefixFrom(Subnet4(9).Addr(), 32)
	s.Links[DevIPIP] = l
	WantChanges(t, "in place", Reconcile(t, h.Reconciler(), s, false), dataplane.Changes{LinksUpdated: 1})
	wantIPIP(t, h, s)
	l.Local = peerAddr(h.Underlay().Addr4, 200)
	s.Links[DevIPIP] = l
	if _, err := h.Reconciler().Reconcile(context.Background(), s, false); err != nil {
		t.Fatal(err)
	}
	wantIPIP(t, h, s)
}

func testIPIPPeers(t *testing.T, h Harness) {
	s := ipipState(h.Underlay(), 1480, 1, 2)
	ipipOrLacks(t, h, s)
	s2 := ipipState(h.Underlay(), 1480, 2, 4)
	WantChanges(t, "peer 1 left, 4 joined", Reconcile(t, h.Reconciler(), s2, false), dataplane.Changes{RoutesAdded: 1, RoutesRemoved: 1})
	wantIPIP(t, h, s2)
	h.DeleteRoute(dataplane.RouteKey{Dst: Subnet4(4)})
	WantChanges(t, "drift", Reconcile(t, h.Reconciler(), s2, true), dataplane.Changes{RoutesAdded: 1})
	empty := dataplane.NewState()
	WantChanges(t, "removal", Reconcile(t, h.Reconciler(), empty, false), dataplane.Changes{LinksRemoved: 1})
	wantIPIP(t, h, empty)
	if h.HasRoute(Subnet4(2)) {
		t.Error("a route through the removed device is still there")
	}
}
