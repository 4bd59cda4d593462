package etcdstore

import (
	"errors"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// FuzzPutEvent decodes arbitrary keys under the subnets directory and
// values as the watch does. A lease's key is one exact string: whatever
// is accepted is named by its canonical key, so no two keys can stand for
// one lease; whatever is refused as a key carries no subnets; every event
// names the raw key it came from.
func FuzzPutEvent(f *testing.F) {
	s := &Store{subnetsDir: "/coreos.com/network/subnets/"}
	for _, seed := range []struct{ name, value string }{
		{"10.5.1.0-24", `{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`},
		{"10.5.1.0-24&fc00::-64", `{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1"}`},
		{"10.5.1.0-24&fc00:0::-64", `{}`},
		{"x/10.5.1.0-24", `{}`},
		{"0.0.0.0-0&fc00::-64", `{"PublicIPv6":"fd00::1"}`},
		{"10.5.1.0-24", `{"PublicIP":`},
	} {
		f.Add(seed.name, []byte(seed.value), int64(0))
	}
	f.Fuzz(func(t *testing.T, name string, value []byte, etcdLease int64) {
		key := s.subnetsDir + name
		ev := s.putEvent(&mvccpb.KeyValue{Key: []byte(key), Value: value, ModRevision: 7, Lease: etcdLease})
		if ev.Key != key || ev.Type != lease.Added || ev.Lease.Revision != 7 || ev.Lease.Reservation != (etcdLease == 0) {
			t.Fatalf("event %+v for key %q", ev, key)
		}
		if errors.Is(ev.Err, lease.ErrBadKey) {
			if ev.Lease.Subnet.IsValid() || ev.Lease.IPv6Subnet.IsValid() {
				t.Fatalf("bad key %q has subnets %+v", key, ev.Lease)
			}
			return
		}
		if ev.Lease.Key() != name {
			t.Fatalf("key %q accepted as the lease of %s (err %v)", key, ev.Lease.Key(), ev.Err)
		}
		if ev.Err == nil {
			// What the store accepts, it can write back and read the same.
			back := s.putEvent(&mvccpb.KeyValue{Key: []byte(key), Value: mustJSON(t, ev.Lease.Attrs), ModRevision: 7, Lease: etcdLease})
			if back.Err != nil || !back.Lease.Attrs.Equal(ev.Lease.Attrs) {
				t.Fatalf("round trip of %q: %+v, %v", value, back.Lease, back.Err)
			}
		}
		del, _ := s.toEvent(&clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: 8}})
		if del.Type != lease.Removed || del.Lease.ID() != ev.Lease.ID() || del.Err != nil {
			t.Fatalf("deletion of %q: %+v, want the lease %s", key, del, ev.Lease.Key())
		}
	})
}

func mustJSON(t *testing.T, a lease.Attrs) []byte {
	b, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseKeyNames(t *testing.T) {
	s := &Store{subnetsDir: "/p/subnets/"}
	for name, ok := range map[string]bool{
		"10.5.1.0-24": true, "10.5.1.0-24&fc00::-64": true, "0.0.0.0-0&fc00::-64": true,
		"a/10.5.1.0-24": false, "10.5.1.0-24&fc00:0::-64": false, "10.5.1.0-24&FC00::-64": false,
		"10.5.1.0-24/": false, "": false, strings.Repeat("1", 200): false,
	} {
		_, _, err := s.parseKey(s.subnetsDir + name)
		if (err == nil) != ok || (err != nil && !errors.Is(err, lease.ErrBadKey)) {
			t.Errorf("parseKey(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
