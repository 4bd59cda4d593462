package leasetest

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

func testDualStack(t *testing.T, h Harness) {
	n := network(t, netDual)
	a := attrs6("10.0.0.1", "fd00::1", 1)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	checkLease(t, n, l, a)
	if !l.Subnet.IsValid() || !l.IPv6Subnet.IsValid() || !strings.Contains(l.Key(), "&") {
		t.Fatalf("dual-stack lease %s lacks a family", l.Key())
	}
	if !inRange(l.IPv6Subnet, n.IPv6SubnetMin, n.IPv6SubnetMax) {
		t.Errorf("IPv6 subnet %s not in [%s, %s]", l.IPv6Subnet, n.IPv6SubnetMin, n.IPv6SubnetMax)
	}
	again := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	if again.ID() != l.ID() {
		t.Errorf("re-acquire gave %s, then %s", l.Key(), again.Key())
	}
	// The second host's previous subnets must be free: the first host's
	// were drawn at random from the same range.
	prev := lease.ID{V4: pfx("10.5.9.0/24"), V6: pfx("fc00:0:0:9::/64")}
	if l.Subnet == prev.V4 {
		prev.V4 = pfx("10.5.8.0/24")
	}
	if l.IPv6Subnet == prev.V6 {
		prev.V6 = pfx("fc00:0:0:8::/64")
	}
	b := attrs6("10.0.0.2", "fd00::2", 2)
	l2 := acquire(t, h.Store, lease.Request{Network: n, Attrs: b, PreviousV4: prev.V4, PreviousV6: prev.V6})
	if l2.ID() != prev {
		t.Errorf("previous subnets %s not reused: got %s", prev, l2.Key())
	}
	w := startWatch(t, h.Store)
	wantSet(t, w.snapshot(t).Events, "added "+l.Key()+" 10.0.0.1", "added "+prev.String()+" 10.0.0.2")
}

func testIPv6Only(t *testing.T, h Harness) {
	n := network(t, netV6)
	a := lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00::1"), BackendType: "vxlan",
		BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`)}
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	checkLease(t, n, l, a)
	if l.Subnet.IsValid() || !strings.HasPrefix(l.Key(), "0.0.0.0-0&fc00:6:0:") {
		t.Fatalf("IPv6-only lease key %q, want 0.0.0.0-0&<subnet in fc00:6::/56>", l.Key())
	}
	// The host is recognised by its IPv6 address.
	again := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	if again.ID() != l.ID() {
		t.Errorf("re-acquire gave %s, then %s", l.Key(), again.Key())
	}
	w := startWatch(t, h.Store)
	wantEvents(t, w.snapshot(t).Events, "added "+l.Key()+" fd00::1")
}

func testReplace(t *testing.T, h Harness) {
	a := attrs6("10.0.0.1", "fd00::1", 1)
	old := acquire(t, h.Store, lease.Request{Network: network(t, netV4), Attrs: a})
	w := startWatch(t, h.Store)
	w.snapshot(t)
	// IPv6 is enabled: the host keeps its IPv4 subnet and gains an IPv6
	// one, under a new key; the old key goes in the same write, so the
	// watcher sees both changes in one batch.
	n := network(t, netDual)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	checkLease(t, n, l, a)
	if l.Subnet != old.Subnet || !l.IPv6Subnet.IsValid() {
		t.Fatalf("after enabling IPv6 got %s, want %s plus an IPv6 subnet", l.Key(), old.Key())
	}
	b := w.next(t)
	if b.Snapshot {
		t.Fatalf("unexpected Snapshot")
	}
	wantSet(t, b.Events, "removed "+old.Key(), "added "+l.Key()+" 10.0.0.1")
	if _, err := h.Store.Renew(ctxT(t), old, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew of the replaced lease: err = %v, want ErrLeaseLost", err)
	}
}
