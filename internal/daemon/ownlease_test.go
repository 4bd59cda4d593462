package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
)

// waitOwn waits for the store to hold our lease with a revision after
// rev, and returns it.
func (h *harness) waitOwn(what string, rev int64) lease.Lease {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range h.store.Leases() {
			if l.Attrs.PublicIP.String() == "192.168.1.10" && l.Revision > rev {
				return l
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; leases %+v", what, h.store.Leases())
		}
		select {
		case err := <-h.done:
			h.t.Fatalf("daemon exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitReady waits until cond holds for /readyz's verdict and notes.
func (h *harness) waitReady(what string, cond func(err error, notes []string) bool) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(h.health.Ready(), h.health.Notes()) {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s: readyz %v, notes %q", what, h.health.Ready(), h.health.Notes())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newOwnHarness(t *testing.T) *harness {
	h := newHarness(t, `{"Network":"10.5.0.0/16"}`)
	h.health = httpapi.NewHealth(time.Hour, nil)
	h.board = &Board{}
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	return h
}

// A lease deleted from the store (expired while this host was cut off, or
// removed by hand) is written back with the same subnet; the kernel is
// not touched and the node stays ready.
func TestDaemonReclaimsLapsedLease(t *testing.T) {
	h := newOwnHarness(t)
	h.start()
	before := h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	own := h.own()
	h.waitReady("ready", func(err error, _ []string) bool { return err == nil })

	h.store.Expire(own.ID())
	back := h.waitOwn("own lease reclaimed", own.Revision)
	if back.ID() != own.ID() || !back.Attrs.Equal(own.Attrs) || back.Reservation {
		t.Errorf("reclaimed %+v, want %s with the same attributes", back, own.Key())
	}
	h.waitReady("lapse over", func(err error, notes []string) bool { return err == nil && len(notes) == 0 })
	if st := h.board.Get(); st.Lease.State != "held" || st.Lease.Subnet != own.Subnet.String() {
		t.Errorf("status lease = %+v, want %s held", st.Lease, own.Subnet)
	}
	if after := h.dp.Kernel().String(); after != before {
		t.Errorf("kernel changed across the lapse:\n%s\n---\n%s", before, after)
	}
	// And it is renewed from the reclaimed revision on: a later lapse is
	// reclaimed again.
	h.store.Delete(back.ID())
	h.waitOwn("own lease reclaimed again", back.Revision)
}

// Cut off from the store past the lease's expiry, the daemon keeps its
// dataplane and keeps retrying; when the store answers, the lease it let
// expire is reclaimed (same subnet) and what changed meanwhile is applied.
func TestDaemonRidesOutStoreOutage(t *testing.T) {
	h := newOwnHarness(t)
	h.start2(1500 * time.Millisecond) // renewed every 750 ms
	before := h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	own := h.own()

	h.store.Disconnect()
	time.Sleep(2 * time.Second) // past the expiry
	h.store.Put(peerLease("10.5.8.0/24", "192.168.1.8", macB))
	select {
	case err := <-h.done:
		t.Fatalf("daemon exited during the outage: %v", err)
	default:
	}
	if got := h.dp.Kernel().String(); got != before {
		t.Errorf("kernel changed during the outage:\n%s\n---\n%s", before, got)
	}
	if st := h.board.Get(); st.Lease.State != "renewal overdue" {
		t.Errorf("status lease state during the outage = %q, want renewal overdue", st.Lease.State)
	}
	if err := h.health.Ready(); err != nil {
		t.Errorf("readyz during the outage: %v", err)
	}

	h.store.Reconnect()
	h.waitState("peer added during the outage", func(s string) bool { return strings.Contains(s, "route 10.5.8.0/24") })
	back := h.waitOwn("own lease reclaimed", own.Revision)
	if back.ID() != own.ID() {
		t.Errorf("reclaimed %s, want %s", back.Key(), own.Key())
	}
	h.waitReady("ready, no notes", func(err error, notes []string) bool { return err == nil && len(notes) == 0 })
}

// When another host took our subnet while ours had lapsed, the daemon
// keeps its dataplane, says so (readyz fails naming the holder, status
// says lost), and takes the subnet back once that host's lease goes.
func TestDaemonOwnSubnetTaken(t *testing.T) {
	h := newOwnHarness(t)
	h.start()
	before := h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	own := h.own()

	h.store.Disconnect()
	h.store.Expire(own.ID())
	taker := h.store.Put(lease.Lease{Subnet: own.Subnet, Attrs: peerLease("10.5.9.0/24", "192.168.1.99", macB).Attrs})
	h.store.Reconnect()
	h.waitReady("readyz failing on the conflict", func(err error, _ []string) bool {
		return err != nil && strings.Contains(err.Error(), "held by host 192.168.1.99")
	})
	if st := h.board.Get(); !strings.HasPrefix(st.Lease.State, "lost: ") {
		t.Errorf("status lease state = %q, want lost: …", st.Lease.State)
	}
	if got := h.dp.Kernel().String(); got != before {
		t.Errorf("kernel changed:\n%s\n---\n%s", before, got)
	}

	h.store.Delete(taker.ID())
	back := h.waitOwn("own lease reclaimed after the holder left", taker.Revision)
	if back.ID() != own.ID() {
		t.Errorf("reclaimed %s, want %s", back.Key(), own.Key())
	}
	h.waitReady("ready again", func(err error, notes []string) bool { return err == nil && len(notes) == 0 })
}
