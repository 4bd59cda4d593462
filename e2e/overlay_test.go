package e2e

// The basic overlays end to end: reachability, drift repair, restarts.

import (
	"context"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/lab"
)

func TestVXLAN(t *testing.T) {
	c := newCluster(t, "wtvx", 3, "198.18.11.0/24", `{"Network":"10.11.0.0/16","Backend":{"Type":"vxlan"}}`)
	c.startAll("--resync-period=2s")
	c.addBridges()
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	t.Run("flannel.1 addresses reachable", func(t *testing.T) {
		for _, a := range c.Hosts {
			for _, b := range c.Hosts {
				if a != b {
					if err := c.pingUntil(a, netip.Addr{}, c.subnets[b.Index].Addr(), 15*time.Second); err != nil {
						t.Error(err)
					}
				}
			}
		}
	})
	t.Run("subnet to subnet", func(t *testing.T) { c.matrix(15 * time.Second) })

	t.Run("drift repaired", func(t *testing.T) {
		peer := c.subnets[h2.Index]
		mac := strings.Fields(c.sh(h1, "ip", "neigh", "show", peer.Addr().String(), "dev", "flannel.1"))
		if len(mac) < 3 {
			t.Fatalf("no neighbour for %s on %s: %v", peer.Addr(), h1.NS, mac)
		}
		lladdr := mac[2]
		checks := []struct {
			name    string
			del     []string
			present func() bool
		}{
			{"route", []string{"ip", "route", "del", peer.String()}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "route", "show", peer.String()), "flannel.1")
			}},
			{"neighbour", []string{"ip", "neigh", "del", peer.Addr().String(), "dev", "flannel.1"}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "neigh", "show", peer.Addr().String(), "dev", "flannel.1"), "PERMANENT")
			}},
			{"fdb", []string{"bridge", "fdb", "del", lladdr, "dev", "flannel.1", "dst", h2.IP.String()}, func() bool {
				return strings.Contains(c.sh(h1, "bridge", "fdb", "show", "dev", "flannel.1"), lladdr)
			}},
			{"device", []string{"ip", "link", "del", "flannel.1"}, func() bool {
				return strings.Contains(c.sh(h1, "ip", "route", "show", peer.String()), "flannel.1")
			}},
		}
		for _, ck := range checks {
			c.sh(h1, ck.del[0], ck.del[1:]...)
			took := waitFor(t, ck.name+" to come back", 5*time.Second, ck.present)
			t.Logf("%s deleted by hand: back after %s", ck.name, took.Round(time.Millisecond))
		}
		if err := c.pingUntil(h1, netip.Addr{}, peer.Addr(), 10*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("restart loses no packets", func(t *testing.T) {
		src := subnetenv.GatewayOf(c.subnets[h1.Index]).Addr()
		dst := subnetenv.GatewayOf(c.subnets[h2.Index]).Addr()
		for _, victim := range []*lab.Host{h2, h1} {
			sent, lost := c.lossDuring(h1, src, dst, 3*time.Second, func() {
				time.Sleep(500 * time.Millisecond)
				if err := c.Stop(victim, syscall.SIGTERM); err != nil {
					t.Errorf("%s: flanneld exit on SIGTERM: %v", victim.NS, err)
				}
				if err := c.Start(victim, "--resync-period=2s"); err != nil {
					t.Fatal(err)
				}
				if got := c.waitSubnet(victim); got != c.subnets[victim.Index] {
					t.Errorf("%s: subnet changed across restart: %s -> %s", victim.NS, c.subnets[victim.Index], got)
				}
			})
			t.Logf("restart of %s under 100 pps: %d sent, %d lost", victim.NS, sent, lost)
			if lost != 0 {
				t.Errorf("restart of %s lost %d of %d packets", victim.NS, lost, sent)
			}
		}
	})

	t.Run("own lease deleted is reclaimed", func(t *testing.T) {
		// Deleted by hand (or expired while h3 was cut off): h3 writes the
		// same subnet back and keeps running (docs/RELIABILITY.md).
		mine := c.subnets[h3.Index]
		key := "/coreos.com/network/subnets/" + strings.Replace(mine.String(), "/", "-", 1)
		if _, err := c.etcd.Delete(context.Background(), key); err != nil {
			t.Fatal(err)
		}
		waitFor(t, h3.NS+" to reclaim "+mine.String(), 10*time.Second, func() bool {
			resp, err := c.etcd.Get(context.Background(), key)
			return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), h3.IP.String())
		})
		if done, err := h3.Exited(); done {
			t.Fatalf("%s: flanneld exited after its lease was deleted: %v", h3.NS, err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, h.NS+" route to "+mine.String(), 5*time.Second, func() bool {
				return strings.Contains(c.sh(h, "ip", "route", "show", mine.String()), "flannel.1")
			})
		}
	})

	t.Run("lease removal removes routes", func(t *testing.T) {
		// h3 stopped (its lease stays, as after SIGTERM), then its lease
		// deleted: the others drop its routes.
		if err := c.Stop(h3, syscall.SIGTERM); err != nil {
			t.Errorf("%s: flanneld exit on SIGTERM: %v", h3.NS, err)
		}
		gone := c.subnets[h3.Index]
		key := "/coreos.com/network/subnets/" + strings.Replace(gone.String(), "/", "-", 1)
		if _, err := c.etcd.Delete(context.Background(), key); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, h.NS+" to drop the route to "+gone.String(), 5*time.Second, func() bool {
				return strings.TrimSpace(c.sh(h, "ip", "route", "show", gone.String())) == ""
			})
		}
	})
}

func TestHostGW(t *testing.T) {
	c := newCluster(t, "wthg", 3, "198.18.12.0/24", `{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
	route := c.sh(c.Hosts[0], "ip", "route", "show", c.subnets[1].String())
	if !strings.Contains(route, "via "+c.Hosts[1].IP.String()) {
		t.Errorf("host-gw route = %q, want via %s", route, c.Hosts[1].IP)
	}
}

func TestVXLANDirectRouting(t *testing.T) {
	c := newCluster(t, "wtdr", 3, "198.18.13.0/24", `{"Network":"10.13.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
	route := c.sh(c.Hosts[0], "ip", "route", "show", c.subnets[1].String())
	if !strings.Contains(route, "via "+c.Hosts[1].IP.String()+" dev eth0") {
		t.Errorf("direct route = %q, want via %s dev eth0", route, c.Hosts[1].IP)
	}
}

func TestDualStackVXLAN(t *testing.T) {
	c := newClusterV6(t, "wtds", 3, "198.18.14.0/24", "fd00:198:18:14::/64",
		`{"Network":"10.14.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:14::/48","Backend":{"Type":"vxlan"}}`)
	c.startAll()
	for i, s := range c.subnets6 {
		if !s.IsValid() || !c.subnets[i].IsValid() {
			t.Fatalf("host %d: subnets %v / %v, want both families", i, c.subnets[i], s)
		}
	}
	c.addBridges()
	c.matrix(15 * time.Second)
	// The v6 device's MTU leaves room for the 40-byte IPv6 outer header.
	link := c.sh(c.Hosts[0], "ip", "link", "show", "flannel-v6.1")
	if !strings.Contains(link, "mtu 1430") {
		t.Errorf("flannel-v6.1 = %q, want mtu 1430", link)
	}
}

func TestIPv6OnlyHostGW(t *testing.T) {
	c := newClusterV6(t, "wt6h", 3, "198.18.15.0/24", "fd00:198:18:15::/64",
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:15::/48","Backend":{"Type":"host-gw"}}`)
	c.startAll()
	c.addBridges()
	c.matrix(15 * time.Second)
}
