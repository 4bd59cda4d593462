// Package cowmap is a map that hands out immutable snapshots of itself
// cheaply, for one writer that publishes its state to readers on other
// goroutines without copying all of it each time.
//
// The entries live in a fixed number of shards (small Go maps) chosen by
// a hash of the key. Snapshot shares the shard table with the map and
// marks every shard as shared; the next write to a shard copies that
// shard alone (and, once per snapshot, the table of shard pointers).
// Taking a snapshot is therefore O(1), and a write after one costs a copy
// of about len/Shards entries: at 5,000 entries and 256 shards, twenty.
// The daemon publishes its peers after every reconcile pass this way; a
// pass for one joining peer copies one shard, not 5,000 leases.
package cowmap

import "iter"

// Shards is the number of shards.
const Shards = 256

type table[K comparable, V any] [Shards]map[K]V

// Map is a hash map with O(1) immutable snapshots. It is not safe for
// concurrent use: one goroutine writes and takes snapshots, which may then
// be read by any number of goroutines.
type Map[K comparable, V any] struct {
	hash func(K) uint64
	tab  *table[K, V]
	// tabShared: a snapshot holds tab, so the next write copies it.
	tabShared bool
	// own[i]: shard i was copied (or made) since the last snapshot, so
	// no snapshot holds it and it may be written in place.
	own  [Shards]bool
	n    int
	hint int // capacity of new shards
}

// New returns an empty map for about size entries. hash spreads keys over
// the shards; its top eight bits pick the shard.
func New[K comparable, V any](hash func(K) uint64, size int) *Map[K, V] {
	return &Map[K, V]{hash: hash, tab: new(table[K, V]), hint: size / Shards}
}

func (m *Map[K, V]) shard(k K) int { return int(m.hash(k) >> 56) }

// Len returns the number of entries.
func (m *Map[K, V]) Len() int { return m.n }

// Get returns k's value.
func (m *Map[K, V]) Get(k K) (V, bool) {
	v, ok := m.tab[m.shard(k)][k]
	return v, ok
}

// writable returns shard i ready to be written in place.
func (m *Map[K, V]) writable(i int) map[K]V {
	if m.tabShared {
		t := *m.tab
		m.tab, m.tabShared = &t, false
	}
	if !m.own[i] {
		if s := m.tab[i]; s != nil {
			// A copy sized to the entries, not a clone of the table:
			// a Go map never shrinks, so a shard emptied by departures
			// gives its room back at the next copy.
			c := make(map[K]V, len(s))
			for k, v := range s {
				c[k] = v
			}
			m.tab[i] = c
		} else {
			m.tab[i] = make(map[K]V, m.hint)
		}
		m.own[i] = true
	}
	return m.tab[i]
}

// Set sets k's value.
func (m *Map[K, V]) Set(k K, v V) {
	i := m.shard(k)
	s := m.writable(i)
	n := len(s)
	s[k] = v
	m.n += len(s) - n
}

// Delete removes k, if present.
func (m *Map[K, V]) Delete(k K) {
	i := m.shard(k)
	if _, ok := m.tab[i][k]; !ok {
		return // nothing to copy the shard for
	}
	delete(m.writable(i), k)
	m.n--
}

// All iterates over the entries in no particular order. The map may be
// written during the iteration (each entry present throughout is visited
// once); whether the iteration sees those writes is unspecified.
func (m *Map[K, V]) All() iter.Seq2[K, V] { return all(m.tab) }

// Snapshot returns the current contents, which later writes to m do not
// change.
func (m *Map[K, V]) Snapshot() Snapshot[K, V] {
	m.tabShared = true
	m.own = [Shards]bool{}
	return Snapshot[K, V]{hash: m.hash, tab: m.tab, n: m.n}
}

// Snapshot is an immutable view of a Map, safe for concurrent reads. The
// zero Snapshot is empty.
type Snapshot[K comparable, V any] struct {
	hash func(K) uint64
	tab  *table[K, V]
	n    int
}

// Len returns the number of entries.
func (s Snapshot[K, V]) Len() int { return s.n }

// Get returns k's value.
func (s Snapshot[K, V]) Get(k K) (V, bool) {
	if s.tab == nil {
		var zero V
		return zero, false
	}
	v, ok := s.tab[int(s.hash(k)>>56)][k]
	return v, ok
}

// All iterates over the entries in no particular order.
func (s Snapshot[K, V]) All() iter.Seq2[K, V] { return all(s.tab) }

func all[K comparable, V any](t *table[K, V]) iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if t == nil {
			return
		}
		for i := range t {
			for k, v := range t[i] {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}
