package bench

import (
	"context"
	"crypto/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// TestMakePeers checks the synthetic leases are upstream's exact format,
// skip the daemon's own subnet, and are pairwise distinct.
func TestMakePeers(t *testing.T) {
	self := subnetAt(1)
	ps, err := makePeers(config.BackendVXLAN, 300, self)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ps[0].key, "/coreos.com/network/subnets/10.0.0.0-24"; got != want {
		t.Errorf("first key %q, want %q", got, want)
	}
	if got, want := ps[0].value, `{"PublicIP":"100.64.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:57:00:00:00:01"}}`; got != want {
		t.Errorf("first value\n got %s\nwant %s", got, want)
	}
	checkPeers(t, ps, self, func(p peer, l lease.Lease) string {
		_, mac, err := vxlan.DecodeData(l.Attrs.BackendData)
		if err != nil || mac[0]&1 != 0 || mac[0]&2 == 0 {
			t.Errorf("%s: MAC %s not unicast and locally administered (%v)", p.key, mac, err)
		}
		return mac.String()
	})
	if _, err := makePeers(config.BackendVXLAN, maxSubnets, self); err == nil {
		t.Error("makePeers(maxSubnets) did not fail")
	}
}

// checkPeers checks each synthetic peer: not the daemon's own subnet, a
// lease the daemon's decoder accepts, and a key, public IP and backend
// identity that no other peer has. identity checks the lease's backend
// data and returns the identity it holds (VTEP MAC, public key).
func checkPeers(t *testing.T, ps []peer, self netip.Prefix, identity func(peer, lease.Lease) string) {
	t.Helper()
	seen := map[string]bool{}
	for _, p := range ps {
		if p.dst == self {
			t.Errorf("peer has the daemon's own subnet %s", self)
		}
		l, err := lease.Decode(strings.TrimPrefix(p.key, prefix+"/subnets/"), []byte(p.value))
		if err != nil {
			t.Fatalf("%s: %v", p.key, err)
		}
		for _, k := range []string{p.key, l.Attrs.PublicIP.String(), identity(p, l)} {
			if seen[k] {
				t.Errorf("%s repeated", k)
			}
			seen[k] = true
		}
	}
}

// TestMakePeersWireGuard checks the synthetic wireguard leases: upstream's
// exact format, backend data that the wireguard backend's own decoder
// accepts (valid keys, port 51820), and pairwise distinct subnets, public
// IPs and public keys.
func TestMakePeersWireGuard(t *testing.T) {
	self := subnetAt(1)
	ps, err := makePeers(config.BackendWireGuard, 2000, self)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"PublicIP":"100.64.0.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` +
		wgPeerKey(1).PublicKey().String() + `","Port":51820}}`
	if ps[0].value != want {
		t.Errorf("first value\n got %s\nwant %s", ps[0].value, want)
	}
	checkPeers(t, ps, self, func(p peer, l lease.Lease) string {
		d, err := wireguard.DecodeData(l.Attrs.BackendData)
		if err != nil {
			t.Fatalf("%s: %v", p.key, err)
		}
		if d.Port != wgPort || d.PublicKey != p.pub.String() {
			t.Errorf("%s: decoded %+v, want key %s port %d", p.key, d, p.pub, wgPort)
		}
		return d.PublicKey
	})
	// Deterministic: a second call makes the same keys.
	again, err := makePeers(config.BackendWireGuard, 3, self)
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if again[i] != ps[i] {
			t.Errorf("peer %d differs between calls", i)
		}
	}
	// Distinct well beyond the sizes the bench runs.
	keys := map[dataplane.WGKey]bool{}
	for j := range 20000 {
		k := wgPeerKey(j).PublicKey()
		if keys[k] {
			t.Fatalf("public key of peer %d repeats an earlier one", j)
		}
		keys[k] = true
	}
	if _, err := makePeers("host-gw", 1, self); err == nil {
		t.Error("makePeers(host-gw) did not fail")
	}
}

// TestCheckBackends: unknown and repeated backends are refused; a second
// daemon with wireguard only where the kernel makes WireGuard devices.
func TestCheckBackends(t *testing.T) {
	one := []Daemon{{Name: "a"}}
	two := []Daemon{{Name: "a"}, {Name: "b"}}
	name := "wtck" + strings.ToLower(rand.Text()[:2])
	for _, tc := range []struct {
		backends []string
		daemons  []Daemon
		err      string
	}{
		{[]string{"vxlan", "wireguard"}, one, ""},
		{[]string{"vxlan"}, two, ""},
		{[]string{"host-gw"}, one, `backend "host-gw"`},
		{[]string{"vxlan", "vxlan"}, one, "given twice"},
	} {
		err := checkBackends(context.Background(), Options{Backends: tc.backends, Daemons: tc.daemons, Name: name})
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v with %d daemons: error %v, want %q", tc.backends, len(tc.daemons), err, tc.err)
		}
	}
	ok, why, err := kernelWireGuard(context.Background(), name+"-wgck")
	if err != nil {
		t.Fatal(err)
	}
	err = checkBackends(context.Background(), Options{Backends: []string{"wireguard"}, Daemons: two, Name: name})
	if ok != (err == nil) {
		t.Errorf("kernel WireGuard %v (%s), yet --vs with wireguard: %v", ok, why, err)
	}
	if !ok && (err == nil || !strings.Contains(err.Error(), "lacks") || strings.Contains(err.Error(), "\n")) {
		t.Errorf("error %q is not one line saying why", err)
	}
}

func TestSummarize(t *testing.T) {
	var xs []float64
	for i := 20; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	got := summarize(xs)
	want := Stats{N: 20, Median: 10, P90: 18, P99: 20, Max: 20}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if (summarize(nil) != Stats{}) {
		t.Error("summarize(nil) not zero")
	}
}

// BenchmarkDecodeLease decodes one lease in the exact format the bench
// (and upstream) writes: the per-event cost of the watch path.
func BenchmarkDecodeLease(b *testing.B) {
	ps, err := makePeers(config.BackendVXLAN, 1, netip.Prefix{})
	if err != nil {
		b.Fatal(err)
	}
	key, val := strings.TrimPrefix(ps[0].key, prefix+"/subnets/"), []byte(ps[0].value)
	b.ReportAllocs()
	for b.Loop() {
		l, err := lease.Decode(key, val)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := vxlan.DecodeData(l.Attrs.BackendData); err != nil {
			b.Fatal(err)
		}
	}
}
