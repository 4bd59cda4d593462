package etcdstore

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// toEvent converts one etcd event. A put that changes neither the value
// nor whether the key has a TTL is a renewal: nothing for the daemon to do
// (with thousands of hosts renewing, that is most of the traffic), so it is
// dropped; the PrevKV the watch asks for is what makes this possible.
func (s *Store) toEvent(ev *clientv3.Event) (lease.Event, bool) {
	kv := ev.Kv
	if ev.Type == mvccpb.DELETE {
		key := string(kv.Key)
		v4, v6, err := s.parseKey(key)
		return lease.Event{
			Type:  lease.Removed,
			Lease: lease.Lease{Subnet: v4, IPv6Subnet: v6, Revision: kv.ModRevision},
			Err:   err,
			Key:   key,
		}, true
	}
	if p := ev.PrevKv; p != nil && bytes.Equal(p.Value, kv.Value) && (p.Lease == 0) == (kv.Lease == 0) {
		return lease.Event{}, false
	}
	return s.putEvent(kv), true
}

// parseKey parses a full store key. Only a lease's own key — the subnets
// directory followed by the canonical name of its subnets — is a lease:
// lease.ParseKey reads the last path element and accepts IPv6 addresses in
// any spelling, so a key further down the directory
// (".../subnets/x/10.5.1.0-24") or a second spelling of one
// (".../subnets/10.5.1.0-24&fc00:0::-64") would otherwise stand for the
// same subnets as the real lease and replace or remove that peer, or be
// taken for this host's own lease. Such keys are malformed (ErrBadKey,
// no subnets).
func (s *Store) parseKey(key string) (v4, v6 netip.Prefix, err error) {
	v4, v6, err = lease.ParseKey(key)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	if name := strings.TrimPrefix(key, s.subnetsDir); name != lease.MakeKey(v4, v6) {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: not a lease's key (that would be %q)",
			lease.ErrBadKey, lease.Shorten(name), lease.MakeKey(v4, v6))
	}
	return v4, v6, nil
}

// putEvent decodes one stored lease (see parseKey for its key).
func (s *Store) putEvent(kv *mvccpb.KeyValue) lease.Event {
	key := string(kv.Key)
	var (
		l   lease.Lease
		err error
	)
	if _, _, err = s.parseKey(key); err == nil {
		l, err = lease.Decode(key, kv.Value)
	}
	l.Revision, l.Reservation = kv.ModRevision, kv.Lease == 0
	return lease.Event{Type: lease.Added, Lease: l, Err: err, Key: key}
}
