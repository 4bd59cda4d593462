package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// subscribedDP is the Fake with its own Subscribe, which drops an object
// deleted behind its back from the index and kicks — as Netlink does.
type subscribedDP struct {
	*dataplane.Fake
	ready chan struct{} // closed once subscribed
}

func (f subscribedDP) Subscribe(ctx context.Context, kick func()) error {
	var once sync.Once
	return f.Fake.Subscribe(ctx, func() {
		kick()
		once.Do(func() { close(f.ready) }) // the Fake kicks once when registered
	})
}

func (f subscribedDP) LinkByName(name string) (dataplane.Link, bool, error) {
	l, ok := f.Kernel().Links[name]
	return l, ok, nil
}

// TestDaemonKickRepairsDeletedObject: a deletion notification removes the
// object from the dataplane's index and touches no key, so the kick's pass
// must be a complete diff, not a delta pass (which would find nothing to
// do). The resync is an hour away: only the kick can repair it.
func TestDaemonKickRepairsDeletedObject(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	sub := subscribedDP{Fake: h.dp.Fake, ready: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Options: h.opts, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Store: h.store, Dataplane: sub, System: fakeSys{}})
	}()
	h.done = done
	t.Cleanup(func() {
		cancel()
		select { // waitState takes the result when the daemon fails
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	<-sub.ready
	h.dp.DeleteRoute(dataplane.RouteKey{Dst: netip.MustParsePrefix("10.5.7.0/24")})
	h.dp.DeleteNeigh(dataplane.NeighKey{Dev: "flannel.1", IP: netip.MustParseAddr("10.5.7.0")})
	h.waitState("repaired by the kick", func(s string) bool {
		return strings.Contains(s, "route 10.5.7.0/24") && strings.Contains(s, "neigh 10.5.7.0")
	})
	// Lease events keep working as delta passes afterwards.
	second := "10.5.8.0/24"
	if h.own().Subnet.String() == second { // our lease is random: never overwrite it
		second = "10.5.9.0/24"
	}
	h.store.Put(peerLease(second, "192.168.1.8", macB))
	h.waitState("second peer", func(s string) bool { return strings.Contains(s, "route "+second) })
}

// TestBoardWhileLeasesChange reads the status from other goroutines while
// lease events mutate the desired state (run with -race): the Board
// renders published snapshots, it never shares the live state.
func TestBoardWhileLeasesChange(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	board := &Board{}
	if s := board.Get(); s.Lease.Subnet != "" || len(s.Desired) != 0 {
		t.Errorf("status before the daemon runs: %+v", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Options: h.opts, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Store: h.store, Dataplane: h.dp, System: fakeSys{}, Status: board})
	}()
	h.done = done
	h.waitState("device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	own := h.own().Subnet
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := board.Get()
				_ = len(s.Desired) + len(s.Peers)
			}
		}()
	}
	var last lease.Lease
	var kept string // a peer that stays
	for i := range 50 {
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(10 + i), 0}), 24)
		if subnet == own { // our lease is random: never overwrite it
			subnet = netip.MustParsePrefix("10.5.200.0/24")
		}
		last = peerLease(subnet.String(),
			netip.AddrFrom4([4]byte{192, 168, 1, byte(100 + i)}).String(), dataplane.MAC{2, 0, 0, 0, 1, byte(i)})
		h.store.Put(last)
		if i%10 == 9 {
			h.store.Delete(last.ID())
		} else {
			kept = "route " + subnet.String()
		}
	}
	h.waitState("peers", func(s string) bool { return strings.Contains(s, kept) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := board.Get()
		if len(s.Peers) == 45 && len(s.Devices) == 1 && strings.Contains(strings.Join(s.Desired, "\n"), kept) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the 45 peers: %d peers, devices %v", len(s.Peers), s.Devices)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	// The Board composes the desired state afresh from each peer's
	// objects: it is the loop's, which the fake kernel now holds.
	// (Polled: the last events may still be on their way.)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, want := strings.Join(board.Get().Desired, "\n"), h.dp.Kernel().String()
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status desired:\n%s\nkernel:\n%s", got, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	// After the loop ends, Get does not block.
	if s := board.Get(); len(s.Peers) != 0 {
		t.Errorf("status after the daemon stopped: %d peers", len(s.Peers))
	}
}
