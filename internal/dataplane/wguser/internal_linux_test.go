package wguser

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// TestWGLogger: wireguard-go's verbose lines go to debug, its errors to
// error (debug once the device is closing), and key-shaped text in either
// is redacted.
func TestWGLogger(t *testing.T) {
	var buf bytes.Buffer
	l := wgLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), new(atomic.Bool))
	var key [32]byte
	rand.Read(key[:])
	l.Verbosef("UAPI: Updating listen port")
	l.Errorf("failed to parse line %q", hex.EncodeToString(key[:]))
	l.Errorf("peer %s", base64.StdEncoding.EncodeToString(key[:]))
	out := buf.String()
	for _, want := range []string{
		`level=DEBUG msg=wireguard-go detail="UAPI: Updating listen port"`,
		`level=ERROR msg=wireguard-go detail="failed to parse line \"(key redacted)\""`,
		`level=ERROR msg=wireguard-go detail="peer (key redacted)"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}

	buf.Reset()
	closing := new(atomic.Bool)
	l = wgLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), closing)
	closing.Store(true)
	l.Errorf("Failed to load updated MTU of device")
	if want := `level=DEBUG msg=wireguard-go detail="Failed to load updated MTU of device"`; !strings.Contains(buf.String(), want) {
		t.Errorf("an error while closing is not demoted to debug:\n%s", buf.String())
	}

	buf.Reset()
	quiet := wgLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), new(atomic.Bool))
	quiet.Verbosef("chatty")
	if buf.Len() != 0 {
		t.Errorf("debug line logged at info level: %s", buf.String())
	}
}

// TestIsProcessNS: the wrappers are used exactly when the device's
// namespace is not the process's.
func TestIsProcessNS(t *testing.T) {
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if home, err := isProcessNS(self); err != nil || !home {
		t.Errorf("isProcessNS(own namespace) = %t, %v; want true", home, err)
	}

	name := "wt" + strings.ToLower(rand.Text()[:6]) + "p"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	other, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if home, err := isProcessNS(other); err != nil || home {
		t.Errorf("isProcessNS(another namespace) = %t, %v; want false", home, err)
	}
}

// TestNSRefClosed: after the device releases its namespace, late calls
// fail instead of using a closed (maybe reused) fd.
func TestNSRefClosed(t *testing.T) {
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	r, err := dupNS(self)
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := r.do(func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("do before close: ran %t, %v", ran, err)
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	if err := r.close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if err := r.do(func() error { t.Error("ran after close"); return nil }); err != errNSClosed {
		t.Errorf("do after close = %v, want errNSClosed", err)
	}
}
