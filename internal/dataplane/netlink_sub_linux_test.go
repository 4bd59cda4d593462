package dataplane

import (
	"context"
	"crypto/rand"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// newTestNetlink makes a namespace (name prefix, then random) with a
// bridge eth0 holding addr as underlay, and a Netlink on it; sh runs
// `ip -n NAME args…` and returns its output.
func newTestNetlink(t *testing.T, prefix, addr string) (name string, sh func(args ...string) string, n *Netlink) {
	t.Helper()
	name = prefix + strings.ToLower(rand.Text()[:8])
	sh = func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	sh("link", "add", "eth0", "type", "bridge")
	sh("addr", "add", addr, "dev", "eth0")
	sh("link", "set", "eth0", "up")
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	n, err = NewNetlink(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return name, sh, n
}

// TestSubscriptionFiltersOwnWrites: the routes and neighbours a pass
// writes are not announced back to our subscription; the same changes
// made by someone else are.
func TestSubscriptionFiltersOwnWrites(t *testing.T) {
	name, sh, n := newTestNetlink(t, "wt-sub-", "192.168.251.2/24")

	ctx, cancel := context.WithCancel(context.Background())
	var kicks atomic.Int64
	done := make(chan error, 1)
	go func() { done <- n.Subscribe(ctx, func() { kicks.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("the subscription", func() bool { return kicks.Load() > 0 })

	const peers = 60
	s := NewState()
	s.Links["flannel.1"] = Link{Name: "flannel.1", VNI: 1, MTU: 1450, Local: netip.MustParseAddr("192.168.251.2"),
		MAC: MAC{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.244.0.0/32")}
	for i := 1; i <= peers; i++ {
		gw := netip.AddrFrom4([4]byte{10, 244, byte(i), 0})
		mac := MAC{2, 0, 0, 0, 1, byte(i)}
		s.AddRoute(Route{Dst: netip.PrefixFrom(gw, 24), Gw: gw, Dev: "flannel.1", OnLink: true})
		s.AddNeigh(Neigh{Dev: "flannel.1", IP: gw, MAC: mac})
		s.AddFDB(FDB{Dev: "flannel.1", MAC: mac, Dst: netip.AddrFrom4([4]byte{192, 168, 251, byte(10 + i)})})
	}
	if _, err := n.Reconcile(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	// A marker change by someone else, read after everything the pass
	// caused: once it is in, the count is final.
	before := n.notes.Load()
	sh("neigh", "add", "10.244.250.1", "lladdr", "02:00:00:00:09:09", "dev", "flannel.1", "nud", "permanent")
	waitFor("the marker", func() bool { return n.notes.Load() > before })
	// Only the link and address writes (through the library's handle, and
	// the local routes they make) arrive; none of the 60 routes, 60
	// neighbours or 60 FDB entries.
	if got := before; got >= peers {
		t.Errorf("read %d notifications for a pass writing %d routes, %d neighbours, %d FDB entries; want them filtered out", got, peers, peers, peers)
	}
	t.Logf("notifications read for the pass: %d", before)

	// What someone else does to our objects is still seen.
	for _, drift := range [][]string{
		{"ip", "-n", name, "route", "del", "10.244.7.0/24"},
		{"ip", "-n", name, "neigh", "del", "10.244.8.0", "dev", "flannel.1"},
		{"bridge", "-n", name, "fdb", "del", "02:00:00:00:01:09", "dev", "flannel.1", "dst", "192.168.251.19"},
	} {
		k := kicks.Load()
		if out, err := exec.Command(drift[0], drift[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(drift, " "), err, out)
		}
		waitFor("the repair kick after "+strings.Join(drift[3:], " "), func() bool { return kicks.Load() > k })
	}
}

// TestUnusedNexthopsDeletedInBulk: the objects of deleted routes wait
// until nhFreeBatch of them have accumulated (or a full pass), then go.
func TestUnusedNexthopsDeletedInBulk(t *testing.T) {
	_, sh, n := newTestNetlink(t, "wt-nhb-", "192.168.252.2/24")
	if !n.UsesNexthops() {
		t.Fatal("this kernel has nexthop objects, yet Netlink does not use them")
	}
	n.nhFreeBatch = 3

	state := func(peers ...int) *State {
		s := NewState()
		s.Links["flannel.1"] = Link{Name: "flannel.1", VNI: 1, MTU: 1450, Local: netip.MustParseAddr("192.168.252.2"),
			MAC: MAC{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.244.0.0/32")}
		for _, i := range peers {
			gw := netip.AddrFrom4([4]byte{10, 244, byte(i), 0})
			s.AddRoute(Route{Dst: netip.PrefixFrom(gw, 24), Gw: gw, Dev: "flannel.1", OnLink: true})
		}
		return s
	}
	objects := func() int {
		out := strings.TrimSpace(sh("nexthop", "show"))
		if out == "" {
			return 0
		}
		return len(strings.Split(out, "\n"))
	}
	ctx := context.Background()
	if _, err := n.Reconcile(ctx, state(1, 2, 3, 4, 5), true); err != nil {
		t.Fatal(err)
	}
	if got := objects(); got != 5 {
		t.Fatalf("%d nexthop objects for 5 routes", got)
	}
	// Two routes go: their objects wait (2 < 3).
	if _, err := n.Reconcile(ctx, state(1, 2, 3), false); err != nil {
		t.Fatal(err)
	}
	if got := objects(); got != 5 {
		t.Errorf("%d objects after 2 of 5 routes went; want all 5 still there", got)
	}
	// A third: three are waiting, and they go together.
	if _, err := n.Reconcile(ctx, state(1, 2), false); err != nil {
		t.Fatal(err)
	}
	if got := objects(); got != 2 {
		t.Errorf("%d objects after 3 of 5 routes went; want 2", got)
	}
	// Below the batch again; a full pass collects it regardless.
	if _, err := n.Reconcile(ctx, state(1), false); err != nil {
		t.Fatal(err)
	}
	if got := objects(); got != 2 {
		t.Errorf("%d objects after a fourth route went; want 2 until a full pass", got)
	}
	if _, err := n.Reconcile(ctx, state(1), true); err != nil {
		t.Fatal(err)
	}
	if got := objects(); got != 1 {
		t.Errorf("%d objects after a full pass with 1 route; want 1", got)
	}
}

// TestNexthopPairingAfterRestart: two routes through one gateway have an
// object each. A restarted Netlink must learn which object each route
// names (not guess by gateway), or deleting one route would free the
// other's object and the kernel would flush the other route with it.
// Guessing picks the wrong pair half the time; six rounds catch it.
func TestNexthopPairingAfterRestart(t *testing.T) {
	name, sh, n := newTestNetlink(t, "wt-nhp-", "192.168.253.2/24")
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ctx := context.Background()
	base := func() *State {
		s := NewState()
		s.Links["flannel.1"] = Link{Name: "flannel.1", VNI: 1, MTU: 1450, Local: netip.MustParseAddr("192.168.253.2"),
			MAC: MAC{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.244.0.0/32")}
		return s
	}
	for round := 1; round <= 6; round++ {
		gw := netip.AddrFrom4([4]byte{10, 244, byte(round), 0})
		d1 := netip.PrefixFrom(gw, 24)
		d2 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 245, byte(round), 0}), 24)
		both := base()
		both.AddRoute(Route{Dst: d1, Gw: gw, Dev: "flannel.1", OnLink: true})
		both.AddRoute(Route{Dst: d2, Gw: gw, Dev: "flannel.1", OnLink: true})
		if _, err := n.Reconcile(ctx, both, true); err != nil {
			t.Fatal(err)
		}
		// Restart, with unused objects deleted at once.
		next, err := NewNetlink(nil, ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(next.Close)
		n = next
		n.nhFreeBatch = 1
		if _, err := n.Reconcile(ctx, both, true); err != nil {
			t.Fatal(err)
		}
		one := base()
		one.AddRoute(Route{Dst: d2, Gw: gw, Dev: "flannel.1", OnLink: true})
		if _, err := n.Reconcile(ctx, one, false); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(sh("route", "show", d2.String())) == "" {
			t.Fatalf("round %d: deleting %s took %s (same gateway) with it", round, d1, d2)
		}
		if strings.TrimSpace(sh("route", "show", d1.String())) != "" {
			t.Fatalf("round %d: %s is still there", round, d1)
		}
		if _, err := n.Reconcile(ctx, base(), false); err != nil {
			t.Fatal(err)
		}
	}
}
