package bench

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/lease"
)

// TestMakePeers checks the synthetic leases are upstream's exact format,
// skip the daemon's own subnet, and are pairwise distinct.
func TestMakePeers(t *testing.T) {
	self := subnetAt(1)
	ps, err := makePeers(300, self)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ps[0].key, "/coreos.com/network/subnets/10.0.0.0-24"; got != want {
		t.Errorf("first key %q, want %q", got, want)
	}
	if got, want := ps[0].value, `{"PublicIP":"100.64.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:57:00:00:00:01"}}`; got != want {
		t.Errorf("first value\n got %s\nwant %s", got, want)
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if p.dst == self {
			t.Errorf("peer has the daemon's own subnet %s", self)
		}
		l, err := lease.Decode(strings.TrimPrefix(p.key, prefix+"/subnets/"), []byte(p.value))
		if err != nil {
			t.Fatalf("%s: %v", p.key, err)
		}
		_, mac, err := vxlan.DecodeData(l.Attrs.BackendData)
		if err != nil || mac[0]&1 != 0 || mac[0]&2 == 0 {
			t.Errorf("%s: MAC %s not unicast and locally administered (%v)", p.key, mac, err)
		}
		for _, k := range []string{p.key, l.Attrs.PublicIP.String(), mac.String()} {
			if seen[k] {
				t.Errorf("%s repeated", k)
			}
			seen[k] = true
		}
	}
	if _, err := makePeers(maxSubnets, self); err == nil {
		t.Error("makePeers(maxSubnets) did not fail")
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
	ps, err := makePeers(1, netip.Prefix{})
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
