package daemon

import (
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
)

// TestBurstStopsTrackingKeys: a burst's touched keys are let go of once
// they pass a quarter of the desired keys, so the pending pass diffs
// every key; a small change afterwards is tracked key by key again.
func TestBurstStopsTrackingKeys(t *testing.T) {
	n, be, self, snap := snapshot5000(t)
	d := &daemon{log: slog.New(slog.DiscardHandler), net: n, backend: be, self: self, cfg: Config{Metrics: metrics.New("test")}}
	d.peers = &cow.Slab[*peer]{}
	d.skipped = newSkipSet()
	d.newDesired(0)
	d.touched = dataplane.NewDelta()
	if err := d.apply(snap); err != nil {
		t.Fatal(err)
	}
	if !d.untracked || d.touched.Len() != 0 {
		t.Fatalf("after 5,000 joins: untracked %v, %d keys held; want the keys let go", d.untracked, d.touched.Len())
	}
	if got := d.desired.WantedRoutes().Len(); got != 5000 {
		t.Fatalf("%d routes desired, want 5000", got)
	}

	// The pass that follows starts tracking afresh (the loop resets).
	d.untracked = false
	var leave lease.Batch
	for _, ev := range snap.Events[1:1001] {
		leave.Events = append(leave.Events, lease.Event{Type: lease.Removed, Lease: ev.Lease, Key: ev.Key})
	}
	if err := d.apply(leave); err != nil {
		t.Fatal(err)
	}
	// 3,000 keys of 15,000 (and fewer than touchedMin): all tracked.
	if d.untracked || d.touched.Len() != 3000 {
		t.Errorf("after 1,000 leaves: untracked %v, %d keys; want 3000 tracked", d.untracked, d.touched.Len())
	}
	if d.peers.Len() != 4000 || d.desired.Peers() != 4000 {
		t.Errorf("%d peer records, %d in the desired state; want 4000", d.peers.Len(), d.desired.Peers())
	}
}

// TestBurstsConverge: thousands of joins and then leaves, folded while
// the loop is held so that they pass the cap on touched keys, end with
// the kernel holding every peer and then none, through complete-diff
// passes.
func TestBurstsConverge(t *testing.T) {
	h := newHarness(t, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	h.log = &syncBuffer{}
	h.start()
	h.waitState("own device", func(s string) bool { return strings.Contains(s, "flannel.1") })
	// hold makes the next pass block in the Observer until the returned
	// function is called, so that the watch queues what comes meanwhile.
	hold := func() (release func()) {
		for len(h.passes) < cap(h.passes) {
			h.passes <- Pass{}
		}
		return func() {
			time.Sleep(100 * time.Millisecond) // the watch queues the rest
			for len(h.passes) > 0 {
				<-h.passes
			}
		}
	}
	// Our own lease is the network's last subnet (newHarness).
	var peers []lease.Lease
	for i := range 2500 {
		peers = append(peers, peerLease(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256), fmt.Sprintf("100.64.%d.%d", i/256, i%256),
			dataplane.MAC{2, 0, 0, 1, byte(i >> 8), byte(i)}))
	}
	// Each peer has a route, a neighbour and an FDB entry (dst 100.64.…).
	count := func(s string) (int, int, int) {
		return strings.Count(s, "route 10."), strings.Count(s, "neigh 10."), strings.Count(s, "dst 100.64.")
	}
	release := hold()
	for _, l := range peers {
		h.store.Put(l)
	}
	release()
	h.waitState("2500 peers", func(s string) bool {
		r, n, f := count(s)
		return r == 2500 && n == 2500 && f == 2500
	})
	release = hold()
	for _, l := range peers {
		h.store.Delete(l.ID())
	}
	release()
	h.waitState("no peer", func(s string) bool {
		r, n, f := count(s)
		return r+n+f == 0
	})
	// Both bursts went past the cap at least once: complete diffs that
	// added and removed routes.
	log := h.log.String()
	for _, what := range []string{"routes_added", "routes_removed"} {
		if !regexp.MustCompile(`msg=reconciled full=false delta=false touched=0 .*` + what + `=[1-9]`).MatchString(log) {
			t.Errorf("no complete-diff pass with %s; log:\n%s", what, log)
		}
	}
}
