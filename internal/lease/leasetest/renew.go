package leasetest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

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
