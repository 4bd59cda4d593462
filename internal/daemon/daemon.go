// Package daemon is flanneld's control loop. One goroutine owns all state:
// this host's lease and the map of peer leases. It wakes on lease batches
// from the store, on the periodic resync, on kernel notifications that one
// of our objects was deleted, and on the renewal timer.
//
// The desired kernel state is kept, not recomputed: a lease event replans
// that one peer (backend.Backend.Peer), swaps its contribution in a
// backend.Desired and records the keys it touched in a dataplane.Delta;
// the pass that follows hands the dataplane only those keys
// (ReconcileDelta). The daemon's work for a single join is therefore the
// same at 10 peers as at 10,000 (docs/PERFORMANCE.md). A burst of lease events is drained and applied as one pass
// (the delta accumulates). Passes that exist to find what nobody told us
// about — the first one, the periodic resync, a kernel deletion
// notification, a retry after an error — diff everything instead.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/cowmap"
	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/underlay"
)

// Dataplane is what the daemon needs from the kernel side.
type Dataplane interface {
	dataplane.Reconciler
	// Subscribe calls kick whenever one of our objects is deleted behind
	// our back, until ctx ends.
	Subscribe(ctx context.Context, kick func()) error
	// LinkByName returns an existing device of ours (backend.Kernel).
	LinkByName(name string) (dataplane.Link, bool, error)
}

// Config wires a daemon.
type Config struct {
	Options   config.Options
	Log       *slog.Logger
	Store     lease.Store
	Dataplane Dataplane
	System    underlay.System
	// KernelRelease is uname -r (backend.Env.KernelRelease).
	KernelRelease string
	// LeaseTTL overrides lease.DefaultTTL (tests).
	LeaseTTL time.Duration
	// StoreAttempt overrides how long each startup call to the store may
	// take before it is retried (and its error logged) (tests).
	StoreAttempt time.Duration
	// Observer, if set, is told about each reconcile pass (tests).
	Observer func(Pass)
	// OpenRules opens the masquerade/forward rule manager (iptables or
	// nftables); nil disables rule management.
	OpenRules func(ctx context.Context, n *config.Network) (RuleSyncer, error)
	// Preflight, if set, checks the host against the network config
	// before a lease is taken or the kernel touched (flanneld: that
	// br_netfilter is loaded); its error stops the daemon.
	Preflight func(n *config.Network) error
	// Metrics, Health and Status may be nil.
	Metrics *metrics.Metrics
	Health  *httpapi.Health
	Status  *Board
}

// Pass describes one reconcile pass.
type Pass struct {
	Full bool
	// Repair is true when the pass ran because of drift (resync, kernel
	// notification), not a lease change: its writes undid drift.
	Repair  bool
	Peers   int
	Changes dataplane.Changes
	Err     error
	Took    time.Duration
}

// ErrOwnLeaseLost is returned when this host's lease disappears or is taken
// over on a store that cannot give it back (Kubernetes: the node was
// deleted); the subnet may now belong to someone else, so the daemon must
// stop. On etcd a lapsed lease is reclaimed instead (ownlease.go).
var ErrOwnLeaseLost = errors.New("own subnet lease lost")

// Run runs the daemon until ctx ends (then it returns nil and leaves the
// kernel state in place, so a restart does not disturb traffic) or a
// fatal error occurs.
func Run(ctx context.Context, cfg Config) error {
	d := &daemon{cfg: cfg, log: cfg.Log, opts: cfg.Options}
	return d.run(ctx)
}

type daemon struct {
	cfg  Config
	log  *slog.Logger
	opts config.Options

	net     *config.Network
	host    HostStatus // for the status
	backend backend.Backend
	self    lease.Lease
	// peers is a copy-on-write map, so that each pass can publish it to
	// the status Board for O(1) (see Board); skipped are the peer leases
	// not used, by raw key, bounded (skipSet).
	peers   *cowmap.Map[lease.ID, peer]
	skipped *skipSet
	// subnet is subnet.env's writer and its retries (subnetfile.go).
	subnet subnetFile

	// desired is the desired kernel state, updated per peer event;
	// touched collects the keys changed since the last pass. Both belong
	// to the control goroutine and are never shared: the status Board
	// composes its own from the peers' objects. base (our own devices)
	// and fallback (the blackhole routes) are planned once.
	desired  *backend.Desired
	touched  *dataplane.Delta
	base     *dataplane.State
	fallback dataplane.Objects
	// untracked: the pending pass diffs every key (full or complete
	// diff), so apply need not record touched keys.
	untracked bool
	last      Pass      // the latest pass, for the status
	lastAt    time.Time // when it ended; zero before the first

	// Our lease beyond d.self (ownlease.go): reclaimable says the store
	// can take a lapsed lease back; lapses carries to the lease keeper
	// the revisions at which the watch saw our key gone or taken.
	own         ownState
	reclaimable bool
	lapses      chan int64
	// runnerPeers feeds a backend.PeerRunner (runner.go); nil without.
	runnerPeers chan iter.Seq[lease.Lease]
	// probe probes the peers' reachability (probe.go).
	probe *prober
}

func (d *daemon) run(ctx context.Context) error {
	net, err := d.networkConfig(ctx)
	if err != nil {
		return err
	}
	d.net = net
	if d.cfg.Preflight != nil {
		if err := d.cfg.Preflight(net); err != nil {
			return err
		}
	}
	u, err := underlay.Select(d.cfg.System, underlay.Options{
		Ifaces: d.opts.Iface, Regexes: d.opts.IfaceRegex, CanReach: d.opts.IfaceCanReach,
		PublicIP: d.opts.PublicIP, PublicIPv6: d.opts.PublicIPv6,
		IPv4: net.EnableIPv4, IPv6: net.EnableIPv6,
	})
	if err != nil {
		return err
	}
	d.log.Info("using interface", "name", u.Name, "public_ip", u.PublicIP, "public_ipv6", u.PublicIPv6, "mtu", u.MTU)

	prev, _ := subnetenv.Read(d.opts.SubnetFile) // absent on first start

	if err := d.makeBackend(u); err != nil {
		return err
	}
	d.host = HostStatus{Network: str(net.Network), IPv6Network: str(net.IPv6Network),
		MTU: d.backend.MTU(), Underlay: u.Name, SubnetFile: d.opts.SubnetFile,
		Kube: d.opts.KubeSubnetMgr, ForwardRules: d.opts.IPTablesForwardRules}
	if d.net.Backend.Type == "vxlan" {
		d.host.TxChecksum = d.opts.VXLANTxChecksum
		if d.host.TxChecksum == config.TxChecksumAuto {
			d.host.TxChecksum += ":" + dataplane.TxChecksumSetting(d.opts.VXLANTxChecksum, d.cfg.KernelRelease).String()
		}
	}
	if err := d.acquire(ctx, prev); err != nil {
		return err
	}
	d.log.Info("lease acquired", "subnet", d.self.Subnet, "ipv6_subnet", d.self.IPv6Subnet,
		"backend", d.backend.Type(), "expires", d.self.Expiration.Format(time.RFC3339))
	d.cfg.Metrics.SetLeaseExpiry(d.self.Expiration)
	d.cfg.Health.LeaseHeld(true)
	return d.loop(ctx)
}

// defaultStoreAttempt bounds each startup call to the store. The etcd client
// waits for a usable connection for as long as a call's context allows, so
// an unbounded call against an endpoint that refuses us (a rejected client
// certificate, a server certificate from another CA) would hang without a
// word; bounded, each attempt fails with the connection error, which the
// retry loops below log.
const defaultStoreAttempt = 15 * time.Second

// storeAttempt is Config.StoreAttempt, or defaultStoreAttempt.
func (d *daemon) storeAttempt() time.Duration {
	if d.cfg.StoreAttempt > 0 {
		return d.cfg.StoreAttempt
	}
	return defaultStoreAttempt
}

// networkConfig waits for the network config to exist, as upstream does,
// so hosts can start before an operator writes it.
func (d *daemon) networkConfig(ctx context.Context) (*config.Network, error) {
	warned := false
	for {
		actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
		raw, err := d.cfg.Store.NetworkConfig(actx)
		cancel()
		if err == nil {
			return config.ParseNetwork(raw)
		}
		if !errors.Is(err, lease.ErrNoNetworkConfig) || !warned {
			d.log.Warn("network config not available, retrying", "err", err)
			warned = true
		}
		if err := ctxsleep.For(ctx, time.Second); err != nil {
			return nil, err
		}
	}
}

func (d *daemon) loop(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	batches := make(chan lease.Batch, 64)
	kicks := make(chan struct{}, 1)
	g.Go(func() error { return d.cfg.Store.Watch(gctx, batches) })
	g.Go(func() error {
		return d.cfg.Dataplane.Subscribe(gctx, func() {
			select {
			case kicks <- struct{}{}:
			default:
			}
		})
	})
	if d.rulesWanted() {
		g.Go(func() error { return d.syncRules(gctx) })
	}
	// The lease keeper runs on its own goroutine: with etcd unreachable it
	// may retry for hours, and the dataplane must keep being reconciled
	// meanwhile. It hands each lease it gets to the control loop.
	_, d.reclaimable = d.cfg.Store.(lease.Reclaimer)
	d.lapses = make(chan int64, 1)
	updates := make(chan ownUpdate, 1)
	self := d.self
	g.Go(func() error { return d.keepLease(gctx, self, updates, d.lapses) })
	d.startRunner(gctx, self, g.Go)
	closeProber := d.startProber(gctx, g.Go)
	// The control loop always ends with an error (ctx's, at the least),
	// which makes the group cancel gctx and stop the watchers. It must not
	// cancel them itself before returning: a watcher's context.Canceled
	// could then reach the group first and mask why the loop stopped
	// (ErrOwnLeaseLost), turning a fatal exit into a clean one.
	g.Go(func() error { return d.control(gctx, batches, kicks, updates) })
	err := g.Wait()
	closeProber()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// passKind says how much a pass diffs.
type passKind int

// cap0 is the size below which maps are left to grow on their own.
const cap0 = 64

const (
	// passDelta diffs the touched keys only: a pass for lease changes.
	passDelta passKind = iota
	// passDiff diffs every desired key against the dataplane's index: a
	// kernel deletion notification dropped the object from the index, so
	// only a complete diff finds it missing; also after a failed pass,
	// whose failed writes were not in the next pass's delta.
	passDiff
	// passFull re-reads the kernel first (start, periodic resync).
	passFull
)

func (d *daemon) control(ctx context.Context, batches <-chan lease.Batch, kicks <-chan struct{}, updates <-chan ownUpdate) error {
	d.peers = cowmap.New[lease.ID, peer](idHash, 0)
	d.skipped = newSkipSet()
	// Our own subnets are fixed for the daemon's lifetime (a renewal only
	// moves revision and expiry), so the base is planned once.
	d.newDesired(0)
	d.touched = dataplane.NewDelta()
	defer d.cfg.Status.publish(nil)
	if err := d.prepare(ctx); err != nil {
		return err
	}
	d.publish()

	resync := time.NewTicker(d.opts.ResyncPeriod)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	subnetRetry := d.subnet.timer()
	defer subnetRetry.Stop()

	// The first pass is full: it reads the kernel, adopts what a previous
	// run left (writing nothing if it is right) and removes entries of
	// leases that went away while we were down (flannel#2554).
	full, dirty := true, true
	rediff := false // the pending pass must diff every key (passDiff)
	synced := false // first snapshot received
	first := true   // the first pass adopts; its writes are not repairs
	repair := false // the pending pass is for drift, not lease changes
	for {
		if dirty && synced {
			kind := passDelta
			switch {
			case full:
				kind = passFull
			case rediff:
				kind = passDiff
			}
			if err := d.reconcile(ctx, kind, repair && !first); err != nil {
				// Failed writes are retried by a complete diff: the index
				// kept them as not done, but the delta that named them is
				// spent.
				retry.Reset(time.Second)
				rediff = true
			} else {
				if first {
					releaseStartupMemory()
				}
				full, first, rediff = false, false, false
			}
			dirty, repair = false, false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b := <-batches:
			d.untracked = full || rediff
			if err := d.apply(b); err != nil {
				return err
			}
			// Coalesce a burst: take whatever else is already queued.
		drain:
			for {
				select {
				case b := <-batches:
					if err := d.apply(b); err != nil {
						return err
					}
				default:
					break drain
				}
			}
			synced, dirty = true, true
		case <-kicks:
			// The dataplane dropped the deleted object from its index;
			// only a complete diff notices that desired still has it.
			dirty, repair, rediff = true, !dirty || repair, true
		case <-resync.C:
			full, repair, dirty = true, !dirty || repair, true
			// Put back a subnet.env removed or changed meanwhile (no
			// write if it is right), unless a retry is due anyway.
			if !d.subnet.pending {
				d.syncSubnetFile()
			}
		case <-subnetRetry.C:
			d.subnet.pending = false
			d.syncSubnetFile()
		case <-retry.C:
			dirty = true
		case u := <-updates:
			// Same subnets and attributes: the base plan stands.
			d.ownNews(u)
			d.publish()
		}
	}
}

// releaseStartupMemory hands back to the system what the start used and
// no longer needs. The start reads the whole store twice (Acquire's
// listing, then the watch's snapshot); among a cluster's worth of leases,
// or junk in the store (the bad-input flood: ~30 MiB of oversized values
// left the daemon at 180 MiB), that is garbage right after the first
// pass, which the GC, with nothing allocating any more, would only collect
// at its two-minute forced cycle and the scavenger return later still.
// One forced collection now costs a few milliseconds, once.
func releaseStartupMemory() { runtime.GC(); debug.FreeOSMemory() }

// newDesired starts the desired state over from our own objects, with
// room for about peers peers. Our own subnets are fixed for the daemon's
// lifetime (a renewal only moves revision and expiry), so the base is the
// same every time.
func (d *daemon) newDesired(peers int) {
	if d.base == nil {
		d.base = d.backend.PlanBase(d.self)
		if d.opts.IPBlackholeRoute {
			d.fallback = d.blackholes()
		}
	}
	d.desired = backend.NewDesired(d.base, peers)
	d.desired.SetFallback(d.fallback, nil)
}

// delta is where apply records touched keys: nowhere when the pending
// pass diffs them all anyway.
func (d *daemon) delta() *dataplane.Delta {
	if d.untracked {
		return nil
	}
	return d.touched
}

// apply folds a batch of lease events into the peer map.
func (d *daemon) apply(b lease.Batch) error {
	if b.Snapshot && d.peers.Len() == 0 && d.desired.Peers() == 0 && len(b.Events) > cap0 {
		// The first snapshot of a big cluster: make the maps its size
		// once. Growing them a rehash at a time was half the CPU time of
		// applying 5,000 leases.
		n := len(b.Events)
		d.peers = cowmap.New[lease.ID, peer](idHash, n)
		d.newDesired(n)
	}
	if b.Snapshot {
		// A snapshot replaces everything: peers not in it are gone.
		seen := make(map[lease.ID]bool, len(b.Events))
		for _, ev := range b.Events {
			if ev.Err == nil || !errors.Is(ev.Err, lease.ErrBadKey) {
				seen[ev.Lease.ID()] = true
			}
		}
		removed := 0
		for id := range d.peers.All() {
			if !seen[id] {
				d.dropPeer(id)
				removed++
			}
		}
		d.skipped.retain(d.skipped.keys(b.Events))
		if _, ok := seen[d.self.ID()]; !ok {
			// After a lapse, until the keeper has reclaimed it.
			if err := d.ownGone(b.Revision, "is not in the store"); err != nil {
				return err
			}
		}
		d.log.Debug("lease snapshot", "leases", len(b.Events), "removed", removed, "revision", b.Revision)
	}
	for _, ev := range b.Events {
		if err := d.applyEvent(ev); err != nil {
			return err
		}
	}
	for reason, n := range d.skipped.takeChanged() {
		d.cfg.Metrics.SetSkipped(reason, n)
	}
	return nil
}

func (d *daemon) applyEvent(ev lease.Event) error {
	if ev.Err != nil && errors.Is(ev.Err, lease.ErrBadKey) {
		// A key that is not a lease's names no subnets: whatever it says,
		// it concerns no peer (and not us).
		if ev.Type == lease.Removed {
			d.skipped.remove(ev.Key)
		} else {
			d.skip(ev, ev.Err)
		}
		return nil
	}
	id := ev.Lease.ID()
	if id == d.self.ID() {
		return d.ownEvent(ev)
	}
	if ev.Type == lease.Removed {
		if _, ok := d.peers.Get(id); ok {
			d.log.Debug("peer removed", "lease", id)
		}
		d.dropPeer(id)
		d.skipped.remove(ev.Key)
		return nil
	}
	err := ev.Err
	var objs dataplane.Objects
	if err == nil {
		objs, err = d.backend.Peer(d.self, ev.Lease)
	}
	if err != nil {
		d.dropPeer(id)
		d.skip(ev, err)
		return nil
	}
	d.skipped.remove(ev.Key)
	d.log.Debug("peer added", "lease", id, "public_ip", ev.Lease.Attrs.PublicIP)
	old, ok := d.peers.Get(id)
	seen := old.seen
	if !ok || !old.lease.Attrs.Equal(ev.Lease.Attrs) {
		seen = time.Now()
	}
	d.peers.Set(id, peer{lease: ev.Lease, seen: seen, objs: objs})
	d.desired.SetPeer(ev.Lease, objs, d.delta())
	return nil
}

// dropPeer forgets a peer and withdraws its objects.
func (d *daemon) dropPeer(id lease.ID) {
	d.peers.Delete(id)
	d.desired.RemovePeer(id, d.delta())
}

// prepare brings our own device(s) up and publishes subnet.env before any
// peer is programmed, as upstream does once its backend has registered the
// network: the CNI plugin can attach pods while thousands of peers are
// still being installed (at 5,000 peers the first full pass takes seconds).
// It only adds: the index is empty, so nothing can be taken for garbage;
// the first full pass then reads the kernel as usual.
//
// A device the kernel refuses (an MTU above what its underlay allows, a
// foreign VXLAN device holding our VNI and port) is fatal, as it is for
// upstream, which exits when it cannot register its backend: a daemon that
// kept running would hold a lease and look alive with no overlay and no
// subnet.env, so pods would fail to start with no clue why. After a
// successful start, failed passes are retried instead (with /readyz
// false): what worked once is worth waiting for.
func (d *daemon) prepare(ctx context.Context) error {
	ch, err := d.cfg.Dataplane.ReconcileDelta(ctx, d.desired.State(), dataplane.NewDelta())
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if lacks := findErr(err, dataplane.ErrKernelLacks); lacks != nil {
			// The device cannot exist here: what follows from it (routes
			// through it) is noise. Say what to do instead.
			return fmt.Errorf("set up own %s device: %w; use a backend this kernel supports (%s) or one with the module",
				d.backend.Type(), lacks, strings.Join(backends.Supported(d.backend.Type()), ", "))
		}
		return fmt.Errorf("set up own %s device: %w", d.backend.Type(), oneLine{err})
	}
	d.log.Debug("own device ready", "writes", ch.Total())
	d.syncSubnetFile() // a failure is retried with backoff, the node unready
	return nil
}

// oneLine renders an errors.Join of dataplane failures on one line, for
// the daemon's exit message.
type oneLine struct{ err error }

func (e oneLine) Error() string { return strings.ReplaceAll(e.err.Error(), "\n", "; ") }
func (e oneLine) Unwrap() error { return e.err }

func wrapNetConfig(err error) error { return fmt.Errorf("network config: %w", err) }

func (d *daemon) reconcile(ctx context.Context, kind passKind, repair bool) error {
	start := time.Now()
	desired := d.desired.State()
	var (
		ch  dataplane.Changes
		err error
	)
	switch kind {
	case passDelta:
		ch, err = d.cfg.Dataplane.ReconcileDelta(ctx, desired, d.touched)
	default:
		ch, err = d.cfg.Dataplane.Reconcile(ctx, desired, kind == passFull)
	}
	// Every kind of pass covers the touched keys (a failed one is followed
	// by a passDiff), so the delta starts afresh.
	touched := d.touched.Len()
	d.touched.Reset()
	full := kind == passFull
	p := Pass{Full: full, Repair: repair, Peers: d.peers.Len(), Changes: ch, Err: err, Took: time.Since(start)}
	d.last, d.lastAt = p, time.Now()
	d.publish()
	d.feedRunner()
	d.feedProber()
	d.cfg.Metrics.Pass(full, p.Took, ch, err, repair)
	d.cfg.Metrics.SetPeers(d.backend.Type(), d.peers.Len())
	d.cfg.Health.PassDone(err == nil)
	level := slog.LevelDebug
	if ch.Total() > 0 || err != nil {
		level = slog.LevelInfo
	}
	d.log.Log(ctx, level, "reconciled", "full", full, "delta", kind == passDelta, "touched", touched,
		"peers", d.peers.Len(), "writes", ch.Total(),
		"routes_added", ch.RoutesAdded, "routes_removed", ch.RoutesRemoved, "took", p.Took.Round(time.Microsecond), "err", err)
	if d.cfg.Observer != nil {
		d.cfg.Observer(p)
	}
	return err
}

// blackholes are --ip-blackhole-route's routes, as upstream flanneld
// installs them: a blackhole for each of this host's own subnets, so that
// packets to an address of our subnet that no pod holds are dropped here
// instead of following the default route out of the host. That matters
// when no bridge owns the subnet (Canal: Calico routes each pod by a /32
// on its veth). Where a bridge does, its connected route wins: the
// dataplane installs blackholes with the lowest preference the kernel
// has (dataplane.BlackholeMetric). Being declared state, the routes are
// repaired and garbage-collected like every other route of ours. They are
// Desired's fallback, so they never take the place of a route the backend
// planned for the same prefix.
func (d *daemon) blackholes() dataplane.Objects {
	var o dataplane.Objects
	for _, p := range []netip.Prefix{ipIf(d.net.EnableIPv4, d.self.Subnet), ipIf(d.net.EnableIPv6, d.self.IPv6Subnet)} {
		// Never a default route.
		if p.IsValid() && p.Bits() != 0 {
			o.AddRoute(dataplane.Route{Dst: p, Blackhole: true})
		}
	}
	return o
}
