package dataplane

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// benchNetlink is a Netlink in a scratch namespace (prefix wtoa-) holding
// benchState(peers), after one full pass.
func benchNetlink(b *testing.B, peers int) (*Netlink, *State) {
	b.Helper()
	name := "wtoa-bench-" + strings.ToLower(rand.Text()[:8])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v\n%s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Close() })
	n, err := NewNetlink(slog.New(slog.DiscardHandler), ns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(n.Close)
	desired := benchState(peers)
	if _, err := n.Reconcile(context.Background(), desired, true); err != nil {
		b.Fatal(err)
	}
	return n, desired
}

// BenchmarkNetlinkReconcileNoop5000 is BenchmarkReconcileNoop5000 over the
// kernel: the diff of 5,000 peers against an index that has them, which
// writes nothing.
func BenchmarkNetlinkReconcileNoop5000(b *testing.B) {
	n, desired := benchNetlink(b, 5000)
	benchNoop(b, n, desired)
}

// BenchmarkNetlinkReconcileOneJoin5000 alternates 5,000 and 5,001 peers
// over the kernel: one join or leave per pass, its writes included.
func BenchmarkNetlinkReconcileOneJoin5000(b *testing.B) {
	n, small := benchNetlink(b, 5000)
	benchOneJoin(b, n, small, benchState(5001))
}
