package httpapi

import (
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
	h := NewHealth(10*time.Second, time.Minute, func() time.Time { return down })
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

	// The store going away keeps us ready, and alive until the deadline.
	down = now
	now = now.Add(25 * time.Second)
	h.PassDone(true)
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Errorf("readyz with store down = %d, want 200", code)
	}
	if code, _ := get(t, srv, "/healthz"); code != 200 {
		t.Errorf("healthz with store briefly down = %d, want 200", code)
	}
	now = now.Add(time.Minute)
	h.PassDone(true)
	if code, body := get(t, srv, "/healthz"); code != 503 || !strings.Contains(body, "lease watch") {
		t.Errorf("healthz with watch dead past deadline = %d %q", code, body)
	}
	down = time.Time{}

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
	h := NewHealth(10*time.Second, time.Minute, nil)
	srv := httptest.NewServer(Handler(h, metrics.New("test").Registry, nil))
	defer srv.Close()
	if code, _ := get(t, srv, "/v1/status"); code != http.StatusNotFound {
		t.Errorf("/v1/status without a status source = %d, want 404", code)
	}
	if code, _ := get(t, srv, "/metrics"); code != 200 {
		t.Errorf("/metrics = %d", code)
	}
}
