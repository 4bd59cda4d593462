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
//   - An outage is ridden out, not fought: the watch stays open (the client
//     resumes it from its last revision), failed dials are retried ten times
//     a second unless the server itself turns us away (dial.go), and the
//     store reports since when etcd has been unreachable (health.go). A
//     lease this host let lapse meanwhile is taken back by Reclaim.
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
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
// probe load near 330 cheap reads per second. A dropped connection does not
// wait for it (the connection monitor sees it at once); it catches a member
// that lost its leader, within about 30 s.
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
	downSince  atomic.Int64 // unix nanoseconds etcd has been unreachable since; 0 while it answers
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

var (
	_ lease.Store     = (*Store)(nil)
	_ lease.Reclaimer = (*Store)(nil)
)

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
		DialKeepAliveTime:    keepaliveTime,
		DialKeepAliveTimeout: keepaliveTimeout,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               newZapLogger(log.With("component", "etcd-client")),
		DialOptions: append(dialOptions(newDialPacer(log), clientCreds(tlsCfg, cfg.Endpoints)),
			grpc.WithChainUnaryInterceptor(conn.intercept)),
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
	s := &Store{
		probeEvery: probe,
		onRestart:  cfg.OnWatchRestart,
		log:        log,
		cli:        r.cli,
		conn:       conn,
		configKey:  prefix + "/config",
		subnetsDir: prefix + "/subnets/",
	}
	go s.monitor(r.cli.Ctx()) // ends when the client closes
	return s, nil
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
