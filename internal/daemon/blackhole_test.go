package daemon

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/lease"
)

func TestPlanBlackholes(t *testing.T) {
	v4 := netip.MustParsePrefix("10.5.3.0/24")
	v6 := netip.MustParsePrefix("fd10:0:0:3::/64")
	peer := dataplane.Route{Dst: v4, Gw: netip.MustParseAddr("192.168.1.3"), Dev: "eth0"}
	for _, tc := range []struct {
		name       string
		ipv4, ipv6 bool
		self       lease.Lease
		planned    []dataplane.Route
		want       []string
	}{{
		name: "IPv4", ipv4: true,
		self: lease.Lease{Subnet: v4},
		want: []string{"route blackhole 10.5.3.0/24"},
	}, {
		name: "DualStack", ipv4: true, ipv6: true,
		self: lease.Lease{Subnet: v4, IPv6Subnet: v6},
		want: []string{"route blackhole 10.5.3.0/24", "route blackhole fd10:0:0:3::/64"},
	}, {
		name: "IPv6Only", ipv6: true,
		self: lease.Lease{IPv6Subnet: v6},
		want: []string{"route blackhole fd10:0:0:3::/64"},
	}, {
		// A lease with a subnet of a family the network has disabled
		// (left from an earlier config) gets no blackhole for it.
		name: "FamilyDisabled", ipv6: true,
		self: lease.Lease{Subnet: v4, IPv6Subnet: v6},
		want: []string{"route blackhole fd10:0:0:3::/64"},
	}, {
		// Defensive: the 0.0.0.0/0 placeholder of upstream's IPv6-only
		// key must never become a default blackhole.
		name: "NeverDefault", ipv4: true, ipv6: true,
		self: lease.Lease{Subnet: netip.MustParsePrefix("0.0.0.0/0"), IPv6Subnet: v6},
		want: []string{"route blackhole fd10:0:0:3::/64"},
	}, {
		name: "BackendRouteWins", ipv4: true,
		self:    lease.Lease{Subnet: v4},
		planned: []dataplane.Route{peer},
		want:    []string{"route " + peer.String()},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			d := &daemon{net: &config.Network{EnableIPv4: tc.ipv4, EnableIPv6: tc.ipv6}, self: tc.self}
			var planned dataplane.Objects
			for _, r := range tc.planned {
				planned.AddRoute(r)
			}
			somePeer := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24")}
			// The fallback yields to a planned route whichever comes first.
			for _, fallbackFirst := range []bool{false, true} {
				des := desired.New(dataplane.NewState(), 0)
				if fallbackFirst {
					des.SetFallback(d.blackholes(), nil)
				}
				des.SetPeer(somePeer, planned, nil)
				if !fallbackFirst {
					des.SetFallback(d.blackholes(), nil)
				}
				if diff := cmp.Diff(tc.want, des.Copy().Lines()); diff != "" {
					t.Errorf("fallback first %v: state (-want +got):\n%s", fallbackFirst, diff)
				}
				if len(tc.planned) > 0 {
					// The planned route leaves: the blackhole takes its place.
					des.RemovePeer(somePeer.ID(), nil)
					if got := des.Copy().Lines(); len(got) == 0 || !strings.HasPrefix(got[0], "route blackhole") {
						t.Errorf("after the planned route left: %v", got)
					}
				}
			}
		})
	}
}

// TestDaemonBlackholeRoute runs the flag end to end on the Fake: the route
// for the own subnet is installed with the first pass, repaired by a
// resync after it is deleted behind the daemon's back, and collected by a
// daemon restarted without the flag.
func TestDaemonBlackholeRoute(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	h.opts.IPBlackholeRoute = true
	h.opts.ResyncPeriod = 50 * time.Millisecond
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.start()
	h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	own := h.own()
	line := "route blackhole " + own.Subnet.String()
	h.waitState("blackhole", func(s string) bool { return strings.Contains(s, line) })
	if n := strings.Count(h.dp.Kernel().String(), "blackhole"); n != 1 {
		t.Errorf("%d blackhole routes, want 1 (only the own subnet):\n%s", n, h.dp.Kernel())
	}

	h.dp.DeleteRoute(dataplane.RouteKey{Dst: own.Subnet})
	h.waitState("repaired", func(s string) bool { return strings.Contains(s, line) })

	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	h.done <- nil
	h2 := &harness{t: t, store: h.store, dp: &fakeDP{Fake: h.dp.Restart(), kick: make(chan func(), 1)},
		opts: h.opts, passes: make(chan Pass, 100)}
	h2.opts.IPBlackholeRoute = false
	h2.start()
	h2.waitState("blackhole removed", func(s string) bool {
		return !strings.Contains(s, "blackhole") && strings.Contains(s, "route 10.5.7.0/24")
	})
}

func TestDaemonNoBlackholeRouteByDefault(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.start()
	s := h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	if strings.Contains(s, "blackhole") {
		t.Errorf("blackhole route without --ip-blackhole-route:\n%s", s)
	}
}
