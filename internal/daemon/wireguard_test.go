package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
)

func wgPeerLease(t *testing.T, subnet, pub string) (lease.Lease, dataplane.WGKey) {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	l := peerLease(subnet, pub, macA)
	l.Attrs.BackendType = "wireguard"
	l.Attrs.BackendData = wireguard.EncodeData(k.PublicKey(), 51820)
	return l, k.PublicKey()
}

// TestDaemonWireGuard runs the daemon with the wireguard backend against
// the fake kernel: its key file is made once and kept across a restart,
// its lease publishes the public key, peers become WireGuard peers and go
// again, a peer removed behind its back comes back at the next full
// pass, and a restart over the same kernel writes nothing.
func TestDaemonWireGuard(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}`)
	h.opts.WireGuardKeyFile = filepath.Join(t.TempDir(), "wgkey")
	h.opts.ResyncPeriod = 50 * time.Millisecond
	p1, k1 := wgPeerLease(t, "10.5.7.0/24", "192.168.1.7")
	h.store.Put(p1)
	h.start()
	want := "wg flannel-wg peer " + k1.String() + " endpoint 192.168.1.7:51820 allowed-ips 10.5.7.0/24 persistent-keepalive 25"
	s := h.waitState("peer programmed", func(s string) bool { return strings.Contains(s, want) })
	for _, line := range []string{"link flannel-wg wireguard listen-port 51820 mtu 1420", "route 10.5.0.0/16 dev flannel-wg"} {
		if !strings.Contains(s, line) {
			t.Errorf("no %q in\n%s", line, s)
		}
	}
	fi, err := os.Stat(h.opts.WireGuardKeyFile)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	own := h.own()
	d, err := wireguard.DecodeData(own.Attrs.BackendData)
	if err != nil || own.Attrs.BackendType != "wireguard" || d.Port != 51820 || !strings.Contains(s, "public-key "+d.PublicKey) {
		t.Errorf("own lease %s %s (%v); device:\n%s", own.Attrs.BackendType, own.Attrs.BackendData, err, s)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if env, err := subnetenv.Read(h.opts.SubnetFile); err == nil && env.MTU == 1420 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("subnet.env %+v, %v: want FLANNEL_MTU 1420", env, err)
		}
	}

	// A second peer joins, the first leaves.
	p2, k2 := wgPeerLease(t, "10.5.8.0/24", "192.168.1.8")
	h.store.Put(p2)
	h.store.Delete(p1.ID())
	h.waitState("peers swapped", func(s string) bool {
		return strings.Contains(s, k2.String()) && !strings.Contains(s, k1.String())
	})

	// Drift: WireGuard tells no one, the full pass finds it.
	h.dp.DeleteWGPeer(dataplane.WGPeerKey{Dev: "flannel-wg", PublicKey: k2})
	before := h.waitState("peer restored", func(s string) bool { return strings.Contains(s, k2.String()) })

	// A restart over the same kernel and key file: same key, nothing written.
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	h.done <- nil
	h2 := &harness{t: t, store: h.store, dp: &fakeDP{Fake: h.dp.Restart(), kick: make(chan func(), 1)},
		opts: h.opts, passes: make(chan Pass, 100)}
	h2.opts.ResyncPeriod = time.Hour
	h2.start()
	if p := <-h2.passes; p.Err != nil || p.Changes.Total() != 0 {
		t.Errorf("first pass after restart: %+v, want no writes", p)
	}
	if after := h2.dp.Kernel().String(); after != before {
		t.Errorf("kernel changed across restart:\n%s\n---\n%s", before, after)
	}
	if again := h2.own(); string(again.Attrs.BackendData) != string(own.Attrs.BackendData) {
		t.Errorf("lease data changed across a restart: %s → %s", own.Attrs.BackendData, again.Attrs.BackendData)
	}
}
