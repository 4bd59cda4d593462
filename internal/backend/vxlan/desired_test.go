package vxlan

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/lease"
)

// TestDesiredEqualsPlan applies random joins, changes and leaves one at a
// time to a desired.State, as the daemon does, and checks after each
// that the incremental state equals Plan over the current peers (in
// shuffled order), and that a delta reconcile of the touched keys brings
// a Fake to the same kernel as planning from scratch. The peers are made
// to collide: some share a VTEP MAC and public IP (identical FDB entries),
// some have subnets with the same network address (one neighbour key),
// so the winner rule and the hand-over to the loser are exercised.
func TestDesiredEqualsPlan(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	b := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:1::/64")}
	rng := rand.New(rand.NewPCG(1, 2))
	candidate := func() lease.Lease {
		i := 2 + rng.IntN(6)
		bits := 24 + rng.IntN(2) // /24 and /25 of one address: one neighbour key
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), bits)
		pub := fmt.Sprintf("172.16.0.%d", 1+rng.IntN(3)) // shared VTEPs
		if rng.IntN(4) == 0 {
			pub = fmt.Sprintf("192.168.1.%d", 20+i) // on-link: direct routing
		}
		m := dataplane.MAC{2, 0, 0, 0, 0, byte(1 + rng.IntN(3))}
		v6, pub6 := "", ""
		if rng.IntN(2) == 0 {
			v6, pub6 = fmt.Sprintf("fc00:0:0:%x::/64", i), fmt.Sprintf("fd00:1::%x", 0x30+rng.IntN(2))
		}
		return peer(v4.String(), v6, pub, pub6, m, m)
	}

	ctx := context.Background()
	des := desired.New(b.PlanBase(self), 0)
	delta := dataplane.NewDelta()
	fake := dataplane.NewFake()
	fake.AddDevice("eth0")
	if _, err := fake.Reconcile(ctx, des, true); err != nil {
		t.Fatal(err)
	}
	peers := map[lease.ID]lease.Lease{}
	for step := range 400 {
		p := candidate()
		if _, ok := peers[p.ID()]; ok && rng.IntN(2) == 0 {
			delete(peers, p.ID())
			des.RemovePeer(p.ID(), delta)
		} else {
			if _, err := b.Peer(self, p); err != nil {
				t.Fatalf("Peer(%s): %v", p.Key(), err)
			}
			peers[p.ID()] = p
			des.SetPeer(p, mustPeer(b, self, p), delta)
		}
		list := make([]lease.Lease, 0, len(peers))
		for _, q := range peers {
			list = append(list, q)
		}
		rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
		want := backend.Compose(b, self, list)
		if d := cmp.Diff(want.Lines(), des.Copy().Lines()); d != "" {
			t.Fatalf("step %d: incremental state differs from Plan (-plan +incremental):\n%s", step, d)
		}
		if _, err := fake.ReconcileDelta(ctx, des, delta); err != nil {
			t.Fatalf("step %d: ReconcileDelta: %v", step, err)
		}
		delta.Reset()
		if d := cmp.Diff(want.Lines(), fake.Dump(DeviceName(1, false), DeviceName(1, true)).Lines()); d != "" {
			t.Fatalf("step %d: kernel after delta passes differs from Plan (-plan +kernel):\n%s", step, d)
		}
	}
	if des.Peers() != len(peers) {
		t.Errorf("Peers() = %d, want %d", des.Peers(), len(peers))
	}
}

// TestDesiredConflictWinner: two peers declare one FDB entry (same VTEP
// MAC and public IP); it stays while either is there, and the lower lease
// wins a neighbour key both declare whichever arrives first.
func TestDesiredConflictWinner(t *testing.T) {
	n := network(t, `{"Network":"10.5.0.0/16"}`)
	b := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}
	lo := peer("10.5.2.0/24", "", "172.16.0.1", "", mac2, mac6)
	hi := peer("10.5.2.0/25", "", "172.16.0.1", "", mac3, mac6) // same gateway 10.5.2.0
	same := peer("10.5.3.0/24", "", "172.16.0.1", "", mac2, mac6)
	for _, order := range [][]lease.Lease{{lo, hi, same}, {same, hi, lo}} {
		des := desired.New(b.PlanBase(self), 0)
		for _, p := range order {
			des.SetPeer(p, mustPeer(b, self, p), nil)
		}
		gw := dataplane.NeighKey{Dev: "flannel.1", IP: netip.MustParseAddr("10.5.2.0")}
		if got := des.Copy().Neighs[gw].MAC; got != mac2 {
			t.Errorf("neighbour %s = %s, want the lower lease's %s", gw.IP, got, mac2)
		}
		shared := dataplane.FDB{Dev: "flannel.1", MAC: mac2, Dst: netip.MustParseAddr("172.16.0.1")}
		delta := dataplane.NewDelta()
		des.RemovePeer(lo.ID(), delta)
		if _, ok := des.Copy().FDB[shared]; !ok {
			t.Error("FDB entry shared with a remaining peer was removed")
		}
		if got := des.Copy().Neighs[gw].MAC; got != mac3 {
			t.Errorf("after the winner left, neighbour %s = %s, want %s", gw.IP, got, mac3)
		}
		if _, ok := delta.Neighs[gw]; !ok {
			t.Error("hand-over of the neighbour not recorded in the delta")
		}
		des.RemovePeer(same.ID(), nil)
		if _, ok := des.Copy().FDB[shared]; ok {
			t.Error("FDB entry survived its last peer")
		}
		if d := cmp.Diff(backend.Compose(b, self, []lease.Lease{hi}).Lines(), des.Copy().Lines()); d != "" {
			t.Errorf("(-plan +incremental)\n%s", d)
		}
	}
}

// BenchmarkSinglePeerUpdate5000 is what one lease event costs the daemon
// at 5,000 peers, without the kernel: plan the peer, swap its
// contribution, and a delta pass over the Fake — alternately a join and
// the leave of the same peer.
func BenchmarkSinglePeerUpdate5000(b *testing.B) {
	n, _ := config.ParseNetwork([]byte(`{"Network":"10.0.0.0/9"}`))
	be := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.0.0.0/24")}
	des := desired.New(be.PlanBase(self), 5000)
	for i := range 5000 {
		p := benchPeer(i)
		des.SetPeer(p, mustPeer(be, self, p), nil)
	}
	fake := dataplane.NewFake()
	fake.AddDevice("eth0")
	ctx := context.Background()
	if _, err := fake.Reconcile(ctx, des, true); err != nil {
		b.Fatal(err)
	}
	delta := dataplane.NewDelta()
	extra := benchPeer(5000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			des.SetPeer(extra, mustPeer(be, self, extra), delta)
		} else {
			des.RemovePeer(extra.ID(), delta)
		}
		i++
		if ch, err := fake.ReconcileDelta(ctx, des, delta); err != nil || ch.Total() != 3 {
			b.Fatalf("pass wrote %d objects, want 3: %v", ch.Total(), err)
		}
		delta.Reset()
	}
}

// BenchmarkPlanPeer is one peer's plan, JSON decoding included.
func BenchmarkPlanPeer(b *testing.B) {
	n, _ := config.ParseNetwork([]byte(`{"Network":"10.0.0.0/9"}`))
	be := New(n, underlay, mac1, mac6)
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.0.0.0/24")}
	p := benchPeer(1)
	b.ReportAllocs()
	for b.Loop() {
		mustPeer(be, self, p)
	}
}

func benchPeer(i int) lease.Lease {
	return peer(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256), "",
		fmt.Sprintf("172.16.%d.%d", i/250, i%250+1), "", dataplane.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}, mac6)
}

// mustPeer plans a peer the test knows to be valid.
func mustPeer(b *Backend, self, p lease.Lease) dataplane.Objects {
	o, _ := b.Peer(self, p)
	return o
}
