package leasetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

func testNetworkConfig(t *testing.T, h Harness) {
	_, err := h.Store.NetworkConfig(ctxT(t))
	if !errors.Is(err, lease.ErrNoNetworkConfig) {
		t.Fatalf("NetworkConfig before it is written: err = %v, want ErrNoNetworkConfig", err)
	}
	doc := []byte(netV4)
	h.Peer.SetNetworkConfig(t, doc)
	got, err := h.Store.NetworkConfig(ctxT(t))
	if err != nil || string(got) != string(doc) {
		t.Fatalf("NetworkConfig = %q, %v; want %q", got, err, doc)
	}
}

func testAcquireInRange(t *testing.T, h Harness) {
	n := network(t, netV4)
	a := attrs("10.0.0.1", 1)
	before := time.Now()
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a, TTL: time.Hour})
	after := time.Now()
	checkLease(t, n, l, a)
	if !inRange(l.Subnet, n.SubnetMin, n.SubnetMax) || l.IPv6Subnet.IsValid() {
		t.Errorf("lease %s not an IPv4 subnet in [%s, %s]", l.Key(), n.SubnetMin, n.SubnetMax)
	}
	if l.Reservation || l.Expiration.Before(before.Add(time.Hour-time.Second)) || l.Expiration.After(after.Add(time.Hour)) {
		t.Errorf("lease expiration = %v (reservation %v), want about an hour from now", l.Expiration, l.Reservation)
	}
	if strings.ContainsAny(l.Key(), "/&") {
		t.Errorf("IPv4 key %q has '/' or '&'", l.Key())
	}
	// The write is visible to a watcher exactly as returned.
	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	wantEvents(t, b.Events, "added "+l.Key()+" 10.0.0.1")
	if got := b.Events[0].Lease; got.Revision != l.Revision || !got.Attrs.Equal(a) || b.Revision < l.Revision {
		t.Errorf("watched lease revision %d attrs %+v (batch revision %d); acquired revision %d", got.Revision, got.Attrs, b.Revision, l.Revision)
	}
}

func testReacquire(t *testing.T, h Harness) {
	n := network(t, netV4)
	l1 := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)})
	l2 := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)})
	if l2.ID() != l1.ID() {
		t.Fatalf("re-acquire with the same PublicIP gave %s, then %s", l1.Key(), l2.Key())
	}
	if l2.Revision <= l1.Revision {
		t.Errorf("re-acquire did not refresh the lease: revision %d then %d", l1.Revision, l2.Revision)
	}
	// New backend data (a new VTEP MAC after a reboot) keeps the subnet.
	a3 := attrs("10.0.0.1", 3)
	l3 := acquire(t, h.Store, lease.Request{Network: n, Attrs: a3, PreviousV4: pfx("10.5.9.0/24")})
	if l3.ID() != l1.ID() || !l3.Attrs.Equal(a3) {
		t.Fatalf("re-acquire with new attrs gave %s %+v, want %s with the new attrs", l3.Key(), l3.Attrs, l1.Key())
	}
	other := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.2", 2)})
	if other.ID() == l1.ID() {
		t.Fatalf("two hosts got %s", l1.Key())
	}
	w := startWatch(t, h.Store)
	wantSet(t, w.snapshot(t).Events, "added "+l1.Key()+" 10.0.0.1", "added "+other.Key()+" 10.0.0.2")
}

func testReuseHook(t *testing.T, h Harness) {
	n := network(t, netV4)
	calls := 0
	never := func(lease.Lease) lease.Attrs { calls++; return lease.Attrs{} }
	l1 := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1), Reuse: never})
	if calls != 0 {
		t.Fatalf("Reuse called %d times without an existing lease", calls)
	}
	// The backend keeps its VTEP MAC from the existing lease: the hook's
	// attributes are written instead of the request's.
	var seen lease.Lease
	keep := func(existing lease.Lease) lease.Attrs { seen = existing; return existing.Attrs }
	l2 := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 2), Reuse: keep})
	if seen.ID() != l1.ID() || !seen.Attrs.Equal(l1.Attrs) || seen.Revision != l1.Revision {
		t.Errorf("Reuse got %s %+v rev %d, want the existing lease %s rev %d", seen.Key(), seen.Attrs, seen.Revision, l1.Key(), l1.Revision)
	}
	if l2.ID() != l1.ID() || !l2.Attrs.Equal(l1.Attrs) {
		t.Errorf("Acquire with Reuse = %s %+v, want %s with the existing attrs", l2.Key(), l2.Attrs, l1.Key())
	}
	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	if len(b.Events) != 1 || !b.Events[0].Lease.Attrs.Equal(l1.Attrs) {
		t.Errorf("stored lease %s, want the existing attrs kept", show(b.Events))
	}
}

func testPreviousSubnet(t *testing.T, h Harness) {
	n := network(t, netV4)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1), PreviousV4: pfx("10.5.7.0/24")})
	if l.Subnet != pfx("10.5.7.0/24") {
		t.Errorf("free previous subnet not reused: got %s", l.Key())
	}
	h.Peer.PutLease(t, peerLease("10.5.8.0/24", attrs("10.0.0.99", 9)))
	l = acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.2", 2), PreviousV4: pfx("10.5.8.0/24")})
	if l.Subnet == pfx("10.5.8.0/24") {
		t.Errorf("previous subnet handed out although another host holds it")
	}
	for i, prev := range []string{"10.6.0.0/24", "10.5.9.0/25", "10.5.10.0/23"} {
		a := attrs(fmt.Sprintf("10.0.1.%d", i), 1)
		l = acquire(t, h.Store, lease.Request{Network: n, Attrs: a, PreviousV4: pfx(prev)})
		if l.Subnet == pfx(prev) || !inRange(l.Subnet, n.SubnetMin, n.SubnetMax) {
			t.Errorf("previous subnet %s (not a subnet of the network): got %s", prev, l.Key())
		}
	}
	// Inside the network but outside [SubnetMin, SubnetMax] (the operator
	// narrowed the range since): still the host's subnet.
	l = acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.3", 3), PreviousV4: pfx("10.5.200.0/24")})
	if l.Subnet != pfx("10.5.200.0/24") {
		t.Errorf("previous subnet inside the network not reused: got %s", l.Key())
	}
}

func testOwnReservation(t *testing.T, h Harness) {
	n := network(t, netV4)
	// The operator reserves a subnet (outside the allocation range, as
	// upstream's docs suggest) with just the host's IP.
	h.Peer.PutLease(t, lease.Lease{Subnet: pfx("10.5.30.0/24"), Reservation: true,
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1")}})
	a := attrs("10.0.0.1", 1)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a, PreviousV4: pfx("10.5.3.0/24")})
	if l.Subnet != pfx("10.5.30.0/24") || !l.Reservation || !l.Expiration.IsZero() {
		t.Fatalf("got %s reservation=%v expiration=%v; want the reservation 10.5.30.0-24, no expiry", l.Key(), l.Reservation, l.Expiration)
	}
	checkLease(t, n, l, a)
	r, err := h.Store.Renew(ctxT(t), l, time.Hour)
	if err != nil || r.ID() != l.ID() || !r.Reservation || !r.Expiration.IsZero() {
		t.Fatalf("Renew(reservation) = %s reservation=%v expiration=%v, %v", r.Key(), r.Reservation, r.Expiration, err)
	}
	again := acquire(t, h.Store, lease.Request{Network: n, Attrs: a})
	if again.ID() != l.ID() || !again.Reservation {
		t.Fatalf("re-acquire gave %s reservation=%v", again.Key(), again.Reservation)
	}
	// Our attributes were written into the reservation, which kept no TTL.
	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	wantEvents(t, b.Events, "added 10.5.30.0-24 10.0.0.1 res")
	if !b.Events[0].Lease.Attrs.Equal(a) {
		t.Errorf("reservation attrs = %+v, want %+v", b.Events[0].Lease.Attrs, a)
	}
}

func testOthersReservation(t *testing.T, h Harness) {
	n := network(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}`)
	h.Peer.PutLease(t, lease.Lease{Subnet: pfx("10.5.1.0/24"), Reservation: true, Attrs: attrs("10.0.0.99", 9)})
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1), PreviousV4: pfx("10.5.1.0/24")})
	if l.Subnet != pfx("10.5.2.0/24") {
		t.Fatalf("got %s, want the only unreserved subnet 10.5.2.0-24", l.Key())
	}
	_, err := h.Store.Acquire(ctxT(t), lease.Request{Network: n, Attrs: attrs("10.0.0.2", 2)})
	if !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("Acquire with only a reserved subnet left: err = %v, want ErrNoFreeSubnet", err)
	}
	mine := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.99", 9)})
	if mine.Subnet != pfx("10.5.1.0/24") || !mine.Reservation {
		t.Fatalf("reservation's owner got %s reservation=%v", mine.Key(), mine.Reservation)
	}
}

func testMalformedTaken(t *testing.T, h Harness) {
	// Three subnets, two of them held by keys whose values are garbage:
	// still taken, the host that wrote them may be fine.
	n := network(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.3.0","SubnetMax":"10.5.5.0"}`)
	h.Peer.PutRaw(t, "10.5.3.0-24", []byte(`garbage`))
	h.Peer.PutRaw(t, "10.5.4.0-24", []byte(`{"PublicIP":"10.0.0.1"`))
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1), PreviousV4: pfx("10.5.4.0/24")})
	if l.Subnet != pfx("10.5.5.0/24") {
		t.Fatalf("got %s, want the only free subnet 10.5.5.0-24", l.Key())
	}
	if _, err := h.Store.Acquire(ctxT(t), lease.Request{Network: n, Attrs: attrs("10.0.0.2", 2)}); !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("err = %v, want ErrNoFreeSubnet", err)
	}
}

func testNonCanonicalKey(t *testing.T, h Harness) {
	// A foreign writer spelled the IPv6 subnet differently: the key blocks
	// its subnets but is not taken as this host's lease, even with this
	// host's address in it (the store could not name it to rewrite it).
	n := network(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.3.0","SubnetMax":"10.5.4.0",`+
		`"EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetLen":64}`)
	a := attrs6("10.0.0.1", "fd00::1", 1)
	value, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	h.Peer.PutRaw(t, "10.5.3.0-24&FC00:0::3:0:0:0:0-64", value)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a, PreviousV6: pfx("fc00:0:0:3::/64")})
	if l.Subnet != pfx("10.5.4.0/24") || l.IPv6Subnet == pfx("fc00:0:0:3::/64") {
		t.Fatalf("got %s; want 10.5.4.0-24 and not fc00:0:0:3::/64, both taken", l.Key())
	}
}

func testExhaustion(t *testing.T, h Harness) {
	n := network(t, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.7.0","SubnetMax":"10.5.7.0"}`)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)})
	if l.Subnet != pfx("10.5.7.0/24") {
		t.Fatalf("got %s, want the only subnet", l.Key())
	}
	if _, err := h.Store.Acquire(ctxT(t), lease.Request{Network: n, Attrs: attrs("10.0.0.2", 2)}); !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("second host: err = %v, want ErrNoFreeSubnet", err)
	}
	// The holder itself is still served.
	if again := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)}); again.ID() != l.ID() {
		t.Fatalf("holder re-acquired %s", again.Key())
	}
}

func testConcurrent(t *testing.T, h Harness) {
	// 200 hosts start at once and compete for 210 subnets: most random
	// picks collide at least once, so only compare-and-swap keeps them apart.
	const hosts = 200
	n := network(t, `{"Network":"10.8.0.0/16","SubnetLen":24,"SubnetMin":"10.8.10.0","SubnetMax":"10.8.219.0"}`)
	leases := make([]lease.Lease, hosts)
	errs := make([]error, hosts)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range hosts {
		wg.Go(func() {
			<-start
			a := attrs(fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), byte(i))
			leases[i], errs[i] = h.Store.Acquire(ctxT(t), lease.Request{Network: n, Attrs: a})
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Acquire: %v", err)
	}
	byKey := map[string]int{}
	for i, l := range leases {
		if j, dup := byKey[l.Key()]; dup {
			t.Errorf("hosts %d and %d both got %s", j, i, l.Key())
		}
		byKey[l.Key()] = i
		if !inRange(l.Subnet, n.SubnetMin, n.SubnetMax) {
			t.Errorf("host %d got %s, outside the range", i, l.Key())
		}
	}
	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	if len(b.Events) != hosts {
		t.Fatalf("snapshot has %d leases, want %d", len(b.Events), hosts)
	}
	for _, e := range b.Events {
		i, ok := byKey[e.Lease.Key()]
		if !ok || e.Lease.Attrs.PublicIP != leases[i].Attrs.PublicIP {
			t.Errorf("stored lease %s does not match what Acquire returned", showEvent(e))
		}
	}
}
