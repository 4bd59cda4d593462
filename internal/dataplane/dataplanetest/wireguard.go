package dataplanetest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
)

// The WireGuard cases: devices adopted across restarts, peers written
// only where they differ, drift on peers (which WireGuard never announces)
// repaired by full passes, and garbage collection of peers on our devices.

// RunWireGuard runs only the WireGuard cases of the suite (Run runs them
// too): for a Reconciler to be tried with another WireGuard
// implementation, as Netlink with kernel devices where the kernel has
// them.
func RunWireGuard(t *testing.T, newDP func(t *testing.T) Harness) {
	for _, c := range wgCases() {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newDP(t)) })
	}
}

func wgCases() []struct {
	name string
	fn   func(t *testing.T, h Harness)
} {
	return []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"WireGuardCreate", testWGCreate},
		{"WireGuardIdempotent", testWGIdempotent},
		{"WireGuardDelta", testWGDelta},
		{"WireGuardPeerChange", testWGPeerChange},
		{"WireGuardDriftNeedsFull", testWGDrift},
		{"WireGuardRestartGC", testWGRestartGC},
		{"WireGuardInPlace", testWGInPlace},
		{"WireGuardDualStack", testWGDual},
		{"WireGuardLinkRemoval", testWGLinkRemoval},
		{"WireGuardLinkDeletedBehindOurBack", testWGLinkDeleted},
		{"WireGuardReplacesOtherDevice", testWGReplaces},
		{"WireGuardInvalidAndPartial", testWGInvalid},
		{"WireGuardPeerAsTheDeviceStoresIt", testWGNormalised},
	}
}

// WGPeerSpec is one WireGuard peer of a WGTopology.
type WGPeerSpec struct {
	// Port is the peer's listen port (its endpoint's port).
	Port uint16
	// Subnet is the id of the lease subnets it is allowed (Subnet4,
	// Subnet6).
	Subnet    int
	PSK       bool
	Keepalive uint16
}

// WGTopology is a host with WireGuard devices: by default one per family,
// A for IPv4 and B for IPv6 (the wireguard backend's separate mode), or
// with Dual one device A carrying both (Addr2). Each peer is reached over
// the underlay of the device's family and allowed its subnet(s).
type WGTopology struct {
	U         Underlay
	A, B      string
	Dual      bool
	PortA     uint16
	PortB     uint16
	MTU       int
	Key       dataplane.WGKey
	Addr4Host byte // last byte of A's IPv4 address in Subnet4(0)
	Peers     map[int]WGPeerSpec
}

// NewWGTopology returns the standard WireGuard topology with peers 1 and 2.
func NewWGTopology(h Harness) *WGTopology {
	a, b := h.WGNames()
	tp := &WGTopology{
		U: h.Underlay(), A: a, B: b, PortA: 51820, PortB: 51821, MTU: 1420, Key: WGKey(0xa0),
		Peers: map[int]WGPeerSpec{},
	}
	for _, id := range []int{1, 2} {
		tp.Peers[id] = WGPeerSpec{Port: 51820, Subnet: id}
	}
	return tp
}

// WGKey returns a fixed key (private, or preshared) made from seed.
func WGKey(seed byte) dataplane.WGKey {
	var k dataplane.WGKey
	for i := range k {
		k[i] = seed ^ byte(i*7)
	}
	return k
}

// WGPeerKey is peer id's public key.
func WGPeerKey(id int) dataplane.WGKey { return WGKey(byte(id)).PublicKey() }

func (tp *WGTopology) peerPublic(u netip.Prefix, id int) netip.Addr { return peerAddr(u, id) }

// State is what the daemon would declare for tp.
func (tp *WGTopology) State() *dataplane.State {
	s := dataplane.NewState()
	addr4 := netip.PrefixFrom(Subnet4(0).Addr().Next(), 32)
	if tp.Addr4Host != 0 {
		b := Subnet4(0).Addr().As4()
		b[3] = tp.Addr4Host
		addr4 = netip.PrefixFrom(netip.AddrFrom4(b), 32)
	}
	addr6 := netip.PrefixFrom(Subnet6(0).Addr().Next(), 128)
	a := dataplane.Link{Kind: dataplane.KindWireGuard, Name: tp.A, Port: tp.PortA, MTU: tp.MTU, PrivateKey: tp.Key, Addr: addr4}
	if tp.Dual {
		a.Addr2 = addr6
	} else {
		s.Links[tp.B] = dataplane.Link{Kind: dataplane.KindWireGuard, Name: tp.B, Port: tp.PortB, MTU: tp.MTU, PrivateKey: tp.Key, Addr: addr6}
	}
	s.Links[tp.A] = a
	for id, spec := range tp.Peers {
		p := dataplane.WGPeer{Dev: tp.A, PublicKey: WGPeerKey(id), Keepalive: spec.Keepalive,
			Endpoint: netip.AddrPortFrom(tp.peerPublic(tp.U.Addr4, id), spec.Port)}
		if spec.PSK {
			p.PSK = WGKey(byte(0x50 + id))
		}
		p.AllowedIPs[0] = Subnet4(spec.Subnet)
		s.AddRoute(dataplane.Route{Dst: Subnet4(spec.Subnet), Dev: tp.A})
		if tp.Dual {
			p.AllowedIPs[1] = Subnet6(spec.Subnet)
			s.AddRoute(dataplane.Route{Dst: Subnet6(spec.Subnet), Dev: tp.A})
			s.AddWGPeer(p)
			continue
		}
		s.AddWGPeer(p)
		p.Dev, p.AllowedIPs[0] = tp.B, Subnet6(spec.Subnet)
		p.Endpoint = netip.AddrPortFrom(tp.peerPublic(tp.U.Addr6, id), spec.Port+1)
		s.AddWGPeer(p)
		s.AddRoute(dataplane.Route{Dst: Subnet6(spec.Subnet), Dev: tp.B})
	}
	return s
}

// WantWG fails the test if the kernel's objects of ours on tp's devices
// differ from want.
func WantWG(t *testing.T, h Harness, tp *WGTopology, want *dataplane.State) {
	t.Helper()
	if d := cmp.Diff(want.Lines(), h.Dump(tp.A, tp.B).Lines()); d != "" {
		t.Errorf("kernel (-want +got):\n%s", d)
	}
}

// wgSetup builds tp from nothing and checks the result.
func wgSetup(t *testing.T, h Harness, tp *WGTopology) {
	t.Helper()
	WantChanges(t, "create", Reconcile(t, h.Reconciler(), tp.State(), true), tp.Created())
	WantWG(t, h, tp, tp.State())
}

// Created is what building tp from nothing writes.
func (tp *WGTopology) Created() dataplane.Changes {
	n := len(tp.Peers)
	if tp.Dual {
		return dataplane.Changes{LinksAdded: 1, WGPeersAdded: n, RoutesAdded: 2 * n}
	}
	return dataplane.Changes{LinksAdded: 2, WGPeersAdded: 2 * n, RoutesAdded: 2 * n}
}

func testWGCreate(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	// Non-full from an empty index: the daemon's first pass.
	WantChanges(t, "create", Reconcile(t, h.Reconciler(), tp.State(), false), tp.Created())
	WantWG(t, h, tp, tp.State())

	st, ok := h.WireGuard(tp.A)
	if !ok {
		t.Fatalf("WireGuard(%s): no such device", tp.A)
	}
	if st.Impl != dataplane.WGKernel && st.Impl != dataplane.WGUserspace {
		t.Errorf("Impl = %q", st.Impl)
	}
	if st.ListenPort != tp.PortA || st.PublicKey != tp.Key.PublicKey() {
		t.Errorf("status port %d key %s, want %d %s", st.ListenPort, st.PublicKey, tp.PortA, tp.Key.PublicKey())
	}
	var got []string
	for _, p := range st.Peers {
		got = append(got, p.PublicKey.String()+" "+p.Endpoint.String()+" "+prefixes(p.AllowedIPs))
	}
	var want []string
	for _, p := range tp.State().WGPeers {
		if p.Dev == tp.A {
			want = append(want, p.PublicKey.String()+" "+p.Endpoint.String()+" "+prefixes(p.Allowed()))
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("status peers (-want +got):\n%s", d)
	}
	if _, ok := h.WireGuard("nosuchwg0"); ok {
		t.Error("WireGuard(nosuchwg0): reported a device")
	}
	if _, ok := h.WireGuard(h.Underlay().Name); ok {
		t.Errorf("WireGuard(%s): reported the underlay as a WireGuard device", h.Underlay().Name)
	}
}

func prefixes(ps []netip.Prefix) string {
	var s string
	for _, p := range ps {
		s += p.String() + ","
	}
	return s
}

func testWGIdempotent(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	WantChanges(t, "again", Reconcile(t, h.Reconciler(), tp.State(), false), dataplane.Changes{})
	WantChanges(t, "again full", Reconcile(t, h.Reconciler(), tp.State(), true), dataplane.Changes{})
	WantWG(t, h, tp, tp.State())
}

// testWGDelta: a delta pass over the touched peers writes exactly those,
// and looks at nothing else.
func testWGDelta(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	before := tp.State()
	delete(tp.Peers, 2)
	tp.Peers[3] = WGPeerSpec{Port: 51820, Subnet: 3}
	want := tp.State()
	ctx := context.Background()
	c := must(t)(h.Reconciler().ReconcileDelta(ctx, want, touchedBetween(before, want)))
	WantChanges(t, "delta", c, dataplane.Changes{WGPeersAdded: 2, WGPeersRemoved: 2, RoutesAdded: 2, RoutesRemoved: 2})
	WantWG(t, h, tp, want)
	WantChanges(t, "complete diff after delta", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})

	// One join on one device: one peer, one route.
	before = want
	tp.Peers[4] = WGPeerSpec{Port: 51820, Subnet: 4}
	want = tp.State()
	delete(want.WGPeers, dataplane.WGPeerKey{Dev: tp.B, PublicKey: WGPeerKey(4)})
	delete(want.Routes, dataplane.RouteKey{Dst: Subnet6(4)})
	c = must(t)(h.Reconciler().ReconcileDelta(ctx, want, touchedBetween(before, want)))
	WantChanges(t, "join", c, dataplane.Changes{WGPeersAdded: 1, RoutesAdded: 1})

	// A peer removed behind our back is not seen by a delta pass that did
	// not touch it, nor by a complete one: WireGuard sends no
	// notification. The full pass reads the peers back.
	h.DeleteWGPeer(dataplane.WGPeerKey{Dev: tp.A, PublicKey: WGPeerKey(1)})
	WantChanges(t, "untouched drift", must(t)(h.Reconciler().ReconcileDelta(ctx, want, dataplane.NewDelta())), dataplane.Changes{})
	WantChanges(t, "full repairs it", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{WGPeersAdded: 1})
	WantWG(t, h, tp, want)
}

func testWGPeerChange(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	tp.Peers[1] = WGPeerSpec{Port: 41000, Subnet: 1} // a new endpoint
	tp.Peers[2] = WGPeerSpec{Port: 51820, Subnet: 7} // another subnet
	want := tp.State()
	WantChanges(t, "endpoint and allowed IPs", Reconcile(t, h.Reconciler(), want, false),
		dataplane.Changes{WGPeersAdded: 4, RoutesAdded: 2, RoutesRemoved: 2})
	WantWG(t, h, tp, want)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})

	tp.Peers[1] = WGPeerSpec{Port: 41000, Subnet: 1, PSK: true, Keepalive: 25}
	want = tp.State()
	WantChanges(t, "psk and keepalive", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{WGPeersAdded: 2})
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
	WantWG(t, h, tp, want)
	tp.Peers[1] = WGPeerSpec{Port: 41000, Subnet: 1}
	want = tp.State()
	WantChanges(t, "psk and keepalive off", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{WGPeersAdded: 2})
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
	WantWG(t, h, tp, want)
}

func testWGDrift(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	want := tp.State()
	h.DeleteWGPeer(dataplane.WGPeerKey{Dev: tp.A, PublicKey: WGPeerKey(1)})
	moved := want.WGPeers[dataplane.WGPeerKey{Dev: tp.B, PublicKey: WGPeerKey(2)}]
	moved.Endpoint = netip.AddrPortFrom(moved.Endpoint.Addr(), 9)
	moved.AllowedIPs[1] = netip.MustParsePrefix("fd99::/64")
	h.AddWGPeer(moved)
	WantChanges(t, "non-full", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{})
	if cmp.Equal(want.Lines(), h.Dump(tp.A, tp.B).Lines()) {
		t.Fatal("drift did not happen")
	}
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{WGPeersAdded: 2})
	WantWG(t, h, tp, want)
}

// testWGRestartGC: a restarted instance adopts the devices (same ifindex)
// and the right peers without writing, and removes the peers on our
// devices that nothing declares.
func testWGRestartGC(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	idxA, idxB := h.LinkIndex(tp.A), h.LinkIndex(tp.B)
	WantChanges(t, "restart", Reconcile(t, h.Restart(), tp.State(), true), dataplane.Changes{})

	stray := dataplane.WGPeer{Dev: tp.A, PublicKey: WGPeerKey(9),
		Endpoint: netip.AddrPortFrom(tp.peerPublic(tp.U.Addr4, 9), 51820), AllowedIPs: [2]netip.Prefix{Subnet4(9)}}
	h.AddWGPeer(stray)
	delete(tp.Peers, 2)
	WantChanges(t, "restart with stale peers", Reconcile(t, h.Restart(), tp.State(), true),
		dataplane.Changes{WGPeersRemoved: 3, RoutesRemoved: 2})
	WantWG(t, h, tp, tp.State())
	if h.LinkIndex(tp.A) != idxA || h.LinkIndex(tp.B) != idxB {
		t.Errorf("devices recreated across restarts: %s %d→%d, %s %d→%d", tp.A, idxA, h.LinkIndex(tp.A), tp.B, idxB, h.LinkIndex(tp.B))
	}
	WantChanges(t, "again", Reconcile(t, h.Restart(), tp.State(), true), dataplane.Changes{})
}

// testWGInPlace: MTU, listen port, private key and address change in
// place; the device and its peers stay.
func testWGInPlace(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	idxA, idxB := h.LinkIndex(tp.A), h.LinkIndex(tp.B)
	tp.MTU, tp.PortA, tp.Key, tp.Addr4Host = 1380, 51830, WGKey(0xb0), 9
	want := tp.State()
	WantChanges(t, "in place", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksUpdated: 2})
	WantWG(t, h, tp, want)
	if h.LinkIndex(tp.A) != idxA || h.LinkIndex(tp.B) != idxB {
		t.Errorf("devices recreated")
	}
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})

	// A zero key, port and MTU leave the device's as they are.
	keep := want.Clone()
	for name, l := range keep.Links {
		l.PrivateKey, l.Port, l.MTU = dataplane.WGKey{}, 0, 0
		keep.Links[name] = l
	}
	WantChanges(t, "zero key and port", Reconcile(t, h.Reconciler(), keep, true), dataplane.Changes{})
	WantWG(t, h, tp, want)
	if st, _ := h.WireGuard(tp.A); st.PublicKey != tp.Key.PublicKey() || st.ListenPort != tp.PortA {
		t.Errorf("status after rotation: port %d key %s, want %d %s", st.ListenPort, st.PublicKey, tp.PortA, tp.Key.PublicKey())
	}
}

// testWGDual: one device carrying both families, and a change of its
// second address.
func testWGDual(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	tp.Dual = true
	wgSetup(t, h, tp)
	want := tp.State()
	a := want.Links[tp.A]
	a.Addr2 = netip.PrefixFrom(Subnet6(0).Addr().Next().Next(), 128)
	want.Links[tp.A] = a
	WantChanges(t, "addr2", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksUpdated: 1})
	WantWG(t, h, tp, want)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})

	// Without Addr2, the device keeps no address of the other family.
	a.Addr2 = netip.Prefix{}
	want.Links[tp.A] = a
	WantChanges(t, "no addr2", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksUpdated: 1})
	WantWG(t, h, tp, want)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
}

func testWGLinkRemoval(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	want := tp.State()
	for k, p := range want.WGPeers {
		if p.Dev == tp.B {
			delete(want.WGPeers, k)
		}
	}
	want = objectsOff(want, tp.B)
	delete(want.Links, tp.B)
	// Its peers and routes go with it.
	WantChanges(t, "remove", Reconcile(t, h.Reconciler(), want, false), dataplane.Changes{LinksRemoved: 1})
	WantWG(t, h, tp, want)
	if h.LinkIndex(tp.B) != 0 {
		t.Errorf("%s still exists", tp.B)
	}
	if _, ok := h.WireGuard(tp.B); ok {
		t.Errorf("WireGuard(%s) reports a removed device", tp.B)
	}
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
}

func testWGLinkDeleted(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	wgSetup(t, h, tp)
	h.DeleteLink(tp.A)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), tp.State(), true),
		dataplane.Changes{LinksAdded: 1, WGPeersAdded: 2, RoutesAdded: 2})
	WantWG(t, h, tp, tp.State())
	WantChanges(t, "again", Reconcile(t, h.Reconciler(), tp.State(), false), dataplane.Changes{})
}

// testWGReplaces: a device of another kind under a WireGuard device's name
// is replaced.
func testWGReplaces(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	u := h.Underlay()
	other := dataplane.NewState()
	other.Links[tp.A] = dataplane.Link{Name: tp.A, VNI: 7, Local: u.Addr4.Addr(), ParentIndex: u.Index, MTU: 1400}
	WantChanges(t, "vxlan", Reconcile(t, h.Reconciler(), other, false), dataplane.Changes{LinksAdded: 1})
	idx := h.LinkIndex(tp.A)
	want := tp.Created()
	want.LinksRemoved = 1
	WantChanges(t, "wireguard", Reconcile(t, h.Restart(), tp.State(), false), want)
	WantWG(t, h, tp, tp.State())
	if h.LinkIndex(tp.A) == idx {
		t.Errorf("%s was not replaced", tp.A)
	}
}

// testWGInvalid: bad peers and links fail alone; the rest is written, and
// a retry writes nothing more.
func testWGInvalid(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	bad := tp.State()
	missing := dataplane.WGPeer{Dev: "missing0", PublicKey: WGPeerKey(8),
		Endpoint: netip.MustParseAddrPort("192.0.2.8:51820"), AllowedIPs: [2]netip.Prefix{Subnet4(8)}}
	bad.AddWGPeer(missing)
	noIPs := dataplane.WGPeer{Dev: tp.A, PublicKey: WGPeerKey(9), Endpoint: netip.MustParseAddrPort("192.0.2.9:51820")}
	bad.AddWGPeer(noIPs)
	c, err := h.Reconciler().Reconcile(context.Background(), bad, false)
	if !errors.Is(err, dataplane.ErrNoDevice) {
		t.Errorf("peer on a missing device: err = %v, want ErrNoDevice", err)
	}
	WantChanges(t, "partial", c, tp.Created())
	WantWG(t, h, tp, tp.State())
	c, err = h.Reconciler().Reconcile(context.Background(), bad, false)
	if err == nil {
		t.Error("retry: no error")
	}
	WantChanges(t, "retry", c, dataplane.Changes{})

	sameFamily := tp.State()
	a := sameFamily.Links[tp.A]
	a.Addr2 = netip.MustParsePrefix("10.244.0.7/32")
	sameFamily.Links[tp.A] = a
	if _, err := h.Reconciler().Reconcile(context.Background(), sameFamily, false); err == nil {
		t.Error("Addr2 of Addr's family: no error")
	}
	WantChanges(t, "valid again", Reconcile(t, h.Reconciler(), tp.State(), true), dataplane.Changes{})
}

// testWGNormalised: a peer declared otherwise than WireGuard stores it —
// allowed IPs out of order, with host bits set, twice; an IPv4 endpoint
// written as IPv4-mapped IPv6 — is written once and then read back as
// equal, by this instance and by a restarted one.
func testWGNormalised(t *testing.T, h Harness) {
	tp := NewWGTopology(h)
	want := tp.State()
	k := dataplane.WGPeerKey{Dev: tp.A, PublicKey: WGPeerKey(1)}
	p := want.WGPeers[k]
	p.AllowedIPs = [2]netip.Prefix{netip.MustParsePrefix("fd10:244:1::7/64"), netip.MustParsePrefix("10.244.1.9/24")}
	p.Endpoint = netip.AddrPortFrom(netip.AddrFrom16(p.Endpoint.Addr().As16()), p.Endpoint.Port())
	want.WGPeers[k] = p
	k2 := dataplane.WGPeerKey{Dev: tp.A, PublicKey: WGPeerKey(2)}
	p2 := want.WGPeers[k2]
	p2.AllowedIPs[1] = p2.AllowedIPs[0]
	want.WGPeers[k2] = p2
	WantChanges(t, "create", Reconcile(t, h.Reconciler(), want, true), tp.Created())
	WantWG(t, h, tp, want)
	WantChanges(t, "full", Reconcile(t, h.Reconciler(), want, true), dataplane.Changes{})
	WantChanges(t, "restart", Reconcile(t, h.Restart(), want, true), dataplane.Changes{})
}
