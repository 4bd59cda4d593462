// Package dataplanetest is the conformance suite every dataplane.Reconciler
// passes — the in-memory Fake and Netlink in a scratch network namespace —
// so that what daemon tests learn from the Fake holds for the kernel.
package dataplanetest

import (
	"context"
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
