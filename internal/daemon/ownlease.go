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

// This host's lease: acquired once at start, renewed before it expires.

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

// renewLoop renews our lease before it expires, for as long as ctx lives.
// It only reads the store and its own copy of the lease; the result goes
// to the control loop through renewed.
func (d *daemon) renewLoop(ctx context.Context, l lease.Lease, renewed chan lease.Lease) error {
	for {
		if err := ctxsleep.For(ctx, d.renewIn(l)); err != nil {
			return err
		}
		next, err := d.renew(ctx, l)
		if err != nil {
			return err
		}
		l = next
		select { // replace an unread older renewal
		case <-renewed:
		default:
		}
		renewed <- l
	}
}

func (d *daemon) renew(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
		next, err := d.cfg.Store.Renew(actx, l, d.ttl())
		cancel()
		d.cfg.Metrics.Renewal(err == nil)
		if err == nil {
			d.cfg.Metrics.SetLeaseExpiry(next.Expiration)
			d.log.Info("lease renewed", "subnet", next.Subnet, "ipv6_subnet", next.IPv6Subnet, "expires", next.Expiration.Format(time.RFC3339))
			return next, nil
		}
		if ctx.Err() != nil {
			return l, ctx.Err()
		}
		if errors.Is(err, lease.ErrLeaseLost) {
			return l, fmt.Errorf("%w: %v", ErrOwnLeaseLost, err)
		}
		if time.Now().After(l.Expiration) {
			return l, fmt.Errorf("%w: expired while renewal kept failing: %v", ErrOwnLeaseLost, err)
		}
		d.log.Warn("lease renewal failed, retrying", "err", err)
		if err := ctxsleep.For(ctx, min(time.Duration(attempt+1)*time.Second, 10*time.Second)); err != nil {
			return l, err
		}
	}
}
