package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/metrics"
	"github.com/weft-net/weft/internal/subnetenv"
)

// subnetHarness is a daemon whose subnet.env lives in dir/run, which the
// test can block: a regular file where the directory should be makes
// every write fail for real ("create directory: not a directory"), as a
// read-only or full directory would (the e2e tests do those, on a tmpfs).
type subnetHarness struct {
	*harness
	dir string
}

func newSubnetHarness(t *testing.T) *subnetHarness {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	dir := filepath.Join(t.TempDir(), "run")
	h.opts.SubnetFile = filepath.Join(dir, "subnet.env")
	h.health = httpapi.NewHealth(time.Hour, nil)
	h.metrics = metrics.New("test")
	h.log = &syncBuffer{}
	return &subnetHarness{harness: h, dir: dir}
}

// block replaces the directory by a file; unblock removes it.
func (h *subnetHarness) block() {
	h.t.Helper()
	if err := os.RemoveAll(h.dir); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.dir, nil, 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *subnetHarness) unblock() {
	h.t.Helper()
	if err := os.Remove(h.dir); err != nil {
		h.t.Fatal(err)
	}
}

func (h *subnetHarness) failures() float64 {
	mfs, _ := h.metrics.Registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "flannel_subnet_file_write_errors_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// waitReady waits until readiness is nil (want "") or names want.
func (h *subnetHarness) waitReady(want string, within time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	for {
		err := h.health.Ready()
		if (want == "" && err == nil) || (want != "" && err != nil && strings.Contains(err.Error(), want)) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			h.t.Fatalf("readiness %v after %v, want %q", err, within, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDaemonRetriesSubnetFile: subnet.env cannot be written at the start.
// The daemon keeps running and installs its peers; readiness says why;
// the log says it once; the write is retried with a growing wait, counted,
// and succeeds soon after the directory is fixed.
func TestDaemonRetriesSubnetFile(t *testing.T) {
	h := newSubnetHarness(t)
	h.block()
	h.start()
	// Our subnet is the store's choice (no subnet.env to pin it): the
	// peer's is another.
	h.waitState("own device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	peer := "10.5.7.0"
	if h.own().Subnet.Addr().String() == peer {
		peer = "10.5.8.0"
	}
	h.store.Put(peerLease(peer+"/24", "192.168.1.7", macA))
	h.waitState("peer installed while subnet.env cannot be written", func(s string) bool {
		return strings.Contains(s, "route "+peer+"/24 via "+peer+" dev flannel.1 onlink")
	})
	reason := "subnet file not written (retrying): write " + h.opts.SubnetFile + ": create directory: not a directory"
	h.waitReady(reason, 5*time.Second)

	time.Sleep(1600 * time.Millisecond)
	// Attempts at 0, 0.1, 0.3, 0.7, 1.5 s: five. A fixed 100 ms retry
	// would have made 16; none, 1.
	n := h.failures()
	if n < 3 || n > 8 {
		t.Errorf("%v failed writes in 1.6 s, want 3–8 (retried, backing off)", n)
	}
	if got := strings.Count(h.log.String(), "level=ERROR msg=\"cannot write subnet file"); got != 1 {
		t.Errorf("%d error lines for %v failed writes, want 1:\n%s", got, n, h.log)
	}
	if got := strings.Count(h.log.String(), "subnet file write failed again"); got != int(n)-1 {
		t.Errorf("%d debug lines for %v failed writes, want %v", got, n, n-1)
	}

	h.unblock()
	took := h.waitReady("", 6*time.Second)
	t.Logf("%v failed writes; written %v after the directory was fixed", n, took.Round(time.Millisecond))
	if _, err := subnetenv.Read(h.opts.SubnetFile); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.log.String(), `msg="wrote subnet file" path=`+h.opts.SubnetFile+" failed_attempts=") {
		t.Errorf("no 'wrote subnet file' line with the failed attempts:\n%s", h.log)
	}
	if done, err := exited(h.harness); done {
		t.Fatalf("daemon exited: %v", err)
	}
}

// TestDaemonRewritesSubnetFile: once written, subnet.env removed behind
// the daemon's back is put back at the next resync; when that rewrite
// fails, the node is unready until it succeeds.
func TestDaemonRewritesSubnetFile(t *testing.T) {
	h := newSubnetHarness(t)
	h.opts.ResyncPeriod = 200 * time.Millisecond
	h.start()
	h.waitReady("", 5*time.Second)
	want, err := os.ReadFile(h.opts.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}

	// Removed: put back by the next resync.
	if err := os.Remove(h.opts.SubnetFile); err != nil {
		t.Fatal(err)
	}
	waitFile(t, h.opts.SubnetFile, want)
	if n := h.failures(); n != 0 {
		t.Errorf("%v failed writes", n)
	}

	// Removed and unwritable: unready, saying why; then back.
	h.block()
	h.waitReady("subnet file not written (retrying): write "+h.opts.SubnetFile+": create directory: not a directory", 5*time.Second)
	h.unblock()
	h.waitReady("", 6*time.Second)
	waitFile(t, h.opts.SubnetFile, want)
}

func waitFile(t *testing.T, path string, want []byte) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got, err := os.ReadFile(path)
		if err == nil && string(got) == string(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
}

// exited reports whether the daemon returned.
func exited(h *harness) (bool, error) {
	select {
	case err := <-h.done:
		h.done <- err
		return true, err
	default:
		return false, nil
	}
}
