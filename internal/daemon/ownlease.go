package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
)

// This host's lease: acquired once at start, then kept by the lease keeper
// (keepLease), a goroutine of its own, since with the store unreachable it
// may retry for hours while the dataplane must keep being reconciled.
//
// A lease is never given up because the store could not be reached: past
// its expiry the keeper keeps retrying and the dataplane stays as it is
// (upstream does the same; weft used to exit, taking readiness with it).
// etcd does not expire leases while it is down — a restarted etcd gives
// every lease a fresh TTL — so after an outage of etcd itself the renewal
// simply succeeds. When this host alone was cut off long enough for etcd to
// expire the key (or an operator deleted it), the lease has lapsed: peers
// have dropped their routes to us, and the keeper reclaims the same subnets
// with a compare-and-swap (lease.Reclaimer) as soon as the store answers —
// restarting onto another subnet would strand every pod addressed from this
// one. If another host leased the subnet meanwhile, the keeper reports it
// (the control loop makes /readyz fail, saying so, and sets
// flannel_lease_conflict), keeps the dataplane, and tries again when that
// host's lease goes away and every takenRetry; the recovery is in
// docs/RELIABILITY.md ("etcd outage").

// takenRetry is how often a subnet held by another host is asked for again
// (besides when the watch sees that host's lease go).
const takenRetry = time.Minute

// ownUpdate is the keeper's news for the control loop: the lease as now
// held (renewed or reclaimed), or that another host holds our subnet.
type ownUpdate struct {
	lease     lease.Lease
	reclaimed bool
	taken     error // lease.ErrSubnetTaken; lease is unset
}

// ownState is what the control loop knows of its lease besides d.self.
type ownState struct {
	lapsed time.Time // our key was seen gone from the store, not yet reclaimed
	taken  error     // another host holds our subnet
}

func (d *daemon) ttl() time.Duration {
	if d.cfg.LeaseTTL > 0 {
		return d.cfg.LeaseTTL
	}
	return lease.DefaultTTL
}

func (d *daemon) acquire(ctx context.Context, prev subnetenv.Env) error {
	req := lease.Request{
		Reuse:      d.backend.Resume,
		Network:    d.net,
		Attrs:      d.backend.Attrs(),
		PreviousV4: subnetenv.LeasedSubnet(prev.Subnet),
		PreviousV6: subnetenv.LeasedSubnet(prev.IPv6Subnet),
		TTL:        d.ttl(),
	}
	backoff := time.Second
	for {
		actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
		l, err := d.cfg.Store.Acquire(actx, req)
		cancel()
		if err == nil {
			d.self = l
			return nil
		}
		if errors.Is(err, lease.ErrNoFreeSubnet) {
			return err
		}
		d.log.Warn("acquire lease failed, retrying", "err", err, "in", backoff)
		if err := ctxsleep.For(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// renewIn is how long to wait before renewing l.
func (d *daemon) renewIn(l lease.Lease) time.Duration {
	if l.Reservation || l.Expiration.IsZero() {
		return 24 * time.Hour * 365
	}
	margin := d.opts.SubnetLeaseRenewMargin
	if ttl := d.ttl(); margin >= ttl {
		margin = ttl / 2
	}
	return max(time.Until(l.Expiration.Add(-margin)), time.Second)
}

// retryIn is the pause after the n-th store failure in a row: growing by
// a second to 10 s, and never more than a quarter of the TTL, so that a
// short lease is retried several times before it runs out.
func (d *daemon) retryIn(n int) time.Duration {
	return max(min(time.Duration(n)*time.Second, 10*time.Second, d.ttl()/4), 100*time.Millisecond)
}

// keeperState is what the keeper is doing about the lease.
type keeperState int

const (
	holding    keeperState = iota // renew before expiry
	reclaiming                    // lapsed: write it back
	outbid                        // another host holds the subnet
)

// keepLease renews l before it expires and reclaims it when it lapsed,
// for as long as ctx lives. It hands every lease it gets to the control
// loop through updates (replacing an unread older one). lapses brings the
// revisions at which the watch saw our key gone or taken; one older than
// the lease we hold is news we already acted on, answered with that lease.
// It returns only ctx's error, or ErrOwnLeaseLost when the lease lapsed on
// a store that cannot reclaim (Kubernetes: a node is its lease).
func (d *daemon) keepLease(ctx context.Context, l lease.Lease, updates chan ownUpdate, lapses <-chan int64) error {
	post := func(u ownUpdate) {
		select {
		case <-updates:
		default:
		}
		updates <- u
	}
	state, failures := holding, 0
	timer := time.NewTimer(d.renewIn(l))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rev := <-lapses:
			if rev < l.Revision {
				if state == holding {
					post(ownUpdate{lease: l}) // what the control loop may not have yet
				}
				continue
			}
			if state == holding {
				state, failures = reclaiming, 0
			}
		case <-timer.C:
		}
		if state == holding {
			next, err := d.renew(ctx, l)
			switch {
			case err == nil:
				l, failures = next, 0
				post(ownUpdate{lease: l})
				timer.Reset(d.renewIn(l))
				continue
			case errors.Is(err, lease.ErrLeaseLost):
				d.log.Warn("own lease lost; reclaiming the same subnet", "err", err)
				state = reclaiming
			case ctx.Err() != nil:
				return ctx.Err()
			default:
				failures++
				timer.Reset(d.retryIn(failures))
				continue
			}
		}
		next, err := d.reclaim(ctx, l)
		switch {
		case err == nil:
			l, state, failures = next, holding, 0
			post(ownUpdate{lease: l, reclaimed: true})
			timer.Reset(d.renewIn(l))
		case errors.Is(err, lease.ErrSubnetTaken):
			if state != outbid {
				post(ownUpdate{taken: err})
			}
			state = outbid
			timer.Reset(takenRetry)
		case errors.Is(err, ErrOwnLeaseLost), ctx.Err() != nil:
			return err
		default:
			failures++
			timer.Reset(d.retryIn(failures))
		}
	}
}

// renew makes one renewal attempt. A lease past its expiry is kept all
// the same (see the notes at the top).
func (d *daemon) renew(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
	next, err := d.cfg.Store.Renew(actx, l, d.ttl())
	cancel()
	d.cfg.Metrics.Renewal(err == nil)
	if err == nil {
		d.cfg.Metrics.SetLeaseExpiry(next.Expiration)
		d.log.Info("lease renewed", "subnet", next.Subnet, "ipv6_subnet", next.IPv6Subnet, "expires", next.Expiration.Format(time.RFC3339))
		return next, nil
	}
	if ctx.Err() != nil || errors.Is(err, lease.ErrLeaseLost) {
		return l, err
	}
	if !l.Reservation && time.Now().After(l.Expiration) {
		d.log.Warn("lease renewal failed past the lease's expiry; keeping the dataplane and retrying",
			"expired", l.Expiration.Format(time.RFC3339), "err", err)
	} else {
		d.log.Warn("lease renewal failed, retrying", "err", err)
	}
	return l, err
}

// reclaim makes one attempt to write l back (lease.Reclaimer).
func (d *daemon) reclaim(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	r, ok := d.cfg.Store.(lease.Reclaimer)
	if !ok {
		return l, fmt.Errorf("%w: %s lapsed and this store cannot reclaim it", ErrOwnLeaseLost, l.Key())
	}
	actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
	next, err := r.Reclaim(actx, l, d.ttl())
	cancel()
	switch {
	case err == nil:
		d.cfg.Metrics.Reclaim("ok")
		d.cfg.Metrics.SetLeaseExpiry(next.Expiration)
		d.log.Info("own lease reclaimed: same subnet", "subnet", next.Subnet, "ipv6_subnet", next.IPv6Subnet,
			"expires", next.Expiration.Format(time.RFC3339))
	case errors.Is(err, lease.ErrSubnetTaken):
		d.cfg.Metrics.Reclaim("taken")
	case ctx.Err() == nil:
		d.cfg.Metrics.Reclaim("failed")
		d.log.Warn("reclaiming own lease failed, retrying", "err", err)
	}
	return next, err
}

// The control loop's side: what the watch says of our key, and what the
// keeper reports.

// ownEvent handles a watch event on our own key.
func (d *daemon) ownEvent(ev lease.Event) error {
	switch {
	case ev.Type == lease.Removed:
		return d.ownGone(ev.Lease.Revision, "was deleted from the store (expired, or removed by hand)")
	case ev.Err == nil && !lease.SameHost(ev.Lease.Attrs, d.self.Attrs):
		if !d.reclaimable {
			return fmt.Errorf("%w: %s now belongs to %s", ErrOwnLeaseLost, d.self.Key(), ev.Lease.Attrs.PublicIP)
		}
		// The keeper's Reclaim confirms it and reports the holder.
		d.poke(ev.Lease.Revision)
	}
	return nil
}

// ownGone handles our key missing from the store at revision rev: a lapse
// (reclaimed by the keeper), or on a store that cannot reclaim, the end.
func (d *daemon) ownGone(rev int64, why string) error {
	if !d.reclaimable {
		return fmt.Errorf("%w: %s %s", ErrOwnLeaseLost, d.self.Key(), why)
	}
	if rev < d.self.Revision {
		return nil // a deletion older than the lease we hold: reclaimed since
	}
	if d.own.lapsed.IsZero() && d.own.taken == nil {
		d.own.lapsed = time.Now()
		d.log.Warn("own lease lapsed; keeping the dataplane and reclaiming the same subnet",
			"lease", d.self.Key(), "why", why)
		d.cfg.Health.SetLease("", fmt.Sprintf("own lease %s lapsed at %s; reclaiming it", d.self.Key(), d.own.lapsed.Format(time.RFC3339)))
	}
	d.poke(rev)
	return nil
}

// poke tells the keeper that our key was gone or taken at rev (keeping
// the newest of unread pokes). The control loop is the only sender, so
// once the slot is drained the send cannot block.
func (d *daemon) poke(rev int64) {
	select {
	case old := <-d.lapses:
		rev = max(rev, old)
	default:
	}
	d.lapses <- rev
}

// ownNews applies the keeper's report.
func (d *daemon) ownNews(u ownUpdate) {
	if u.taken != nil {
		if d.own.taken == nil {
			d.log.Error("own subnet now belongs to another host; keeping the dataplane, this node is not ready "+
				"(recovery: docs/RELIABILITY.md, etcd outage)", "lease", d.self.Key(), "err", u.taken)
		}
		d.own = ownState{lapsed: d.own.lapsed, taken: u.taken}
		d.cfg.Health.SetLease(fmt.Sprintf("subnet lease lost: %v; restart flanneld to lease another subnet, "+
			"and recreate this node's pods (they hold addresses of the lost one)", u.taken), "")
		d.cfg.Metrics.SetLeaseConflict(true)
		return
	}
	switch {
	case !d.own.lapsed.IsZero():
		d.log.Info("own lease held again", "lease", u.lease.Key(), "lapsed_for", time.Since(d.own.lapsed).Round(time.Millisecond))
	case d.own.taken != nil:
		d.log.Info("own lease held again", "lease", u.lease.Key())
	}
	d.self, d.own = u.lease, ownState{}
	d.cfg.Health.SetLease("", "")
	d.cfg.Metrics.SetLeaseConflict(false)
}
