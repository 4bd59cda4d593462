package dataplane

import (
	"iter"
	"maps"
)

// Wanted is a desired state as Reconcile reads it: its links, and one
// Table per kind of object. A *State is one (its maps are the tables);
// backend.Desired is another, which keeps each object once, in the
// contribution that declared it, and its tables only point there.
type Wanted interface {
	WantedLinks() map[string]Link
	WantedRoutes() Table[RouteKey, Route]
	WantedNeighs() Table[NeighKey, Neigh]
	WantedFDB() Table[FDBKey, FDB]
	WantedWGPeers() Table[WGPeerKey, WGPeer]
	WantedUDPPeers() Table[UDPPeerKey, UDPPeer]
}

// Table is one kind of desired object keyed by identity.
type Table[K comparable, V any] interface {
	Get(k K) (V, bool)
	All() iter.Seq2[K, V]
	Len() int
}

// MapTable is a Table over a map.
type MapTable[K comparable, V any] map[K]V

// Get returns k's value.
func (m MapTable[K, V]) Get(k K) (V, bool) { v, ok := m[k]; return v, ok }

// All yields every entry.
func (m MapTable[K, V]) All() iter.Seq2[K, V] { return maps.All(m) }

// Len is the number of entries.
func (m MapTable[K, V]) Len() int { return len(m) }

var _ Wanted = (*State)(nil)

// WantedLinks implements Wanted.
func (s *State) WantedLinks() map[string]Link { return s.Links }

// WantedRoutes implements Wanted.
func (s *State) WantedRoutes() Table[RouteKey, Route] { return MapTable[RouteKey, Route](s.Routes) }

// WantedNeighs implements Wanted.
func (s *State) WantedNeighs() Table[NeighKey, Neigh] { return MapTable[NeighKey, Neigh](s.Neighs) }

// WantedFDB implements Wanted.
func (s *State) WantedFDB() Table[FDBKey, FDB] { return MapTable[FDBKey, FDB](s.FDB) }

// WantedWGPeers implements Wanted.
func (s *State) WantedWGPeers() Table[WGPeerKey, WGPeer] {
	return MapTable[WGPeerKey, WGPeer](s.WGPeers)
}

// WantedUDPPeers implements Wanted.
func (s *State) WantedUDPPeers() Table[UDPPeerKey, UDPPeer] {
	return MapTable[UDPPeerKey, UDPPeer](s.UDPPeers)
}

// StateOf copies w into a State (O(size): for tests and status, not for
// passes).
func StateOf(w Wanted) *State {
	if s, ok := w.(*State); ok {
		return s.Clone()
	}
	s := NewState()
	maps.Copy(s.Links, w.WantedLinks())
	maps.Insert(s.Routes, w.WantedRoutes().All())
	maps.Insert(s.Neighs, w.WantedNeighs().All())
	maps.Insert(s.FDB, w.WantedFDB().All())
	maps.Insert(s.WGPeers, w.WantedWGPeers().All())
	maps.Insert(s.UDPPeers, w.WantedUDPPeers().All())
	return s
}
