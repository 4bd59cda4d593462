package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-net/weft/internal/dataplane"
)

func TestLintAndValues(t *testing.T) {
	m := New("test")
	m.SetPeers("vxlan", 3)
	m.SetLeaseExpiry(time.Unix(1700000000, 0))
	m.Renewal(true)
	m.WatchRestart("interrupted")
	m.Skipped("decode")
	m.SetSkipped("decode", 3)
	m.Pass(true, time.Millisecond, dataplane.Changes{RoutesAdded: 2, FDBAdded: 1}, nil, true)
	m.Pass(false, time.Millisecond, dataplane.Changes{RoutesRemoved: 1}, errors.New("x"), false)
	m.MasqSync(2, nil)
	m.SubnetFileWritten(time.Now())
	m.SubnetFileWriteFailed()
	m.SubnetFileWriteFailed()
	m.Reclaim("ok")
	m.Reclaim("taken")
	m.SetLeaseConflict(true)
	down := time.Unix(1700000100, 0)
	m.WatchStore(func() time.Time { return down })

	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "flannel_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	if got := testutil.ToFloat64(m.repaired.WithLabelValues("route")); got != 2 {
		t.Errorf("repaired routes = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.objects.WithLabelValues("route", "removed")); got != 1 {
		t.Errorf("removed routes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.passes.WithLabelValues("incremental", "error")); got != 1 {
		t.Errorf("failed incremental passes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.skippedNow.WithLabelValues("decode")); got != 3 {
		t.Errorf("skipped now = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.reclaims.WithLabelValues("taken")); got != 1 {
		t.Errorf("reclaims taken = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.subnetFileErrors); got != 2 {
		t.Errorf("subnet file write errors = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.leaseConflict); got != 1 {
		t.Errorf("lease conflict = %v, want 1", got)
	}
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(`
# HELP flannel_store_unreachable_since_timestamp_seconds Since when the lease store (etcd, the Kubernetes API) has been unreachable (Unix time); 0 while it answers.
# TYPE flannel_store_unreachable_since_timestamp_seconds gauge
flannel_store_unreachable_since_timestamp_seconds 1.7000001e+09
`), "flannel_store_unreachable_since_timestamp_seconds"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.masqRepairs); got != 2 {
		t.Errorf("masq repairs = %v", got)
	}
	// Every metric we define is named flannel_*.
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "flannel_") {
			n++
		}
	}
	if n < 12 {
		t.Errorf("only %d flannel_* metric families gathered", n)
	}
}

func TestNilIsSafe(t *testing.T) {
	var m *Metrics
	m.SetPeers("vxlan", 1)
	m.Pass(true, 0, dataplane.Changes{}, nil, false)
	m.Renewal(false)
	m.WatchRestart("x")
	m.Skipped("x")
	m.SetSkipped("x", 1)
	m.MasqSync(1, nil)
	m.SetLeaseExpiry(time.Time{})
	m.SubnetFileWritten(time.Now())
	m.SubnetFileWriteFailed()
}
