package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/tools/lab"
)

// healthOf runs `weft status --json` on h and returns its health part
// and readyz.
func (c *cluster) healthOf(h *lab.Host) (*httpapi.HealthStatus, string) {
	c.t.Helper()
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json")
	if err != nil {
		c.t.Fatalf("weft status: %v\n%s", err, out)
	}
	var st struct {
		Daemon struct{ Health *httpapi.HealthStatus }
		Readyz string
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("weft status --json: %v\n%s", err, out)
	}
	return st.Daemon.Health, st.Readyz
}

// TestClusterHealth (issue 18): three vxlan hosts probing each other
// every 2 s. Host 3's overlay is broken by hand (nftables in its
// namespace drops VXLAN's UDP port): host 1's `weft status --json` names
// host 3 as unreachable, with since when and the error, within one
// interval plus the probe timeouts; host 2 stays reachable, host 1 stays
// ready, and the metrics count it. Repaired, host 3 is reachable again
// within an interval.
func TestClusterHealth(t *testing.T) {
	const interval = 2 * time.Second
	c := newCluster(t, "wtpb", 3, "198.18.116.0/24", `{"Network":"10.116.0.0/16","Backend":{"Type":"vxlan"}}`)
	c.startAll("--probe-interval="+interval.String(), "--healthz-ip=127.0.0.1", "--healthz-port=9181")
	h1, h3 := c.Hosts[0], c.Hosts[2]
	base := "http://127.0.0.1:9181"
	h3sub := c.subnets[2].String()

	took := waitFor(t, "host 1 sees 2/2 reachable", 20*time.Second, func() bool {
		h, _ := c.healthOf(h1)
		return h != nil && h.Peers == 2 && h.Reachable == 2
	})
	t.Logf("all reachable %v after the subnet files", took.Round(time.Millisecond))
	out := c.sh(h1, weftBin, "status")
	if !strings.Contains(out, "cluster health: 2/2 reachable, probed every 2s") {
		t.Errorf("weft status lacks the health line:\n%s", out)
	}

	// Break host 3's overlay: drop VXLAN in its namespace, both ways.
	c.sh(h3, "nft", "add table inet wtpb")
	c.sh(h3, "nft", "add chain inet wtpb in { type filter hook input priority -300 ; }")
	c.sh(h3, "nft", "add chain inet wtpb out { type filter hook output priority -300 ; }")
	c.sh(h3, "nft", "add rule inet wtpb in udp dport 8472 drop")
	c.sh(h3, "nft", "add rule inet wtpb out udp dport 8472 drop")
	broken := time.Now()
	var down *httpapi.HealthStatus
	var readyz string
	took = waitFor(t, "host 1 names host 3 unreachable", 4*interval, func() bool {
		down, readyz = c.healthOf(h1)
		return down != nil && down.Unreachable == 1 && len(down.UnreachablePeers) == 1 && down.UnreachablePeers[0].Subnet == h3sub
	})
	// One interval for host 3's turn to come, two probe timeouts (each
	// Interval/4), and the status rendering's age (at most 500 ms).
	bound := interval + interval/2 + 500*time.Millisecond
	t.Logf("host 3 named unreachable %v after the break (bound %v): %+v", took.Round(time.Millisecond), bound, down.UnreachablePeers[0])
	if took > bound {
		t.Errorf("host 3 named after %v, more than %v", took, bound)
	}
	u := down.UnreachablePeers[0]
	if down.Reachable != 1 || u.PublicIP != h3.IP.String() || u.Probed != c.subnets[2].Addr().String() ||
		u.Since.Before(broken.Add(-time.Second)) || !strings.Contains(u.LastError, "no reply") {
		t.Errorf("health = %+v", down)
	}
	if !strings.HasPrefix(readyz, "ok") {
		t.Errorf("host 1 readyz while host 3 is unreachable = %q, want ok", readyz)
	}
	out = c.sh(h1, weftBin, "status")
	if !strings.Contains(out, "cluster health: 1/2 reachable") || !strings.Contains(out, "UNREACHABLE "+h3sub) {
		t.Errorf("weft status while host 3 is unreachable:\n%s", out)
	}
	t.Logf("weft status:\n%s", out)
	_, body := c.curl(h1, base+"/metrics")
	if metricValue(body, "flannel_peers_unreachable") != 1 || metricValue(body, "flannel_peers_reachable") != 1 ||
		metricValue(body, "flannel_peer_reachability_changes_total") < 1 || metricValue(body, "flannel_peer_probe_rtt_seconds_count") < 2 {
		t.Errorf("metrics while host 3 is unreachable:\n%s", grepLines(body, "flannel_peer"))
	}

	// Repair.
	c.sh(h3, "nft", "delete table inet wtpb")
	took = waitFor(t, "host 1 sees host 3 again", 4*interval, func() bool {
		h, _ := c.healthOf(h1)
		return h != nil && h.Reachable == 2 && h.Unreachable == 0
	})
	t.Logf("host 3 reachable again %v after the repair", took.Round(time.Millisecond))
	if took > interval+500*time.Millisecond+interval/4 {
		t.Errorf("host 3 back after %v, more than an interval", took)
	}
	_, body = c.curl(h1, base+"/metrics")
	if metricValue(body, "flannel_peer_reachability_changes_total") != 2 {
		t.Errorf("changes after the repair:\n%s", grepLines(body, "flannel_peer"))
	}
}

func grepLines(body, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
