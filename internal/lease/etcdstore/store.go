// Package etcdstore is the lease.Store on etcd's v3 API, in upstream
// flannel's layout so that flanneld and weft hosts can share one etcd
// during a migration:
//
//	<prefix>/config                    the network config document
//	<prefix>/subnets/10.5.52.0-24      a lease: json.Marshal(lease.Attrs)
//	<prefix>/subnets/10.5.52.0-24&fc00::-64   (dual-stack)
//	<prefix>/subnets/0.0.0.0-0&fc00::-64      (IPv6-only)
//
// A lease's TTL is an etcd lease attached to its key; a key without one is
// an operator's reservation, which never expires and is never handed to
// another host.
//
// Design notes:
//
//   - Every write is a compare-and-swap in a Txn: creation requires the key
//     to be absent (CreateRevision == 0), a refresh or renewal requires the
//     key to be unchanged since we read or wrote it (ModRevision). Upstream
//     renews and reuses with plain Puts, which lets two hosts end up on one
//     subnet; here the loser of a race finds out and re-plans.
//   - Every renewal grants a new etcd lease and moves the key onto it in the
//     same Txn, then revokes the old one. KeepAlive would avoid the grant,
//     but it cannot be made conditional on the key still being ours.
//   - Watch lists once and watches from the list's revision + 1, so nothing
//     falls between the two. A peer's TTL is never fetched (that is a round
//     trip per key; upstream pays it at every start): the etcd lease ID in
//     each key-value says whether it is a reservation, which is all the
//     daemon needs.
//   - Watch responses map one-to-one onto lease.Batch, so a burst of writes
//     that etcd delivers together is reconciled once.
package etcdstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weft-net/weft/internal/lease"
)

// Config says how to reach etcd and where the keys live.
type Config struct {
	Endpoints []string
	// Prefix is the key prefix, upstream's --etcd-prefix
	// ("/coreos.com/network"); a trailing "/" is ignored.
	Prefix string
	// TLS: a client certificate and key, and the CA that signed the
	// server's certificate. Any of them enables TLS.
	KeyFile, CertFile, CAFile string
	Username, Password        string
	// DialTimeout bounds fetching an auth token (when Username is set) and
	// the first keepalive; 0 means DefaultDialTimeout. Connections are
	// made lazily and retried for as long as each call's context allows.
	DialTimeout time.Duration
	// OnWatchRestart, if set, is called each time the lease watch has to be
	// re-established; reason is "list_failed", "interrupted", "compacted"
	// or "revision_backwards". For metrics.
	OnWatchRestart func(reason string)
	// ProbeInterval is how often a quiet watch is probed for liveness;
	// 0 means DefaultProbeInterval.
	ProbeInterval time.Duration
}

// DefaultProbeInterval is Config.ProbeInterval's default. A probe is one
// serializable read answered by the member itself, sent only by a watch
// that has been quiet that long; at 5,000 hosts, 15 s keeps the cluster's
// probe load near 330 cheap reads per second while a dead etcd is still
// noticed within about 30 s, far inside /healthz's 5-minute deadline.
const DefaultProbeInterval = 15 * time.Second

// DefaultDialTimeout is used when Config.DialTimeout is 0.
const DefaultDialTimeout = 5 * time.Second

// maxAttempts bounds Acquire's plan-and-write loop. Each lost
// compare-and-swap means another host wrote meanwhile, so the next listing
// knows more; ten rounds settle even hundreds of hosts starting at once.
const maxAttempts = 10

// Store is a lease.Store on etcd. It is safe for concurrent use.
type Store struct {
	probeEvery time.Duration
	onRestart  func(string)
	downSince  atomic.Int64 // unix nanoseconds the watch has been down since; 0 when up
	log        *slog.Logger
	cli        *clientv3.Client
	conn       *connTrouble
	configKey  string
	subnetsDir string // "<prefix>/subnets/"
	// primed is the listing of the last Acquire before any Watch started
	// (see snapshot); watching is set once one has.
	primed   atomic.Pointer[listing]
	watching atomic.Bool
}

var _ lease.Store = (*Store)(nil)

// New connects to etcd. The connection is made lazily, so New succeeds
// while etcd is down and calls block (within their contexts) until it is
// up; ctx bounds only New itself (authentication, when a user is set).
func New(ctx context.Context, log *slog.Logger, cfg Config) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if prefix == "" {
		return nil, fmt.Errorf("etcd store: prefix %q is empty", cfg.Prefix)
	}
	dialTimeout := cfg.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = DefaultDialTimeout
	}
	var tlsCfg *tls.Config
	if cfg.KeyFile != "" || cfg.CertFile != "" || cfg.CAFile != "" {
		if (cfg.KeyFile == "") != (cfg.CertFile == "") {
			return nil, fmt.Errorf("etcd store: TLS needs both a certificate and a key file (got cert %q, key %q)", cfg.CertFile, cfg.KeyFile)
		}
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd store: TLS config from cert %q, key %q, CA %q: %w", cfg.CertFile, cfg.KeyFile, cfg.CAFile, err)
		}
		tlsCfg = c
	}
	conn := new(connTrouble)
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: dialTimeout,
		// Keepalive pings notice a silently dead connection (a host or
		// network that vanished without a TCP reset) while a watch is open;
		// otherwise the watch would wait on it for the kernel's TCP timeout.
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               newZapLogger(log.With("component", "etcd-client")),
		DialOptions:          []grpc.DialOption{grpc.WithChainUnaryInterceptor(conn.intercept)},
	}

	// clientv3.New blocks for authentication without taking a context; run
	// it aside so ctx can still cancel New, and close the client it
	// eventually makes if nobody is waiting for it any more.
	type result struct {
		cli *clientv3.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		cli, err := clientv3.New(ccfg)
		done <- result{cli, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() {
			if r := <-done; r.cli != nil {
				r.cli.Close()
			}
		}()
		return nil, fmt.Errorf("etcd store: connect to %s: %w", strings.Join(cfg.Endpoints, ","), ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("etcd store: connect to %s: %w", strings.Join(cfg.Endpoints, ","), conn.explain(r.err))
	}
	probe := cfg.ProbeInterval
	if probe <= 0 {
		probe = DefaultProbeInterval
	}
	return &Store{
		probeEvery: probe,
		onRestart:  cfg.OnWatchRestart,
		log:        log,
		cli:        r.cli,
		conn:       conn,
		configKey:  prefix + "/config",
		subnetsDir: prefix + "/subnets/",
	}, nil
}

// Close closes the connection to etcd; calls in progress fail.
func (s *Store) Close() error {
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd store: close: %w", err)
	}
	return nil
}

// NetworkConfig implements lease.Store.
func (s *Store) NetworkConfig(ctx context.Context) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.configKey)
	if err != nil {
		return nil, fmt.Errorf("read network config %s: %w", s.configKey, s.conn.explain(err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("read network config %s: %w", s.configKey, lease.ErrNoNetworkConfig)
	}
	return resp.Kvs[0].Value, nil
}

// Acquire implements lease.Store: list, plan with lease.PlanAcquire, write
// with a compare-and-swap against that listing, and on a conflict list
// again — the winner's key is then in the listing.
func (s *Store) Acquire(ctx context.Context, req lease.Request) (lease.Lease, error) {
	ttl := req.TTL
	if ttl <= 0 {
		ttl = lease.DefaultTTL
	}
	// One etcd lease serves every attempt; it is revoked if no attempt
	// used it, so failed acquisitions leave nothing behind.
	var g grant
	defer func() {
		if g.id != 0 && !g.used {
			s.revoke(g.id, "unused")
		}
	}()

	for attempt := 1; attempt <= maxAttempts; attempt++ {
		current, raw, ls, err := s.listLeases(ctx)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire lease: %w", err)
		}
		plan, err := lease.PlanAcquire(req, current, nil)
		if err != nil {
			return lease.Lease{}, err
		}
		if attempt == 1 {
			for _, why := range plan.Skipped {
				s.log.Info("not using preferred subnet", "reason", why)
			}
		}
		l := lease.Lease{Subnet: plan.New.V4, IPv6Subnet: plan.New.V6, Attrs: plan.Attrs}
		key := s.subnetsDir + l.Key()
		value, err := json.Marshal(plan.Attrs)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire lease %s: encode attributes: %w", l.Key(), err)
		}

		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		oldKey := ""
		if plan.Reuse && plan.Own.Reservation {
			// A reservation keeps no TTL; rewrite it only to update our
			// attributes.
			l.Reservation, l.Revision = true, plan.Own.Revision
			if bytes.Equal(raw[plan.Own.Key()], value) {
				s.prime(ls)
				return l, nil
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", plan.Own.Revision))
			ops = append(ops, clientv3.OpPut(key, string(value)))
		} else {
			if err := s.grant(ctx, &g, ttl); err != nil {
				return lease.Lease{}, fmt.Errorf("acquire lease %s: %w", l.Key(), err)
			}
			l.Expiration = g.expiration
			put := clientv3.OpPut(key, string(value), clientv3.WithLease(g.id))
			switch {
			case plan.Reuse:
				// Refresh in place: conditional on nobody having written the
				// key since our listing.
				oldKey = key
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", plan.Own.Revision))
				ops = append(ops, clientv3.OpGet(key), put)
			case plan.HasOwn:
				// Replace our lease that no longer fits the network: delete it
				// and create the new key in one step, so no watcher ever sees
				// this host with two subnets or none.
				oldKey = s.subnetsDir + plan.Own.Key()
				cmps = append(cmps,
					clientv3.Compare(clientv3.ModRevision(oldKey), "=", plan.Own.Revision),
					clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
				ops = append(ops, clientv3.OpGet(oldKey), clientv3.OpDelete(oldKey), put)
			default:
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
				ops = append(ops, put)
			}
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire lease %s: write: %w", l.Key(), s.conn.explain(err))
		}
		if !resp.Succeeded {
			s.log.Debug("lease write lost a race, planning again", "key", key, "attempt", attempt)
			continue
		}
		if !l.Reservation {
			g.used = true
		}
		l.Revision = resp.Header.Revision
		if oldKey != "" {
			s.revokeReplaced(resp, g.id, oldKey)
		}
		s.prime(ls)
		return l, nil
	}
	return lease.Lease{}, fmt.Errorf("acquire lease: lost %d compare-and-swap races in a row to other hosts", maxAttempts)
}

// Renew implements lease.Store. The new TTL is a new etcd lease that the
// key moves onto only if the key is still at l.Revision: if anyone else
// wrote or deleted it, the subnet is no longer ours to use.
func (s *Store) Renew(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	key := s.subnetsDir + l.Key()
	unchanged := clientv3.Compare(clientv3.ModRevision(key), "=", l.Revision)
	if l.Reservation {
		// Nothing to extend; only confirm the reservation is still there.
		resp, err := s.cli.Txn(ctx).If(unchanged).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, s.conn.explain(err))
		}
		if !resp.Succeeded {
			return lease.Lease{}, lostError(key, l.Revision, resp)
		}
		return l, nil
	}

	if ttl <= 0 {
		ttl = lease.DefaultTTL
	}
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: encode attributes: %w", key, err)
	}
	var g grant
	if err := s.grant(ctx, &g, ttl); err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, err)
	}
	resp, err := s.cli.Txn(ctx).If(unchanged).
		Then(clientv3.OpGet(key), clientv3.OpPut(key, string(value), clientv3.WithLease(g.id))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil || !resp.Succeeded {
		s.revoke(g.id, "unused")
		if err != nil {
			return lease.Lease{}, fmt.Errorf("renew lease %s: %w", key, s.conn.explain(err))
		}
		return lease.Lease{}, lostError(key, l.Revision, resp)
	}
	s.revokeReplaced(resp, g.id, key)
	l.Revision, l.Expiration, l.Reservation = resp.Header.Revision, g.expiration, false
	return l, nil
}

// lostError explains a failed renewal from the Else branch's Get.
func lostError(key string, rev int64, resp *clientv3.TxnResponse) error {
	if len(resp.Responses) > 0 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			return fmt.Errorf("renew lease %s: %w: rewritten at revision %d by another writer, ours was %d",
				key, lease.ErrLeaseLost, r.Kvs[0].ModRevision, rev)
		}
	}
	return fmt.Errorf("renew lease %s: %w: the key is gone (expired or deleted)", key, lease.ErrLeaseLost)
}

// grant is an etcd lease made for one Acquire or Renew.
type grant struct {
	id         clientv3.LeaseID
	expiration time.Time
	used       bool
}

// grant makes g's etcd lease unless it already has one.
func (s *Store) grant(ctx context.Context, g *grant, ttl time.Duration) error {
	if g.id != 0 {
		return nil
	}
	// etcd counts whole seconds; round up so the lease never lives less
	// than asked. The expiry we report is measured from before the request
	// and uses the shorter of the asked and granted TTLs, so it is never
	// later than etcd's.
	secs := int64((ttl + time.Second - 1) / time.Second)
	start := time.Now()
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return fmt.Errorf("grant a %d s etcd lease: %w", secs, s.conn.explain(err))
	}
	granted := time.Duration(resp.TTL) * time.Second
	g.id, g.expiration = resp.ID, start.Add(min(ttl, granted))
	return nil
}

// revokeReplaced revokes the etcd lease that key was attached to before a
// successful Txn moved it onto newID; the Txn's first op read the old
// key-value. Best effort: an unrevoked lease merely lingers until its TTL.
func (s *Store) revokeReplaced(resp *clientv3.TxnResponse, newID clientv3.LeaseID, key string) {
	if len(resp.Responses) == 0 {
		return
	}
	r := resp.Responses[0].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return
	}
	old := clientv3.LeaseID(r.Kvs[0].Lease)
	if old == 0 || old == newID {
		return
	}
	// Our leases carry one key each, but a key written by another tool may
	// share its etcd lease with keys that revoking would delete: check.
	ctx, cancel := context.WithTimeout(s.cli.Ctx(), 5*time.Second)
	defer cancel()
	ttl, err := s.cli.TimeToLive(ctx, old, clientv3.WithAttachedKeys())
	if err != nil {
		s.log.Debug("cannot inspect replaced etcd lease; leaving it to expire", "key", key, "etcd_lease", int64(old), "err", err)
		return
	}
	if len(ttl.Keys) > 0 {
		s.log.Debug("replaced etcd lease still holds keys; leaving it", "key", key, "etcd_lease", int64(old), "keys", len(ttl.Keys))
		return
	}
	s.revoke(old, "replaced")
}

func (s *Store) revoke(id clientv3.LeaseID, why string) {
	ctx, cancel := context.WithTimeout(s.cli.Ctx(), 5*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.log.Debug("cannot revoke etcd lease; it will expire", "etcd_lease", int64(id), "why", why, "err", err)
	}
}

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
		bo       = backoff{min: 200 * time.Millisecond, max: 10 * time.Second}
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
				s.watchUp()
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
			s.watchDown("list_failed")
			s.log.Warn("cannot list leases, retrying", "prefix", s.subnetsDir, "err", err)
		} else {
			progressed, err := s.follow(ctx, &rev, out)
			if progressed {
				bo.reset()
				s.watchUp()
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
			s.watchDown("interrupted")
			s.log.Warn("lease watch interrupted, resuming", "revision", rev+1, "err", err)
		}
		if err := bo.wait(ctx); err != nil {
			return err
		}
	}
}

func (s *Store) restarted(reason string) {
	if s.onRestart != nil {
		s.onRestart(reason)
	}
}

// watchDown records that the watch broke (and counts the restart).
func (s *Store) watchDown(reason string) {
	s.downSince.CompareAndSwap(0, time.Now().UnixNano())
	s.restarted(reason)
}

func (s *Store) watchUp() { s.downSince.Store(0) }

// WatchDownSince returns when the lease watch broke, or the zero time
// while it is healthy. Health checks use it.
func (s *Store) WatchDownSince() time.Time {
	if n := s.downSince.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
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
	// watch, so a dead etcd looks like a quiet one. When a probe interval
	// passes without any watch response we ask the member for something
	// cheap (a serializable count of the config key, answered locally; the
	// require-leader metadata makes a member without a leader refuse). If
	// that fails too, the watch is declared stalled and restarted, which is
	// what health checks and the restart counter see. (RequestProgress
	// cannot serve here: etcd answers it only for watchers whose start
	// revision it has reached, and ours starts one past the current one.)
	probe := time.NewTicker(s.probeEvery)
	defer probe.Stop()
	lastSeen := time.Now()
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-wch:
		case <-probe.C:
			if time.Since(lastSeen) < s.probeEvery {
				continue
			}
			pctx, pcancel := context.WithTimeout(wctx, s.probeEvery)
			_, err := s.cli.Get(pctx, s.configKey, clientv3.WithSerializable(), clientv3.WithCountOnly())
			pcancel()
			if err != nil {
				if ctx.Err() != nil {
					return progressed, ctx.Err()
				}
				return progressed, fmt.Errorf("watch stalled: etcd unreachable: %w", err)
			}
			lastSeen = time.Now()
			continue
		}
		if !ok {
			break
		}
		lastSeen = time.Now()
		s.watchUp() // the watch answers: it is up (again)
		if wr.CompactRevision != 0 {
			return progressed, fmt.Errorf("compacted at revision %d: %w", wr.CompactRevision, rpctypes.ErrCompacted)
		}
		if err := wr.Err(); err != nil {
			return progressed, err
		}
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

// fatal reports errors that retrying cannot fix: bad credentials, missing
// permissions, a request etcd rejects. Everything else (no leader,
// unavailable, timeouts) is a passing state of the cluster.
func fatal(err error) bool {
	var ee rpctypes.EtcdError
	c := status.Code(err)
	if errors.As(err, &ee) {
		c = ee.Code()
	}
	switch c {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Unauthenticated:
		return !errors.Is(err, rpctypes.ErrInvalidAuthToken) // the client refreshes tokens itself
	}
	return false
}

// connTrouble remembers why the client last failed to reach etcd. The
// etcd client waits for a usable connection until a call's context ends
// (gRPC WaitForReady) and then reports only the context's error
// (clientv3.ContextError), so a rejected client certificate, an unknown CA
// or a refused port all read "context deadline exceeded". gRPC's own error
// at that moment names the cause; an interceptor beneath the client's
// retry layer sees it before it is replaced.
type connTrouble struct {
	last atomic.Pointer[string]
}

func (c *connTrouble) intercept(ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil {
		c.last.Store(nil)
		return nil
	}
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
		return err
	}
	// A deadline that passed on a healthy connection says nothing new.
	if msg := st.Message(); ctx.Err() == nil || msg != ctx.Err().Error() {
		c.last.Store(&msg)
	}
	return err
}

// explain adds the last connection failure to an error that is only a
// deadline.
func (c *connTrouble) explain(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if msg := c.last.Load(); msg != nil {
		return fmt.Errorf("%w (cannot reach etcd: %s)", err, *msg)
	}
	return err
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
	d := b.cur - b.cur/4 + rand.N(b.cur/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
