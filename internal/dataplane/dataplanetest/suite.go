// Package dataplanetest is the conformance suite every dataplane.Reconciler
// passes — the in-memory Fake and Netlink in a scratch network namespace —
// so that what daemon tests learn from the Fake holds for the kernel.
package dataplanetest

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
)

// Underlay is the device VXLAN traffic leaves by, with one IPv4 and one
// IPv6 address; peers' public addresses are taken from the same subnets.
type Underlay struct {
	Name         string
	Index        int
	Addr4, Addr6 netip.Prefix
}

// Harness is one fresh kernel (or fake of one) with a Reconciler over it.
// Its methods fail the test on error.
type Harness interface {
	// Reconciler is the instance under test.
	Reconciler() dataplane.Reconciler
	// Restart returns a new instance over the same kernel, with an empty
	// index, as after a daemon restart.
	Restart() dataplane.Reconciler
	Underlay() Underlay
	// Dump returns the kernel's objects that are ours given links (as
	// Netlink.Dump defines them), read from the kernel, not an index.
	Dump(links ...string) *dataplane.State
	// HasRoute reports whether the main table has a route to dst.
	HasRoute(dst netip.Prefix) bool
	// LinkIndex returns the ifindex of a device, 0 if there is none.
	LinkIndex(name string) int

	// Drift, caused behind the Reconciler's back.
	DeleteRoute(k dataplane.RouteKey)
	DeleteNeigh(k dataplane.NeighKey)
	DeleteFDB(k dataplane.FDBKey)
	DeleteLink(name string)
	// AddRoute adds a route; ours says whether it carries RouteProtocol.
	AddRoute(r dataplane.Route, ours bool)
	// AddNeigh and AddFDB add permanent entries.
	AddNeigh(n dataplane.Neigh)
	AddFDB(f dataplane.FDB)

	// WGNames names the two WireGuard devices of the WireGuard cases:
	// unique to the harness, since userspace devices' control sockets
	// share one directory machine-wide.
	WGNames() (a, b string)
	// DeleteWGPeer and AddWGPeer change a device's peers as `wg set`
	// does (AddWGPeer overwrites a peer with the same key).
	DeleteWGPeer(k dataplane.WGPeerKey)
	AddWGPeer(p dataplane.WGPeer)
	// WireGuard is the Reconciler's status read of a WireGuard device.
	WireGuard(name string) (dataplane.WGStatus, bool)
}

// Link names of the topology, as flannel names its devices for VNI 1.
const (
	Dev4 = "flannel.1"
	Dev6 = "flannel-v6.1"
)

// Topology is a host with an IPv4 and an IPv6 VXLAN device (both on an
// underlay with both families) and peers 1..n. Peer 3, when present,
// is reached by direct routing over the underlay for IPv4.
type Topology struct {
	U          Underlay
	VNI4, VNI6 uint32
	MTU4, MTU6 int
	MAC4, MAC6 dataplane.MAC
	// Peers maps peer id (1..250) to its VTEP MAC's last byte.
	Peers map[int]byte
	// Moved maps a peer id to the id whose public address the peer has
	// now (it moved), if set.
	Moved map[int]int
}

// NewTopology returns the standard topology with peers 1, 2 and 3.
func NewTopology(u Underlay) *Topology {
	return &Topology{
		U: u, VNI4: 1, VNI6: 1, MTU4: 1450, MTU6: 1430,
		MAC4: dataplane.MAC{0x02, 0xaa, 0, 0, 0, 0xff}, MAC6: dataplane.MAC{0x02, 0xbb, 0, 0, 0, 0xff},
		Peers: map[int]byte{1: 1, 2: 2, 3: 3},
	}
}

func (tp *Topology) peerPublic(u netip.Prefix, id int) netip.Addr {
	if to, ok := tp.Moved[id]; ok {
		id = to
	}
	return peerAddr(u, id)
}

// peerAddr is peer id's public address in the underlay subnet u.
func peerAddr(u netip.Prefix, id int) netip.Addr {
	b := u.Masked().Addr().AsSlice()
	b[len(b)-1] = byte(10 + id)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Subnet4 and Subnet6 are peer id's lease subnets.
func Subnet4(id int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(id), 0}), 24)
}

// Subnet6 is peer id's IPv6 lease subnet.
func Subnet6(id int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x10, 0x02, 0x44, 0, byte(id)}), 64)
}

// State is what the daemon would declare for tp.
func (tp *Topology) State() *dataplane.State {
	s := dataplane.NewState()
	s.Links[Dev4] = dataplane.Link{
		Name: Dev4, VNI: tp.VNI4, MTU: tp.MTU4, MAC: tp.MAC4,
		Local: tp.U.Addr4.Addr(), ParentIndex: tp.U.Index, Addr: netip.PrefixFrom(Subnet4(0).Addr(), 32),
	}
	s.Links[Dev6] = dataplane.Link{
		Name: Dev6, VNI: tp.VNI6, MTU: tp.MTU6, MAC: tp.MAC6,
		Local: tp.U.Addr6.Addr(), ParentIndex: tp.U.Index, Addr: netip.PrefixFrom(Subnet6(0).Addr(), 128),
	}
	for id, macByte := range tp.Peers {
		mac4 := dataplane.MAC{0x02, 0x44, 0, 0, byte(id), macByte}
		mac6 := dataplane.MAC{0x02, 0x66, 0, 0, byte(id), macByte}
		if id == 3 {
			s.AddRoute(dataplane.Route{Dst: Subnet4(id), Gw: tp.peerPublic(tp.U.Addr4, id), Dev: tp.U.Name})
		} else {
			gw := Subnet4(id).Addr()
			s.AddRoute(dataplane.Route{Dst: Subnet4(id), Gw: gw, Dev: Dev4, OnLink: true})
			s.AddNeigh(dataplane.Neigh{Dev: Dev4, IP: gw, MAC: mac4})
			s.AddFDB(dataplane.FDB{Dev: Dev4, MAC: mac4, Dst: tp.peerPublic(tp.U.Addr4, id)})
		}
		gw := Subnet6(id).Addr()
		s.AddRoute(dataplane.Route{Dst: Subnet6(id), Gw: gw, Dev: Dev6, OnLink: true})
		s.AddNeigh(dataplane.Neigh{Dev: Dev6, IP: gw, MAC: mac6})
		s.AddFDB(dataplane.FDB{Dev: Dev6, MAC: mac6, Dst: tp.peerPublic(tp.U.Addr6, id)})
	}
	return s
}

// created is what building the standard topology from nothing writes.
func created() dataplane.Changes {
	return dataplane.Changes{LinksAdded: 2, RoutesAdded: 6, NeighsAdded: 5, FDBAdded: 5}
}

// Reconcile runs r and fails the test on error.
func Reconcile(t *testing.T, r dataplane.Reconciler, s *dataplane.State, full bool) dataplane.Changes {
	t.Helper()
	c, err := r.Reconcile(context.Background(), s, full)
	if err != nil {
		t.Fatalf("Reconcile(full=%v): %v", full, err)
	}
	return c
}

// WantChanges fails the test if got differs from want.
func WantChanges(t *testing.T, what string, got, want dataplane.Changes) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s: changes (-want +got):\n%s", what, d)
	}
}

// WantKernel fails the test if the kernel's objects of ours differ from
// want, comparing `ip`-style lines.
func WantKernel(t *testing.T, h Harness, want *dataplane.State) {
	t.Helper()
	if d := cmp.Diff(want.Lines(), h.Dump(Dev4, Dev6).Lines()); d != "" {
		t.Errorf("kernel (-want +got):\n%s", d)
	}
}

// setup builds the standard topology and checks the result.
func setup(t *testing.T, h Harness) *Topology {
	t.Helper()
	tp := NewTopology(h.Underlay())
	WantChanges(t, "create", Reconcile(t, h.Reconciler(), tp.State(), true), created())
	WantKernel(t, h, tp.State())
	return tp
}

// Run runs the conformance suite; newDP returns a fresh harness per case.
func Run(t *testing.T, newDP func(t *testing.T) Harness) {
	cases := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"CreateFromEmpty", testCreate},
		{"Idempotent", testIdempotent},
		{"PeerMACChange", testPeerMACChange},
		{"PeerRemoval", testPeerRemoval},
		{"PeerAddressChange", testPeerAddressChange},
		{"DriftNeedsFull", testDrift},
		{"LinkDeletedBehindOurBack", testLinkDeleted},
		{"GarbageCollection", testGC},
		{"GarbageCollectionAfterRestart", testRestartGC},
		{"InPlaceMTUAndMAC", testInPlace},
		{"InPlaceAddress", testReaddress},
		{"IdentityChangeReplacesLink", testIdentityChange},
		{"RestartWritesNothing", testRestart},
		{"LinkRemoval", testLinkRemoval},
		{"AdoptsAndReplacesExisting", testAdopt},
		{"PartialFailure", testPartialFailure},
		{"InvalidInput", testInvalid},
		{"BlackholeRoute", testBlackhole},
		{"DeltaMatchesCompleteDiff", testDelta},
		{"DeltaFallsBackOnLinkChange", testDeltaLinkChange},
	}
	cases = append(cases, wgCases()...)
	cases = append(cases, ipipCases()...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newDP(t)) })
	}
}

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

func testRestart(t *testing.T, h Harness) {
	tp := setup(t, h)
	r := h.Restart()
	WantChanges(t, "restart", Reconcile(t, r, tp.State(), true), dataplane.Changes{})
	WantChanges(t, "after restart", Reconcile(t, r, tp.State(), false), dataplane.Changes{})
	WantKernel(t, h, tp.State())
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

// must returns a function that fails the test on a Reconcile error.
func must(t *testing.T) func(dataplane.Changes, error) dataplane.Changes {
	return func(c dataplane.Changes, err error) dataplane.Changes {
		t.Helper()
		if err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		return c
	}
}
