package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
)

// waitStatus polls the board until cond holds.
func (h *harness) waitStatus(what string, cond func(httpapi.Status) bool) httpapi.Status {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := h.board.Get()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; status: skipped %+v, counts %v, %d peers", what, s.Skipped, s.SkippedByReason, len(s.Peers))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDaemonShowsSkippedLeasesByRawKey: skipped leases are named by the
// key they were written under, not by subnets parsed from it (a key that
// does not parse has none); a lease naming our public IP for another
// subnet is skipped, not installed, and not fatal; the counts and the
// metrics follow additions and removals.
func TestDaemonShowsSkippedLeasesByRawKey(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	h.board, h.metrics = &Board{}, metrics.New("test")
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.store.PutRaw("bogus", []byte(`{}`))
	h.store.PutRaw("10.5.300.0-24", []byte(`{}`))
	h.store.PutRaw("10.5.8.0-24", []byte(`{not json`))
	h.store.PutRaw("10.5.9.0-24", make([]byte, lease.MaxValueSize+1))
	h.start()
	h.waitState("device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	// Our own public IP (fakeSys: 192.168.1.10) for another subnet: a
	// stale lease of this host. (Written before the start, it would have
	// been the lease Acquire reuses: TestDaemonBadLeaseFlood.)
	h.store.Put(peerLease("10.5.10.0/24", "192.168.1.10", macB))

	want := []httpapi.SkipStatus{
		{Key: "10.5.10.0-24", Reason: backend.ReasonOwnPublicIP},
		{Key: "10.5.300.0-24", Reason: backend.ReasonBadKey},
		{Key: "10.5.8.0-24", Reason: backend.ReasonDecode},
		{Key: "10.5.9.0-24", Reason: backend.ReasonTooLarge},
		{Key: "bogus", Reason: backend.ReasonBadKey},
	}
	s := h.waitStatus("five skipped leases", func(s httpapi.Status) bool { return len(s.Skipped) == 5 && len(s.Peers) == 1 })
	if diff := cmp.Diff(want, s.Skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	wantCounts := map[string]int{backend.ReasonOwnPublicIP: 1, backend.ReasonBadKey: 2, backend.ReasonDecode: 1, backend.ReasonTooLarge: 1}
	if diff := cmp.Diff(wantCounts, s.SkippedByReason); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	k := h.waitState("peer programmed", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	if strings.Contains(k, "10.5.10.0") || strings.Contains(k, "fdb 02:00:00:00:00:0b") {
		t.Errorf("the lease naming our own public IP was installed:\n%s", k)
	}

	// Removing a skipped lease forgets it; rewriting one skipped for a
	// reason with a good value turns it into a peer.
	h.store.DeleteKey("bogus")
	h.store.Put(peerLease("10.5.8.0/24", "192.168.1.8", macB))
	s = h.waitStatus("two fewer", func(s httpapi.Status) bool { return len(s.Skipped) == 3 && len(s.Peers) == 2 })
	if s.SkippedByReason[backend.ReasonBadKey] != 1 || s.SkippedByReason[backend.ReasonDecode] != 0 {
		t.Errorf("counts after removal: %v", s.SkippedByReason)
	}
	for reason, want := range map[string]float64{backend.ReasonBadKey: 2, backend.ReasonDecode: 1, backend.ReasonOwnPublicIP: 1} {
		if got := metricValue(h.metrics, "flannel_peer_leases_skipped_total", reason); got != want {
			t.Errorf("skipped_total{%s} = %v, want %v", reason, got, want)
		}
	}
	for reason, want := range map[string]float64{backend.ReasonBadKey: 1, backend.ReasonDecode: 0, backend.ReasonTooLarge: 1} {
		if got := metricValue(h.metrics, "flannel_peer_leases_skipped", reason); got != want {
			t.Errorf("skipped{%s} = %v, want %v", reason, got, want)
		}
	}
	// Writing the same bad value again is not a new skip.
	h.store.PutRaw("10.5.300.0-24", []byte(`{"x":1}`))
	h.store.Put(peerLease("10.5.11.0/24", "192.168.1.11", macB))
	h.waitStatus("third peer", func(s httpapi.Status) bool { return len(s.Peers) == 3 })
	if got := metricValue(h.metrics, "flannel_peer_leases_skipped_total", backend.ReasonBadKey); got != 2 {
		t.Errorf("skipped_total{bad_key} after a rewrite = %v, want 2", got)
	}
}

// metricValue returns the sample of family name labelled reason (0 when
// there is none).
func metricValue(m *metrics.Metrics, name, reason string) float64 {
	mfs, err := m.Registry.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					if c := s.GetCounter(); c != nil {
						return c.GetValue()
					}
					return s.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestDaemonBadLeaseFlood: thousands of bad leases of every kind among a
// hundred good ones. Every good one is installed, every bad one counted
// by reason, and the status keeps at most maxSkipExamples keys per reason.
func TestDaemonBadLeaseFlood(t *testing.T) {
	h := newHarness(t, `{"Network":"10.0.0.0/9","SubnetLen":24,"Backend":{"Type":"vxlan"}}`)
	h.board = &Board{}
	sub := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	good := func(i int) lease.Lease {
		return peerLease(sub(i).String(), netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}).String(), dataplane.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)})
	}
	const goods, perKind = 100, 300
	kinds := map[string]func(i int){
		backend.ReasonDecode: func(i int) { h.store.PutRaw(lease.MakeKey(sub(1000+i), netip.Prefix{}), []byte(`{"PublicIP":`)) },
		backend.ReasonBadKey: func(i int) { h.store.PutRaw(fmt.Sprintf("junk-%d", i), []byte(`{}`)) },
		backend.ReasonBackendData: func(i int) {
			l := good(2000 + i)
			l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"zz"}`)
			h.store.Put(l)
		},
		backend.ReasonBackendType: func(i int) { l := good(3000 + i); l.Attrs.BackendType = "udp"; h.store.Put(l) },
		backend.ReasonOutside: func(i int) {
			h.store.Put(peerLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 8), byte(i), 0}), 24).String(), "172.17.0.1", macA))
		},
		backend.ReasonTooLarge: func(i int) {
			h.store.PutRaw(lease.MakeKey(sub(4000+i), netip.Prefix{}), make([]byte, lease.MaxValueSize+1))
		},
		backend.ReasonOwnPublicIP: func(i int) {
			l := good(5000 + i)
			l.Attrs.PublicIP = netip.MustParseAddr("192.168.1.10")
			h.store.Put(l)
		},
	}
	for i := range perKind {
		for _, put := range kinds {
			put(i)
		}
		if i < goods {
			h.store.Put(good(i + 1))
		}
	}
	h.start()
	s := h.waitStatus("every lease seen", func(s httpapi.Status) bool { return len(s.Peers) == goods && len(s.SkippedByReason) == len(kinds) })
	for reason := range kinds {
		want := perKind
		if reason == backend.ReasonOwnPublicIP {
			// Acquire reused one of the leases holding our public IP, as
			// after a restart; the others are stale leases of ours.
			want--
		}
		if s.SkippedByReason[reason] != want {
			t.Errorf("skipped for %s: %d, want %d", reason, s.SkippedByReason[reason], want)
		}
	}
	if want := len(kinds) * maxSkipExamples; len(s.Skipped) != want {
		t.Errorf("status lists %d skipped keys, want %d (%d per reason)", len(s.Skipped), want, maxSkipExamples)
	}
	if n := strings.Count(h.dp.Kernel().String(), "\nroute "); n != goods {
		t.Errorf("%d routes, want %d", n, goods)
	}
}

func TestSkipSet(t *testing.T) {
	s := newSkipSet()
	for i := range 100 {
		if news, ex := s.add(fmt.Sprintf("k%03d", i), "a"); !news || ex != (i < maxSkipExamples) {
			t.Fatalf("add k%03d = %v, %v", i, news, ex)
		}
	}
	if news, _ := s.add("k000", "a"); news {
		t.Error("the same key and reason again is news")
	}
	if news, ex := s.add("k000", "b"); !news || !ex {
		t.Error("a new reason for a key is not news")
	}
	long := strings.Repeat("x", 10000)
	s.add(long, "b")
	st, counts := s.status()
	if diff := cmp.Diff(map[string]int{"a": 99, "b": 2}, counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if len(st) != maxSkipExamples-1+2 {
		t.Errorf("%d examples, want %d", len(st), maxSkipExamples+1)
	}
	if i := slices.IndexFunc(st, func(e httpapi.SkipStatus) bool { return strings.HasPrefix(e.Key, "xxx") }); i < 0 || len(st[i].Key) > 200 {
		t.Errorf("a long key is not shown shortened: %+v", st)
	}
	if got := s.takeChanged(); got["a"] != 99 || got["b"] != 2 {
		t.Errorf("changed = %v", got)
	}
	if got := s.takeChanged(); got != nil {
		t.Errorf("changed again = %v", got)
	}
	// An example that goes frees its place for the next lease skipped.
	s.remove("k001")
	if _, ex := s.add("k100", "a"); !ex {
		t.Error("k100 is not an example after one was removed")
	}
	keep := s.keys([]lease.Event{{Key: "k005"}, {Key: long}})
	s.retain(keep)
	if _, counts := s.status(); !cmp.Equal(counts, map[string]int{"a": 1, "b": 1}) {
		t.Errorf("after retain: %v", counts)
	}
	if got := s.takeChanged(); got["a"] != 1 || got["b"] != 1 {
		t.Errorf("changed after retain = %v", got)
	}
	if s.len() != 2 {
		t.Errorf("len = %d", s.len())
	}
}
