package dataplane

import (
	"context"
	"net/netip"
	"testing"
)

// benchState is a VXLAN device and n peers' route, neighbour and FDB
// entry, as the vxlan backend plans them.
func benchState(n int) *State {
	s := NewState()
	s.Links["flannel.1"] = Link{Name: "flannel.1", VNI: 1, MTU: 1450, MAC: MAC{2, 0, 0, 0, 0, 1},
		Local: netip.MustParseAddr("192.168.0.1"), Addr: netip.MustParsePrefix("10.0.0.0/32")}
	for i := range n {
		gw := netip.AddrFrom4([4]byte{10, byte(1 + i>>8), byte(i), 0})
		mac := MAC{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		s.AddRoute(Route{Dst: netip.PrefixFrom(gw, 24), Gw: gw, Dev: "flannel.1", OnLink: true})
		s.AddNeigh(Neigh{Dev: "flannel.1", IP: gw, MAC: mac})
		s.AddFDB(FDB{Dev: "flannel.1", MAC: mac, Dst: netip.AddrFrom4([4]byte{100, 64 | byte(i>>16), byte(i >> 8), byte(i)})})
	}
	return s
}

// BenchmarkReconcileNoop5000 is the diff of 5,000 desired peers against an
// index that already has them: the cost every non-full pass pays on top of
// its writes.
func BenchmarkReconcileNoop5000(b *testing.B) {
	f := NewFake()
	desired := benchState(5000)
	if _, err := f.Reconcile(context.Background(), desired, true); err != nil {
		b.Fatal(err)
	}
	benchNoop(b, f, desired)
}

// BenchmarkReconcileOneJoin5000 alternates 5,000 and 5,001 peers: one
// join or leave per pass at scale.
func BenchmarkReconcileOneJoin5000(b *testing.B) {
	f := NewFake()
	small := benchState(5000)
	if _, err := f.Reconcile(context.Background(), small, true); err != nil {
		b.Fatal(err)
	}
	benchOneJoin(b, f, small, benchState(5001))
}

// benchNoop times non-full passes of r to desired, which r has.
func benchNoop(b *testing.B, r Reconciler, desired *State) {
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if ch, err := r.Reconcile(ctx, desired, false); err != nil || ch.Total() != 0 {
			b.Fatalf("no-op pass wrote %d objects: %v", ch.Total(), err)
		}
	}
}

// benchOneJoin times non-full passes of r alternating between big and
// small (which r has).
func benchOneJoin(b *testing.B, r Reconciler, small, big *State) {
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		want := big
		if i%2 == 1 {
			want = small
		}
		i++
		if _, err := r.Reconcile(ctx, want, false); err != nil {
			b.Fatal(err)
		}
	}
}
