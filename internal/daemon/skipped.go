package daemon

import (
	"context"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
)

// maxSkipExamples is how many skipped leases per reason are kept by key,
// for the status and the log.
const maxSkipExamples = 20

// skipSet remembers the peer leases the daemon does not use, by their raw
// store key (the etcd key, the node name): a lease whose key does not
// parse has no subnets to name it by, and one that parses is still best
// found in the store by the key it was written under.
//
// Junk in the store must not grow the daemon without bound, so the set
// keeps two things of different cost. Every skipped lease costs one fixed
// entry (a 64-bit hash of its key and its reason) whatever the key's
// length: the count per reason stays exact and a removed lease is
// forgotten. Only the first maxSkipExamples per reason are kept by key
// (shortened when long), and only those are logged: a flood of bad leases
// logs a few lines per reason, not one per lease. An example that goes
// away frees its place for the next lease skipped for that reason.
type skipSet struct {
	seed     maphash.Seed
	reasons  map[uint64]string            // hash of the key → reason
	count    map[string]int               // reason → leases; zeros kept, for the metric
	examples map[string]map[uint64]string // reason → hash → shortened key
	changed  map[string]struct{}          // reasons whose count moved since takeChanged
}

// skip records a peer lease that is not used: counted when it becomes
// skipped (or for another reason), logged when it is one of the examples
// the status shows (skipSet), so that a flood of junk in the store costs
// a few log lines.
func (d *daemon) skip(ev lease.Event, err error) {
	reason := backend.SkipReason(err)
	news, example := d.skipped.add(ev.Key, reason)
	if !news {
		return
	}
	d.cfg.Metrics.Skipped(reason)
	level := slog.LevelDebug
	if example {
		level = slog.LevelWarn
	}
	d.log.Log(context.Background(), level, "skipping peer lease", "key", lease.Shorten(ev.Key), "reason", reason, "err", err)
}

func newSkipSet() *skipSet {
	return &skipSet{
		seed:     maphash.MakeSeed(),
		reasons:  map[uint64]string{},
		count:    map[string]int{},
		examples: map[string]map[uint64]string{},
		changed:  map[string]struct{}{},
	}
}

func (s *skipSet) hash(key string) uint64 { return maphash.String(s.seed, key) }

// add records key as skipped for reason. It reports whether that is news
// (the key was not skipped, or for another reason) and whether the key is
// kept as an example (to be logged).
func (s *skipSet) add(key, reason string) (news, example bool) {
	h := s.hash(key)
	old, ok := s.reasons[h]
	if ok && old == reason {
		return false, false
	}
	if ok {
		s.drop(h, old)
	}
	s.reasons[h] = reason
	s.count[reason]++
	s.changed[reason] = struct{}{}
	ex := s.examples[reason]
	if len(ex) < maxSkipExamples {
		if ex == nil {
			ex = map[uint64]string{}
			s.examples[reason] = ex
		}
		ex[h] = lease.Shorten(key)
		example = true
	}
	return true, example
}

// remove forgets key, if it was skipped.
func (s *skipSet) remove(key string) {
	h := s.hash(key)
	if reason, ok := s.reasons[h]; ok {
		s.drop(h, reason)
	}
}

func (s *skipSet) drop(h uint64, reason string) {
	delete(s.reasons, h)
	s.count[reason]--
	s.changed[reason] = struct{}{}
	delete(s.examples[reason], h)
}

// retain forgets every key not in keep (the hashes of a snapshot's keys,
// from keys).
func (s *skipSet) retain(keep map[uint64]struct{}) {
	for h, reason := range s.reasons {
		if _, ok := keep[h]; !ok {
			s.drop(h, reason)
		}
	}
}

// keys hashes the keys of a batch's events, for retain.
func (s *skipSet) keys(evs []lease.Event) map[uint64]struct{} {
	m := make(map[uint64]struct{}, len(evs))
	for _, ev := range evs {
		m[s.hash(ev.Key)] = struct{}{}
	}
	return m
}

// len is the number of skipped leases.
func (s *skipSet) len() int { return len(s.reasons) }

// takeChanged returns the reasons whose count changed since the last call,
// with their counts now.
func (s *skipSet) takeChanged() map[string]int {
	if len(s.changed) == 0 {
		return nil
	}
	out := make(map[string]int, len(s.changed))
	for r := range s.changed {
		out[r] = s.count[r]
	}
	clear(s.changed)
	return out
}

// status lists the kept examples, sorted by key, and the count per reason
// (reasons with none left out).
func (s *skipSet) status() ([]httpapi.SkipStatus, map[string]int) {
	var out []httpapi.SkipStatus
	counts := map[string]int{}
	for reason, n := range s.count {
		if n > 0 {
			counts[reason] = n
		}
	}
	for _, reason := range slices.Sorted(maps.Keys(s.examples)) {
		for _, key := range s.examples[reason] {
			out = append(out, httpapi.SkipStatus{Key: key, Reason: reason})
		}
	}
	slices.SortFunc(out, func(a, b httpapi.SkipStatus) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Reason, b.Reason)
	})
	if len(counts) == 0 {
		counts = nil
	}
	return out, counts
}
