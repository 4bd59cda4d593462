package daemon

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// routePlanner plans one route per peer, as host-gw does.
type routePlanner struct{}

func (routePlanner) Peer(_, l lease.Lease) (dataplane.Objects, error) {
	var o dataplane.Objects
	o.AddRoute(dataplane.Route{Dst: l.Subnet, Gw: l.Attrs.PublicIP, Dev: "eth0"})
	return o, nil
}

// testSnapshot is a published state with n peers, each with a route.
func testSnapshot(n int) *snapshot {
	var peers cow.Slab[*peer]
	for i := range n {
		l := lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i)}), BackendType: "host-gw"}}
		peers.Set(uint32(i), &peer{id: l.ID(), attrs: l.Attrs, seen: time.Unix(1, 0).UnixNano()})
	}
	base := dataplane.NewState()
	return &snapshot{backend: "host-gw", planner: routePlanner{}, self: lease.Lease{Subnet: netip.MustParsePrefix("10.5.255.0/24")},
		peers: peers.Snapshot(), base: base, lastAt: time.Now()}
}

// TestBoardSharesRenderings: concurrent readers share one rendering;
// nothing is rendered while nothing was published, and a new snapshot is
// rendered no sooner than MinRender after the last rendering (readers
// meanwhile get the last one).
func TestBoardSharesRenderings(t *testing.T) {
	const minRender = 200 * time.Millisecond
	b := &Board{MinRender: minRender}
	if s := b.Get(); s.Lease.Subnet != "" || s.Peers != nil {
		t.Errorf("status before anything is published: %+v", s)
	}
	time.Sleep(minRender) // the empty rendering is no longer fresh
	b.publish(testSnapshot(3))
	b.setRules("nftables")
	first := time.Now()
	var wg sync.WaitGroup
	bodies := make([][]byte, 50)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies[i] = b.JSON()
		}()
	}
	wg.Wait()
	for i, body := range bodies {
		if &body[0] != &bodies[0][0] {
			t.Fatalf("reader %d got a rendering of its own", i)
		}
	}
	if !strings.Contains(string(bodies[0]), `"subnet":"10.5.2.0/24"`) || !strings.Contains(string(bodies[0]), `"rules":"nftables"`) {
		t.Errorf("status JSON:\n%s", bodies[0])
	}
	if s := b.Get(); len(s.Peers) != 3 || s.Peers[0].Subnet != "10.5.0.0/24" || len(s.Desired) != 3 || s.Rules != "nftables" {
		t.Errorf("status = %+v", s)
	}

	b.publish(testSnapshot(4))
	if s := b.Get(); time.Since(first) < minRender && len(s.Peers) != 3 {
		t.Errorf("within MinRender of the last rendering: %d peers, want that rendering's 3", len(s.Peers))
	}
	time.Sleep(minRender)
	if s := b.Get(); len(s.Peers) != 4 {
		t.Errorf("status MinRender after the second snapshot: %d peers, want 4", len(s.Peers))
	}
	time.Sleep(2 * minRender)
	if again, s := b.JSON(), b.Get(); len(s.Peers) != 4 || &again[0] != &b.JSON()[0] {
		t.Error("nothing was published, yet the status was rendered again")
	}

	b.publish(nil) // the loop ended
	if s := b.Get(); s.Lease.Subnet != "" || len(s.Peers) != 0 || s.Rules != "nftables" {
		t.Errorf("status after the loop ended: %+v", s)
	}
}
