// Package cow has a copy-on-write slab: an array one goroutine writes
// and others read through immutable snapshots that cost O(1) to take.
package cow

import "iter"

// chunk is how many entries a slab copies at once.
const chunk = 256

// Slab is an array of V indexed by small numbers (the desired state's
// handles), in chunks of 256. The zero V is an empty slot. Snapshot shares
// the chunks; the next write to a shared chunk copies that chunk alone
// (2 KiB for pointers), so the writer pays for what it changes since the
// last snapshot, never for the whole slab, and snapshots never see a
// later write. Not safe for concurrent writers; snapshots may be read by
// any goroutine.
//
// Keep V small (a pointer to an immutable record): a shared chunk is
// copied whole.
type Slab[V comparable] struct {
	chunks [][]V
	// own[i] says chunks[i] is not shared with a snapshot; shared says
	// the chunks slice itself is.
	own    []bool
	shared bool
	n      int
}

// Len is the number of non-empty slots.
func (s *Slab[V]) Len() int { return s.n }

// Get returns slot i (zero: empty).
func (s *Slab[V]) Get(i uint32) V { return get(s.chunks, i) }

// Set fills slot i with v (zero: empties it).
func (s *Slab[V]) Set(i uint32, v V) {
	var zero V
	c := int(i / chunk)
	if c >= len(s.chunks) {
		if v == zero {
			return
		}
		s.grow(c + 1)
	}
	old := s.chunks[c][i%chunk]
	if old == v {
		return
	}
	s.writable(c)[i%chunk] = v
	switch {
	case old == zero:
		s.n++
	case v == zero:
		s.n--
	}
}

// grow makes room for n chunks.
func (s *Slab[V]) grow(n int) {
	chunks := make([][]V, n, max(n, 2*len(s.chunks)))
	copy(chunks, s.chunks)
	for i := len(s.chunks); i < n; i++ {
		chunks[i] = make([]V, chunk)
	}
	own := make([]bool, n, cap(chunks))
	copy(own, s.own)
	for i := len(s.own); i < n; i++ {
		own[i] = true
	}
	s.chunks, s.own, s.shared = chunks, own, false
}

// writable returns chunk c, copied first if a snapshot shares it.
func (s *Slab[V]) writable(c int) []V {
	if s.shared {
		s.chunks = append([][]V(nil), s.chunks...)
		s.shared = false
	}
	if !s.own[c] {
		s.chunks[c] = append([]V(nil), s.chunks[c]...)
		s.own[c] = true
	}
	return s.chunks[c]
}

// All yields the non-empty slots in index order.
func (s *Slab[V]) All() iter.Seq2[uint32, V] { return all(s.chunks) }

// Snapshot returns the slab as it is now, O(1) (a chunk's first
// write afterwards copies it).
func (s *Slab[V]) Snapshot() Snapshot[V] {
	s.shared = true
	clear(s.own)
	return Snapshot[V]{chunks: s.chunks, n: s.n}
}

// Snapshot is an immutable view of a Slab; the zero Snapshot is empty.
type Snapshot[V comparable] struct {
	chunks [][]V
	n      int
}

// Len is the number of non-empty slots.
func (s Snapshot[V]) Len() int { return s.n }

// Get returns slot i (zero: empty).
func (s Snapshot[V]) Get(i uint32) V { return get(s.chunks, i) }

// All yields the non-empty slots in index order.
func (s Snapshot[V]) All() iter.Seq2[uint32, V] { return all(s.chunks) }

func get[V comparable](chunks [][]V, i uint32) V {
	if c := int(i / chunk); c < len(chunks) {
		return chunks[c][i%chunk]
	}
	var zero V
	return zero
}

func all[V comparable](chunks [][]V) iter.Seq2[uint32, V] {
	return func(yield func(uint32, V) bool) {
		var zero V
		for c, vs := range chunks {
			for i, v := range vs {
				if v != zero && !yield(uint32(c*chunk+i), v) {
					return
				}
			}
		}
	}
}
