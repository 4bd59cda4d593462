package desired

import (
	"math/rand/v2"
	"testing"
)

// TestRefTableAgainstMap: random sets and deletes over a small key space
// (so probes collide and wrap) agree with a Go map, through growth.
func TestRefTableAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	// A ref's key is its index into keys; keys[i] for i < 4096.
	keys := make([]uint16, 4096)
	for i := range keys {
		keys[i] = uint16(rng.IntN(600))
	}
	tab := newRefTable(0, func(r ref) uint16 { return keys[r.i] })
	want := map[uint16]ref{}
	for step := range 200000 {
		i := uint32(rng.IntN(len(keys)))
		k := keys[i]
		if rng.IntN(3) == 0 {
			tab.del(k)
			delete(want, k)
		} else {
			tab.set(k, ref{h: 7, i: i})
			want[k] = ref{h: 7, i: i}
		}
		if tab.n != len(want) {
			t.Fatalf("step %d: %d entries, want %d", step, tab.n, len(want))
		}
		if step%997 == 0 {
			for k, r := range want {
				if got, ok := tab.get(k); !ok || got != r {
					t.Fatalf("step %d: get(%d) = %v %v, want %v", step, k, got, ok, r)
				}
			}
			n := 0
			for r := range tab.all {
				if want[keys[r.i]] != r {
					t.Fatalf("step %d: all yields %v, not in the map", step, r)
				}
				n++
			}
			if n != len(want) {
				t.Fatalf("step %d: all yields %d, want %d", step, n, len(want))
			}
		}
	}
	if _, ok := tab.get(60000); ok {
		t.Fatal("found a key never set")
	}
}
