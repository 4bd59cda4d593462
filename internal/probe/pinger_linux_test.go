package probe

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
)

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testNS makes a namespace (wtpb-…) with its loopback up and returns its
// name and handle; both go with the test.
func testNS(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	name := "wtpb-" + strings.ToLower(rand.Text()[:8])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	// No duplicate address detection: link-local addresses would stay
	// tentative for seconds, and IPv6 neighbour discovery with them.
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return name, ns
}

// blackHole routes addr into a veth pair (both ends in ns) with a
// permanent neighbour entry naming a MAC no device has: the far end drops
// the frames, so addr never answers.
func blackHole(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	ipn := func(args ...string) { run(t, append([]string{"ip", "-n", ns}, args...)...) }
	ipn("link", "add", "bh0", "type", "veth", "peer", "name", "bh1")
	ipn("link", "set", "bh0", "up")
	ipn("link", "set", "bh1", "up")
	for _, a := range addrs {
		ipn("route", "add", a+"/32", "dev", "bh0")
		ipn("neigh", "add", a, "lladdr", "02:00:00:00:00:09", "dev", "bh0", "nud", "permanent")
	}
}

// openIn opens a Pinger inside ns.
func openIn(t testing.TB, ns netns.NsHandle, pingOnly bool) *Pinger {
	t.Helper()
	var p *Pinger
	if err := nsrun.Do(ns, func() (err error) { p, err = open(pingOnly); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestPingLoopback: replies from the namespace's own addresses, both
// families, and 300 concurrent probes each matched to its own target.
func TestPingLoopback(t *testing.T) {
	_, ns := testNS(t)
	p := openIn(t, ns, false)
	if !p.Privileged() {
		t.Fatal("as root the Pinger should use raw sockets")
	}
	ctx := context.Background()
	for _, a := range []string{"127.0.0.1", "::1"} {
		rtt, err := p.Ping(ctx, netip.MustParseAddr(a), Options{})
		if err != nil || rtt <= 0 || rtt > time.Second {
			t.Errorf("ping %s: rtt %v, err %v", a, rtt, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 300 {
		wg.Go(func() {
			dst := netip.AddrFrom4([4]byte{127, 0, byte(i / 200), byte(1 + i%200)})
			if _, err := p.Ping(ctx, dst, Options{PacketSize: 100 + i}); err != nil {
				errs <- fmt.Errorf("%s: %w", dst, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestPingTimeout: an address whose frames go to a MAC nobody has gets
// no answer: ErrTimeout after the timeout, not before.
func TestPingTimeout(t *testing.T) {
	name, ns := testNS(t)
	blackHole(t, name, "10.77.0.9")
	p := openIn(t, ns, false)
	start := time.Now()
	_, err := p.Ping(context.Background(), netip.MustParseAddr("10.77.0.9"), Options{Timeout: 200 * time.Millisecond})
	took := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("timed out after %v, want about 200ms", took)
	}
	t.Logf("%v (after %v)", err, took.Round(time.Millisecond))
}

// TestStartWaitsWithoutGoroutines: a thousand probes in flight to an
// address that never answers hold no goroutine each; each ends once,
// with ErrTimeout, and a cancelled context ends the rest at once.
func TestStartWaitsWithoutGoroutines(t *testing.T) {
	name, ns := testNS(t)
	blackHole(t, name, "10.77.0.9")
	p := openIn(t, ns, false)
	const n = 1000
	before := runtime.NumGoroutine()
	var (
		mu       sync.Mutex
		outcomes []error
		all      = make(chan struct{})
	)
	record := func(_ time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		outcomes = append(outcomes, err)
		if len(outcomes) == n {
			close(all)
		}
	}
	dst := netip.MustParseAddr("10.77.0.9")
	for range n / 2 {
		p.Start(context.Background(), dst, Options{Timeout: 500 * time.Millisecond}, record)
	}
	ctx, cancel := context.WithCancel(context.Background())
	for range n / 2 {
		p.Start(ctx, dst, Options{Timeout: time.Minute}, record)
	}
	if g := runtime.NumGoroutine() - before; g > 50 {
		t.Errorf("%d goroutines more with %d probes in flight", g, n)
	}
	cancel()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d probes ended", len(outcomes), n)
	}
	timeouts, cancelled := 0, 0
	for _, err := range outcomes {
		switch {
		case errors.Is(err, ErrTimeout):
			timeouts++
		case errors.Is(err, context.Canceled):
			cancelled++
		default:
			t.Errorf("outcome %v", err)
		}
	}
	if timeouts != n/2 || cancelled != n/2 {
		t.Errorf("%d timeouts and %d cancelled, want %d each", timeouts, cancelled, n/2)
	}
	time.Sleep(600 * time.Millisecond) // a late timer would add an outcome
	mu.Lock()
	defer mu.Unlock()
	if len(outcomes) != n {
		t.Errorf("%d outcomes for %d probes", len(outcomes), n)
	}
}

// TestPingSocketFallback: without raw sockets (forced), the kernel's
// unprivileged ping socket carries the probe, once ping_group_range
// allows the group; while it does not, Open says why.
func TestPingSocketFallback(t *testing.T) {
	name, ns := testNS(t)
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
	if err := nsrun.Do(ns, func() error { _, err := open(true); return err }); err == nil {
		t.Error("ping sockets opened although ping_group_range excludes every group")
	} else {
		t.Logf("refused as expected: %v", err)
	}
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
	p := openIn(t, ns, true)
	if p.Privileged() {
		t.Fatal("forced ping sockets, got raw ones")
	}
	for _, a := range []string{"127.0.0.1", "::1"} {
		if _, err := p.Ping(context.Background(), netip.MustParseAddr(a), Options{PacketSize: 200}); err != nil {
			t.Errorf("ping %s over a ping socket: %v", a, err)
		}
	}
}

// TestPingDontFragment is the path-MTU check weft doctor builds on:
// A — R — B, where R's link to B has MTU 1280. A 1400-byte probe without
// DF gets through (R fragments); with DF, R answers "fragmentation
// needed, MTU 1280" (an *UnreachableError); the next one fails at once
// in A's kernel, which learnt the path MTU (EMSGSIZE); 1280 with DF gets
// through. The same for IPv6, where R sends "packet too big".
func TestPingDontFragment(t *testing.T) {
	a, nsA := testNS(t)
	r, _ := testNS(t)
	b, _ := testNS(t)
	ipn := func(ns string, args ...string) { run(t, append([]string{"ip", "-n", ns}, args...)...) }
	ipn(a, "link", "add", "ar", "type", "veth", "peer", "name", "ra", "netns", r)
	ipn(r, "link", "add", "rb", "mtu", "1280", "type", "veth", "peer", "name", "bx", "netns", b)
	ipn(b, "link", "set", "dev", "bx", "mtu", "1280")
	for _, c := range [][]string{
		{a, "ar", "198.18.115.1/30", "fd00:115::1/64"},
		{r, "ra", "198.18.115.2/30", "fd00:115::2/64"},
		{r, "rb", "198.18.115.5/30", "fd00:116::1/64"},
		{b, "bx", "198.18.115.6/30", "fd00:116::2/64"},
	} {
		ipn(c[0], "addr", "add", c[2], "dev", c[1])
		ipn(c[0], "addr", "add", c[3], "dev", c[1], "nodad")
		ipn(c[0], "link", "set", "dev", c[1], "up")
	}
	ipn(a, "route", "add", "default", "via", "198.18.115.2")
	ipn(a, "-6", "route", "add", "default", "via", "fd00:115::2")
	ipn(b, "route", "add", "default", "via", "198.18.115.5")
	ipn(b, "-6", "route", "add", "default", "via", "fd00:116::1")
	run(t, "ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	p := openIn(t, nsA, false)
	ctx := context.Background()
	for _, fam := range []struct {
		dst string
		big int
	}{{"198.18.115.6", 1400}, {"fd00:116::2", 1400}} {
		dst := netip.MustParseAddr(fam.dst)
		ok := func(o Options) {
			t.Helper()
			if _, err := p.Ping(ctx, dst, o); err != nil {
				t.Errorf("%s %+v: %v", dst, o, err)
			}
		}
		// First a small one: the first packets of a path wait for
		// neighbour discovery, and IPv6 loses the first big ones then.
		ok(Options{PacketSize: 64, Timeout: 3 * time.Second})
		if dst.Is4() {
			ok(Options{PacketSize: fam.big}) // fragmented by R
		}
		_, err := p.Ping(ctx, dst, Options{PacketSize: fam.big, DontFragment: true})
		var ue *UnreachableError
		if !errors.As(err, &ue) || ue.MTU != 1280 {
			t.Errorf("%s: %d bytes with DF: err %v, want an UnreachableError with MTU 1280", dst, fam.big, err)
		} else {
			t.Logf("%s: %v", dst, err)
		}
		_, err = p.Ping(ctx, dst, Options{PacketSize: fam.big, DontFragment: true})
		if !errors.Is(err, syscall.EMSGSIZE) {
			t.Errorf("%s: second DF probe above the learnt path MTU: err %v, want EMSGSIZE", dst, err)
		}
		ok(Options{PacketSize: 1280, DontFragment: true})
	}
}
