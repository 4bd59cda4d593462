package bench

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/dataplane/wguser"
	"github.com/weft-net/weft/internal/nsrun"
)

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

func TestParseGet(t *testing.T) {
	a, b := wgPeerKey(1).PublicKey(), wgPeerKey(2).PublicKey()
	priv := wgPeerKey(3)
	good := "private_key=" + hexKey(priv) + "\nlisten_port=51820\n" +
		"public_key=" + hexKey(a) + "\nendpoint=100.64.0.1:51820\nallowed_ip=10.0.0.0/24\nprotocol_version=1\n" +
		"public_key=" + hexKey(b) + "\nallowed_ip=10.0.2.0/24\n" +
		"errno=0\n\n"
	for _, tc := range []struct {
		name, in string
		want     []wgtypes.Key
		err      string
	}{
		{"two peers", good, []wgtypes.Key{a, b}, ""},
		{"no peers, no key", "errno=0\n\n", nil, ""},
		{"stops at the blank line", "errno=0\n\npublic_key=" + hexKey(a) + "\n", nil, ""},
		{"errno", "errno=19\n\n", nil, "errno=19"},
		{"no errno", "listen_port=1\n\n", nil, "no errno"},
		{"cut short", "public_key=" + hexKey(a) + "\nerrno=0\n", nil, "ended before its blank line"},
		{"no '='", "public_key\nerrno=0\n\n", nil, "line 1: no '='"},
		{"short key", "public_key=abcd\nerrno=0\n\n", nil, "4 hex digits, want 64"},
		{"not hex", "public_key=" + strings.Repeat("zz", 32) + "\nerrno=0\n\n", nil, "public_key"},
		{"bad errno", "errno=x\n\n", nil, `errno "x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := map[wgtypes.Key]struct{}{}
			err := parseGet(bufio.NewReader(strings.NewReader(tc.in)), keys)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != len(tc.want) {
				t.Errorf("%d keys, want %d", len(keys), len(tc.want))
			}
			for _, k := range tc.want {
				if _, ok := keys[k]; !ok {
					t.Errorf("key %s missing", k)
				}
			}
			if _, ok := keys[priv]; ok {
				t.Error("the private key was taken for a peer")
			}
		})
	}
}

func FuzzParseGet(f *testing.F) {
	f.Add("private_key=" + hexKey(wgPeerKey(3)) + "\npublic_key=" + hexKey(wgPeerKey(1).PublicKey()) + "\nerrno=0\n\n")
	f.Add("errno=0\n\n")
	f.Add("errno=1\n\n")
	f.Add("public_key=\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		keys := map[wgtypes.Key]struct{}{}
		err := parseGet(bufio.NewReaderSize(strings.NewReader(in), 16), keys)
		if n := strings.Count(in, "public_key="); len(keys) > n {
			t.Fatalf("%d keys from %d public_key lines", len(keys), n)
		}
		if err == nil && !strings.Contains(in, "errno=") {
			t.Fatalf("accepted a response without errno: %q", in)
		}
	})
}

// testNS makes a fresh network namespace, removed at cleanup.
func testNS(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	name := "wtbw" + strings.ToLower(rand.Text()[:8])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

// peerConfigs are the first n synthetic peers as WireGuard peers, the
// way the wireguard backend configures them.
func peerConfigs(t *testing.T, n int) ([]wgtypes.PeerConfig, map[wgtypes.Key]struct{}) {
	t.Helper()
	ps, err := makePeers("wireguard", n, subnetAt(n+1))
	if err != nil {
		t.Fatal(err)
	}
	var cfgs []wgtypes.PeerConfig
	want := map[wgtypes.Key]struct{}{}
	for i, p := range ps {
		cfgs = append(cfgs, wgtypes.PeerConfig{
			PublicKey:  p.pub,
			Endpoint:   &net.UDPAddr{IP: net.IPv4(100, 64, byte(i>>8), byte(i)), Port: wgPort},
			AllowedIPs: []net.IPNet{{IP: p.dst.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}},
		})
		want[p.pub] = struct{}{}
	}
	return cfgs, want
}

func checkKeys(t *testing.T, r *wgReader, want map[wgtypes.Key]struct{}) {
	t.Helper()
	got, err := r.read()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d keys, want %d", len(got), len(want))
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Fatalf("key %s missing", k)
		}
	}
}

// TestWGReaderUserspace reads a real userspace device (wireguard-go, as
// flanneld runs here) over its UAPI socket, configured through wgctrl
// with a private key, a port and hundreds of peers, then fewer; and reads
// no peers, without an error, once the device has ended, from a socket
// file nobody serves, and where there is no device at all.
func TestWGReaderUserspace(t *testing.T) {
	_, ns := testNS(t)
	name := "wtbw" + strings.ToLower(rand.Text()[:6])
	d, err := wguser.Create(slog.New(slog.DiscardHandler), ns, name, 1420)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := newWGReader(ns, name, wguser.SocketPath(name))
	t.Cleanup(r.close)
	checkKeys(t, r, nil)

	cfgs, want := peerConfigs(t, 300)
	priv, port := wgPeerKey(100000), 51820
	if err := c.ConfigureDevice(name, wgtypes.Config{PrivateKey: &priv, ListenPort: &port, Peers: cfgs}); err != nil {
		t.Fatal(err)
	}
	checkKeys(t, r, want)
	var rm []wgtypes.PeerConfig
	for _, p := range cfgs[:100] {
		rm = append(rm, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
		delete(want, p.PublicKey)
	}
	if err := c.ConfigureDevice(name, wgtypes.Config{Peers: rm}); err != nil {
		t.Fatal(err)
	}
	checkKeys(t, r, want)
	if r.gets != 3 {
		t.Errorf("%d UAPI gets counted, want 3", r.gets)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	checkKeys(t, r, nil)

	// A socket file left by a process that ended.
	stale := filepath.Join(t.TempDir(), "flannel-wg.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	checkKeys(t, newWGReader(ns, "flannel-wg", stale), nil)
}

// TestWGReaderKernel reads a kernel WireGuard device through wgctrl in its
// namespace, where the kernel has WireGuard.
func TestWGReaderKernel(t *testing.T) {
	nsName, ns := testNS(t)
	const name = "wtbwk"
	if out, err := exec.Command("ip", "-n", nsName, "link", "add", name, "type", "wireguard").CombinedOutput(); err != nil {
		t.Skipf("the kernel has no WireGuard (ip link add type wireguard: %s)", strings.TrimSpace(string(out)))
	}
	cfgs, want := peerConfigs(t, 300)
	priv := wgPeerKey(100000)
	if err := nsrun.Do(ns, func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.ConfigureDevice(name, wgtypes.Config{PrivateKey: &priv, Peers: cfgs})
	}); err != nil {
		t.Fatal(err)
	}
	r := newWGReader(ns, name, filepath.Join(t.TempDir(), name+".sock"))
	t.Cleanup(r.close)
	checkKeys(t, r, want)
	if r.gets != 0 {
		t.Errorf("%d UAPI gets counted for a kernel device", r.gets)
	}
}

// BenchmarkWGReaderUAPI is one read of a userspace device with 50 and
// 1000 peers: what every poll of the wireguard bench costs (most of it
// served by wireguard-go, inside the daemon under test).
func BenchmarkWGReaderUAPI(b *testing.B) {
	for _, k := range []int{50, 1000} {
		b.Run(strconv.Itoa(k), func(b *testing.B) { benchmarkWGReader(b, k) })
	}
}

func benchmarkWGReader(b *testing.B, k int) {
	name := "wtbw" + strings.ToLower(rand.Text()[:6])
	nsName := name + "ns"
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v\n%s", err, out)
	}
	defer exec.Command("ip", "netns", "del", nsName).Run()
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	d, err := wguser.Create(slog.New(slog.DiscardHandler), ns, name, 1420)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	c, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ps, err := makePeers("wireguard", k, subnetAt(k+1))
	if err != nil {
		b.Fatal(err)
	}
	var cfgs []wgtypes.PeerConfig
	for i, p := range ps {
		cfgs = append(cfgs, wgtypes.PeerConfig{
			PublicKey:  p.pub,
			Endpoint:   &net.UDPAddr{IP: net.IPv4(100, 64, byte(i>>8), byte(i)), Port: wgPort},
			AllowedIPs: []net.IPNet{{IP: p.dst.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}},
		})
	}
	priv, port := wgPeerKey(100000), 51820
	if err := c.ConfigureDevice(name, wgtypes.Config{PrivateKey: &priv, ListenPort: &port, Peers: cfgs}); err != nil {
		b.Fatal(err)
	}
	r := newWGReader(ns, name, wguser.SocketPath(name))
	defer r.close()
	b.ResetTimer()
	for b.Loop() {
		keys, err := r.read()
		if err != nil || len(keys) != k {
			b.Fatalf("%d keys, %v", len(keys), err)
		}
	}
}
