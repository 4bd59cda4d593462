package e2e

import (
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/tools/lab"
)

// TestRollingTakeover moves a running 4-host upstream flanneld cluster
// (vxlan, --ip-masq) to weft one host at a time, as a DaemonSet rollout
// would, while every pod pings every other pod at 100/s: nothing may be
// lost, and every host must keep its subnet.
func TestRollingTakeover(t *testing.T) {
	up := upstreamFlanneld(t)
	const n = 48
	c := newCluster(t, "wtrl", 4, fmt.Sprintf("198.18.%d.0/24", n), fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":{"Type":"vxlan"}}`, n))
	flags := []string{"--ip-masq", "--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", swapHealthz)}
	for _, h := range c.Hosts {
		h.Flanneld = up
	}
	c.startOneByOne(flags...)
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		c.daemonReady(h, true, 0, swapHealthz)
		pods = append(pods, c.addPod(h, "p1"))
	}
	if got := c.podMatrix(pods, 20*time.Second); got != 12 {
		t.Fatalf("before the rollout: %d of 12 pod pairs answer", got)
	}
	before := make([]hostState, len(c.Hosts))
	for i, h := range c.Hosts {
		before[i] = c.hostState(h, c.etcdLease)
	}

	// Each swap takes about a second; the mesh runs for all four plus a
	// settled second after the last.
	const count = 2000 // 20 s at 100/s
	var mesh []*pinger
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				mesh = append(mesh, startPing(t, a.NS+" → "+b.NS, a.NS, netip.Addr{}, b.IPv4, count))
			}
		}
	}
	start := time.Now()
	time.Sleep(time.Second)
	for _, h := range c.Hosts {
		swapStart := time.Now()
		if err := c.Stop(h, syscall.SIGTERM); err != nil {
			t.Errorf("upstream on %s exited with %v on SIGTERM", h.NS, err)
		}
		h.Flanneld = flanneldBin
		if err := c.Start(h, flags...); err != nil {
			t.Fatal(err)
		}
		c.daemonReady(h, false, 0, swapHealthz)
		t.Logf("%s: upstream → weft in %v", h.NS, time.Since(swapStart).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	}
	if budget := count*10*time.Millisecond - 2*time.Second; time.Since(start) > budget {
		t.Errorf("the rollout took %v: the mesh (%v) did not cover a settled second after it", time.Since(start), budget)
	}
	sent, lost := 0, 0
	for _, p := range mesh {
		s, l := p.wait(t)
		sent += s
		lost += l
		if l != 0 {
			t.Errorf("%s: %d of %d pings lost during the rollout", p.what, l, s)
		}
	}
	t.Logf("rolling upstream → weft over 4 hosts: %d pods pinging each other at 100/s, %d pings sent, %d lost", len(pods), sent, lost)
	for i, h := range c.Hosts {
		after := c.hostState(h, c.etcdLease)
		if after.Lease != before[i].Lease || after.Lease == "" || after.LeaseErr != nil || after.VtepMAC != before[i].VtepMAC {
			t.Errorf("%s: lease %s (MAC %s) became %s (MAC %s, %v)", h.NS, before[i].Lease, before[i].VtepMAC, after.Lease, after.VtepMAC, after.LeaseErr)
		}
	}
	if got := c.podMatrix(pods, 10*time.Second); got != 12 {
		t.Errorf("after the rollout: %d of 12 pod pairs answer", got)
	}
}
