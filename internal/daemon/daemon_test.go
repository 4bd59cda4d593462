package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
	"github.com/weft-net/weft/internal/subnetenv"
)

// fakeDP adds the daemon's extra needs to dataplane.Fake.
type fakeDP struct {
	*dataplane.Fake
	kick chan func()
}

func (f *fakeDP) Subscribe(ctx context.Context, kick func()) error {
	f.kick <- kick
	<-ctx.Done()
	return ctx.Err()
}

func (f *fakeDP) LinkByName(name string) (dataplane.Link, bool, error) {
	l, ok := f.Kernel().Links[name]
	return l, ok, nil
}

type fakeSys struct{}

func (fakeSys) Interfaces() ([]dataplane.Interface, error) {
	return []dataplane.Interface{{Index: 2, Name: "eth0", MTU: 1500, Up: true,
		Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24")}}}, nil
}
func (fakeSys) RouteTo(netip.Addr) (int, netip.Addr, error) { return 2, netip.Addr{}, nil }
func (fakeSys) DefaultRouteInterfaces() (int, int, error)   { return 2, 0, nil }

type harness struct {
	t      *testing.T
	store  *lease.Fake
	dp     *fakeDP
	opts   config.Options
	passes chan Pass
	done   chan error
	cancel context.CancelFunc
	// preflight is Config.Preflight (nil: none).
	preflight func(*config.Network) error
	// health, board and metrics are Config.Health, Config.Status and
	// Config.Metrics (nil: none).
	health  *httpapi.Health
	board   *Board
	metrics *metrics.Metrics
	// plainStore, if set, hides the Fake's Reclaim: a store that cannot
	// take a lapsed lease back, as Kubernetes mode's.
	plainStore bool
	// log, if set, receives the daemon's log (debug level and up).
	log *syncBuffer
}

// plain is a lease.Store and nothing more.
type plain struct{ lease.Store }

func newHarness(t *testing.T, netconf string) *harness {
	h := &harness{
		t:      t,
		store:  lease.NewFake(nil),
		dp:     &fakeDP{Fake: dataplane.NewFake(), kick: make(chan func(), 1)},
		passes: make(chan Pass, 1000),
	}
	h.dp.AddDevice("eth0")
	h.store.SetNetworkConfig([]byte(netconf))
	h.opts = config.Options{
		SubnetFile:             filepath.Join(t.TempDir(), "subnet.env"),
		SubnetLeaseRenewMargin: time.Hour,
		ResyncPeriod:           time.Hour, // tests trigger passes explicitly
		Iface:                  []string{"eth0"},
	}
	// Pin our own lease to the network's last subnet through a previous
	// subnet.env (Acquire reuses it when free): a random own subnet would
	// sometimes be one the tests then write as a peer's.
	n, err := config.ParseNetwork([]byte(netconf))
	if err != nil {
		t.Fatal(err)
	}
	own := netip.PrefixFrom(n.SubnetMax, n.SubnetLen)
	if err := subnetenv.Write(h.opts.SubnetFile, subnetenv.Env{Networks: []netip.Prefix{n.Network}, Subnet: subnetenv.GatewayOf(own), MTU: 1}); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) start() { h.start2(0) }

// start2 starts the daemon with a lease TTL (0: the default).
func (h *harness) start2(ttl time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if h.log != nil {
		log = slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var store lease.Store = h.store
	if h.plainStore {
		store = plain{h.store}
	}
	go func() {
		h.done <- Run(ctx, Config{
			Options: h.opts, Log: log, Store: store, Dataplane: h.dp, System: fakeSys{}, LeaseTTL: ttl,
			Preflight: h.preflight, Health: h.health, Status: h.board, Metrics: h.metrics,
			Observer: func(p Pass) {
				h.passes <- p
			},
		})
	}()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			h.t.Error("daemon did not stop")
		}
	})
}

// waitState waits until the fake kernel's lines satisfy cond.
func (h *harness) waitState(what string, cond func(lines string) bool) string {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := h.dp.Kernel().String()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; kernel:\n%s", what, s)
		}
		select {
		case err := <-h.done:
			h.t.Fatalf("daemon exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (h *harness) own() lease.Lease {
	h.t.Helper()
	for _, l := range h.store.Leases() {
		if l.Attrs.PublicIP == netip.MustParseAddr("192.168.1.10") {
			return l
		}
	}
	h.t.Fatal("own lease not in store")
	return lease.Lease{}
}

func peerLease(subnet, pub string, mac dataplane.MAC) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan", BackendData: vxlan.EncodeData(1, mac)}}
}

var (
	macA = dataplane.MAC{2, 0, 0, 0, 0, 0xa}
	macB = dataplane.MAC{2, 0, 0, 0, 0, 0xb}
)

func TestDaemonProgramsPeersAndSkipsBadOnes(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.store.PutRaw("10.5.8.0-24", []byte(`{not json`))
	bad := peerLease("10.5.9.0/24", "192.168.1.9", macB)
	bad.Attrs.BackendType = "udp"
	h.store.Put(bad)
	h.store.PutRaw("10.6.1.0-24", []byte(`{"PublicIP":"192.168.1.61","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:61"}}`))
	h.store.PutRaw("10.5.10.0-24", []byte(`{"PublicIP":"192.168.1.62","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"nope"}}`))
	h.start()

	s := h.waitState("peer 10.5.7.0/24 programmed", func(s string) bool {
		return strings.Contains(s, "route 10.5.7.0/24 via 10.5.7.0 dev flannel.1 onlink")
	})
	for _, bad := range []string{"10.5.8.0", "10.5.9.0", "10.6.1.0", "10.5.10.0"} {
		if strings.Contains(s, bad) {
			t.Errorf("malformed peer %s was programmed:\n%s", bad, s)
		}
	}
	own := h.own()
	var env subnetenv.Env
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// The harness left a stale file (MTU 1); wait for the daemon's.
		if env, err = subnetenv.Read(h.opts.SubnetFile); (err == nil && env.MTU != 1) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet != subnetenv.GatewayOf(own.Subnet) || env.MTU != 1450 || !slices.Equal(env.Networks, []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")}) {
		t.Errorf("subnet.env = %+v, own lease %s", env, own.Subnet)
	}
	if !strings.Contains(s, "link flannel.1 vxlan id 1") || !strings.Contains(s, "addr "+own.Subnet.Addr().String()+"/32") {
		t.Errorf("device not as expected:\n%s", s)
	}

	// A peer joins, changes its MAC, leaves.
	p := h.store.Put(peerLease("10.5.20.0/24", "192.168.1.20", macA))
	h.waitState("peer 20 added", func(s string) bool { return strings.Contains(s, "fdb 02:00:00:00:00:0a dst 192.168.1.20") })
	p.Attrs.BackendData = vxlan.EncodeData(1, macB)
	h.store.Put(p)
	h.waitState("peer 20 MAC changed", func(s string) bool {
		return strings.Contains(s, "fdb 02:00:00:00:00:0b dst 192.168.1.20") &&
			!strings.Contains(s, "fdb 02:00:00:00:00:0a dst 192.168.1.20") &&
			strings.Contains(s, "neigh 10.5.20.0 lladdr 02:00:00:00:00:0b")
	})
	h.store.Delete(p.ID())
	h.waitState("peer 20 removed", func(s string) bool { return !strings.Contains(s, "10.5.20.0") && !strings.Contains(s, "192.168.1.20") })
}

func TestDaemonCoalescesBursts(t *testing.T) {
	h := newHarness(t, `{"Network":"10.0.0.0/9","Backend":{"Type":"vxlan"}}`)
	h.start()
	h.waitState("device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	for len(h.passes) > 0 {
		<-h.passes
	}
	const n = 500
	for i := 0; i < n; i++ {
		h.store.Put(peerLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24).String(),
			netip.AddrFrom4([4]byte{172, 16, byte(i / 256), byte(i%256 + 1)}).String(), dataplane.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}))
	}
	h.waitState("all peers", func(s string) bool { return strings.Count(s, "\nroute ") >= n-1 })
	passes := len(h.passes)
	t.Logf("%d peers written one by one took %d reconcile passes", n, passes)
	if passes >= n/2 {
		t.Errorf("%d passes for %d events: bursts are not coalesced", passes, n)
	}
}

func TestDaemonRepairsDriftOnResync(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16"}`)
	h.opts.ResyncPeriod = 50 * time.Millisecond
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.start()
	h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	h.dp.DeleteRoute(dataplane.RouteKey{Dst: netip.MustParsePrefix("10.5.7.0/24")})
	h.dp.DeleteLink("flannel.1")
	h.waitState("repair", func(s string) bool {
		return strings.Contains(s, "route 10.5.7.0/24") && strings.Contains(s, "link flannel.1")
	})
}

// On a store that cannot reclaim a lease (Kubernetes: the node was
// deleted), losing ours stops the daemon.
func TestDaemonStopsWhenOwnLeaseDeleted(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16"}`)
	h.plainStore = true
	h.start()
	h.waitState("device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	h.store.Delete(h.own().ID())
	select {
	case err := <-h.done:
		if !errors.Is(err, ErrOwnLeaseLost) {
			t.Fatalf("Run = %v, want ErrOwnLeaseLost", err)
		}
		h.done <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("daemon kept running without its lease")
	}
}

func TestDaemonRestartKeepsSubnetAndMACAndWritesNothing(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16"}`)
	h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
	h.start()
	before := h.waitState("peer", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
	own := h.own()
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	h.done <- nil

	// A new daemon over the same kernel and store: same subnet, same MAC,
	// and its first (full) pass writes nothing.
	h2 := &harness{t: t, store: h.store, dp: &fakeDP{Fake: h.dp.Restart(), kick: make(chan func(), 1)},
		opts: h.opts, passes: make(chan Pass, 100)}
	h2.start()
	p := <-h2.passes
	if p.Err != nil || p.Changes.Total() != 0 {
		t.Errorf("first pass after restart: %+v, want no writes", p)
	}
	if after := h2.dp.Kernel().String(); after != before {
		t.Errorf("kernel changed across restart:\n%s\n---\n%s", before, after)
	}
	if got := h2.own(); got.Subnet != own.Subnet || !got.Attrs.Equal(own.Attrs) {
		t.Errorf("lease changed across restart: %+v -> %+v", own, got)
	}
}

func TestDaemonRenewsWithoutBlockingReconcile(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16"}`)
	h.opts.SubnetLeaseRenewMargin = time.Hour // clamped to half the TTL
	h.start2(1500 * time.Millisecond)
	h.waitState("device", func(s string) bool { return strings.Contains(s, "link flannel.1") })
	first := h.own()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l := h.own(); l.Revision > first.Revision {
			// The control loop still programs peers after the renewal.
			h.store.Put(peerLease("10.5.7.0/24", "192.168.1.7", macA))
			h.waitState("peer after renewal", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("lease was not renewed")
}

// A failed preflight check stops the daemon after it has read the network
// config and before it takes a lease or touches the kernel.
func TestDaemonStopsOnPreflightError(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}`)
	var got *config.Network
	errHost := errors.New("host not ready")
	h.preflight = func(n *config.Network) error {
		got = n
		return errHost
	}
	h.start()
	select {
	case err := <-h.done:
		if !errors.Is(err, errHost) {
			t.Fatalf("Run = %v, want %v", err, errHost)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop on a preflight error")
	}
	h.done <- nil // for the cleanup
	if got == nil || got.EnableNFTables == nil || !*got.EnableNFTables {
		t.Errorf("preflight saw network %+v, want the parsed config", got)
	}
	if n := len(h.store.Leases()); n != 0 {
		t.Errorf("%d leases after a failed preflight, want none", n)
	}
	if s := h.dp.Kernel().String(); strings.Contains(s, "flannel") {
		t.Errorf("kernel touched after a failed preflight:\n%s", s)
	}
}
