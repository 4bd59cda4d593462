package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
)

// run runs the weft command and returns its stdout, stderr and exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, &stdout, &stderr)
	return stdout.String(), stderr.String(), code
}

// cannedStatus is a daemon's status with one peer and nothing for the
// kernel comparison to look for.
var cannedStatus = httpapi.Status{
	Lease:   httpapi.LeaseStatus{Subnet: "10.5.1.0/24", PublicIP: "192.0.2.1"},
	Backend: "vxlan",
	Peers:   []httpapi.PeerStatus{{Subnet: "10.5.2.0/24", PublicIP: "192.0.2.2", Backend: "vxlan", Identity: "0e:00:00:00:00:02"}},
}

// serveStatus serves cannedStatus and healthy probes like flanneld's
// status socket at sock.
func serveStatus(t *testing.T, sock string) {
	t.Helper()
	body, err := json.Marshal(cannedStatus)
	if err != nil {
		t.Fatal(err)
	}
	h := httpapi.NewHealth(time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- httpapi.ServeUnix(ctx, slog.New(slog.DiscardHandler), sock, httpapi.Handler(h, nil, func() []byte { return body }))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeUnix: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never appeared")
		}
	}
}

// TestStatusFindsTheSocket: with no flags, weft status finds the socket
// where flanneld with the same environment serves it.
func TestStatusFindsTheSocket(t *testing.T) {
	dir := t.TempDir()
	serveStatus(t, filepath.Join(dir, "weft.sock"))
	t.Setenv("FLANNELD_SUBNET_FILE", filepath.Join(dir, "subnet.env"))
	t.Setenv("FLANNELD_STATUS_SOCKET", "")
	out, stderr, _ := run(t, "status", "--json")
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("weft status --json: %v\n%s%s", err, out, stderr)
	}
	if rep.Daemon == nil || rep.Daemon.Lease.Subnet != "10.5.1.0/24" || len(rep.Daemon.Peers) != 1 {
		t.Errorf("daemon = %+v; errors %v", rep.Daemon, rep.Errors)
	}
	if rep.Readyz != "no subnet lease; dataplane not programmed; subnet file not written" || rep.Healthz != "ok" {
		t.Errorf("probes: healthz %q, readyz %q", rep.Healthz, rep.Readyz)
	}
	for _, e := range rep.Errors {
		if strings.HasPrefix(e, "daemon:") || strings.HasPrefix(e, "store:") {
			t.Errorf("error: %s", e)
		}
	}

	// FLANNELD_STATUS_SOCKET wins over the subnet file, as in flanneld.
	t.Setenv("FLANNELD_STATUS_SOCKET", filepath.Join(dir, "elsewhere.sock"))
	if out, _, code := run(t, "status"); code == 0 || !strings.Contains(out, "elsewhere.sock") {
		t.Errorf("status with FLANNELD_STATUS_SOCKET: exit %d, output:\n%s", code, out)
	}
}

func TestStatusWithoutDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "weft.sock")
	out, _, code := run(t, "status", "--socket", sock)
	if code == 0 || !strings.Contains(out, "no such file or directory (is flanneld running?") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// TestStatusURL: --url reads a daemon's healthz listener; one that does
// not serve the status there (no --healthz-status) is explained.
func TestStatusURL(t *testing.T) {
	h := httpapi.NewHealth(time.Hour, nil)
	body, _ := json.Marshal(cannedStatus)
	for _, tc := range []struct {
		name   string
		status func() []byte
		want   string
	}{
		{"opted in", func() []byte { return body }, "10.5.2.0/24"},
		{"not opted in", nil, "only with --healthz-status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(httpapi.Handler(h, nil, tc.status))
			defer srv.Close()
			out, stderr, _ := run(t, "status", "--url", srv.URL)
			if !strings.Contains(out, tc.want) {
				t.Errorf("weft status --url: want %q in:\n%s%s", tc.want, out, stderr)
			}
		})
	}
	if _, stderr, code := run(t, "status", "--url", "ftp://x"); code == 0 || !strings.Contains(stderr, "not an http(s) URL") {
		t.Errorf("bad --url: exit %d, %s", code, stderr)
	}
}

func TestWriteSkipped(t *testing.T) {
	var b strings.Builder
	writeSkipped(&b, &httpapi.Status{
		Skipped: []httpapi.SkipStatus{
			{Key: "/coreos.com/network/subnets/bogus", Reason: "bad_key"},
			{Key: "/coreos.com/network/subnets/x\n", Reason: "bad_key"},
			{Key: "/coreos.com/network/subnets/10.5.8.0-24", Reason: "decode"},
		},
		SkippedByReason: map[string]int{"bad_key": 900, "decode": 1},
	})
	want := `
SKIPPED LEASES (901)
  bad_key: 900, 2 shown
  decode: 1
  /coreos.com/network/subnets/bogus  bad_key
  "/coreos.com/network/subnets/x\n"  bad_key
  /coreos.com/network/subnets/10.5.8.0-24  decode
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeSkipped(&b, &httpapi.Status{})
	if b.Len() != 0 {
		t.Errorf("nothing skipped printed %q", b.String())
	}
}

// During an outage weft status says the store is unreachable and since
// when, shows readyz's notes under it, and the lease's state.
func TestPrintStatusStoreUnreachable(t *testing.T) {
	since := time.Now().Add(-42 * time.Second)
	rep := statusReport{
		Daemon: &httpapi.Status{
			Lease:   httpapi.LeaseStatus{Subnet: "10.5.1.0/24", PublicIP: "192.168.1.1", Expires: time.Now().Add(-time.Minute), State: "renewal overdue"},
			Store:   httpapi.StoreStatus{UnreachableSince: since},
			Backend: "vxlan",
		},
		Healthz: "ok",
		Readyz:  "ok\nstore unreachable since X (42s); the dataplane is kept as it was and changes are applied when the store answers",
	}
	var b strings.Builder
	printStatus(&b, rep)
	wantContains(t, b.String(),
		"Renewal overdue",
		"store     UNREACHABLE since "+since.Format(time.RFC3339)+" (42s); the dataplane is kept as it was\n",
		"readyz    ok\n          store unreachable since X (42s)",
	)

	rep.Daemon.Store = httpapi.StoreStatus{Reachable: true}
	rep.Daemon.Lease.State = "held"
	b.Reset()
	printStatus(&b, rep)
	if out := b.String(); !strings.Contains(out, "store     reachable\n") || strings.Contains(out, "Held") {
		t.Errorf("weft status with the store up:\n%s", out)
	}
}

// wantContains reports each of wants that out lacks.
func wantContains(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
