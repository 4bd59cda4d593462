package etcdstore

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/weft-net/weft/internal/ctxsleep"
)

// Reconnecting: how soon the client finds etcd again after an outage, and
// what keeps that from hurting a server that is up.
//
// The etcd client keeps a gRPC connection to its endpoints and dials a lost
// one again on gRPC's schedule; the lease watch, which the client resumes by
// itself from its last revision once a connection is back, waits for that
// dial. gRPC's default schedule backs off from 1 s by 1.6× per failed
// attempt up to two minutes: after a minute's outage the next attempt can be
// 20 s after etcd came back (issue 15 measured 8.2 s from etcd answering to
// a new lease in the kernel). Here a failed dial is retried after
// reconnectBase, growing to reconnectMax, so a lease written the moment
// etcd answers again reaches the kernel within about reconnectMax, however
// long the outage (docs/RELIABILITY.md, "etcd outage").
//
// Ten attempts a second cost a stopped etcd nothing: the SYN is refused, or
// a relay or load balancer with nothing behind it closes the connection
// without a byte. Nor do they cost much to a plaintext etcd that is up. They
// do cost a TLS server that turns us away — a handshake refused for an
// expired or wrong certificate, which costs it a signature each time; and
// a cluster-wide certificate expiry is exactly when every host would retry
// at once, thousands of handshakes a second. So a TLS handshake that fails
// after the server answered makes the next dial to that address wait, from
// rejectPenaltyMin doubling to rejectPenaltyMax, until a handshake succeeds
// (dialPacer; a handshake that failed without a byte from the server met
// nothing behind the address, and keeps the fast schedule).
const (
	reconnectBase = 50 * time.Millisecond
	reconnectMax  = 100 * time.Millisecond
	// connectTimeout bounds one dial and handshake. The kernel resends a
	// SYN lost in a partition after 1 s; 2 s lets that resend land, so a
	// healed partition is noticed within a few seconds.
	connectTimeout   = 2 * time.Second
	rejectPenaltyMin = time.Second
	rejectPenaltyMax = 30 * time.Second
)

// Keepalive: a ping after keepaliveTime without traffic, the connection
// declared dead keepaliveTimeout later (and, through TCP_USER_TIMEOUT, when
// data stays unacknowledged that long). A host cut off without a reset (a
// partition, a vanished peer) is noticed in 15 s instead of the kernel's
// TCP timeout. etcd refuses pings more often than every 5 s
// (--grpc-keepalive-min-time).
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
)

// dialOptions are the gRPC options behind the reconnection policy. creds
// are the transport credentials the etcd client would use (nil for
// plaintext); they are wrapped so that the pacer hears of handshakes.
func dialOptions(p *dialPacer, creds credentials.TransportCredentials) []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: reconnectBase, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
			MinConnectTimeout: connectTimeout,
		}),
		grpc.WithContextDialer(p.dial),
	}
	if creds != nil {
		// Given after the client's own (the same TLS credentials), so it
		// takes their place.
		opts = append(opts, grpc.WithTransportCredentials(pacedCreds{TransportCredentials: creds, p: p}))
	}
	return opts
}

// clientCreds are the transport credentials the etcd client (v3.7) picks
// for its endpoints: TLS with the configured files, else TLS with the
// system's roots when the first endpoint says https (or unixs), else none.
func clientCreds(tlsCfg *tls.Config, endpoints []string) credentials.TransportCredentials {
	switch {
	case tlsCfg != nil:
		return credentials.NewTLS(tlsCfg)
	case strings.HasPrefix(endpoints[0], "https://"), strings.HasPrefix(endpoints[0], "unixs:"):
		return credentials.NewTLS(nil)
	}
	return nil
}

// dialPacer dials etcd, delaying the dials to an address whose server
// refused our TLS handshake.
type dialPacer struct {
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	addrs map[string]*pace
}

// pace is one address's dial schedule.
type pace struct {
	penalty   time.Duration // last delay imposed; 0 after a handshake that succeeded
	notBefore time.Time
}

func newDialPacer(log *slog.Logger) *dialPacer {
	return &dialPacer{log: log, now: time.Now, addrs: map[string]*pace{}}
}

// dial is a gRPC context dialer. gRPC passes the resolver's address:
// "host:port", or "unix:path" / "unix:///path" for etcd's unix endpoints.
func (p *dialPacer) dial(ctx context.Context, addr string) (net.Conn, error) {
	if err := p.wait(ctx, addr); err != nil {
		return nil, err
	}
	network, address := "tcp", addr
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", strings.TrimPrefix(rest, "//")
	}
	d := net.Dialer{KeepAlive: -1} // gRPC's keepalive pings serve instead
	if network == "tcp" {
		d.Control = tcpUserTimeout(keepaliveTimeout)
	}
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &pacedConn{Conn: c, addr: addr}, nil
}

// wait blocks until addr may be dialled again.
func (p *dialPacer) wait(ctx context.Context, addr string) error {
	p.mu.Lock()
	var d time.Duration
	if pc := p.addrs[addr]; pc != nil {
		d = pc.notBefore.Sub(p.now())
	}
	p.mu.Unlock()
	if d <= 0 {
		return nil
	}
	return ctxsleep.For(ctx, d)
}

// handshake records how a TLS handshake with addr went: ok, or failed
// after the server answered (answered) or without a byte from it.
func (p *dialPacer) handshake(addr string, ok, answered bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc := p.addrs[addr]
	if pc == nil {
		pc = &pace{}
		p.addrs[addr] = pc
	}
	switch {
	case ok:
		pc.penalty, pc.notBefore = 0, time.Time{}
	case answered:
		pc.penalty = min(max(2*pc.penalty, rejectPenaltyMin), rejectPenaltyMax)
		pc.notBefore = p.now().Add(pc.penalty)
		p.log.Debug("etcd refused the TLS handshake; slowing down reconnection", "addr", addr, "next_dial_in", pc.penalty)
	}
	// Failed without a byte from the server: nothing behind the address
	// (a relay or load balancer with its backend down). Retrying is free;
	// keep the pace.
}

// pacedConn remembers its dial address and whether the server sent
// anything.
type pacedConn struct {
	net.Conn
	addr     string
	answered atomic.Bool
}

func (c *pacedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.answered.Load() {
		c.answered.Store(true)
	}
	return n, err
}

// pacedCreds tell the pacer how each handshake went.
type pacedCreds struct {
	credentials.TransportCredentials
	p *dialPacer
}

func (c pacedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if pc, ok := raw.(*pacedConn); ok && (err == nil || ctx.Err() == nil) {
		c.p.handshake(pc.addr, err == nil, pc.answered.Load())
	}
	return conn, info, err
}

func (c pacedCreds) Clone() credentials.TransportCredentials {
	return pacedCreds{TransportCredentials: c.TransportCredentials.Clone(), p: c.p}
}
