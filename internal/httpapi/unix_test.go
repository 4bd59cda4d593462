package httpapi

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unixGet fetches path over the unix socket sock.
func unixGet(t *testing.T, sock, path string) (int, string, error) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://weft" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// startUnix serves a status handler answering body at sock, waits until
// it answers there, and returns a function that stops it and returns
// ServeUnix's error.
func startUnix(t *testing.T, sock, body string) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := NewHealth(time.Second, nil)
	go func() {
		done <- ServeUnix(ctx, slog.New(slog.DiscardHandler), sock, Handler(h, nil, func() []byte { return []byte(body) }))
	}()
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("ServeUnix did not return")
			return nil
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, got, err := unixGet(t, sock, "/v1/status"); err == nil && code == 200 && got == body {
			return stop
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("ServeUnix: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatal("socket never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "weft.sock")
	stop := startUnix(t, sock, `{"ok":1}`)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if code, body, _ := unixGet(t, sock, "/v1/status"); code != 200 || body != `{"ok":1}` {
		t.Errorf("status over the socket = %d %q", code, body)
	}
	if code, _, _ := unixGet(t, sock, "/readyz"); code != 503 {
		t.Errorf("readyz over the socket = %d, want 503 (no lease yet)", code)
	}
	// Nothing but the socket is left in its directory.
	if ents, _ := os.ReadDir(filepath.Dir(sock)); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want the socket alone", len(ents))
	}
	if err := stop(); err != nil {
		t.Errorf("ServeUnix = %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after stop: %v", err)
	}
}

// TestServeUnixReplaces: a stale socket (its process died) and a served
// one (an earlier daemon still stopping) are replaced; the earlier server
// then leaves the new socket in place when it stops.
func TestServeUnixReplaces(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "weft.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody answers
	stopOld := startUnix(t, sock, "old")
	stopNew := startUnix(t, sock, "new")
	if err := stopOld(); err != nil {
		t.Errorf("old ServeUnix = %v", err)
	}
	if code, body, err := unixGet(t, sock, "/v1/status"); err != nil || code != 200 || body != "new" {
		t.Errorf("the new socket after the old server stopped: %d %q %v", code, body, err)
	}
	if err := stopNew(); err != nil {
		t.Errorf("new ServeUnix = %v", err)
	}
}

func TestServeUnixRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "weft.sock")
	if err := os.WriteFile(file, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(dir, strings.Repeat("d", 100), "weft.sock")
	for _, tc := range []struct{ path, want string }{
		{file, "not a socket"},
		{long, "too long"},
	} {
		err := ServeUnix(context.Background(), slog.New(slog.DiscardHandler), tc.path, http.NotFoundHandler())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ServeUnix(%s) = %v, want an error saying %q", tc.path, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "mine" {
		t.Errorf("the file was touched: %q", b)
	}
}
