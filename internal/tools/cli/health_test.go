package cli

import (
	"bytes"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
)

// TestPrintHealth: the cluster-health line counts with thousands
// separators and names each unreachable peer with since when and why.
func TestPrintHealth(t *testing.T) {
	since := time.Now().Add(-90 * time.Second)
	var b bytes.Buffer
	printHealth(&b, &httpapi.HealthStatus{Interval: "30s", Peers: 5000, Reachable: 4998, Unreachable: 2,
		UnreachablePeers: []httpapi.UnreachablePeer{
			{Subnet: "10.5.7.0/24", PublicIP: "192.0.2.7", Probed: "10.5.7.0", Since: since, LastError: "no reply within 1s (2 probes)"},
			{IPv6Subnet: "fc00:0:0:9::/64", PublicIPv6: "fd00::9", Probed: "fc00:0:0:9::", Since: since, LastError: "destination unreachable, code 1 (reported by 10.0.0.1)"},
		}})
	wantContains(t, b.String(),
		"cluster health: 4,998/5,000 reachable, probed every 30s\n",
		"UNREACHABLE 10.5.7.0/24 (public 192.0.2.7, probed 10.5.7.0) since "+since.Format(time.RFC3339)+" (1m30s ago): no reply within 1s (2 probes)\n",
		"UNREACHABLE fc00:0:0:9::/64 (public fd00::9, probed fc00:0:0:9::)",
	)
	b.Reset()
	printHealth(&b, &httpapi.HealthStatus{Off: "off (--probe-interval 0)"})
	if got := b.String(); got != "cluster health: not probed: off (--probe-interval 0)\n" {
		t.Errorf("off: %q", got)
	}
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 4998: "4,998", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
