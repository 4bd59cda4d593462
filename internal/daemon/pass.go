package daemon

// Passes: our own device first, then each reconcile of the desired state.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/dataplane"
)

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
	ch, err := d.cfg.Dataplane.ReconcileDelta(ctx, d.desired, dataplane.NewDelta())
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
	desired := d.desired
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
