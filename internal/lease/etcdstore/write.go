package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/lease"
)

// Acquire implements lease.Store: list, plan with lease.PlanAcquire, write
// with a compare-and-swap against that listing, and on a conflict list
// again — the winner's key is then in the listing.
//
// Every request requires the member to have a leader: a member cut off
// from its cluster refuses at once (ErrNoLeader) instead of holding a
// linearizable read or a write for etcd's request timeout (7 s) and then
// failing. The client retries a refused read on the next member itself; a
// refused grant or write is planned again here from a fresh listing, which
// is always safe (a write that did land is found there as our own lease).
func (s *Store) Acquire(ctx context.Context, req lease.Request) (lease.Lease, error) {
	ctx = clientv3.WithRequireLeader(ctx)
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

	leaderless := 0 // refusals by members without a leader, in a row
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
				if s.replanLeaderless(ctx, err, &leaderless, &attempt) {
					continue
				}
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
			if s.replanLeaderless(ctx, err, &leaderless, &attempt) {
				continue
			}
			return lease.Lease{}, fmt.Errorf("acquire lease %s: write: %w", l.Key(), s.conn.explain(err))
		}
		leaderless = 0
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

// maxLeaderless bounds the refusals by leaderless members Acquire takes in
// a row before it gives up: with one member of three cut off, the client's
// next request goes to another member, so a few settle it; every member
// refusing (quorum lost) is reported to the caller, which retries later.
const maxLeaderless = 10

// replanLeaderless reports whether err is a member without a leader
// refusing a grant or write, to be planned again after a short pause; the
// refusal does not count as a lost compare-and-swap (*attempt).
func (s *Store) replanLeaderless(ctx context.Context, err error, leaderless, attempt *int) bool {
	if !errors.Is(err, rpctypes.ErrNoLeader) || *leaderless >= maxLeaderless {
		return false
	}
	*leaderless++
	*attempt--
	s.log.Debug("etcd member without a leader refused the lease write, planning again", "err", err, "in_a_row", *leaderless)
	return ctxsleep.For(ctx, 20*time.Millisecond) == nil
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

// Reclaim implements lease.Reclaimer: read the key, then write it back
// conditioned on what was read — still absent, or still ours at the
// revision read — and read again when another write came between.
func (s *Store) Reclaim(ctx context.Context, l lease.Lease, ttl time.Duration) (lease.Lease, error) {
	key := s.subnetsDir + l.Key()
	if ttl <= 0 {
		ttl = lease.DefaultTTL
	}
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("reclaim lease %s: encode attributes: %w", key, err)
	}
	var g grant
	defer func() {
		if g.id != 0 && !g.used {
			s.revoke(g.id, "unused")
		}
	}()
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		cur, err := s.cli.Get(ctx, key)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("reclaim lease %s: read: %w", key, s.conn.explain(err))
		}
		cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		reservation := false
		if len(cur.Kvs) > 0 {
			kv := cur.Kvs[0]
			held, derr := lease.Decode(key, kv.Value)
			if derr != nil || !lease.SameHost(held.Attrs, l.Attrs) {
				return lease.Lease{}, lease.TakenError(key, held.Attrs, derr)
			}
			cond = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
			if reservation = kv.Lease == 0; reservation && bytes.Equal(kv.Value, value) {
				l.Reservation, l.Expiration, l.Revision = true, time.Time{}, kv.ModRevision
				return l, nil
			}
		}
		put := clientv3.OpPut(key, string(value))
		if !reservation {
			// An operator's reservation for us stays one (no TTL);
			// otherwise the key goes onto a fresh etcd lease.
			if err := s.grant(ctx, &g, ttl); err != nil {
				return lease.Lease{}, fmt.Errorf("reclaim lease %s: %w", key, err)
			}
			put = clientv3.OpPut(key, string(value), clientv3.WithLease(g.id))
		}
		resp, err := s.cli.Txn(ctx).If(cond).Then(clientv3.OpGet(key), put).Commit()
		if err != nil {
			return lease.Lease{}, fmt.Errorf("reclaim lease %s: write: %w", key, s.conn.explain(err))
		}
		if !resp.Succeeded {
			s.log.Debug("lease reclaim lost a race, reading again", "key", key, "attempt", attempt)
			continue
		}
		l.Revision, l.Reservation = resp.Header.Revision, reservation
		l.Expiration = time.Time{}
		if !reservation {
			g.used = true
			l.Expiration = g.expiration
			s.revokeReplaced(resp, g.id, key)
		}
		return l, nil
	}
	return lease.Lease{}, fmt.Errorf("reclaim lease %s: lost %d compare-and-swap races in a row", key, maxAttempts)
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
