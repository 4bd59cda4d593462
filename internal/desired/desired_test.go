package desired

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// TestDesiredIncrementalEqualsFromScratch drives a State through random
// joins, changes and leaves of peers whose objects collide often (a key
// space of a few routes, neighbours and FDB entries, values that differ
// by owner), and checks after every step that it equals a State built
// from scratch from the peers present, and that every key whose value
// changed was recorded as touched.
func TestDesiredIncrementalEqualsFromScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := dataplane.NewState()
	base.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), Dev: "base"})
	fallback := dataplane.Objects{}
	fallback.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.0.1.0/24"), Blackhole: true})
	fallback.AddRoute(dataplane.Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), Blackhole: true})

	ids := make([]lease.ID, 12)
	for i := range ids {
		ids[i] = lease.ID{V4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)}
	}
	plan := func(id lease.ID, variant int) dataplane.Objects {
		var o dataplane.Objects
		for j := range 1 + rng.IntN(3) {
			dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), 0}), 24)
			o.AddRoute(dataplane.Route{Dst: dst, Gw: id.V4.Addr(), Dev: "d" + string(rune('a'+variant+j))})
		}
		ip := netip.AddrFrom4([4]byte{10, 9, 0, byte(rng.IntN(3))})
		o.AddNeigh(dataplane.Neigh{Dev: "flannel.1", IP: ip, MAC: dataplane.MAC{2, byte(variant), id.V4.Addr().As4()[2]}})
		o.AddFDB(dataplane.FDB{Dev: "flannel.1", MAC: dataplane.MAC{2, byte(rng.IntN(2))}, Dst: netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(2))})})
		return o
	}

	des := New(base, 0)
	des.SetFallback(fallback, nil)
	present := map[lease.ID]dataplane.Objects{}
	for step := range 3000 {
		before := des.Copy()
		touched := dataplane.NewDelta()
		id := ids[rng.IntN(len(ids))]
		if _, ok := present[id]; ok && rng.IntN(3) == 0 {
			des.RemovePeer(id, touched)
			delete(present, id)
		} else {
			o := plan(id, rng.IntN(3))
			des.SetPeer(lease.Lease{Subnet: id.V4}, o, touched)
			present[id] = o
		}
		if rng.IntN(50) == 0 {
			des.SetFallback(fallback, touched)
		}

		fresh := New(base, len(present))
		// Insert in a random order: the result must not depend on it.
		order := slices.Collect(func(yield func(lease.ID) bool) {
			for id := range present {
				if !yield(id) {
					return
				}
			}
		})
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, id := range order {
			fresh.SetPeer(lease.Lease{Subnet: id.V4}, present[id], nil)
		}
		fresh.SetFallback(fallback, nil)
		after := des.Copy()
		if d := cmp.Diff(fresh.Copy().Lines(), after.Lines()); d != "" {
			t.Fatalf("step %d: incremental differs from scratch (-scratch +incremental):\n%s", step, d)
		}
		if des.Peers() != len(present) {
			t.Fatalf("step %d: %d peers, want %d", step, des.Peers(), len(present))
		}
		for k, r := range after.Routes {
			if old, ok := before.Routes[k]; (!ok || old != r) && !has(touched.Routes, k) {
				t.Fatalf("step %d: route %s changed but not touched", step, r)
			}
		}
		for k := range before.Routes {
			if _, ok := after.Routes[k]; !ok && !has(touched.Routes, k) {
				t.Fatalf("step %d: route %v removed but not touched", step, k)
			}
		}
		for k, n := range after.Neighs {
			if old, ok := before.Neighs[k]; (!ok || old != n) && !has(touched.Neighs, k) {
				t.Fatalf("step %d: neighbour %v changed but not touched", step, n)
			}
		}
		for k := range before.FDB {
			if _, ok := after.FDB[k]; !ok && !has(touched.FDB, k) {
				t.Fatalf("step %d: fdb %v removed but not touched", step, k)
			}
		}
	}
	// Everything goes: only the base and the fallback stay.
	for id := range present {
		des.RemovePeer(id, nil)
	}
	want := New(base, 0)
	want.SetFallback(fallback, nil)
	if d := cmp.Diff(want.Copy().Lines(), des.Copy().Lines()); d != "" {
		t.Fatalf("after every peer left (-want +got):\n%s", d)
	}
	if n := int(des.n) - len(des.free) - 2; n != 0 {
		t.Fatalf("%d contributions still allocated", n)
	}
}

func has[K comparable](m map[K]struct{}, k K) bool { _, ok := m[k]; return ok }
