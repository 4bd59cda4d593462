package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/leasetest"
)

func TestFakeConformance(t *testing.T) {
	leasetest.Run(t, leasetest.FakeHarness)
}

// clock is a manual clock for the Fake.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func network(t *testing.T) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16","SubnetLen":24}`))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func hostAttrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1}`)}
}

func watch(t *testing.T, s lease.Store) <-chan lease.Batch {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan lease.Batch)
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(ctx, ch) }()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

func next(t *testing.T, ch <-chan lease.Batch) lease.Batch {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no batch")
	}
	return lease.Batch{}
}

func TestFakeClockExpiry(t *testing.T) {
	c := &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	f := lease.NewFake(c.Now)
	ctx := context.Background()
	l, err := f.Acquire(ctx, lease.Request{Network: network(t), Attrs: hostAttrs("10.0.0.1"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Now().Add(time.Minute); !l.Expiration.Equal(want) {
		t.Errorf("expiration %v, want %v", l.Expiration, want)
	}
	res := f.Put(lease.Lease{Subnet: netip.MustParsePrefix("10.5.200.0/24"), Reservation: true, Attrs: hostAttrs("10.0.0.9")})
	ch := watch(t, f)
	if b := next(t, ch); !b.Snapshot || len(b.Events) != 2 {
		t.Fatalf("first batch %+v", b)
	}

	c.Advance(59 * time.Second)
	f.ExpireDue()
	r, err := f.Renew(ctx, l, time.Minute)
	if err != nil {
		t.Fatalf("Renew before expiry: %v", err)
	}
	c.Advance(61 * time.Second)
	f.ExpireDue()
	b := next(t, ch)
	if b.Snapshot || len(b.Events) != 1 || b.Events[0].Type != lease.Removed || b.Events[0].Lease.ID() != l.ID() {
		t.Fatalf("after expiry got %+v, want Removed %s", b, l.Key())
	}
	if _, err := f.Renew(ctx, r, time.Minute); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("Renew after expiry: %v, want ErrLeaseLost", err)
	}
	c.Advance(1000 * time.Hour)
	if got := f.Leases(); len(got) != 1 || got[0].ID() != res.ID() || !got[0].Reservation {
		t.Errorf("reservation did not survive: %+v", got)
	}
	if f.Expire(res.ID()) {
		t.Errorf("Expire removed a reservation")
	}
}

func TestFakeCompactForcesSnapshot(t *testing.T) {
	f := lease.NewFake(nil)
	f.Put(lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: hostAttrs("10.0.0.1")})
	ch := watch(t, f)
	next(t, ch)
	// Caught up, and still re-lists: Compact is the test's way to exercise
	// a consumer's Snapshot handling.
	f.Compact()
	if b := next(t, ch); !b.Snapshot || len(b.Events) != 1 {
		t.Fatalf("after Compact got %+v, want a Snapshot of one lease", b)
	}
}

func TestFakeDisconnect(t *testing.T) {
	f := lease.NewFake(nil)
	f.SetNetworkConfig([]byte(`{}`))
	f.Disconnect()
	ctx := context.Background()
	if _, err := f.NetworkConfig(ctx); err == nil {
		t.Errorf("NetworkConfig while disconnected succeeded")
	}
	if _, err := f.Acquire(ctx, lease.Request{Network: network(t), Attrs: hostAttrs("10.0.0.1")}); err == nil {
		t.Errorf("Acquire while disconnected succeeded")
	}
	f.Reconnect()
	if _, err := f.NetworkConfig(ctx); err != nil {
		t.Errorf("NetworkConfig after Reconnect: %v", err)
	}
	f.SetNetworkConfig(nil)
	if _, err := f.NetworkConfig(ctx); !errors.Is(err, lease.ErrNoNetworkConfig) {
		t.Errorf("NetworkConfig after delete: %v", err)
	}
}

func TestFakeWatchReturnsOnCancel(t *testing.T) {
	f := lease.NewFake(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, make(chan lease.Batch)) }() // nobody reads
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch blocked after cancel")
	}
}
