package daemon

// The control loop: watchers, the lease keeper and the passes they wake.

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

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
	d.peers = &cow.Slab[*peer]{}
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
			// apply may have stopped tracking a burst's keys (capTouched).
			rediff = rediff || (d.untracked && !full)
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
