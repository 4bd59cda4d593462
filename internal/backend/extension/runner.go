package extension

import (
	"cmp"
	"context"
	"iter"
	"maps"
	"slices"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// Backoff between retries of a failed command: doubling from RetryMin
// to RetryMax.
const (
	RetryMin = time.Second
	RetryMax = time.Minute
)

// runner brings the commands' world to the daemon's peers: it remembers
// for which peer lease SubnetAddCommand last succeeded (applied), and
// after every new set of peers runs the remove command for each applied
// peer that is gone or changed and the add command for each new or
// changed one. A failed command is retried with backoff; a peer whose
// remove failed stays applied (and is retried) until it succeeds. A
// restart starts with nothing applied: every current peer is added again,
// as upstream does when it lists the leases at start.
type runner struct {
	b       *Backend
	self    lease.Lease
	applied map[lease.ID]lease.Lease
	// retry holds the failed command per peer: when it may run again,
	// and the backoff after that.
	retry map[lease.ID]backoff
	now   func() time.Time
}

type backoff struct {
	lease lease.Lease // the lease the failure was for (a change retries at once)
	next  time.Time
	delay time.Duration
}

func newRunner(b *Backend, self lease.Lease) *runner {
	return &runner{b: b, self: self, applied: map[lease.ID]lease.Lease{}, retry: map[lease.ID]backoff{}, now: time.Now}
}

// serve runs PostStartupCommand (until it succeeds), then follows peers
// until ctx ends.
func (r *runner) serve(ctx context.Context, peers <-chan iter.Seq[lease.Lease]) error {
	var latest map[lease.ID]lease.Lease
	take := func(s iter.Seq[lease.Lease]) {
		latest = map[lease.ID]lease.Lease{}
		for l := range s {
			latest[l.ID()] = l
		}
	}
	post := command{name: "PostStartupCommand", line: r.b.opts.PostStartupCommand}
	if post.set() {
		delay := r.b.retryMin
		for {
			if _, err := r.b.run(ctx, post, r.postEnv(), ""); err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.b.log.Warn("extension: retrying PostStartupCommand; peers' commands wait for it", "in", delay)
			if !r.wait(ctx, delay, peers, take) {
				return ctx.Err()
			}
			delay = min(2*delay, r.b.retryMax)
		}
	} else {
		r.b.log.Info("extension: no PostStartupCommand configured")
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if latest != nil {
			r.sync(ctx, latest)
			if next, ok := r.nextRetry(); ok {
				timer.Reset(max(next.Sub(r.now()), 0))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-peers:
			take(s)
		case <-timer.C:
		}
	}
}

// wait sleeps for d, keeping the newest peer set that arrives meanwhile.
func (r *runner) wait(ctx context.Context, d time.Duration, peers <-chan iter.Seq[lease.Lease], take func(iter.Seq[lease.Lease])) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case s := <-peers:
			take(s)
		case <-t.C:
			return true
		}
	}
}

// sync runs the commands that bring applied to want, removals first, each
// kind in key order; peers in backoff wait for their time unless their
// lease changed.
func (r *runner) sync(ctx context.Context, want map[lease.ID]lease.Lease) {
	for _, id := range sortedIDs(r.applied) {
		if ctx.Err() != nil {
			return
		}
		if _, ok := want[id]; !ok && r.due(id, lease.Lease{}) {
			r.remove(ctx, id)
		}
	}
	for _, id := range sortedIDs(want) {
		if ctx.Err() != nil {
			return
		}
		l := want[id]
		old, had := r.applied[id]
		if had && same(old, l) {
			continue
		}
		if !r.due(id, l) {
			continue
		}
		if had && !r.remove(ctx, id) {
			continue // the old one must go first; retried with backoff
		}
		r.add(ctx, id, l)
	}
	// Backoffs of peers that are gone and not applied are moot.
	for id := range r.retry {
		if _, ok := want[id]; !ok {
			if _, ok := r.applied[id]; !ok {
				delete(r.retry, id)
			}
		}
	}
}

// due reports whether id's command may run now: no failure pending, its
// backoff has passed, or (l valid) its lease changed since the failure.
func (r *runner) due(id lease.ID, l lease.Lease) bool {
	b, ok := r.retry[id]
	if !ok {
		return true
	}
	if l.ID() == id && !same(b.lease, l) {
		return true
	}
	return !r.now().Before(b.next)
}

func (r *runner) add(ctx context.Context, id lease.ID, l lease.Lease) {
	c := command{name: "SubnetAddCommand", line: r.b.opts.SubnetAddCommand}
	if !c.set() {
		r.applied[id] = l
		return
	}
	stdin, _ := peerStdin(l) // Peer checked it
	if _, err := r.b.run(ctx, c, peerEnv(l), stdin); err != nil {
		r.failed(id, l)
		return
	}
	delete(r.retry, id)
	r.applied[id] = l
}

// remove runs the remove command for the applied lease of id and reports
// whether it is gone.
func (r *runner) remove(ctx context.Context, id lease.ID) bool {
	l := r.applied[id]
	c := command{name: "SubnetRemoveCommand", line: r.b.opts.SubnetRemoveCommand}
	if c.set() {
		stdin, _ := peerStdin(l)
		if _, err := r.b.run(ctx, c, peerEnv(l), stdin); err != nil {
			r.failed(id, l)
			return false
		}
	}
	delete(r.retry, id)
	delete(r.applied, id)
	return true
}

func (r *runner) failed(id lease.ID, l lease.Lease) {
	b := r.retry[id]
	if !same(b.lease, l) || b.delay == 0 {
		b.delay = r.b.retryMin
	} else {
		b.delay = min(2*b.delay, r.b.retryMax)
	}
	b.lease, b.next = l, r.now().Add(b.delay)
	r.retry[id] = b
}

func (r *runner) nextRetry() (time.Time, bool) {
	var next time.Time
	for _, b := range r.retry {
		if next.IsZero() || b.next.Before(next) {
			next = b.next
		}
	}
	return next, !next.IsZero()
}

// postEnv is PostStartupCommand's environment: the network and our lease.
func (r *runner) postEnv() []string {
	return []string{
		"NETWORK=" + str(r.b.net.Network),
		"SUBNET=" + str(r.self.Subnet),
		"IPV6SUBNET=" + str(r.self.IPv6Subnet),
		"PUBLIC_IP=" + str(r.self.Attrs.PublicIP),
		"PUBLIC_IPV6=" + str(r.self.Attrs.PublicIPv6),
	}
}

// peerEnv is a peer command's environment: SUBNET and PUBLIC_IP as
// upstream sets them, and the IPv6 pair its documentation promises.
func peerEnv(l lease.Lease) []string {
	return []string{
		"SUBNET=" + str(l.Subnet),
		"PUBLIC_IP=" + str(l.Attrs.PublicIP),
		"IPV6SUBNET=" + str(l.IPv6Subnet),
		"PUBLIC_IPV6=" + str(l.Attrs.PublicIPv6),
	}
}

// same reports whether two leases of a peer would give its commands the
// same input.
func same(a, b lease.Lease) bool {
	return a.ID() == b.ID() && a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 &&
		string(a.Attrs.BackendData) == string(b.Attrs.BackendData)
}

func sortedIDs(m map[lease.ID]lease.Lease) []lease.ID {
	return slices.SortedFunc(maps.Keys(m), func(a, b lease.ID) int { return cmp.Compare(a.String(), b.String()) })
}

// str renders an address or prefix, "" when unset.
func str[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}
