package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Fake is an in-memory Store for tests, with the semantics of the etcd
// store: a revision counter bumped by every write (a multi-key write shares
// one revision), keys in upstream's format, TTLs, reservations (keys
// without a TTL), compare-and-swap renewals, and a watch that lists once
// and then follows a change log. Test helpers play the other hosts and the
// operator: Put, PutRaw, Delete, Expire, SetNetworkConfig, Compact,
// Disconnect.
//
// Time only moves through the clock given to NewFake: leases past their
// expiry are removed (and reported to watchers as Removed) at the start of
// every Store call and by ExpireDue, never by a background goroutine, so
// tests stay deterministic.
type Fake struct {
	now func() time.Time

	mu           sync.Mutex
	rev          int64
	config       []byte
	kvs          map[string]*fakeKV
	log          []fakeChange  // changes since the last Compact, oldest first
	epoch        int           // bumped by Compact: watchers re-list
	disconnected bool          // set by Disconnect
	changed      chan struct{} // closed and replaced on every change
}

var (
	_ Store     = (*Fake)(nil)
	_ Reclaimer = (*Fake)(nil)
)

type fakeKV struct {
	value       []byte
	modRev      int64
	expires     time.Time
	reservation bool
}

// fakeChange is one entry of the change log; kv is nil for a deletion.
type fakeChange struct {
	rev  int64
	key  string
	kv   *fakeKV
	prev *fakeKV
}

// errFakeDisconnected is what Store calls return between Disconnect and
// Reconnect, like an unreachable etcd.
var errFakeDisconnected = errors.New("fake store: disconnected")

// NewFake returns an empty Fake (no network config, no leases). now is its
// clock; nil means time.Now.
func NewFake(now func() time.Time) *Fake {
	if now == nil {
		now = time.Now
	}
	return &Fake{now: now, kvs: map[string]*fakeKV{}, changed: make(chan struct{})}
}

// NetworkConfig implements Store.
func (f *Fake) NetworkConfig(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usable(ctx); err != nil {
		return nil, fmt.Errorf("read network config: %w", err)
	}
	if f.config == nil {
		return nil, fmt.Errorf("read network config: %w", ErrNoNetworkConfig)
	}
	return bytes.Clone(f.config), nil
}

// Acquire implements Store. It plans with PlanAcquire, as the etcd store
// does; holding the lock makes the write trivially atomic.
func (f *Fake) Acquire(ctx context.Context, req Request) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usable(ctx); err != nil {
		return Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	f.expireDueLocked()
	current := make([]Lease, 0, len(f.kvs))
	for _, key := range slices.Sorted(maps.Keys(f.kvs)) {
		l, err := f.decodeLocked(key)
		if err != nil && !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
			continue // unparsable key: it cannot collide with a key we write
		}
		if key != l.Key() {
			// A non-canonical key (e.g. "FC00:0::-64") blocks its subnets
			// but is never taken for ours: we could not name it to rewrite.
			l.Attrs = Attrs{}
		}
		current = append(current, l)
	}
	plan, err := PlanAcquire(req, current, nil)
	if err != nil {
		return Lease{}, err
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	value, err := json.Marshal(plan.Attrs)
	if err != nil {
		return Lease{}, fmt.Errorf("acquire lease: encode attributes: %w", err)
	}
	now := f.now()
	l := Lease{Subnet: plan.New.V4, IPv6Subnet: plan.New.V6, Attrs: plan.Attrs}
	kv := &fakeKV{value: value}
	switch {
	case plan.Reuse && plan.Own.Reservation:
		l.Reservation, kv.reservation = true, true
	default:
		l.Expiration, kv.expires = now.Add(ttl), now.Add(ttl)
	}
	if plan.Reuse && plan.Own.Reservation && bytes.Equal(f.kvs[plan.Own.Key()].value, value) {
		// Nothing to refresh on an unchanged reservation: no write.
		l.Revision = f.kvs[plan.Own.Key()].modRev
		return l, nil
	}
	f.rev++
	if plan.HasOwn && !plan.Reuse {
		f.deleteLocked(plan.Own.Key())
	}
	f.putLocked(l.Key(), kv)
	l.Revision = f.rev
	f.notifyLocked()
	return l, nil
}

// Renew implements Store.
func (f *Fake) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := l.Key()
	if err := f.usable(ctx); err != nil {
		return Lease{}, fmt.Errorf("renew lease %s: %w", key, err)
	}
	f.expireDueLocked()
	kv, ok := f.kvs[key]
	if !ok {
		return Lease{}, fmt.Errorf("renew lease %s: %w: key is gone", key, ErrLeaseLost)
	}
	if kv.modRev != l.Revision {
		return Lease{}, fmt.Errorf("renew lease %s: %w: written at revision %d by another writer, we hold %d", key, ErrLeaseLost, kv.modRev, l.Revision)
	}
	if kv.reservation {
		// A reservation never expires: nothing to extend.
		l.Reservation, l.Expiration = true, time.Time{}
		return l, nil
	}
	return f.writeTTLLocked("renew", key, l, ttl)
}

// Reclaim implements Reclaimer.
func (f *Fake) Reclaim(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := l.Key()
	if err := f.usable(ctx); err != nil {
		return Lease{}, fmt.Errorf("reclaim lease %s: %w", key, err)
	}
	f.expireDueLocked()
	if kv, ok := f.kvs[key]; ok {
		held, err := f.decodeLocked(key)
		if err != nil || !SameHost(held.Attrs, l.Attrs) {
			return Lease{}, TakenError(key, held.Attrs, err)
		}
		if kv.reservation {
			// The operator reserved the subnet for us meanwhile: it stays a
			// reservation, with our attributes.
			value, err := json.Marshal(l.Attrs)
			if err != nil {
				return Lease{}, fmt.Errorf("reclaim lease %s: encode attributes: %w", key, err)
			}
			l.Reservation, l.Expiration, l.Revision = true, time.Time{}, kv.modRev
			if !bytes.Equal(kv.value, value) {
				f.rev++
				f.putLocked(key, &fakeKV{value: value, reservation: true})
				f.notifyLocked()
				l.Revision = f.rev
			}
			return l, nil
		}
	}
	return f.writeTTLLocked("reclaim", key, l, ttl)
}

// writeTTLLocked writes l under key with a TTL (0: DefaultTTL), as
// Renew and Reclaim do, and returns it with its new revision and expiry.
func (f *Fake) writeTTLLocked(op, key string, l Lease, ttl time.Duration) (Lease, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		return Lease{}, fmt.Errorf("%s lease %s: encode attributes: %w", op, key, err)
	}
	f.rev++
	exp := f.now().Add(ttl)
	f.putLocked(key, &fakeKV{value: value, expires: exp})
	f.notifyLocked()
	l.Revision, l.Expiration, l.Reservation = f.rev, exp, false
	return l, nil
}

// Watch implements Store. Between Disconnect and Reconnect it delivers
// nothing, as a watch whose connection dropped; it then resumes from the
// last revision it sent, or re-lists if Compact ran meanwhile.
func (f *Fake) Watch(ctx context.Context, out chan<- Batch) error {
	var (
		rev   int64
		epoch = -1 // forces the initial list
	)
	for {
		f.mu.Lock()
		if !f.disconnected {
			f.expireDueLocked()
		}
		var b Batch
		ready := false
		switch {
		case f.disconnected:
		case epoch != f.epoch:
			b, ready = f.snapshotLocked(), true
			rev, epoch = b.Revision, f.epoch
		case rev < f.rev:
			b = f.changesLocked(rev)
			rev, ready = b.Revision, len(b.Events) > 0
		}
		wake := f.changed
		f.mu.Unlock()

		if ready {
			select {
			case out <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// usable is the common precondition of Store calls.
func (f *Fake) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.disconnected {
		return errFakeDisconnected
	}
	return nil
}

func (f *Fake) snapshotLocked() Batch {
	b := Batch{Snapshot: true, Revision: f.rev}
	for _, key := range slices.Sorted(maps.Keys(f.kvs)) {
		kv := f.kvs[key]
		b.Events = append(b.Events, putEvent(key, kv))
	}
	return b
}

// changesLocked turns the log after rev into one batch, the way one etcd
// watch response carries a burst of writes. A put that changes neither the
// value nor the TTL-ness of a key (a renewal) is not an event: the daemon
// would have nothing to do.
func (f *Fake) changesLocked(rev int64) Batch {
	b := Batch{Revision: f.rev}
	for _, c := range f.log {
		if c.rev <= rev {
			continue
		}
		switch {
		case c.kv == nil:
			ev := Event{Type: Removed, Key: c.key, Lease: Lease{Revision: c.rev}}
			v4, v6, err := ParseKey(c.key)
			ev.Lease.Subnet, ev.Lease.IPv6Subnet, ev.Err = v4, v6, err
			b.Events = append(b.Events, ev)
		case c.prev != nil && bytes.Equal(c.prev.value, c.kv.value) && c.prev.reservation == c.kv.reservation:
		default:
			b.Events = append(b.Events, putEvent(c.key, c.kv))
		}
	}
	return b
}

func putEvent(key string, kv *fakeKV) Event {
	l, err := Decode(key, kv.value)
	l.Revision, l.Reservation = kv.modRev, kv.reservation
	return Event{Type: Added, Lease: l, Err: err, Key: key}
}

func (f *Fake) decodeLocked(key string) (Lease, error) {
	kv := f.kvs[key]
	l, err := Decode(key, kv.value)
	l.Revision, l.Reservation = kv.modRev, kv.reservation
	if !kv.reservation {
		l.Expiration = kv.expires
	}
	return l, err
}

// putLocked stores kv under key at the current revision (the caller has
// bumped it) and logs the change.
func (f *Fake) putLocked(key string, kv *fakeKV) {
	kv.modRev = f.rev
	f.log = append(f.log, fakeChange{rev: f.rev, key: key, kv: kv, prev: f.kvs[key]})
	f.kvs[key] = kv
}

func (f *Fake) deleteLocked(key string) {
	if _, ok := f.kvs[key]; !ok {
		return
	}
	f.log = append(f.log, fakeChange{rev: f.rev, key: key, prev: f.kvs[key]})
	delete(f.kvs, key)
}

func (f *Fake) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// expireDueLocked removes the leases whose TTL has run out, each at its own
// revision as etcd's lease revocation does.
func (f *Fake) expireDueLocked() {
	now := f.now()
	expired := false
	for _, key := range slices.Sorted(maps.Keys(f.kvs)) {
		kv := f.kvs[key]
		if kv.reservation || kv.expires.After(now) {
			continue
		}
		f.rev++
		f.deleteLocked(key)
		expired = true
	}
	if expired {
		f.notifyLocked()
	}
}

// ExpireDue removes the leases whose expiry is not after the clock's
// current time; call it after advancing the clock given to NewFake.
func (f *Fake) ExpireDue() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireDueLocked()
}

// Put writes a lease as another host would and returns it with its new
// revision. A reservation gets no TTL; otherwise the lease expires at
// l.Expiration, or DefaultTTL from now when that is zero. Attributes that
// cannot be encoded (invalid backend JSON) are stored as an undecodable
// value, as a corrupt peer's would be.
func (f *Fake) Put(l Lease) Lease {
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		// Attrs.MarshalJSON fails only on invalid backend JSON; a test
		// that wants a malformed value uses PutRaw.
		value = []byte(fmt.Sprintf("%q", err.Error()))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	kv := &fakeKV{value: value, reservation: l.Reservation}
	if !l.Reservation {
		kv.expires = l.Expiration
		if kv.expires.IsZero() {
			kv.expires = f.now().Add(DefaultTTL)
		}
		l.Expiration = kv.expires
	} else {
		l.Expiration = time.Time{}
	}
	f.rev++
	f.putLocked(l.Key(), kv)
	f.notifyLocked()
	l.Revision = f.rev
	return l
}

// PutRaw writes value under the subnet key key (the part after
// "<prefix>/subnets/") with DefaultTTL, as a buggy or foreign writer might:
// neither key nor value is checked. It returns the revision.
func (f *Fake) PutRaw(key string, value []byte) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.putLocked(key, &fakeKV{value: bytes.Clone(value), expires: f.now().Add(DefaultTTL)})
	f.notifyLocked()
	return f.rev
}

// Delete removes the key of id, as an operator's etcdctl del would. It
// reports whether the key existed.
func (f *Fake) Delete(id ID) bool {
	return f.DeleteKey(id.String())
}

// DeleteKey removes a subnet key by name (for keys PutRaw wrote).
func (f *Fake) DeleteKey(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.kvs[key]; !ok {
		return false
	}
	f.rev++
	f.deleteLocked(key)
	f.notifyLocked()
	return true
}

// Expire removes the lease id as if its TTL had run out, whatever the
// clock says. Reservations never expire: it reports false for them and for
// missing keys.
func (f *Fake) Expire(id ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	kv, ok := f.kvs[id.String()]
	if !ok || kv.reservation {
		return false
	}
	f.rev++
	f.deleteLocked(id.String())
	f.notifyLocked()
	return true
}

// SetNetworkConfig writes the network config document; nil deletes it.
func (f *Fake) SetNetworkConfig(doc []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.config = bytes.Clone(doc)
	f.rev++
	f.notifyLocked()
}

// Compact discards the change history, as etcd compaction does, and makes
// every running Watch re-list and send a new Snapshot batch. (etcd only
// cancels watchers that still needed the discarded history; forcing all of
// them lets a test exercise the consumer's Snapshot handling at will, and a
// consumer must accept a Snapshot at any point anyway.)
func (f *Fake) Compact() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = nil
	f.epoch++
	f.notifyLocked()
}

// Disconnect makes the store unreachable: Store calls fail and watchers
// stall until Reconnect, as when the connection to etcd drops.
func (f *Fake) Disconnect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnected = true
}

// Reconnect ends a Disconnect; watchers resume where they were.
func (f *Fake) Reconnect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnected = false
	f.notifyLocked()
}

// Leases returns every decodable lease in the store, sorted by key, with
// its revision, expiry and reservation flag.
func (f *Fake) Leases() []Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Lease
	for _, key := range slices.Sorted(maps.Keys(f.kvs)) {
		if l, err := f.decodeLocked(key); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// Revision returns the store's current revision.
func (f *Fake) Revision() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}
