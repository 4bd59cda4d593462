package wguser_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/weft-net/weft/internal/dataplane/wguser"
)

// The underlay between the two test namespaces and the tunnel addresses
// both come from 198.18.220.0/24, which no other test uses: the veth gets
// the lower half, the tunnel the upper half.
var (
	vethA   = netip.MustParsePrefix("198.18.220.1/25")
	vethB   = netip.MustParsePrefix("198.18.220.2/25")
	tunnelA = netip.MustParsePrefix("198.18.220.129/25")
	tunnelB = netip.MustParsePrefix("198.18.220.130/25")
)

// suffix makes names unique across concurrently running tests: network
// namespaces, and the UAPI socket directory, are shared by the machine.
func suffix() string { return strings.ToLower(rand.Text()[:6]) }

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testNS is a fresh network namespace with a netlink handle in it.
type testNS struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

func newNS(t *testing.T, name string) *testNS {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return &testNS{name: name, h: h, nl: nl}
}

// newPair makes two namespaces joined by a veth addressed from vethA and
// vethB.
func newPair(t *testing.T) (a, b *testNS) {
	t.Helper()
	s := suffix()
	a, b = newNS(t, "wt"+s+"a"), newNS(t, "wt"+s+"b")
	run(t, "ip", "-n", a.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", b.name)
	for _, x := range []struct {
		ns   *testNS
		addr netip.Prefix
	}{{a, vethA}, {b, vethB}} {
		run(t, "ip", "-n", x.ns.name, "addr", "add", x.addr.String(), "dev", "veth0")
		run(t, "ip", "-n", x.ns.name, "link", "set", "veth0", "up")
	}
	return a, b
}

// linkExists reports whether ns has a link called name.
func (n *testNS) linkExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := n.nl.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		return true
	case errors.As(err, &nf):
		return false
	}
	t.Fatalf("link %s in %s: %v", name, n.name, err)
	return false
}

// addrUp gives link name the address p and brings it up.
func (n *testNS) addrUp(t *testing.T, name string, p netip.Prefix) {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
		t.Fatalf("address %s on %s: %v", p, name, err)
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		t.Fatalf("up %s: %v", name, err)
	}
}

func (n *testNS) ping(t *testing.T, dst netip.Addr) {
	t.Helper()
	run(t, "ip", "netns", "exec", n.name, "ping", "-c", "2", "-W", "2", dst.String())
}

// syncBuffer collects log output from the device's goroutines, some of
// which may still log after the test ended (so not t.Output).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs at debug level into a buffer that is printed if the test
// fails.
func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("device log:\n%s", buf)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// create makes a device called name in ns, closed at cleanup.
func create(t *testing.T, log *slog.Logger, ns *testNS, name string) *wguser.Device {
	t.Helper()
	d, err := wguser.Create(log, ns.h, name, 1420)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	})
	return d
}

func wgClient(t *testing.T) *wgctrl.Client {
	t.Helper()
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitDone fails the test unless d ends within a few seconds.
func waitDone(t *testing.T, d *wguser.Device) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after the device's end")
	}
}

// socketExists reports whether path exists and is a unix socket.
func socketExists(t *testing.T, path string) bool {
	t.Helper()
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is not a socket: %v", path, fi.Mode())
	}
	return true
}
