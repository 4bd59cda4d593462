package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/lease"
)

// listing is one read of the whole subnets directory, decoded: Acquire
// plans from it, and the first snapshot of a Watch started after reuses
// its decoded values (see snapshot).
type listing struct {
	rev    int64
	events []lease.Event // a put event per key
	values [][]byte      // the stored value of each
}

func (s *Store) list(ctx context.Context) (*listing, error) {
	resp, err := s.cli.Get(ctx, s.subnetsDir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.subnetsDir, s.conn.explain(err))
	}
	ls := &listing{rev: resp.Header.Revision, events: make([]lease.Event, 0, len(resp.Kvs)), values: make([][]byte, 0, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		ls.events = append(ls.events, s.putEvent(kv))
		v := kv.Value
		if len(v) > lease.MaxValueSize {
			v = nil // not a lease (putEvent refused it): nothing to compare with
		}
		ls.values = append(ls.values, v)
	}
	return ls, nil
}

// listLeases reads every subnet key. Leases whose value does not decode
// are kept (their subnets are taken). Keys that are not a lease's own
// (parseKey) keep the subnets their last element names, if any, taken
// too, but without attributes: they can block subnets but never be
// mistaken for this host's own lease (whose key Acquire must be able to
// name exactly). raw maps canonical keys to their stored values.
func (s *Store) listLeases(ctx context.Context) ([]lease.Lease, map[string][]byte, *listing, error) {
	ls, err := s.list(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	out := make([]lease.Lease, 0, len(ls.events))
	raw := make(map[string][]byte, len(ls.events))
	for i, ev := range ls.events {
		l := ev.Lease
		if errors.Is(ev.Err, lease.ErrBadKey) {
			v4, v6, err := lease.ParseKey(ev.Key)
			if err != nil {
				continue
			}
			l = lease.Lease{Subnet: v4, IPv6Subnet: v6, Revision: l.Revision, Reservation: l.Reservation}
		} else {
			raw[strings.TrimPrefix(ev.Key, s.subnetsDir)] = ls.values[i]
		}
		out = append(out, l)
	}
	return out, raw, ls, nil
}

// Watch implements lease.Store.
func (s *Store) Watch(ctx context.Context, out chan<- lease.Batch) error {
	var (
		rev      int64 // revision delivered to out
		needList = true
		first    = true
		// Reached only when etcd answered with an error (no leader, a
		// compaction, a list that failed): an outage itself keeps the
		// watch open. 2 s at most, so a cluster that regains its leader
		// is followed again within about that.
		bo = backoff{min: 200 * time.Millisecond, max: 2 * time.Second}
	)
	s.watching.Store(true)
	for {
		if needList {
			b, err := s.snapshot(ctx, first)
			first = false
			if err == nil {
				if err := send(ctx, out, b); err != nil {
					return err
				}
				rev, needList = b.Revision, false
				bo.reset()
				s.answered()
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if s.cli.Ctx().Err() != nil {
				return fmt.Errorf("watch leases: %w", net.ErrClosed)
			}
			if fatal(err) {
				return fmt.Errorf("watch leases: %w", err)
			}
			s.markDown("list_failed", err)
			s.log.Warn("cannot list leases, retrying", "prefix", s.subnetsDir, "err", err)
		} else {
			progressed, err := s.follow(ctx, &rev, out)
			if progressed {
				bo.reset()
			}
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, rpctypes.ErrCompacted):
				// The history since rev is gone: only a fresh list can say
				// what changed. The consumer diffs the Snapshot.
				s.log.Info("lease history compacted, listing again", "revision", rev)
				s.restarted("compacted")
				needList = true
				continue
			case errors.Is(err, rpctypes.ErrFutureRev):
				// etcd is behind what we saw: restored from a backup. Waiting
				// for it to catch up could take forever; list what it has.
				s.log.Warn("etcd revision went backwards (restored from a backup?), listing again", "revision", rev)
				s.restarted("revision_backwards")
				needList = true
				continue
			case s.cli.Ctx().Err() != nil:
				return fmt.Errorf("watch leases: %w", net.ErrClosed)
			case fatal(err):
				return fmt.Errorf("watch leases from revision %d: %w", rev+1, err)
			}
			s.markDown("interrupted", err)
			s.log.Warn("lease watch interrupted, resuming", "revision", rev+1, "err", err)
		}
		if err := bo.wait(ctx); err != nil {
			return err
		}
	}
}

// snapshot lists all leases as one Snapshot batch. The first one of a
// Watch reuses what it can of the listing of the Acquire before it: a
// value whose key and revision are unchanged is not decoded again, which
// at thousands of leases is most of a cold start's CPU time in the store.
func (s *Store) snapshot(ctx context.Context, first bool) (lease.Batch, error) {
	prev := s.primed.Swap(nil)
	resp, err := s.cli.Get(clientv3.WithRequireLeader(ctx), s.subnetsDir, clientv3.WithPrefix())
	if err != nil {
		return lease.Batch{}, fmt.Errorf("list %s: %w", s.subnetsDir, s.conn.explain(err))
	}
	var known map[string]int
	if first && prev != nil {
		known = make(map[string]int, len(prev.events))
		for i, ev := range prev.events {
			known[ev.Key] = i
		}
	}
	b := lease.Batch{Snapshot: true, Revision: resp.Header.Revision, Events: make([]lease.Event, 0, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		if i, ok := known[string(kv.Key)]; ok && prev.events[i].Lease.Revision == kv.ModRevision {
			b.Events = append(b.Events, prev.events[i])
			continue
		}
		b.Events = append(b.Events, s.putEvent(kv))
	}
	return b, nil
}

// prime keeps an Acquire's listing for the first snapshot of a Watch yet
// to start; once one runs, listings are not kept (they would only hold
// memory). The snapshot reuses decoded events only: the raw values, which
// junk in the store can make tens of MiB, are let go now.
func (s *Store) prime(ls *listing) {
	if !s.watching.Load() {
		s.primed.Store(&listing{rev: ls.rev, events: ls.events})
	}
}

// follow watches from *rev+1 until the watch ends, sending a batch per
// watch response and advancing *rev. It always returns an error: why the
// watch ended. progressed reports whether etcd answered at all, which
// resets the caller's backoff.
func (s *Store) follow(ctx context.Context, rev *int64, out chan<- lease.Batch) (progressed bool, err error) {
	// WithRequireLeader makes a member cut off from its cluster end the
	// watch instead of silently serving nothing; we then resume, and the
	// client picks another endpoint.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.subnetsDir,
		clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(*rev+1),
		// The created notification tells us the watch is really up.
		clientv3.WithCreatedNotify(),
		// Progress notifications advance rev in a quiet cluster, so a resume
		// after a disconnect seldom starts from compacted history.
		clientv3.WithProgressNotify())
	// The client retries a lost connection forever without ending the
	// watch, and resumes the watch from its last revision once connected
	// again: the watch stays open through an outage, and a lease written the
	// moment etcd answers again arrives without any step of ours (tearing
	// the watch down and opening another would only add a round trip, or a
	// wait for our backoff). That a dead etcd looks like a quiet one is for
	// health to see: the connection monitor (health.go) notices a dropped
	// connection at once; for what it cannot see (a member that lost its
	// leader, a connection that hangs without failing), a watch quiet for a
	// probe interval is probed with something cheap — a serializable count
	// of the config key, answered by the member itself; the require-leader
	// metadata makes a member without a leader refuse — and a failed probe
	// marks the store unreachable until a probe or a watch response
	// succeeds. The probe runs aside, so the watch is drained meanwhile.
	// (RequestProgress cannot serve here: etcd answers it only for watchers
	// whose start revision it has reached, and ours starts one past the
	// current one.)
	probe := time.NewTicker(s.probeEvery)
	defer probe.Stop()
	probed := make(chan error, 1)
	probing := false
	lastSeen := time.Now()
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-wch:
		case <-probe.C:
			if probing || time.Since(lastSeen) < s.probeEvery {
				continue
			}
			probing = true
			go func() {
				pctx, pcancel := context.WithTimeout(wctx, s.probeEvery)
				defer pcancel()
				_, err := s.cli.Get(pctx, s.configKey, clientv3.WithSerializable(), clientv3.WithCountOnly())
				probed <- err
			}()
			continue
		case err := <-probed:
			probing = false
			if ctx.Err() != nil {
				return progressed, ctx.Err()
			}
			if err != nil {
				s.markDown("", fmt.Errorf("probe of a quiet watch: %w", s.conn.explain(err)))
				continue // probed again at the next tick
			}
			lastSeen = time.Now()
			s.answered()
			continue
		}
		if !ok {
			break
		}
		if wr.CompactRevision != 0 {
			return progressed, fmt.Errorf("compacted at revision %d: %w", wr.CompactRevision, rpctypes.ErrCompacted)
		}
		if err := wr.Err(); err != nil {
			return progressed, err
		}
		lastSeen = time.Now()
		s.answered()
		progressed = true
		if len(wr.Events) == 0 {
			if wr.IsProgressNotify() {
				*rev = max(*rev, wr.Header.Revision)
			}
			continue
		}
		b := lease.Batch{Events: make([]lease.Event, 0, len(wr.Events))}
		for _, ev := range wr.Events {
			if e, ok := s.toEvent(ev); ok {
				b.Events = append(b.Events, e)
			}
		}
		// Resume after the last event we were given; the header revision
		// could be past events that a later response still carries.
		b.Revision = wr.Events[len(wr.Events)-1].Kv.ModRevision
		if len(b.Events) > 0 {
			if err := send(ctx, out, b); err != nil {
				return progressed, err
			}
		}
		*rev = b.Revision
	}
	if err := ctx.Err(); err != nil {
		return progressed, err
	}
	return progressed, errors.New("watch channel closed")
}

func send(ctx context.Context, out chan<- lease.Batch, b lease.Batch) error {
	select {
	case out <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff is a jittered exponential delay between retries.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) reset() { b.cur = 0 }

func (b *backoff) wait(ctx context.Context) error {
	b.cur = min(max(2*b.cur, b.min), b.max)
	// ±25% jitter keeps hosts that lost etcd together from returning in
	// lockstep.
	return ctxsleep.For(ctx, b.cur-b.cur/4+rand.N(b.cur/2+1))
}
