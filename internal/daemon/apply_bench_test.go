package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
)

// BenchmarkApplySnapshot5000 is the daemon's own work when it starts
// among 5,000 leases: folding the first snapshot (lease checks, planning,
// the desired state) before the first pass.
func BenchmarkApplySnapshot5000(b *testing.B) {
	n, be, self, snap := snapshot5000(b)
	m := metrics.New("bench")
	b.ReportAllocs()
	for b.Loop() {
		d := &daemon{log: slog.New(slog.DiscardHandler), net: n, backend: be, self: self,
			cfg: Config{Metrics: m}, untracked: true}
		d.peers = &cow.Slab[*peer]{}
		d.skipped = newSkipSet()
		d.newDesired(0)
		d.touched = dataplane.NewDelta()
		if err := d.apply(snap); err != nil {
			b.Fatal(err)
		}
		if d.peers.Len() != 5000 {
			b.Fatalf("%d peers", d.peers.Len())
		}
	}
}

// BenchmarkStatusRender5000 is what a /v1/status rendering costs its
// reader (never the control loop) at 5,000 vxlan peers: sorting and
// naming them, composing the desired state, encoding JSON.
func BenchmarkStatusRender5000(b *testing.B) {
	n, be, self, snap := snapshot5000(b)
	board := &Board{}
	d := &daemon{log: slog.New(slog.DiscardHandler), net: n, backend: be, self: self,
		cfg: Config{Status: board}, untracked: true}
	d.peers = &cow.Slab[*peer]{}
	d.skipped = newSkipSet()
	d.newDesired(0)
	d.touched = dataplane.NewDelta()
	if err := d.apply(snap); err != nil {
		b.Fatal(err)
	}
	d.lastAt = time.Now()
	b.ReportAllocs()
	size := 0
	for b.Loop() {
		d.publish()
		board.last = nil // render afresh
		size = len(board.JSON())
	}
	b.ReportMetric(float64(size), "bytes/status")
}

func snapshot5000(b testing.TB) (*config.Network, *vxlan.Backend, lease.Lease, lease.Batch) {
	n, err := config.ParseNetwork([]byte(`{"Network":"10.0.0.0/9","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		b.Fatal(err)
	}
	u := backend.Underlay{Index: 2, Name: "eth0", MTU: 1500, LocalIP: netip.MustParseAddr("172.31.0.1"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("172.31.0.1/16")}}
	be := vxlan.New(n, u, dataplane.MAC{2, 0, 0, 0, 0, 1}, dataplane.MAC{})
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Attrs: lease.Attrs{PublicIP: u.LocalIP, BackendType: "vxlan"}}
	self.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)
	snap := lease.Batch{Snapshot: true, Events: []lease.Event{{Type: lease.Added, Lease: self}}}
	for i := range 5000 {
		l := lease.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i), 0}), 24),
			Attrs: lease.Attrs{
				PublicIP:    netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
				BackendType: "vxlan",
				BackendData: []byte(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0e:57:00:00:%02x:%02x"}`, byte(i>>8), byte(i))),
			},
		}
		snap.Events = append(snap.Events, lease.Event{Type: lease.Added, Lease: l, Key: l.Key()})
	}
	return n, be, self, snap
}
