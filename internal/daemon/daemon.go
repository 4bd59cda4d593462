// Package daemon is flanneld's control loop. One goroutine owns all state:
// this host's lease and the map of peer leases. It wakes on lease batches
// from the store, on the periodic resync, on kernel notifications that one
// of our objects was deleted, and on the renewal timer.
//
// The desired kernel state is kept, not recomputed: a lease event replans
// that one peer (backend.Backend.Peer), swaps its contribution in a
// desired.State and records the keys it touched in a dataplane.Delta;
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
	"iter"
	"log/slog"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
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
	host    httpapi.HostStatus // for the status
	backend backend.Backend
	self    lease.Lease
	// peers are the peer records by their desired-state handle (found by
	// lease ID through desired.Handle), in a copy-on-write slab, so that
	// each pass can publish them to the status Board for O(1) (see Board);
	// skipped are the peer leases not used, by raw key, bounded (skipSet).
	peers   *cow.Slab[*peer]
	skipped *skipSet
	// subnet is subnet.env's writer and its retries (subnetfile.go).
	subnet subnetFile

	// desired is the desired kernel state, updated per peer event;
	// touched collects the keys changed since the last pass. Both belong
	// to the control goroutine and are never shared: the status Board
	// composes its own from the peers' objects. base (our own devices)
	// and fallback (the blackhole routes) are planned once.
	desired  *desired.State
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
