package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/backend/backends"
)

// The store checks: two leases naming one host, and this host's clock
// against etcd's.

// checkDuplicateLeases: two leases with one PublicIP (a host re-installed
// under a new subnet while its old lease lives on) or one VTEP MAC (a
// cloned VM) make every peer send one of them's traffic to the other.
func checkDuplicateLeases(ctx context.Context, e *Env) []Finding {
	if e.Store == nil {
		return []Finding{skip("no store given (--etcd-endpoints or FLANNELD_ETCD_ENDPOINTS)")}
	}
	events, err := e.Store.Leases(ctx)
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot list leases: %v", err)}}
	}
	groups := map[string][]string{} // "PublicIP 10.0.0.1" → keys
	for _, ev := range events {
		if ev.Err != nil {
			continue // the daemon shows malformed leases (weft status)
		}
		a := ev.Lease.Attrs
		if a.PublicIP.IsValid() {
			groups["PublicIP "+a.PublicIP.String()] = append(groups["PublicIP "+a.PublicIP.String()], ev.Key)
		}
		if a.PublicIPv6.IsValid() {
			groups["PublicIPv6 "+a.PublicIPv6.String()] = append(groups["PublicIPv6 "+a.PublicIPv6.String()], ev.Key)
		}
		if a.BackendType == "vxlan" {
			for _, v6 := range []bool{false, true} {
				if id := backends.Identity(a, v6); id != "" {
					groups["VTEP MAC "+id] = append(groups["VTEP MAC "+id], ev.Key)
				}
			}
		}
	}
	var out []Finding
	for _, what := range slicesSorted(groups) {
		keys := groups[what]
		if len(keys) < 2 {
			continue
		}
		slices.Sort(keys)
		out = append(out, Finding{Level: Fail,
			Message: fmt.Sprintf("%d leases share %s: %s; peers send one host's traffic to the other", len(keys), what, strings.Join(keys, ", ")),
			Fix:     "delete the stale lease (etcdctl del <key>) or give each host its own address/MAC (a cloned VM: delete flannel.1 so a new MAC is made)"})
	}
	if len(out) == 0 {
		out = append(out, ok("%d leases, no PublicIP or VTEP MAC shared", len(events)))
	}
	return out
}

func slicesSorted(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Clock skew thresholds. etcd counts a lease's TTL on its own clock and
// flanneld renews on its monotonic clock, so an offset alone does not
// make a lease lapse; what a skewed clock breaks is everything that
// compares wall-clock times across hosts: TLS certificates (etcd's, the
// API server's) are refused outside their validity window, the lease
// expiry `weft status` shows and renewals are reasoned about with is off
// by the skew, and logs cannot be correlated. 5 minutes is the tolerance
// Kerberos and most TLS deployments assume; beyond 30 s it is worth a
// look (the measurement itself is good to ~1 s plus half the round trip).
const (
	skewWarn = 30 * time.Second
	skewFail = 5 * time.Minute
)

func checkClockSkew(ctx context.Context, e *Env) []Finding {
	if e.Store == nil {
		return []Finding{skip("no store given (--etcd-endpoints or FLANNELD_ETCD_ENDPOINTS)")}
	}
	before := time.Now()
	server, rtt, err := e.Store.Clock(ctx)
	if err != nil {
		return []Finding{{Level: Warn, Message: fmt.Sprintf("cannot read etcd's clock: %v", err)}}
	}
	mid := before.Add(rtt / 2)
	skew := server.Sub(mid).Round(time.Second)
	abs := skew.Abs()
	margin := time.Second + rtt/2
	msg := fmt.Sprintf("etcd's clock is %s %s this host's (±%s)", abs, aheadBehind(skew), margin.Round(time.Millisecond))
	fix := "synchronise the clocks (chrony or systemd-timesyncd against one NTP source on every host and etcd member)"
	switch {
	case abs >= skewFail:
		return []Finding{{Level: Fail, Message: msg + ": TLS certificates may be refused and lease expiry times are off by as much", Fix: fix}}
	case abs >= skewWarn:
		return []Finding{{Level: Warn, Message: msg, Fix: fix}}
	}
	return []Finding{ok("%s", msg)}
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}
