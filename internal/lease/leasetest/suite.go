// Package leasetest is the conformance suite for lease.Store
// implementations, in the manner of testing/fstest: one set of cases, run
// against the in-memory Fake and against a real etcd, so the fake the
// daemon's tests rely on cannot drift from the store it stands in for.
package leasetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Harness is one store under test, on a backend of its own (or its own
// key prefix), plus the means to act on that backend the way other hosts
// and the operator do.
type Harness struct {
	Store lease.Store
	Peer  Peer
	// Lacks lists what the store's backend cannot do. Cases that need it
	// are skipped, parts of cases that need it are left out; everything
	// else runs unchanged. Zero means a full store (etcd, the Fake).
	Lacks Capability
}

// Capability is a set of backend features that some stores lack.
type Capability uint

const (
	// Allocation: the store picks a subnet for whichever host asks, so one
	// Store can stand for many hosts (told apart by PublicIP). A Kubernetes
	// store serves one node, whose subnet kube-controller-manager assigned.
	Allocation Capability = 1 << iota
	// Expiry: leases have TTLs that Renew extends and Peer.Expire ends.
	Expiry
	// Reservations: the operator can write leases without a TTL.
	Reservations
	// RawKeys: Peer.PutRaw can write any key and value, however malformed.
	RawKeys
	// Reclaims: the store is a lease.Reclaimer (a lapsed lease can be
	// written back). A Kubernetes node's podCIDR never lapses.
	Reclaims
)

func (h Harness) has(c Capability) bool { return h.Lacks&c == 0 }

// Peer writes to the backend directly, bypassing the Store under test.
// Methods fail the test on error.
type Peer interface {
	// SetNetworkConfig writes the network config document.
	SetNetworkConfig(t testing.TB, doc []byte)
	// PutLease writes l as another host would: json.Marshal(l.Attrs) under
	// l.Key(), with a TTL of lease.DefaultTTL, or none if l.Reservation.
	PutLease(t testing.TB, l lease.Lease)
	// PutRaw writes value, unchecked, under the subnet key named key (the
	// part after "<prefix>/subnets/"), with a TTL.
	PutRaw(t testing.TB, key string, value []byte)
	// Delete deletes the key of id.
	Delete(t testing.TB, id lease.ID)
	// Expire ends the TTL of the lease id now, as if it had run out.
	Expire(t testing.TB, id lease.ID)
	// Compact discards the backend's change history up to now.
	Compact(t testing.TB)
	// Disconnect cuts the Store off from the backend: its watch stalls (its
	// other calls may fail) until reconnect is called, after which it must
	// pick up where it was.
	Disconnect(t testing.TB) (reconnect func())
}

// timeout bounds every wait for the store; generous, since etcd on a
// loaded CI machine can take a while to reconnect.
const timeout = 20 * time.Second

// Run runs every case, each on a fresh Harness from newStore.
func Run(t *testing.T, newStore func(t *testing.T) Harness) {
	cases := []struct {
		name  string
		fn    func(t *testing.T, h Harness)
		needs Capability
	}{
		{"NetworkConfig", testNetworkConfig, 0},
		{"AcquireInRange", testAcquireInRange, Allocation | Expiry},
		{"ReacquireSamePublicIP", testReacquire, Allocation},
		{"ReuseHook", testReuseHook, 0},
		{"PreviousSubnet", testPreviousSubnet, Allocation},
		{"OwnReservation", testOwnReservation, Allocation | Reservations | Expiry},
		{"OthersReservation", testOthersReservation, Allocation | Reservations},
		{"Renew", testRenew, Expiry},
		{"RenewLost", testRenewLost, Allocation | Expiry | Reservations},
		{"Reclaim", testReclaim, Allocation | Expiry | Reservations | Reclaims},
		{"Watch", testWatch, 0},
		{"WatchMalformed", testWatchMalformed, RawKeys},
		{"MalformedStillTaken", testMalformedTaken, Allocation | RawKeys},
		{"NonCanonicalKey", testNonCanonicalKey, Allocation | RawKeys},
		{"WatchResumesAfterDisconnect", testWatchResume, 0},
		{"WatchCompactionRelists", testWatchCompaction, 0},
		{"DualStack", testDualStack, Allocation},
		{"IPv6Only", testIPv6Only, Allocation},
		{"ReplaceWhenIPv6Enabled", testReplace, Allocation},
		{"Exhaustion", testExhaustion, Allocation},
		{"ConcurrentAcquire", testConcurrent, Allocation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newStore(t)
			if !h.has(c.needs) {
				t.Skipf("the store lacks capabilities %#x this case needs", h.Lacks&c.needs)
			}
			c.fn(t, h)
		})
	}
}

// Network configs used by the cases.
const (
	// 20 allocatable subnets, 10.5.1.0-10.5.20.0.
	netV4 = `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.20.0"}`
	// Same IPv4 part, plus IPv6 /64s in a /16: 2^48 candidates, so an
	// allocator that walks the range would not finish.
	netDual = `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.20.0",` +
		`"EnableIPv6":true,"IPv6Network":"fc00::/16","IPv6SubnetLen":64}`
	netV6 = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:6::/56","IPv6SubnetLen":64}`
)

func network(t testing.TB, doc string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(doc))
	if err != nil {
		t.Fatalf("ParseNetwork(%s): %v", doc, err)
	}
	return n
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// attrs are a vxlan host's attributes; mac varies the backend data.
func attrs(ip string, mac byte) lease.Attrs {
	a := lease.Attrs{BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:%02x"}`, mac))}
	if ip != "" {
		a.PublicIP = netip.MustParseAddr(ip)
	}
	return a
}

func attrs6(ip4, ip6 string, mac byte) lease.Attrs {
	a := attrs(ip4, mac)
	a.PublicIPv6 = netip.MustParseAddr(ip6)
	a.BackendV6Data = json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ff:%02x"}`, mac))
	return a
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func acquire(t testing.TB, s lease.Store, req lease.Request) lease.Lease {
	t.Helper()
	l, err := s.Acquire(ctxT(t), req)
	if err != nil {
		t.Fatalf("Acquire(%v): %v", req.Attrs.PublicIP, err)
	}
	return l
}

// checkLease verifies what any acquired lease must satisfy.
func checkLease(t testing.TB, n *config.Network, l lease.Lease, want lease.Attrs) {
	t.Helper()
	if err := lease.CheckID(n, l.ID()); err != nil {
		t.Errorf("lease does not fit the network: %v", err)
	}
	if !l.Attrs.Equal(want) {
		t.Errorf("lease %s attrs = %+v, want %+v", l.Key(), l.Attrs, want)
	}
	if l.Revision <= 0 {
		t.Errorf("lease %s revision = %d, want > 0", l.Key(), l.Revision)
	}
	v4, v6, err := lease.ParseKey(l.Key())
	if err != nil || v4 != l.Subnet || v6 != l.IPv6Subnet {
		t.Errorf("ParseKey(%q) = %v, %v, %v; want the lease's subnets", l.Key(), v4, v6, err)
	}
}

func inRange(p netip.Prefix, lo, hi netip.Addr) bool {
	return !p.Addr().Less(lo) && !hi.Less(p.Addr())
}

// watcher runs Store.Watch in the background for one test.
type watcher struct {
	ch   chan lease.Batch
	done chan error
}

func startWatch(t *testing.T, s lease.Store) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{ch: make(chan lease.Batch), done: make(chan error, 1)}
	go func() { w.done <- s.Watch(ctx, w.ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v after cancel, want context.Canceled", err)
			}
		case <-time.After(timeout):
			t.Errorf("Watch did not return after its context was canceled")
		}
	})
	return w
}

func (w *watcher) next(t testing.TB) lease.Batch {
	t.Helper()
	select {
	case b := <-w.ch:
		return b
	case err := <-w.done:
		t.Fatalf("Watch returned early: %v", err)
	case <-time.After(timeout):
		t.Fatalf("no batch within %v", timeout)
	}
	return lease.Batch{}
}

func (w *watcher) snapshot(t testing.TB) lease.Batch {
	t.Helper()
	b := w.next(t)
	if !b.Snapshot {
		t.Fatalf("batch is not a Snapshot: %s", show(b.Events))
	}
	return b
}

// events reads change batches until it has n events. The backend may
// split or merge a sequence of writes into batches as it likes, but a
// Snapshot here is a failure.
func (w *watcher) events(t testing.TB, n int) []lease.Event {
	t.Helper()
	var out []lease.Event
	var rev int64
	for len(out) < n {
		b := w.next(t)
		if b.Snapshot {
			t.Fatalf("unexpected Snapshot batch after %s: %s", show(out), show(b.Events))
		}
		if len(b.Events) == 0 {
			t.Fatalf("empty change batch")
		}
		if b.Revision < rev {
			t.Errorf("batch revision went back from %d to %d", rev, b.Revision)
		}
		rev = b.Revision
		out = append(out, b.Events...)
	}
	if len(out) != n {
		t.Fatalf("got %d events, want %d: %s", len(out), n, show(out))
	}
	return out
}

// show renders events compactly and stably, for comparing and messages:
// "added 10.5.1.0-24 10.0.0.1 res", "removed 10.5.1.0-24", "error <key>".
func show(evs []lease.Event) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, showEvent(e))
	}
	return out
}

func showEvent(e lease.Event) string {
	id := e.Lease.ID().String()
	switch {
	case e.Err != nil:
		return "error " + e.Key[strings.LastIndexByte(e.Key, '/')+1:]
	case e.Type == lease.Removed:
		return "removed " + id
	}
	s := "added " + id + " " + publicIP(e.Lease.Attrs)
	if e.Lease.Reservation {
		s += " res"
	}
	return s
}

func publicIP(a lease.Attrs) string {
	if a.PublicIP.IsValid() {
		return a.PublicIP.String()
	}
	return a.PublicIPv6.String()
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func wantEvents(t testing.TB, got []lease.Event, want ...string) {
	t.Helper()
	if g := show(got); !slices.Equal(g, want) {
		t.Errorf("events:\n got %q\nwant %q", g, want)
	}
}

func wantSet(t testing.TB, got []lease.Event, want ...string) {
	t.Helper()
	if g := sorted(show(got)); !slices.Equal(g, sorted(want)) {
		t.Errorf("events (any order):\n got %q\nwant %q", g, sorted(want))
	}
}

func peerLease(subnet string, a lease.Attrs) lease.Lease {
	return lease.Lease{Subnet: pfx(subnet), Attrs: a}
}

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

func testRenew(t *testing.T, h Harness) {
	n := network(t, netV4)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1), TTL: time.Hour})
	before := time.Now()
	r, err := h.Store.Renew(ctxT(t), l, 2*time.Hour)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.ID() != l.ID() || r.Revision <= l.Revision || r.Reservation || !r.Attrs.Equal(l.Attrs) {
		t.Errorf("Renew = %s rev %d reservation %v; want %s, revision after %d", r.Key(), r.Revision, r.Reservation, l.Key(), l.Revision)
	}
	if r.Expiration.Before(before.Add(2*time.Hour - time.Second)) {
		t.Errorf("renewed expiration %v, want about two hours from now", r.Expiration)
	}
	// Renewing from the superseded revision means someone (here: us) wrote
	// the key since: not ours to extend blindly.
	if _, err := h.Store.Renew(ctxT(t), l, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew with a stale revision: err = %v, want ErrLeaseLost", err)
	}
	r2, err := h.Store.Renew(ctxT(t), r, time.Hour)
	if err != nil || r2.Revision <= r.Revision {
		t.Fatalf("second Renew = rev %d, %v", r2.Revision, err)
	}
	// Renewal is not an event for watchers: nothing changed for the daemon.
	h.Peer.PutLease(t, peerLease("10.5.40.0/24", attrs("10.0.0.9", 9)))
	w := startWatch(t, h.Store)
	w.snapshot(t)
	if _, err := h.Store.Renew(ctxT(t), r2, time.Hour); err != nil {
		t.Fatalf("third Renew: %v", err)
	}
	h.Peer.Delete(t, lease.ID{V4: pfx("10.5.40.0/24")})
	wantEvents(t, w.events(t, 1), "removed 10.5.40.0-24")
}

func testRenewLost(t *testing.T, h Harness) {
	n := network(t, netV4)
	ctx := ctxT(t)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)})
	h.Peer.Delete(t, l.ID())
	if _, err := h.Store.Renew(ctx, l, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew after the key was deleted: err = %v, want ErrLeaseLost", err)
	}

	l = acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.1", 1)})
	h.Peer.PutLease(t, lease.Lease{Subnet: l.Subnet, Attrs: attrs("10.0.0.2", 2)})
	if _, err := h.Store.Renew(ctx, l, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew after another host overwrote the key: err = %v, want ErrLeaseLost", err)
	}

	l = acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.3", 3)})
	h.Peer.Expire(t, l.ID())
	if _, err := h.Store.Renew(ctx, l, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew after the TTL ran out: err = %v, want ErrLeaseLost", err)
	}
	// A reservation that the operator deleted is lost too.
	h.Peer.PutLease(t, lease.Lease{Subnet: pfx("10.5.30.0/24"), Reservation: true, Attrs: attrs("10.0.0.4", 4)})
	r := acquire(t, h.Store, lease.Request{Network: n, Attrs: attrs("10.0.0.4", 4)})
	h.Peer.Delete(t, r.ID())
	if _, err := h.Store.Renew(ctx, r, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew of a deleted reservation: err = %v, want ErrLeaseLost", err)
	}
}

// testReclaim: a lapsed lease is written back with the same subnet, a
// lease rewritten by this same host is taken over, one held by another
// host is left alone (ErrSubnetTaken, naming it), and an operator's
// reservation for this host stays a reservation.
func testReclaim(t *testing.T, h Harness) {
	r, ok := h.Store.(lease.Reclaimer)
	if !ok {
		t.Fatalf("%T is not a lease.Reclaimer; a harness whose store cannot reclaim must say Lacks: Reclaims", h.Store)
	}
	n := network(t, netV4)
	ctx := ctxT(t)
	a := attrs("10.0.0.1", 1)
	l := acquire(t, h.Store, lease.Request{Network: n, Attrs: a, TTL: time.Hour})
	w := startWatch(t, h.Store)
	w.snapshot(t)

	// Lapsed: expired in the store.
	h.Peer.Expire(t, l.ID())
	wantEvents(t, w.events(t, 1), "removed "+l.Key())
	before := time.Now()
	got, err := r.Reclaim(ctx, l, 2*time.Hour)
	if err != nil {
		t.Fatalf("Reclaim of an expired lease: %v", err)
	}
	if got.ID() != l.ID() || got.Revision <= l.Revision || got.Reservation || !got.Attrs.Equal(a) {
		t.Errorf("Reclaim = %s rev %d reservation %v attrs %+v; want %s after revision %d with its attributes",
			got.Key(), got.Revision, got.Reservation, got.Attrs, l.Key(), l.Revision)
	}
	if got.Expiration.Before(before.Add(2*time.Hour - time.Second)) {
		t.Errorf("reclaimed lease expires %v, want about two hours from now", got.Expiration)
	}
	wantEvents(t, w.events(t, 1), "added "+l.Key()+" 10.0.0.1")
	if _, err := h.Store.Renew(ctx, got, time.Hour); err != nil {
		t.Fatalf("Renew of the reclaimed lease: %v", err)
	}

	// Rewritten by this host (same public IP, other backend data): ours
	// to take over.
	h.Peer.PutLease(t, lease.Lease{Subnet: l.Subnet, Attrs: attrs("10.0.0.1", 7)})
	wantEvents(t, w.events(t, 1), "added "+l.Key()+" 10.0.0.1")
	got, err = r.Reclaim(ctx, l, time.Hour)
	if err != nil || !got.Attrs.Equal(a) || got.Reservation {
		t.Fatalf("Reclaim of a key rewritten by the same host = %+v, %v; want our attributes back", got, err)
	}
	wantEvents(t, w.events(t, 1), "added "+l.Key()+" 10.0.0.1")

	// Taken by another host: left alone.
	h.Peer.Delete(t, l.ID())
	h.Peer.PutLease(t, lease.Lease{Subnet: l.Subnet, Attrs: attrs("10.0.0.2", 2)})
	wantEvents(t, w.events(t, 2), "removed "+l.Key(), "added "+l.Key()+" 10.0.0.2")
	_, err = r.Reclaim(ctx, l, time.Hour)
	if !errors.Is(err, lease.ErrSubnetTaken) || !strings.Contains(err.Error(), "10.0.0.2") {
		t.Errorf("Reclaim of a subnet another host holds: %v, want ErrSubnetTaken naming 10.0.0.2", err)
	}
	// An operator's reservation for us: kept a reservation, with our
	// attributes.
	h.Peer.Delete(t, l.ID())
	h.Peer.PutLease(t, lease.Lease{Subnet: l.Subnet, Reservation: true, Attrs: attrs("10.0.0.1", 9)})
	wantEvents(t, w.events(t, 2), "removed "+l.Key(), "added "+l.Key()+" 10.0.0.1 res")
	got, err = r.Reclaim(ctx, l, time.Hour)
	if err != nil || !got.Reservation || !got.Attrs.Equal(a) {
		t.Fatalf("Reclaim of our reservation = %+v, %v; want a reservation with our attributes", got, err)
	}
	wantEvents(t, w.events(t, 1), "added "+l.Key()+" 10.0.0.1 res")
	if _, err := h.Store.Renew(ctx, got, time.Hour); err != nil {
		t.Errorf("Renew of the reclaimed reservation: %v", err)
	}
}

func testWatch(t *testing.T, h Harness) {
	a1, a2, a3 := attrs("10.0.0.1", 1), attrs("10.0.0.2", 2), attrs("10.0.0.3", 3)
	h.Peer.PutLease(t, peerLease("10.5.1.0/24", a1))
	h.Peer.PutLease(t, peerLease("10.5.2.0/24", a2))
	want := []string{"added 10.5.1.0-24 10.0.0.1", "added 10.5.2.0-24 10.0.0.2"}
	if h.has(Reservations) {
		h.Peer.PutLease(t, lease.Lease{Subnet: pfx("10.5.50.0/24"), Reservation: true, Attrs: attrs("10.0.0.50", 5)})
		want = append(want, "added 10.5.50.0-24 10.0.0.50 res")
	}
	h.Peer.SetNetworkConfig(t, []byte(netV4)) // not a lease: never an event

	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	wantSet(t, b.Events, want...)
	if b.Revision <= 0 {
		t.Errorf("snapshot revision = %d", b.Revision)
	}
	for _, e := range b.Events {
		if e.Type != lease.Added || e.Err != nil || e.Lease.Revision <= 0 || e.Lease.Revision > b.Revision || e.Key == "" {
			t.Errorf("snapshot event %+v: want Added, no error, a revision in (0, %d], a key", e, b.Revision)
		}
		if e.Lease.Subnet == pfx("10.5.1.0/24") && !e.Lease.Attrs.Equal(a1) {
			t.Errorf("snapshot attrs %+v, want %+v", e.Lease.Attrs, a1)
		}
	}

	h.Peer.PutLease(t, peerLease("10.5.3.0/24", a3))
	evs := w.events(t, 1)
	wantEvents(t, evs, "added 10.5.3.0-24 10.0.0.3")
	if !evs[0].Lease.Attrs.Equal(a3) || evs[0].Lease.Revision <= b.Revision {
		t.Errorf("event %+v: want attrs %+v and a revision after %d", evs[0].Lease, a3, b.Revision)
	}

	h.Peer.Delete(t, lease.ID{V4: pfx("10.5.1.0/24")})
	evs = w.events(t, 1)
	wantEvents(t, evs, "removed 10.5.1.0-24")
	if evs[0].Lease.Attrs.PublicIP.IsValid() || evs[0].Lease.Revision <= 0 {
		t.Errorf("Removed event %+v: want only subnets and revision", evs[0].Lease)
	}

	// A peer's renewal (same value, new TTL) is no event; the write after
	// it shows that nothing came before.
	h.Peer.PutLease(t, peerLease("10.5.3.0/24", a3))
	h.Peer.PutLease(t, peerLease("10.5.4.0/24", attrs("10.0.0.4", 4)))
	wantEvents(t, w.events(t, 1), "added 10.5.4.0-24 10.0.0.4")

	// Changed attributes are.
	a3b := attrs("10.0.0.3", 0x33)
	h.Peer.PutLease(t, peerLease("10.5.3.0/24", a3b))
	evs = w.events(t, 1)
	wantEvents(t, evs, "added 10.5.3.0-24 10.0.0.3")
	if !evs[0].Lease.Attrs.Equal(a3b) {
		t.Errorf("changed attrs %+v, want %+v", evs[0].Lease.Attrs, a3b)
	}

	// So is a lease turned into a reservation, and an expiry.
	if h.has(Reservations) {
		h.Peer.PutLease(t, lease.Lease{Subnet: pfx("10.5.3.0/24"), Reservation: true, Attrs: a3b})
		wantEvents(t, w.events(t, 1), "added 10.5.3.0-24 10.0.0.3 res")
	}
	if h.has(Expiry) {
		h.Peer.Expire(t, lease.ID{V4: pfx("10.5.2.0/24")})
		wantEvents(t, w.events(t, 1), "removed 10.5.2.0-24")
	}
}

func testWatchMalformed(t *testing.T, h Harness) {
	h.Peer.PutRaw(t, "10.5.3.0-24", []byte(`{"PublicIP":`))
	h.Peer.PutRaw(t, "not-a-subnet", []byte(`{}`))
	h.Peer.PutLease(t, peerLease("10.5.1.0/24", attrs("10.0.0.1", 1)))
	w := startWatch(t, h.Store)
	b := w.snapshot(t)
	wantSet(t, b.Events, "error 10.5.3.0-24", "error not-a-subnet", "added 10.5.1.0-24 10.0.0.1")
	for _, e := range b.Events {
		switch {
		case strings.HasSuffix(e.Key, "10.5.3.0-24"):
			if e.Lease.Subnet != pfx("10.5.3.0/24") || errors.Is(e.Err, lease.ErrBadKey) {
				t.Errorf("bad value: event %+v: want the key's subnet and a value error", e)
			}
		case strings.HasSuffix(e.Key, "not-a-subnet"):
			if !errors.Is(e.Err, lease.ErrBadKey) {
				t.Errorf("bad key: err = %v, want ErrBadKey", e.Err)
			}
		}
	}
	h.Peer.PutRaw(t, "10.5.4.0-24", []byte(`{"PublicIP":"not-an-ip","BackendType":"vxlan"}`))
	evs := w.events(t, 1)
	wantEvents(t, evs, "error 10.5.4.0-24")
	if evs[0].Type != lease.Added || evs[0].Lease.Subnet != pfx("10.5.4.0/24") || !strings.Contains(evs[0].Err.Error(), "10.5.4.0-24") {
		t.Errorf("event %+v: want Added with the key's subnet and an error naming it", evs[0])
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

func testWatchResume(t *testing.T, h Harness) {
	h.Peer.PutLease(t, peerLease("10.5.1.0/24", attrs("10.0.0.1", 1)))
	w := startWatch(t, h.Store)
	w.snapshot(t)
	reconnect := h.Peer.Disconnect(t)
	h.Peer.PutLease(t, peerLease("10.5.2.0/24", attrs("10.0.0.2", 2)))
	h.Peer.Delete(t, lease.ID{V4: pfx("10.5.1.0/24")})
	reconnect()
	wantEvents(t, w.events(t, 2), "added 10.5.2.0-24 10.0.0.2", "removed 10.5.1.0-24")
	h.Peer.PutLease(t, peerLease("10.5.3.0/24", attrs("10.0.0.3", 3)))
	wantEvents(t, w.events(t, 1), "added 10.5.3.0-24 10.0.0.3")
}

func testWatchCompaction(t *testing.T, h Harness) {
	h.Peer.PutLease(t, peerLease("10.5.1.0/24", attrs("10.0.0.1", 1)))
	w := startWatch(t, h.Store)
	w.snapshot(t)
	// The watcher falls behind (its connection is down) while history it
	// has not seen is compacted away: it must list again.
	reconnect := h.Peer.Disconnect(t)
	h.Peer.PutLease(t, peerLease("10.5.2.0/24", attrs("10.0.0.2", 2)))
	h.Peer.Delete(t, lease.ID{V4: pfx("10.5.1.0/24")})
	h.Peer.PutLease(t, peerLease("10.5.3.0/24", attrs("10.0.0.3", 3)))
	h.Peer.Compact(t)
	reconnect()
	b := w.snapshot(t)
	wantSet(t, b.Events, "added 10.5.2.0-24 10.0.0.2", "added 10.5.3.0-24 10.0.0.3")
	// And it keeps following after the re-list.
	h.Peer.Delete(t, lease.ID{V4: pfx("10.5.2.0/24")})
	wantEvents(t, w.events(t, 1), "removed 10.5.2.0-24")
}

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
