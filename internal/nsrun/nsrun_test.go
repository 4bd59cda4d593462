package nsrun_test

import (
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
)

// TestDo reads a per-namespace sysctl inside a fresh namespace, where it
// has a value of its own, and checks the caller's thread was not moved.
func TestDo(t *testing.T) {
	name := "wt-nsrun-" + strings.ToLower(rand.Text()[:8])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_default_ttl=42").CombinedOutput(); err != nil {
		t.Fatalf("set ttl: %v\n%s", err, out)
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	const path = "/proc/sys/net/ipv4/ip_default_ttl"
	var inside []byte
	if err := nsrun.Do(ns, func() error {
		var err error
		inside, err = os.ReadFile(path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(inside)); got != "42" {
		t.Errorf("ttl inside = %s, want 42", got)
	}
	outside, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(outside)) == "42" {
		t.Error("the caller's namespace has the value set inside the new one")
	}
}
