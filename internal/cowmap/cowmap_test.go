package cowmap

import (
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
)

func hashInt(k int) uint64 { return uint64(k) * 0x9e3779b97f4a7c15 }

// TestAgainstMap runs random writes and snapshots against a plain map:
// every snapshot keeps the contents it was taken with, whatever is written
// after it.
func TestAgainstMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	m := New[int, int](hashInt, 0)
	want := map[int]int{}
	type snap struct {
		s    Snapshot[int, int]
		want map[int]int
	}
	var snaps []snap
	for step := range 20000 {
		k := r.IntN(2000)
		switch r.IntN(10) {
		case 0, 1, 2:
			m.Delete(k)
			delete(want, k)
		case 3:
			snaps = append(snaps, snap{m.Snapshot(), maps.Clone(want)})
		default:
			m.Set(k, step)
			want[k] = step
		}
		if m.Len() != len(want) {
			t.Fatalf("step %d: Len = %d, want %d", step, m.Len(), len(want))
		}
		if v, ok := m.Get(k); v != want[k] || ok != hasKey(want, k) {
			t.Fatalf("step %d: Get(%d) = %d %v, want %d", step, k, v, ok, want[k])
		}
	}
	if got := maps.Collect(m.All()); !maps.Equal(got, want) {
		t.Errorf("All differs from the reference map")
	}
	for i, s := range snaps {
		if s.s.Len() != len(s.want) {
			t.Fatalf("snapshot %d: Len = %d, want %d", i, s.s.Len(), len(s.want))
		}
		if got := maps.Collect(s.s.All()); !maps.Equal(got, s.want) {
			t.Fatalf("snapshot %d changed after it was taken", i)
		}
		for k, v := range s.want {
			if g, ok := s.s.Get(k); !ok || g != v {
				t.Fatalf("snapshot %d: Get(%d) = %d %v, want %d", i, k, g, ok, v)
			}
		}
	}
}

func hasKey(m map[int]int, k int) bool { _, ok := m[k]; return ok }

func TestZeroSnapshot(t *testing.T) {
	var s Snapshot[int, string]
	if _, ok := s.Get(1); ok || s.Len() != 0 {
		t.Error("zero snapshot not empty")
	}
	for range s.All() {
		t.Error("zero snapshot yields")
	}
}

// TestDeleteWhileIterating removes entries while iterating, across a
// snapshot (which makes the deletes copy shards): every entry is visited
// once and the snapshot keeps them all.
func TestDeleteWhileIterating(t *testing.T) {
	m := New[int, int](hashInt, 0)
	for i := range 1000 {
		m.Set(i, i)
	}
	s := m.Snapshot()
	seen := map[int]int{}
	for k := range m.All() {
		seen[k]++
		if k%2 == 0 {
			m.Delete(k)
		}
	}
	for i := range 1000 {
		if seen[i] != 1 {
			t.Fatalf("key %d visited %d times", i, seen[i])
		}
	}
	if m.Len() != 500 || s.Len() != 1000 {
		t.Errorf("Len = %d (want 500), snapshot %d (want 1000)", m.Len(), s.Len())
	}
}

// TestConcurrentReaders reads snapshots on other goroutines while the
// writer keeps writing (run with -race).
func TestConcurrentReaders(t *testing.T) {
	m := New[int, int](hashInt, 100)
	ch := make(chan Snapshot[int, int], 8)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range ch {
				n := 0
				for k, v := range s.All() {
					if k != v%1000 {
						t.Errorf("entry %d = %d", k, v)
					}
					n++
				}
				if n != s.Len() {
					t.Errorf("snapshot yields %d entries, Len %d", n, s.Len())
				}
			}
		}()
	}
	for i := range 20000 {
		m.Set(i%1000, i)
		if i%7 == 0 {
			m.Delete((i * 31) % 1000)
		}
		if i%100 == 0 {
			ch <- m.Snapshot()
		}
	}
	close(ch)
	wg.Wait()
}

// BenchmarkSetAfterSnapshot is the cost of a pass for one peer at 5,000
// peers: one write after a snapshot, then the next snapshot.
func BenchmarkSetAfterSnapshot(b *testing.B) {
	m := New[int, [200]byte](hashInt, 5000)
	for i := range 5000 {
		m.Set(i, [200]byte{})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Set(i%5000, [200]byte{1})
		_ = m.Snapshot()
		i++
	}
}
