package wireguard

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
)

func env(t *testing.T, net, keyFile string) backend.Env {
	return backend.Env{
		Log:      slog.New(slog.DiscardHandler),
		Network:  network(t, net),
		Underlay: underlay,
		Options:  config.Options{WireGuardKeyFile: keyFile},
	}
}

// TestFactoryKeyFile: the first start makes the key file (and its
// directory), readable by its owner only; later starts reuse it.
func TestFactoryKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "flannel")
	path := filepath.Join(dir, "wgkey")
	e := env(t, `{`+dualNet+`,"Backend":{"Type":"wireguard"}}`, path)
	b1, err := Factory(e)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o400 {
		t.Errorf("key file mode %v, want -r--------", fi.Mode())
	}
	if di, err := os.Stat(dir); err != nil || !di.IsDir() || di.Mode().Perm()&0o700 != 0o700 {
		t.Errorf("key directory: %v %v", di, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want the key file alone (no temporary left)", len(entries))
	}
	content, _ := os.ReadFile(path)
	k, err := parseKeyFile(path, content)
	if err != nil {
		t.Fatal(err)
	}
	pub := b1.(*Backend).PublicKey()
	if k.PublicKey() != pub {
		t.Error("the key file does not hold the key in use")
	}
	// Both devices have the one key.
	for name, l := range b1.PlanBase(selfOf(e.Network)).Links {
		if l.PrivateKey != k {
			t.Errorf("%s has another key", name)
		}
	}
	b2, err := Factory(e)
	if err != nil {
		t.Fatal(err)
	}
	if b2.(*Backend).PublicKey() != pub {
		t.Error("a second start made a new key")
	}
	if after, _ := os.ReadFile(path); string(after) != string(content) {
		t.Error("a second start rewrote the key file")
	}
}

// TestKeyFileUpstream: a key file as upstream or `wg genkey` writes it
// (with or without a newline) is read.
func TestKeyFileUpstream(t *testing.T) {
	for _, content := range []string{ourPriv, ourPriv + "\n", " " + ourPriv + "\r\n"} {
		path := filepath.Join(t.TempDir(), "wgkey")
		if err := os.WriteFile(path, []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
		b, err := Factory(env(t, `{`+v4Net+`,"Backend":{"Type":"wireguard"}}`, path))
		if err != nil {
			t.Fatalf("%q: %v", content, err)
		}
		if got := b.(*Backend).PublicKey().String(); got != ourPub {
			t.Errorf("%q: public key %s, want %s", content, got, ourPub)
		}
	}
}

// TestKeyFileBad: a bad key file is an error naming the file and never
// showing what is in it; it is left for the operator.
func TestKeyFileBad(t *testing.T) {
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=" // base64, but 20 bytes
	for _, content := range []string{secret, "", "not base64 at all", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="} {
		path := filepath.Join(t.TempDir(), "wgkey")
		if err := os.WriteFile(path, []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
		_, err := Factory(env(t, `{`+v4Net+`,"Backend":{"Type":"wireguard"}}`, path))
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v, want one naming %s", content, err, path)
			continue
		}
		if content != "" && strings.Contains(err.Error(), content) {
			t.Errorf("the error shows the file's content: %v", err)
		}
		if after, _ := os.ReadFile(path); string(after) != content {
			t.Errorf("%q: the bad key file was changed", content)
		}
	}
	// A directory in the way is an error too, not a new key elsewhere.
	path := t.TempDir()
	if _, err := Factory(env(t, `{`+v4Net+`,"Backend":{"Type":"wireguard"}}`, path)); err == nil {
		t.Error("a directory as key file was accepted")
	}
}

func TestWriteKeyFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wgkey")
	var k dataplane.WGKey
	k[0] = 1
	if err := writeKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	// Over an existing file (a replaced key) the rename is atomic too.
	k[0] = 2
	if err := writeKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != k.String() {
		t.Errorf("key file %q, %v; want %q", got, err, k.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d entries left in the directory, want 1", len(entries))
	}
	// A directory that cannot be made is an error naming the problem.
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeKeyFile(filepath.Join(blocker, "wgkey"), k); err == nil {
		t.Error("writing under a file succeeded")
	}
}

func TestFactoryErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wgkey")
	_, err := Factory(env(t, `{`+v4Net+`,"Backend":{"Type":"wireguard","ListenPort":0}}`, path))
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Field != "Backend.ListenPort" {
		t.Errorf("Factory = %v, want a FieldError for Backend.ListenPort", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("a bad config made a key file")
	}
	// The interface's own MTU too small for IPv6 after the overhead.
	e := env(t, `{`+dualNet+`,"Backend":{"Type":"wireguard"}}`, path)
	e.Underlay.MTU = 1300
	if _, err := Factory(e); err == nil || !strings.Contains(err.Error(), "interface eth0: MTU 1300 leaves 1220") {
		t.Errorf("Factory over MTU 1300 = %v", err)
	}
	// ... which Backend.MTU may override (the underlay's path MTU is
	// larger than the interface says, or fragmentation is accepted).
	e = env(t, `{`+dualNet+`,"Backend":{"Type":"wireguard","MTU":1400}}`, path)
	e.Underlay.MTU = 1300
	if _, err := Factory(e); err != nil {
		t.Errorf("Factory with MTU 1400 over 1300 = %v", err)
	}
}
