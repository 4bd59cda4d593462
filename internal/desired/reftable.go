package desired

import "hash/maphash"

// refTable maps keys to refs without storing the keys: a ref's key is
// read from the object it points at (keyOf), so an entry costs the 8
// bytes of its ref, and the table at most twice that in free slots, where
// a Go map would also hold the key (32 to 48 bytes for a route,
// neighbour or FDB key) and its own overhead. It is an open-addressing
// table with linear probing, deletion by backward shift, and a size kept
// a power of two at most three quarters full.
//
// Every ref in the table must point at a live object whose key does not
// change while it is in the table (State removes a contribution's refs
// before it replaces the contribution's objects).
type refTable[K comparable] struct {
	slots []ref // h == noHandle: an empty slot
	n     int
	seed  maphash.Seed
	keyOf func(ref) K
}

// noHandle marks an empty slot: no contribution has this handle.
const noHandle = ^uint32(0)

func newRefTable[K comparable](n int, keyOf func(ref) K) refTable[K] {
	t := refTable[K]{seed: maphash.MakeSeed(), keyOf: keyOf}
	t.slots = emptySlots(n)
	return t
}

// emptySlots returns room for n entries.
func emptySlots(n int) []ref {
	size := 8
	for size*3/4 < n {
		size *= 2
	}
	s := make([]ref, size)
	for i := range s {
		s[i].h = noHandle
	}
	return s
}

func (t *refTable[K]) home(k K) int {
	return int(maphash.Comparable(t.seed, k) & uint64(len(t.slots)-1))
}

// find returns k's slot, or the noHandle slot where it would go.
func (t *refTable[K]) find(k K) (int, bool) {
	mask := len(t.slots) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		r := t.slots[i]
		if r.h == noHandle {
			return i, false
		}
		if t.keyOf(r) == k {
			return i, true
		}
	}
}

func (t *refTable[K]) get(k K) (ref, bool) {
	i, ok := t.find(k)
	if !ok {
		return ref{}, false
	}
	return t.slots[i], true
}

// set makes k's ref r (keyOf(r) must be k).
func (t *refTable[K]) set(k K, r ref) {
	i, ok := t.find(k)
	if !ok && (t.n+1)*4 > len(t.slots)*3 {
		t.resize(len(t.slots) * 2)
		i, _ = t.find(k)
	}
	if !ok {
		t.n++
	}
	t.slots[i] = r
}

// del removes k, shifting back the entries after it that would no longer
// be found past the gap.
func (t *refTable[K]) del(k K) {
	i, ok := t.find(k)
	if !ok {
		return
	}
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].h != noHandle; j = (j + 1) & mask {
		h := t.home(t.keyOf(t.slots[j]))
		// Move the entry at j into the gap at i unless its home lies
		// cyclically in (i, j], where a lookup starting there still
		// reaches j without crossing the gap.
		if i <= j {
			if i < h && h <= j {
				continue
			}
		} else if h > i || h <= j {
			continue
		}
		t.slots[i] = t.slots[j]
		i = j
	}
	t.slots[i].h = noHandle
	t.n--
}

func (t *refTable[K]) resize(size int) {
	old := t.slots
	t.slots = emptySlots(size * 3 / 4)
	mask := len(t.slots) - 1
	for _, r := range old {
		if r.h == noHandle {
			continue
		}
		i := t.home(t.keyOf(r))
		for t.slots[i].h != noHandle {
			i = (i + 1) & mask
		}
		t.slots[i] = r
	}
}

// all yields every entry, in slot order.
func (t *refTable[K]) all(yield func(ref) bool) {
	for _, r := range t.slots {
		if r.h != noHandle && !yield(r) {
			return
		}
	}
}
