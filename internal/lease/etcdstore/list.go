package etcdstore

import (
	"context"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// ConfigFrom is the store configuration that flanneld's options (the
// --etcd-* flags and their FLANNELD_* variables) describe: one place
// turns them into a client, for the daemon and for `weft leases` and
// `weft status` alike.
func ConfigFrom(o config.Options) Config {
	return Config{
		Endpoints: o.EtcdEndpoints, Prefix: o.EtcdPrefix,
		KeyFile: o.EtcdKeyFile, CertFile: o.EtcdCertFile, CAFile: o.EtcdCAFile,
		Username: o.EtcdUsername, Password: o.EtcdPassword,
	}
}

// List reads every key of the subnets directory, for display: one Added
// event per key, with the lease as far as it decodes (Reservation set for
// keys without a TTL) and Err saying why a key or value does not decode.
// An unreachable etcd is reported when ctx ends, with the connection's
// last error (a refused certificate, an unknown CA) when there is one.
func (s *Store) List(ctx context.Context) ([]lease.Event, error) {
	ls, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	return ls.events, nil
}
