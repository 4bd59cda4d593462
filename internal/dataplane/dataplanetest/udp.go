package dataplanetest

import (
	"context"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
)

// UDPDev is the udp device of the udp cases, as flannel names it.
const UDPDev = "flannel0"

// RunUDP runs the udp device cases: a TUN served by a forwarder whose
// table the Reconciler writes and reads back.
func RunUDP(t *testing.T, newDP func(t *testing.T) Harness) {
	for _, c := range []struct {
		name string
		f    func(*testing.T, Harness)
	}{
		{"Create", testUDPCreate},
		{"Delta", testUDPDelta},
		{"LinkDeleted", testUDPLinkDeleted},
		{"Replaced", testUDPReplaced},
		{"Removal", testUDPRemoval},
		{"Invalid", testUDPInvalid},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, newDP(t)) })
	}
}

// UDPState is what the udp backend declares for a host with subnet
// 10.244.0.0/24 in 10.244.0.0/16 and peers ids (10.244.<id>.0/24), at
// port 8285 of their public addresses in the underlay's subnet.
func UDPState(u Underlay, ids ...int) *dataplane.State {
	s := dataplane.NewState()
	s.Links[UDPDev] = dataplane.Link{
		Kind: dataplane.KindUDP, Name: UDPDev, Port: 8285, Local: u.Addr4.Addr(), MTU: 1472,
		Addr: netip.PrefixFrom(Subnet4(0).Addr(), 32),
	}
	s.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.244.0.0/16"), Dev: UDPDev})
	for _, id := range ids {
		s.AddUDPPeer(dataplane.UDPPeer{Dev: UDPDev, Subnet: Subnet4(id), Endpoint: netip.AddrPortFrom(peerAddr(u.Addr4, id), 8285)})
	}
	return s
}

// WantUDP fails the test if the kernel and the device's table differ
// from want.
func WantUDP(t *testing.T, h Harness, want *dataplane.State) {
	t.Helper()
	if d := cmp.Diff(want.Lines(), h.Dump(UDPDev).Lines()); d != "" {
		t.Errorf("kernel (-want +got):\n%s", d)
	}
}

func testUDPCreate(t *testing.T, h Harness) {
	r, want := h.Reconciler(), UDPState(h.Underlay(), 1, 2, 3)
	WantChanges(t, "create", Reconcile(t, r, want, true), dataplane.Changes{LinksAdded: 1, RoutesAdded: 1, UDPPeersAdded: 3})
	WantUDP(t, h, want)
	WantChanges(t, "again", Reconcile(t, r, want, true), dataplane.Changes{})
	WantChanges(t, "again, not full", Reconcile(t, r, want, false), dataplane.Changes{})
}

func testUDPDelta(t *testing.T, h Harness) {
	r, from := h.Reconciler(), UDPState(h.Underlay(), 1, 2, 3)
	Reconcile(t, r, from, true)
	to := UDPState(h.Underlay(), 2, 3, 4)
	moved := to.UDPPeers[dataplane.UDPPeerKey{Dev: UDPDev, Subnet: Subnet4(2)}]
	moved.Endpoint = netip.AddrPortFrom(moved.Endpoint.Addr(), 9999)
	to.AddUDPPeer(moved)
	c, err := r.ReconcileDelta(context.Background(), to, touchedBetween(from, to))
	if err != nil {
		t.Fatal(err)
	}
	WantChanges(t, "delta", c, dataplane.Changes{UDPPeersAdded: 2, UDPPeersRemoved: 1})
	WantUDP(t, h, to)
	WantChanges(t, "full after delta", Reconcile(t, r, to, true), dataplane.Changes{})
}

// testUDPLinkDeleted: a TUN deleted behind our back (its forwarder ends
// with it) is made again, table and route included, by a full pass.
func testUDPLinkDeleted(t *testing.T, h Harness) {
	r, want := h.Reconciler(), UDPState(h.Underlay(), 1, 2)
	Reconcile(t, r, want, true)
	h.DeleteLink(UDPDev)
	c := Reconcile(t, r, want, true)
	if c.LinksAdded != 1 || c.RoutesAdded != 1 || c.UDPPeersAdded != 2 {
		t.Errorf("repair: changes %+v, want the link, its route and 2 peers added", c)
	}
	WantUDP(t, h, want)
}

// testUDPReplaced: another port is another device (the socket's
// identity); the new one gets the table.
func testUDPReplaced(t *testing.T, h Harness) {
	r, want := h.Reconciler(), UDPState(h.Underlay(), 1)
	Reconcile(t, r, want, true)
	l := want.Links[UDPDev]
	l.Port = 8286
	want.Links[UDPDev] = l
	c := Reconcile(t, r, want, false)
	if c.LinksAdded != 1 || c.LinksRemoved != 1 || c.UDPPeersAdded != 1 {
		t.Errorf("new port: changes %+v, want the link replaced and its peer written again", c)
	}
	WantUDP(t, h, want)
}

// testUDPRemoval: a device no longer declared goes, with its route and
// table.
func testUDPRemoval(t *testing.T, h Harness) {
	r := h.Reconciler()
	Reconcile(t, r, UDPState(h.Underlay(), 1, 2), true)
	WantChanges(t, "remove", Reconcile(t, r, dataplane.NewState(), true), dataplane.Changes{LinksRemoved: 1})
	if h.LinkIndex(UDPDev) != 0 {
		t.Errorf("%s is still there", UDPDev)
	}
	WantUDP(t, h, dataplane.NewState())
}

// testUDPInvalid: bad entries fail alone.
func testUDPInvalid(t *testing.T, h Harness) {
	r, want := h.Reconciler(), UDPState(h.Underlay(), 1)
	bad := UDPState(h.Underlay(), 1)
	for _, p := range []dataplane.UDPPeer{
		{Dev: UDPDev, Subnet: netip.MustParsePrefix("10.244.9.1/24"), Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")},
		{Dev: UDPDev, Subnet: Subnet4(8), Endpoint: netip.MustParseAddrPort("192.0.2.1:0")},
		{Dev: "nosuch0", Subnet: Subnet4(7), Endpoint: netip.MustParseAddrPort("192.0.2.1:8285")},
	} {
		bad.AddUDPPeer(p)
	}
	if _, err := r.Reconcile(context.Background(), bad, true); err == nil {
		t.Error("bad udp peers: no error")
	}
	WantUDP(t, h, want)
}
