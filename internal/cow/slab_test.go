package cow

import (
	"maps"
	"math/rand/v2"
	"testing"
)

// TestAgainstMap drives random writes and snapshots and checks the slab
// and every snapshot taken against reference maps.
func TestAgainstMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var s Slab[int]
	want := map[uint32]int{}
	type snap struct {
		s    Snapshot[int]
		want map[uint32]int
	}
	var snaps []snap
	for step := range 20000 {
		i := uint32(r.IntN(2000))
		switch r.IntN(10) {
		case 0, 1, 2:
			s.Set(i, 0)
			delete(want, i)
		case 3:
			snaps = append(snaps, snap{s.Snapshot(), maps.Clone(want)})
		default:
			s.Set(i, step+1)
			want[i] = step + 1
		}
		if s.Len() != len(want) {
			t.Fatalf("step %d: Len = %d, want %d", step, s.Len(), len(want))
		}
		if got := s.Get(i); got != want[i] {
			t.Fatalf("step %d: Get(%d) = %d, want %d", step, i, got, want[i])
		}
	}
	if got := maps.Collect(s.All()); !maps.Equal(got, want) {
		t.Errorf("All differs from the reference map")
	}
	for n, sn := range snaps {
		if got := maps.Collect(sn.s.All()); !maps.Equal(got, sn.want) || sn.s.Len() != len(sn.want) {
			t.Fatalf("snapshot %d changed after it was taken", n)
		}
		for i, v := range sn.want {
			if sn.s.Get(i) != v {
				t.Fatalf("snapshot %d: Get(%d) = %d, want %d", n, i, sn.s.Get(i), v)
			}
		}
	}
	var zero Snapshot[int]
	if zero.Len() != 0 || zero.Get(5) != 0 {
		t.Errorf("zero snapshot not empty")
	}
}

// TestCopiesOnlyWhatChanges: after a snapshot, one write copies one
// chunk; the others stay shared.
func TestCopiesOnlyWhatChanges(t *testing.T) {
	var s Slab[*int]
	v := new(int)
	for i := range uint32(10 * chunk) {
		s.Set(i, v)
	}
	snap := s.Snapshot()
	s.Set(3, nil)
	shared := 0
	for c := range s.chunks {
		if &s.chunks[c][0] == &snap.chunks[c][0] {
			shared++
		}
	}
	if shared != 9 {
		t.Errorf("%d of 10 chunks still shared after one write, want 9", shared)
	}
	if snap.Get(3) != v || s.Get(3) != nil {
		t.Errorf("the write reached the snapshot, or did not happen")
	}
}

// TestConcurrentReaders runs snapshot readers beside a writer (go test
// -race finds a shared write).
func TestConcurrentReaders(t *testing.T) {
	var s Slab[int]
	done := make(chan struct{})
	snaps := make(chan Snapshot[int], 16)
	go func() {
		defer close(done)
		for sn := range snaps {
			n := 0
			for range sn.All() {
				n++
			}
			if n != sn.Len() {
				t.Errorf("snapshot yields %d, Len %d", n, sn.Len())
			}
		}
	}()
	for step := range 5000 {
		s.Set(uint32(step%700), step%3)
		if step%50 == 0 {
			snaps <- s.Snapshot()
		}
	}
	close(snaps)
	<-done
}
