package probe

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type countingObserver struct {
	probes, changes atomic.Int64
	mu              sync.Mutex
	up, down        int
}

func (o *countingObserver) ProbeRTT(time.Duration) { o.probes.Add(1) }
func (o *countingObserver) ReachabilityChanged()   { o.changes.Add(1) }
func (o *countingObserver) SetReachable(up, down int) {
	o.mu.Lock()
	o.up, o.down = up, down
	o.mu.Unlock()
}

// TestProberRounds runs a Prober with a real Pinger in a namespace: 20
// loopback targets answer, two black-holed ones do not. It checks the
// counts, that the unreachable ones are named with an error, that one of
// them answering once its address is added to lo is seen within a round,
// and that a target removed from the set is forgotten.
func TestProberRounds(t *testing.T) {
	name, ns := testNS(t)
	blackHole(t, name, "10.77.0.9", "10.77.0.10")
	p := openIn(t, ns, false)

	var mu sync.Mutex
	targets := []Target[int]{{Key: 100, Addr: netip.MustParseAddr("10.77.0.9")}, {Key: 101, Addr: netip.MustParseAddr("10.77.0.10")}}
	for i := range 20 {
		targets = append(targets, Target[int]{Key: i, Addr: netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})})
	}
	obs := &countingObserver{}
	const interval = 400 * time.Millisecond
	pr := New(Config[int]{
		Pinger: p, Interval: interval, Observer: obs,
		Targets: func() []Target[int] {
			mu.Lock()
			defer mu.Unlock()
			return append([]Target[int](nil), targets...)
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitFor := func(what string, ok func(Report[int]) bool) Report[int] {
		t.Helper()
		deadline := time.Now().Add(5 * interval)
		for {
			r := pr.Report()
			if ok(r) {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after %v; report %+v", what, 5*interval, r)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	r := waitFor("20 up, 2 down", func(r Report[int]) bool { return r.Reachable == 20 && r.Unreachable == 2 })
	if r.Targets != 22 || len(r.Down) != 2 || r.Down[0].Key != 101 && r.Down[0].Key != 100 {
		t.Fatalf("report %+v", r)
	}
	for _, d := range r.Down {
		if d.LastError == "" || d.Since.IsZero() {
			t.Errorf("down %+v: no error or since", d)
		}
	}
	t.Logf("down: %+v", r.Down)
	obs.mu.Lock()
	if obs.up != 20 || obs.down != 2 {
		t.Errorf("observer counts %d/%d, want 20/2", obs.up, obs.down)
	}
	obs.mu.Unlock()

	// 10.77.0.9 answers once it is ours.
	run(t, "ip", "-n", name, "route", "del", "10.77.0.9/32")
	run(t, "ip", "-n", name, "addr", "add", "10.77.0.9/32", "dev", "lo")
	fixed := time.Now()
	waitFor("10.77.0.9 back", func(r Report[int]) bool { return r.Reachable == 21 && r.Unreachable == 1 })
	t.Logf("reachable again after %v (interval %v)", time.Since(fixed).Round(time.Millisecond), interval)
	if got := obs.changes.Load(); got != 1 {
		t.Errorf("changes = %d, want 1", got)
	}

	mu.Lock()
	targets = append(targets[:1], targets[2:]...) // drop 10.77.0.10
	mu.Unlock()
	r = waitFor("10.77.0.10 forgotten", func(r Report[int]) bool { return r.Targets == 21 && r.Unreachable == 0 })
	if r.Reachable != 21 || obs.probes.Load() < 40 {
		t.Errorf("report %+v after %d probes", r, obs.probes.Load())
	}
}
