package etcdstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/leasetest"
)

// etcdServer is an in-process single-member etcd.
type etcdServer struct {
	dir                string
	clientURL, peerURL url.URL
	// configure, if set, adjusts the config before each start (TLS, ...).
	configure func(*embed.Config)
	e         *embed.Etcd
}

// freeURL reserves a loopback port by listening on it and closing: fixed
// ports let a test restart the server at the same address.
func freeURL(t *testing.T) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	s := &etcdServer{dir: filepath.Join(t.TempDir(), "etcd"), clientURL: freeURL(t), peerURL: freeURL(t)}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

func (s *etcdServer) start(t *testing.T) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "weft-test"
	cfg.Dir = s.dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{s.clientURL}, []url.URL{s.clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peerURL}, []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true // a test's data need not survive a power cut
	if s.configure != nil {
		s.configure(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		t.Fatal("etcd did not become ready")
	}
	s.e = e
}

func (s *etcdServer) stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

func (s *etcdServer) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.clientURL.String()}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newStore(t *testing.T, endpoint, prefix string) *etcdstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := etcdstore.New(ctx, testLogger(), etcdstore.Config{Endpoints: []string{endpoint}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// proxy forwards TCP to etcd and can cut the line, so a test can drop the
// store's connection while the peer keeps writing.
type proxy struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		l.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "http://" + p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, c) })
		p.wg.Go(func() { pipe(c, up) })
	}
}

// Cut closes every connection and refuses new ones until Heal.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// etcdPeer implements leasetest.Peer with its own client, straight to etcd.
type etcdPeer struct {
	cli    *clientv3.Client
	prefix string
	proxy  *proxy
}

func (p *etcdPeer) ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (p *etcdPeer) key(name string) string { return p.prefix + "/subnets/" + name }

func (p *etcdPeer) SetNetworkConfig(t testing.TB, doc []byte) {
	t.Helper()
	if _, err := p.cli.Put(p.ctx(t), p.prefix+"/config", string(doc)); err != nil {
		t.Fatal(err)
	}
}

func (p *etcdPeer) putWithTTL(t testing.TB, key string, value []byte) {
	t.Helper()
	g, err := p.cli.Grant(p.ctx(t), int64(lease.DefaultTTL/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli.Put(p.ctx(t), key, string(value), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
}

func (p *etcdPeer) PutLease(t testing.TB, l lease.Lease) {
	t.Helper()
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		t.Fatal(err)
	}
	if l.Reservation {
		if _, err := p.cli.Put(p.ctx(t), p.key(l.Key()), string(value)); err != nil {
			t.Fatal(err)
		}
		return
	}
	p.putWithTTL(t, p.key(l.Key()), value)
}

func (p *etcdPeer) PutRaw(t testing.TB, key string, value []byte) {
	t.Helper()
	p.putWithTTL(t, p.key(key), value)
}

func (p *etcdPeer) Delete(t testing.TB, id lease.ID) {
	t.Helper()
	resp, err := p.cli.Delete(p.ctx(t), p.key(id.String()))
	if err != nil || resp.Deleted != 1 {
		t.Fatalf("delete %s: deleted %v, %v", id, resp, err)
	}
}

// Expire revokes the key's etcd lease: what etcd itself does when a TTL
// runs out.
func (p *etcdPeer) Expire(t testing.TB, id lease.ID) {
	t.Helper()
	resp, err := p.cli.Get(p.ctx(t), p.key(id.String()))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("expire %s: %v, %v (no such key with a TTL)", id, resp, err)
	}
	if _, err := p.cli.Revoke(p.ctx(t), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
}

func (p *etcdPeer) Compact(t testing.TB) {
	t.Helper()
	resp, err := p.cli.Get(p.ctx(t), "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli.Compact(p.ctx(t), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
}

func (p *etcdPeer) Disconnect(testing.TB) (reconnect func()) {
	p.proxy.Cut()
	return p.proxy.Heal
}

func TestEtcdStore(t *testing.T) {
	srv := startEtcd(t)
	peerCli := srv.client(t)
	n := 0
	// Each case gets its own key prefix on the shared server, and its own
	// store whose connection runs through a proxy the peer can cut.
	newHarness := func(t *testing.T) leasetest.Harness {
		n++
		prefix := fmt.Sprintf("/weft-test/%d/coreos.com/network", n)
		px := newProxy(t, srv.clientURL.Host)
		return leasetest.Harness{
			Store: newStore(t, px.URL(), prefix),
			Peer:  &etcdPeer{cli: peerCli, prefix: prefix, proxy: px},
		}
	}
	t.Run("Conformance", func(t *testing.T) { leasetest.Run(t, newHarness) })

	t.Run("TTLExpiry", func(t *testing.T) {
		// A lease that is not renewed disappears when its etcd lease runs
		// out, and watchers see it go.
		h := newHarness(t)
		nw, err := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16"}`))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		a := lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1"), BackendType: "vxlan"}
		l, err := h.Store.Acquire(ctx, lease.Request{Network: nw, Attrs: a, TTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(l.Expiration); d > 2*time.Second || d < time.Second {
			t.Errorf("expiration in %v, want about 2s", d)
		}
		ch := make(chan lease.Batch)
		go h.Store.Watch(ctx, ch)
		if b := <-ch; !b.Snapshot || len(b.Events) != 1 {
			t.Fatalf("first batch %+v", b)
		}
		start := time.Now()
		select {
		case b := <-ch:
			if b.Snapshot || len(b.Events) != 1 || b.Events[0].Type != lease.Removed || b.Events[0].Lease.ID() != l.ID() {
				t.Fatalf("got %+v, want Removed %s", b, l.Key())
			}
			t.Logf("expired after %v", time.Since(start))
		case <-ctx.Done():
			t.Fatal("lease did not expire")
		}
		if _, err := h.Store.Renew(ctx, l, time.Hour); !errors.Is(err, lease.ErrLeaseLost) {
			t.Errorf("Renew after expiry: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("RenewRevokesOldEtcdLease", func(t *testing.T) {
		h := newHarness(t)
		nw, _ := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16"}`))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		l, err := h.Store.Acquire(ctx, lease.Request{Network: nw, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1")}})
		if err != nil {
			t.Fatal(err)
		}
		p := h.Peer.(*etcdPeer)
		before := leaseOf(t, p, l)
		if _, err := h.Store.Renew(ctx, l, time.Hour); err != nil {
			t.Fatal(err)
		}
		after := leaseOf(t, p, l)
		if after == before || after == 0 {
			t.Fatalf("etcd lease %x -> %x, want a new one", before, after)
		}
		ttl, err := peerCli.TimeToLive(ctx, before)
		if err != nil || ttl.TTL != -1 {
			t.Errorf("old etcd lease %x: TTL %v, %v; want revoked (-1)", before, ttl, err)
		}
		if got, err := peerCli.TimeToLive(ctx, after); err != nil || got.GrantedTTL != 3600 {
			t.Errorf("new etcd lease: %+v, %v; want a granted TTL of 3600 s", got, err)
		}
	})

	t.Run("FirstSnapshotAfterAcquireIsCurrent", func(t *testing.T) {
		// The first snapshot reuses the values Acquire decoded (store.go,
		// snapshot); what changed in between must still show as it is now.
		h := newHarness(t)
		p := h.Peer.(*etcdPeer)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		put := func(key, ip string) {
			t.Helper()
			v := `{"PublicIP":"` + ip + `","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`
			if _, err := peerCli.Put(ctx, p.key(key), v); err != nil {
				t.Fatal(err)
			}
		}
		put("10.5.1.0-24", "10.0.0.11")
		put("10.5.2.0-24", "10.0.0.12")
		put("10.5.3.0-24", "10.0.0.13")
		nw, _ := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16"}`))
		l, err := h.Store.Acquire(ctx, lease.Request{Network: nw, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1"), BackendType: "vxlan"}})
		if err != nil {
			t.Fatal(err)
		}
		put("10.5.1.0-24", "10.0.0.21") // changed
		if _, err := peerCli.Delete(ctx, p.key("10.5.2.0-24")); err != nil {
			t.Fatal(err)
		}
		put("10.5.4.0-24", "10.0.0.14") // new
		ch := make(chan lease.Batch, 1)
		go h.Store.Watch(ctx, ch)
		b := <-ch
		got := map[string]string{}
		for _, ev := range b.Events {
			got[ev.Lease.Key()] = ev.Lease.Attrs.PublicIP.String()
		}
		want := map[string]string{l.Key(): "10.0.0.1", "10.5.1.0-24": "10.0.0.21", "10.5.3.0-24": "10.0.0.13", "10.5.4.0-24": "10.0.0.14"}
		if !b.Snapshot || !maps.Equal(got, want) {
			t.Errorf("first snapshot %v (snapshot %v), want %v", got, b.Snapshot, want)
		}
	})

	t.Run("KeysThatAreNotLeases", func(t *testing.T) {
		// A key below the subnets directory, or a second spelling of a
		// lease's key, names the same subnets as the real lease would:
		// it must come out as malformed, with no subnets, so that it
		// can neither replace or remove that peer nor pass for our own
		// lease; it still keeps its subnets from being allocated.
		h := newHarness(t)
		p := h.Peer.(*etcdPeer)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		v := `{"PublicIP":"10.0.0.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}}`
		bad := []string{"x/10.5.1.0-24", "10.5.2.0-24&fc00:0::-64", "10.5.3.0-24/"}
		for _, k := range append(bad, "10.5.4.0-24") {
			if _, err := peerCli.Put(ctx, p.key(k), v); err != nil {
				t.Fatal(err)
			}
		}
		nw, _ := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16","SubnetLen":24}`))
		l, err := h.Store.Acquire(ctx, lease.Request{Network: nw, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1"), BackendType: "vxlan"},
			PreviousV4: netip.MustParsePrefix("10.5.1.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet == netip.MustParsePrefix("10.5.1.0/24") {
			t.Errorf("Acquire took 10.5.1.0/24, which a nested key blocks")
		}
		ch := make(chan lease.Batch, 1)
		go h.Store.Watch(ctx, ch)
		b := <-ch
		got := map[string]string{}
		for _, ev := range b.Events {
			switch {
			case errors.Is(ev.Err, lease.ErrBadKey):
				if ev.Lease.Subnet.IsValid() || ev.Lease.IPv6Subnet.IsValid() {
					t.Errorf("%s: bad key with subnets %+v", ev.Key, ev.Lease)
				}
				got[ev.Key] = "bad"
			case ev.Err != nil:
				t.Errorf("%s: %v", ev.Key, ev.Err)
			default:
				got[ev.Key] = ev.Lease.Key()
			}
		}
		want := map[string]string{p.key(l.Key()): l.Key(), p.key("10.5.4.0-24"): "10.5.4.0-24"}
		for _, k := range bad {
			want[p.key(k)] = "bad"
		}
		if !maps.Equal(got, want) {
			t.Errorf("snapshot %v, want %v", got, want)
		}
		if _, err := peerCli.Delete(ctx, p.key(bad[0])); err != nil {
			t.Fatal(err)
		}
		b = <-ch
		if len(b.Events) != 1 || b.Events[0].Type != lease.Removed || !errors.Is(b.Events[0].Err, lease.ErrBadKey) ||
			b.Events[0].Lease.Subnet.IsValid() || b.Events[0].Key != p.key(bad[0]) {
			t.Errorf("deletion of a nested key: %+v", b)
		}
	})

	t.Run("WatchEndsOnClose", func(t *testing.T) {
		s := newStore(t, srv.clientURL.String(), "/weft-test/close")
		ch := make(chan lease.Batch, 1)
		done := make(chan error, 1)
		go func() { done <- s.Watch(context.Background(), ch) }()
		<-ch
		s.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Watch after Close = %v, want net.ErrClosed", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Watch still running after Close")
		}
	})

	t.Run("New", func(t *testing.T) {
		ctx := context.Background()
		for _, cfg := range []etcdstore.Config{
			{Prefix: "/coreos.com/network"},
			{Endpoints: []string{srv.clientURL.String()}, Prefix: "/"},
			{Endpoints: []string{srv.clientURL.String()}, Prefix: "/p", CertFile: "/nonexistent/cert.pem"},
			{Endpoints: []string{srv.clientURL.String()}, Prefix: "/p", CAFile: "/nonexistent/ca.pem"},
		} {
			if s, err := etcdstore.New(ctx, nil, cfg); err == nil {
				s.Close()
				t.Errorf("New(%+v) succeeded", cfg)
			}
		}
		// A trailing slash on the prefix is the same prefix.
		s := newStore(t, srv.clientURL.String(), "/weft-test/slash/")
		if _, err := peerCli.Put(ctx, "/weft-test/slash/config", "{}"); err != nil {
			t.Fatal(err)
		}
		if doc, err := s.NetworkConfig(ctx); err != nil || string(doc) != "{}" {
			t.Errorf("NetworkConfig = %q, %v", doc, err)
		}
	})
}

func leaseOf(t *testing.T, p *etcdPeer, l lease.Lease) clientv3.LeaseID {
	t.Helper()
	resp, err := p.cli.Get(context.Background(), p.key(l.Key()))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v, %v", l.Key(), resp, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func TestEtcdServerRestart(t *testing.T) {
	// The watch survives etcd going away and coming back at the same
	// address: it resumes from its last revision, with no Snapshot.
	srv := startEtcd(t)
	const prefix = "/coreos.com/network"
	s := newStore(t, srv.clientURL.String(), prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	ch := make(chan lease.Batch)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, ch) }()
	if b := <-ch; !b.Snapshot || len(b.Events) != 0 {
		t.Fatalf("first batch %+v", b)
	}

	srv.stop()
	srv.start(t)
	peer := srv.client(t)
	value := `{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"vxlan"}`
	if _, err := peer.Put(ctx, prefix+"/subnets/10.5.2.0-24", value); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-ch:
		if b.Snapshot || len(b.Events) != 1 || b.Events[0].Type != lease.Added ||
			b.Events[0].Lease.Subnet != netip.MustParsePrefix("10.5.2.0/24") || !b.Events[0].Lease.Reservation {
			t.Fatalf("after restart got %+v, want Added 10.5.2.0-24 (a reservation: no TTL)", b)
		}
	case err := <-done:
		t.Fatalf("Watch returned: %v", err)
	case <-ctx.Done():
		t.Fatal("no event after the restart")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch = %v, want context.Canceled", err)
	}
}
