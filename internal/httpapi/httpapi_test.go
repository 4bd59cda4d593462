package httpapi

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/metrics"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealthAndReadiness(t *testing.T) {
	now := time.Unix(1000, 0)
	var down time.Time
	h := NewHealth(10*time.Second, func() time.Time { return down })
	h.now = func() time.Time { return now }
	m := metrics.New("test")
	srv := httptest.NewServer(Handler(h, m.Registry, func() []byte { return []byte(`{"peers": 2}`) }))
	defer srv.Close()

	// Starting: alive (retrying), not ready.
	if code, _ := get(t, srv, "/healthz"); code != 200 {
		t.Errorf("healthz while starting = %d", code)
	}
	if code, body := get(t, srv, "/readyz"); code != 503 || !strings.Contains(body, "no subnet lease") {
		t.Errorf("readyz while starting = %d %q", code, body)
	}

	h.LeaseHeld(true)
	h.Rules(true, false)
	h.PassDone(true)
	h.SubnetFileWritten()
	if code, body := get(t, srv, "/readyz"); code != 503 || !strings.Contains(body, "masquerade") {
		t.Errorf("readyz without rules = %d %q", code, body)
	}
	h.Rules(true, true)
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Errorf("readyz = %d, want 200", code)
	}
	// subnet.env failing to be (re)written: unready, saying why, until a
	// write succeeds.
	h.SubnetFileFailed(errors.New("write /run/flannel/subnet.env: create temporary file: read-only file system"))
	if code, body := get(t, srv, "/readyz"); code != 503 || body != "subnet file not written (retrying): write /run/flannel/subnet.env: create temporary file: read-only file system\n" {
		t.Errorf("readyz with subnet.env failing = %d %q", code, body)
	}
	if code, _ := get(t, srv, "/healthz"); code != 200 {
		t.Errorf("healthz with subnet.env failing = %d, want 200", code)
	}
	h.SubnetFileWritten()
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Errorf("readyz after subnet.env written = %d, want 200", code)
	}

	if code, body := get(t, srv, "/readyz"); body != "ok\n" {
		t.Errorf("readyz = %d %q, want just ok", code, body)
	}

	// The store going away keeps us alive and ready, however long it
	// lasts, and readyz says since when.
	down = now
	for _, d := range []time.Duration{25 * time.Second, time.Hour} {
		now = down.Add(d)
		h.PassDone(true)
		code, body := get(t, srv, "/readyz")
		want := "ok\nstore unreachable since 1970-01-01T00:16:40Z (" + d.String() + ")"
		if code != 200 || !strings.HasPrefix(body, want) {
			t.Errorf("readyz with store down for %v = %d %q, want 200 %q…", d, code, body, want)
		}
		if code, body := get(t, srv, "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("healthz with store down for %v = %d %q, want 200 ok", d, code, body)
		}
	}
	down = time.Time{}

	// Our lease: a lapse is a note, another host holding our subnet a
	// failure.
	h.SetLease("", "own lease 10.5.1.0-24 lapsed at X; reclaiming it")
	if code, body := get(t, srv, "/readyz"); code != 200 || body != "ok\nown lease 10.5.1.0-24 lapsed at X; reclaiming it\n" {
		t.Errorf("readyz while reclaiming = %d %q", code, body)
	}
	h.SetLease("subnet lease lost: held by host 10.0.0.2", "")
	if code, body := get(t, srv, "/readyz"); code != 503 || body != "subnet lease lost: held by host 10.0.0.2\n" {
		t.Errorf("readyz with our subnet taken = %d %q", code, body)
	}
	h.SetLease("", "")
	if code, body := get(t, srv, "/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("readyz after the lease is back = %d %q", code, body)
	}

	// A stalled loop fails liveness.
	now = now.Add(31 * time.Second)
	if code, body := get(t, srv, "/healthz"); code != 503 || !strings.Contains(body, "no reconcile pass") {
		t.Errorf("healthz with stalled loop = %d %q", code, body)
	}

	if code, body := get(t, srv, "/metrics"); code != 200 || !strings.Contains(body, "flannel_build_info") {
		t.Errorf("metrics = %d", code)
	}
	if code, body := get(t, srv, "/v1/status"); code != 200 || !strings.Contains(body, `"peers": 2`) {
		t.Errorf("status = %d %q", code, body)
	}
}

func TestNoStatusUnlessGiven(t *testing.T) {
	h := NewHealth(10*time.Second, nil)
	srv := httptest.NewServer(Handler(h, metrics.New("test").Registry, nil))
	defer srv.Close()
	if code, _ := get(t, srv, "/v1/status"); code != http.StatusNotFound {
		t.Errorf("/v1/status without a status source = %d, want 404", code)
	}
	if code, _ := get(t, srv, "/metrics"); code != 200 {
		t.Errorf("/metrics = %d", code)
	}
}
