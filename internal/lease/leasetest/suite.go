// Package leasetest is the conformance suite for lease.Store
// implementations, in the manner of testing/fstest: one set of cases, run
// against the in-memory Fake and against a real etcd, so the fake the
// daemon's tests rely on cannot drift from the store it stands in for.
package leasetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
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

func peerLease(subnet string, a lease.Attrs) lease.Lease {
	return lease.Lease{Subnet: pfx(subnet), Attrs: a}
}
