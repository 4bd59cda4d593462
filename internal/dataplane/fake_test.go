package dataplane_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/dataplane/dataplanetest"
)

type fakeHarness struct {
	t *testing.T
	f *dataplane.Fake
	u dataplanetest.Underlay
}

func (h *fakeHarness) Reconciler() dataplane.Reconciler { return h.f }
func (h *fakeHarness) Restart() dataplane.Reconciler    { return h.f.Restart() }
func (h *fakeHarness) Underlay() dataplanetest.Underlay { return h.u }
func (h *fakeHarness) Dump(links ...string) *dataplane.State {
	return h.f.Dump(links...)
}
func (h *fakeHarness) HasRoute(dst netip.Prefix) bool {
	_, ok := h.f.Kernel().Routes[dataplane.RouteKey{Dst: dst}]
	return ok
}
func (h *fakeHarness) LinkIndex(name string) int             { return h.f.LinkIndex(name) }
func (h *fakeHarness) DeleteRoute(k dataplane.RouteKey)      { h.f.DeleteRoute(k) }
func (h *fakeHarness) DeleteNeigh(k dataplane.NeighKey)      { h.f.DeleteNeigh(k) }
func (h *fakeHarness) DeleteFDB(k dataplane.FDBKey)          { h.f.DeleteFDB(k) }
func (h *fakeHarness) DeleteLink(name string)                { h.f.DeleteLink(name) }
func (h *fakeHarness) AddRoute(r dataplane.Route, ours bool) { h.check(h.f.AddKernelRoute(r, ours)) }
func (h *fakeHarness) AddNeigh(n dataplane.Neigh)            { h.check(h.f.AddKernelNeigh(n)) }
func (h *fakeHarness) AddFDB(f dataplane.FDB)                { h.check(h.f.AddKernelFDB(f)) }

func (h *fakeHarness) WGNames() (string, string)          { return "flannel-wg", "flannel-wg-v6" }
func (h *fakeHarness) DeleteWGPeer(k dataplane.WGPeerKey) { h.f.DeleteWGPeer(k) }
func (h *fakeHarness) AddWGPeer(p dataplane.WGPeer)       { h.check(h.f.AddKernelWGPeer(p)) }
func (h *fakeHarness) WireGuard(name string) (dataplane.WGStatus, bool) {
	st, ok, err := h.f.WireGuard(name)
	h.check(err)
	return st, ok
}

func (h *fakeHarness) check(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
}

func TestFakeConformance(t *testing.T) {
	dataplanetest.Run(t, func(t *testing.T) dataplanetest.Harness {
		f := dataplane.NewFake()
		u := dataplanetest.Underlay{
			Name: "eth0", Index: f.AddDevice("eth0"),
			Addr4: netip.MustParsePrefix("192.168.1.2/24"), Addr6: netip.MustParsePrefix("fd00:1::2/64"),
		}
		return &fakeHarness{t: t, f: f, u: u}
	})
}

func TestFakeKernelShowsForeignRoutes(t *testing.T) {
	f := dataplane.NewFake()
	f.AddDevice("eth0")
	r := dataplane.Route{Dst: netip.MustParsePrefix("10.1.0.0/16"), Gw: netip.MustParseAddr("192.168.1.1"), Dev: "eth0"}
	if err := f.AddForeignRoute(r); err != nil {
		t.Fatal(err)
	}
	if err := f.AddForeignRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.2.0.0/16"), Dev: "nope"}); err == nil {
		t.Error("route on a missing device accepted")
	}
	if got := f.Kernel().Routes[r.Key()]; got != r {
		t.Errorf("Kernel() route = %+v, want %+v", got, r)
	}
	if n := len(f.Dump().Routes); n != 0 {
		t.Errorf("Dump() shows %d foreign routes as ours", n)
	}
}

// dataplaneAPI is the method set the daemon uses; Fake stands in for
// Netlink there.
type dataplaneAPI interface {
	dataplane.Reconciler
	Subscribe(ctx context.Context, kick func()) error
	LinkByName(name string) (dataplane.Link, bool, error)
}

var _ dataplaneAPI = (*dataplane.Fake)(nil)

func TestFakeSubscribe(t *testing.T) {
	f := dataplane.NewFake()
	u := dataplanetest.Underlay{
		Name: "eth0", Index: f.AddDevice("eth0"),
		Addr4: netip.MustParsePrefix("192.168.1.2/24"), Addr6: netip.MustParsePrefix("fd00:1::2/64"),
	}
	want := dataplanetest.NewTopology(u).State()
	dataplanetest.Reconcile(t, f, want, false)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kicks := make(chan struct{}, 8)
	done := make(chan error, 1)
	go func() { done <- f.Subscribe(ctx, func() { kicks <- struct{}{} }) }()
	<-kicks // subscribed

	f.DeleteRoute(dataplane.RouteKey{Dst: dataplanetest.Subnet4(1)})
	<-kicks
	dataplanetest.WantChanges(t, "route", dataplanetest.Reconcile(t, f, want, false), dataplane.Changes{RoutesAdded: 1})

	f.DeleteLink(dataplanetest.Dev6)
	<-kicks
	dataplanetest.WantChanges(t, "link", dataplanetest.Reconcile(t, f, want, false),
		dataplane.Changes{LinksAdded: 1, RoutesAdded: 3, NeighsAdded: 3, FDBAdded: 3})

	f.DeleteRoute(dataplane.RouteKey{Dst: netip.MustParsePrefix("10.123.0.0/16")}) // not ours: no kick
	select {
	case <-kicks:
		t.Error("kick for an object that is not ours")
	default:
	}
	if v, ok, err := f.LinkByName(dataplanetest.Dev4); err != nil || !ok || v != want.Links[dataplanetest.Dev4] {
		t.Errorf("LinkByName = %+v, %v, %v; want %+v", v, ok, err, want.Links[dataplanetest.Dev4])
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Subscribe: %v", err)
	}
}

func TestFakeConformanceUDP(t *testing.T) {
	dataplanetest.RunUDP(t, func(t *testing.T) dataplanetest.Harness {
		f := dataplane.NewFake()
		u := dataplanetest.Underlay{
			Name: "eth0", Index: f.AddDevice("eth0"),
			Addr4: netip.MustParsePrefix("192.168.1.2/24"), Addr6: netip.MustParsePrefix("fd00:1::2/64"),
		}
		return &fakeHarness{t: t, f: f, u: u}
	})
}

// TestLinesDefaultVXLANPort: a VXLAN device declared with the kernel's
// default port (8472) renders as the kernel reports it (0), so `weft
// status` finds no drift on a config that spells the default out.
func TestLinesDefaultVXLANPort(t *testing.T) {
	a, b := dataplane.NewState(), dataplane.NewState()
	a.Links["flannel.1"] = dataplane.Link{Name: "flannel.1", VNI: 1, Port: 8472}
	b.Links["flannel.1"] = dataplane.Link{Name: "flannel.1", VNI: 1}
	if a.String() != b.String() {
		t.Errorf("port 8472: %s\nport 0:    %s", a, b)
	}
}
