package leasetest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

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
