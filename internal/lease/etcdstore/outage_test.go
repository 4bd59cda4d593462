package etcdstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// After an outage long enough for gRPC's default reconnection backoff to
// reach several seconds, a lease written the moment etcd answers again
// reaches the watcher at once: the watch was kept (no Snapshot) and the
// client dialled again within its short schedule. The store says it was
// unreachable meanwhile.
func TestEtcdOutageResume(t *testing.T) {
	srv := startEtcd(t)
	const prefix = "/coreos.com/network"
	s := newStore(t, srv.clientURL.String(), prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ch := make(chan lease.Batch, 16)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, ch) }()
	if b := <-ch; !b.Snapshot {
		t.Fatalf("first batch %+v", b)
	}
	if !s.WatchDownSince().IsZero() {
		t.Fatal("reported unreachable before the outage")
	}

	stopped := time.Now()
	srv.stop() // waits for etcd's graceful shutdown: seconds, with a watch open
	stopDone := time.Now()
	for s.WatchDownSince().IsZero() {
		if time.Since(stopDone) > 5*time.Second {
			out, _ := exec.Command("ss", "-tn", "sport = :"+srv.clientURL.Port()+" or dport = :"+srv.clientURL.Port()).CombinedOutput()
			t.Fatalf("etcd stopped: still reported reachable after 5s\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("etcd stopping: reported unreachable %v after the stop began (the stop took %v)",
		s.WatchDownSince().Sub(stopped).Round(time.Millisecond), stopDone.Sub(stopped).Round(time.Millisecond))
	// With gRPC's default schedule (1 s × 1.6 per attempt), the dials at
	// this point would be 4 to 7 s apart.
	time.Sleep(8 * time.Second)

	srv.start(t)
	answered := time.Now()
	peer := srv.client(t) // a fresh client: connects at once
	value := `{"PublicIP":"10.0.0.2","BackendType":"vxlan"}`
	if _, err := peer.Put(ctx, prefix+"/subnets/10.5.2.0-24", value); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	select {
	case b := <-ch:
		took := time.Since(answered)
		if b.Snapshot || len(b.Events) != 1 || b.Events[0].Lease.Subnet.String() != "10.5.2.0/24" {
			t.Fatalf("after the outage got %+v, want one Added 10.5.2.0-24 and no Snapshot", b)
		}
		t.Logf("lease written %v after etcd answered again, delivered %v after it answered",
			written.Sub(answered).Round(time.Millisecond), took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("lease delivered %v after etcd answered again, want well under a second", took)
		}
	case err := <-done:
		t.Fatalf("Watch returned: %v", err)
	case <-ctx.Done():
		t.Fatal("no event after the outage")
	}
	if !s.WatchDownSince().IsZero() {
		t.Error("still reported unreachable after the watch delivered")
	}
}

// Dials are paced by how the far end answers: nothing behind the address
// is retried ten times a second; a TLS server that refuses our handshake
// (here: its certificate is from a CA we do not trust) is not hammered.
func TestDialPacing(t *testing.T) {
	dir := t.TempDir()
	ours, theirs := etcdtest.NewPKI(t, dir, "our-ca"), etcdtest.NewPKI(t, dir, "their-ca")
	certFile, keyFile := theirs.Issue(t, "etcd", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	count := func(t *testing.T, tlsServer bool) int32 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		var n atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				n.Add(1)
				if tlsServer {
					tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
					_ = tc.Handshake() // fails: the client refuses our certificate
					c = tc
				}
				c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s, err := etcdstore.New(ctx, testLogger(), etcdstore.Config{
			Endpoints: []string{"https://" + l.Addr().String()}, Prefix: "/p", CAFile: ours.CAFile})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.NetworkConfig(ctx); err == nil {
			t.Fatal("NetworkConfig succeeded against a server that is not etcd")
		}
		return n.Load()
	}
	dead, refusing := count(t, false), count(t, true)
	t.Logf("connections in 3 s: %d to an address with nothing behind it, %d to a server whose certificate we refuse", dead, refusing)
	if dead < 15 {
		t.Errorf("%d dials in 3 s to an address with nothing behind it, want about 30", dead)
	}
	if refusing > 4 {
		t.Errorf("%d dials in 3 s to a server whose handshake fails, want at most 4 (1 s, then 2 s apart)", refusing)
	}
}
