package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
)

// TestUnderlayLinkFlap sets the underlay device of one host down and up
// again. The kernel flushes the IPv4 routes through a downed device
// without a notification and does not restore them (flannel#1070, #1759):
// the host-gw and DirectRouting routes to the peers are gone. With the
// resync period at 60 s the timer cannot help, so the route coming back
// within a second is the link notification's doing. A carrier loss (the
// far end of the cable going down) keeps the routes, and must leave them.
func TestUnderlayLinkFlap(t *testing.T) {
	for _, tc := range []struct{ name, cluster, underlay, netconf string }{
		{"host-gw", "wtbil", "198.18.81.0/24", `{"Network":"10.81.0.0/16","Backend":{"Type":"host-gw"}}`},
		{"vxlan DirectRouting", "wtbid", "198.18.82.0/24", `{"Network":"10.82.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`},
	} {
		t.Run(tc.name, func(t *testing.T) { linkFlap(t, tc.cluster, tc.underlay, tc.netconf) })
	}
}

func linkFlap(t *testing.T, name, underlay, netconf string) {
	c := newCluster(t, name, 2, underlay, netconf)
	c.startAll("--resync-period=60s")
	c.addBridges()
	c.matrix(15 * time.Second)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	peer := c.subnets[h2.Index].String()
	// Polled with a bare `ip -n`: a few milliseconds a look.
	route := func() string {
		out, err := exec.Command("ip", "-n", h1.NS, "route", "show", peer).CombinedOutput()
		if err != nil {
			t.Fatalf("ip route show %s: %v\n%s", peer, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	want := "via " + h2.IP.String() + " dev eth0"
	if r := route(); !strings.Contains(r, want) {
		t.Fatalf("route to %s = %q, want %s", peer, r, want)
	}
	ipn := func(ns string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %s: %v\n%s", ns, strings.Join(args, " "), err, out)
		}
	}
	src := subnetenv.GatewayOf(c.subnets[h1.Index]).Addr()
	dst := subnetenv.GatewayOf(c.subnets[h2.Index]).Addr()

	var worst time.Duration
	var figures []string
	for i := range 3 {
		ipn(h1.NS, "link", "set", "eth0", "down")
		if r := route(); r != "" {
			t.Fatalf("the kernel kept %q through a downed device; the test proves nothing", r)
		}
		time.Sleep(500 * time.Millisecond)
		ipn(h1.NS, "link", "set", "eth0", "up")
		up := time.Now()
		for !strings.Contains(route(), want) {
			if time.Since(up) > 15*time.Second {
				t.Fatalf("flap %d: the route to %s is not back 15 s after the link came up (resync period 60 s)", i+1, peer)
			}
			time.Sleep(time.Millisecond)
		}
		took := time.Since(up)
		worst = max(worst, took)
		figures = append(figures, took.Round(time.Millisecond).String())
		if err := c.pingUntil(h1, src, dst, 5*time.Second); err != nil {
			t.Errorf("flap %d: %v", i+1, err)
		}
	}
	t.Logf("route to the peer back after link up: %s (worst %v)", strings.Join(figures, ", "), worst.Round(time.Millisecond))
	if worst > time.Second {
		t.Errorf("route repair took up to %v after link up, want at most 1 s", worst)
	}

	// Carrier loss: the far end goes down; the route only turns linkdown.
	veth := fmt.Sprintf("%s-v%d", name, h1.Index+1)
	ipn(c.Hub, "link", "set", veth, "down")
	time.Sleep(500 * time.Millisecond)
	if r := route(); !strings.Contains(r, want) {
		t.Errorf("route during a carrier loss = %q, want it kept", r)
	}
	ipn(c.Hub, "link", "set", veth, "up")
	if err := c.pingUntil(h1, src, dst, 5*time.Second); err != nil {
		t.Errorf("after a carrier loss: %v", err)
	}
	if r := route(); !strings.Contains(r, want) {
		t.Errorf("route after a carrier loss = %q", r)
	}
	for _, h := range c.Hosts {
		if done, err := h.Exited(); done {
			t.Errorf("%s: flanneld exited: %v", h.NS, err)
		}
	}
}
