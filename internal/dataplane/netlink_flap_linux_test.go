package dataplane

import (
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLinkFlapRepaired: setting the underlay down flushes the routes
// through it silently; setting it up again is noticed, and the pass the
// kick causes (a complete diff, as the daemon runs for a kick) puts them
// back well within a second. A device of ours set down is brought up
// again with its routes. A flap of a device none of our routes use, and
// the creation of our own device, kick nothing.
func TestLinkFlapRepaired(t *testing.T) {
	_, sh, n := newTestNetlink(t, "wt-flap-", "192.168.252.2/24")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	s := NewState()
	s.Links["flannel.1"] = Link{Name: "flannel.1", VNI: 1, MTU: 1450, Local: netip.MustParseAddr("192.168.252.2"),
		MAC: MAC{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.245.0.0/32")}
	// host-gw (or DirectRouting) over eth0, and one route of the overlay.
	s.AddRoute(Route{Dst: netip.MustParsePrefix("10.245.7.0/24"), Gw: netip.MustParseAddr("192.168.252.7"), Dev: "eth0"})
	s.AddRoute(Route{Dst: netip.MustParsePrefix("10.245.8.0/24"), Gw: netip.MustParseAddr("10.245.8.0"), Dev: "flannel.1", OnLink: true})
	s.AddNeigh(Neigh{Dev: "flannel.1", IP: netip.MustParseAddr("10.245.8.0"), MAC: MAC{2, 0, 0, 0, 1, 8}})
	s.AddFDB(FDB{Dev: "flannel.1", MAC: MAC{2, 0, 0, 0, 1, 8}, Dst: netip.MustParseAddr("192.168.252.8")})

	// The daemon's loop in miniature: a pass per kick, a complete diff.
	var kicks, passes atomic.Int64
	kick := make(chan struct{}, 1)
	subDone := make(chan error, 1)
	go func() {
		subDone <- n.Subscribe(ctx, func() {
			kicks.Add(1)
			select {
			case kick <- struct{}{}:
			default:
			}
		})
	}()
	passErrs := make(chan error, 100)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
				if _, err := n.Reconcile(ctx, s, false); err != nil {
					passErrs <- err
				}
				passes.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-subDone
		<-loopDone
	})
	waitFor := func(what string, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for deadline := start.Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
		return time.Since(start)
	}
	waitFor("the subscription", func() bool { return kicks.Load() > 0 })
	if _, err := n.Reconcile(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	has := func(args ...string) func() bool {
		return func() bool { return strings.TrimSpace(sh(args...)) != "" }
	}
	underlayRoute := has("route", "show", "10.245.7.0/24", "via", "192.168.252.7")
	overlayRoute := has("route", "show", "10.245.8.0/24", "dev", "flannel.1")
	if !underlayRoute() || !overlayRoute() {
		t.Fatalf("routes not installed:\n%s", sh("route"))
	}
	// Quiet: creating flannel.1 and the first pass have been answered.
	settle := func() int64 {
		for {
			k := kicks.Load()
			time.Sleep(200 * time.Millisecond)
			if kicks.Load() == k && passes.Load() >= k-1 {
				return k
			}
		}
	}

	t.Run("underlay", func(t *testing.T) {
		settle()
		sh("link", "set", "eth0", "down")
		if underlayRoute() {
			t.Fatal("the kernel kept the route through a downed device; the test proves nothing")
		}
		time.Sleep(100 * time.Millisecond)
		sh("link", "set", "eth0", "up")
		took := waitFor("the route through eth0 back", underlayRoute)
		t.Logf("route through the underlay back %v after link up", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("repair took %v, want at most 1s", took)
		}
	})

	t.Run("own device", func(t *testing.T) {
		settle()
		sh("link", "set", "flannel.1", "down")
		took := waitFor("flannel.1 up with its route", func() bool {
			return strings.Contains(sh("link", "show", "flannel.1"), ",UP") && overlayRoute()
		})
		t.Logf("flannel.1 set down: up with its route after %v", took.Round(time.Millisecond))
	})

	t.Run("unrelated device", func(t *testing.T) {
		sh("link", "add", "wtother0", "type", "bridge")
		sh("addr", "add", "192.168.253.1/24", "dev", "wtother0")
		sh("link", "set", "wtother0", "up")
		k := settle()
		sh("link", "set", "wtother0", "down")
		sh("link", "set", "wtother0", "up")
		if got := settle(); got != k {
			t.Errorf("a flap of a device we do not route through kicked %d times", got-k)
		}
	})
	select {
	case err := <-passErrs:
		t.Logf("a pass failed (retried by the next kick): %v", err)
	default:
	}
}
