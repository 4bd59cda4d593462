package etcdstore_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// tryStore makes a store that is expected to fail; New itself connects
// lazily (or, with a user, authenticates) within ctx.
func tryStore(ctx context.Context, t *testing.T, cfg etcdstore.Config) (*etcdstore.Store, error) {
	t.Helper()
	s, err := etcdstore.New(ctx, testLogger(), cfg)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// checkStoreWorks reads the network config, acquires a lease and watches
// it and a peer's lease arrive: every kind of call the daemon makes.
func checkStoreWorks(t *testing.T, s *etcdstore.Store, peer *clientv3.Client, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	doc, err := s.NetworkConfig(ctx)
	if err != nil {
		t.Fatalf("NetworkConfig: %v", err)
	}
	nw, err := config.ParseNetwork(doc)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Acquire(ctx, lease.Request{Network: nw, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.0.1"), BackendType: "vxlan"}})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := s.Renew(ctx, l, time.Minute); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	ch := make(chan lease.Batch)
	done := make(chan error, 1)
	wctx, wcancel := context.WithCancel(ctx)
	defer func() {
		wcancel()
		<-done
	}()
	go func() { done <- s.Watch(wctx, ch) }()
	select {
	case b := <-ch:
		if !b.Snapshot || len(b.Events) != 1 || b.Events[0].Lease.ID() != l.ID() {
			t.Fatalf("first batch %+v, want a Snapshot of our lease %s", b, l.Key())
		}
	case err := <-done:
		t.Fatalf("Watch: %v", err)
	}
	const other = "10.5.99.0-24"
	if _, err := peer.Put(ctx, prefix+"/subnets/"+other, `{"PublicIP":"10.0.0.2","BackendType":"vxlan"}`); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-ch:
		if len(b.Events) != 1 || b.Events[0].Type != lease.Added || b.Events[0].Lease.Key() != other {
			t.Fatalf("got %+v, want Added %s", b, other)
		}
	case err := <-done:
		t.Fatalf("Watch: %v", err)
	}
}

func TestEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	ca := etcdtest.NewPKI(t, dir, "ca")
	serverCert, serverKey := ca.Issue(t, "etcd", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	clientCert, clientKey := ca.Issue(t, "flannel", x509.ExtKeyUsageClientAuth)
	// A CA that signed neither, and a client certificate it issued: valid
	// certificates the server must not accept.
	other := etcdtest.NewPKI(t, dir, "other-ca")
	strangerCert, strangerKey := other.Issue(t, "stranger", x509.ExtKeyUsageClientAuth)

	srv := &etcdServer{dir: filepath.Join(dir, "etcd"), clientURL: freeURL(t), peerURL: freeURL(t)}
	srv.clientURL.Scheme = "https"
	srv.configure = func(cfg *embed.Config) {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       serverCert,
			KeyFile:        serverKey,
			TrustedCAFile:  ca.CAFile,
			ClientCertAuth: true,
		}
	}
	srv.start(t)
	t.Cleanup(srv.stop)
	endpoint := srv.clientURL.String()

	adminTLS, err := (&transport.TLSInfo{CertFile: clientCert, KeyFile: clientKey, TrustedCAFile: ca.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: adminTLS, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	const prefix = "/coreos.com/network"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := admin.Put(ctx, prefix+"/config", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatalf("seed network config over TLS: %v", err)
	}

	t.Run("ClientCert", func(t *testing.T) {
		s, err := tryStore(ctx, t, etcdstore.Config{
			Endpoints: []string{endpoint}, Prefix: prefix,
			CertFile: clientCert, KeyFile: clientKey, CAFile: ca.CAFile,
		})
		if err != nil {
			t.Fatal(err)
		}
		checkStoreWorks(t, s, admin, prefix)
	})

	// The failures below surface when the first call's context ends: the
	// client keeps retrying a connection that a later fix (a renewed
	// certificate, a server restart) could heal. What matters is that the
	// call returns in time and the error says why, not just that time ran
	// out.
	//
	// Under TLS 1.3 the client finishes its handshake before the server
	// checks the client's certificate, so a rejection arrives as an alert
	// on the next read — or, if the server has already closed the socket,
	// as a reset or broken pipe on the next write. Either names the
	// connection, not the deadline.
	rejected := []string{"broken pipe", "connection reset by peer"}
	for _, tc := range []struct {
		name string
		cfg  etcdstore.Config
		want []string // any of these in the error
	}{{
		name: "NoClientCert",
		cfg:  etcdstore.Config{CAFile: ca.CAFile},
		want: append([]string{"certificate required"}, rejected...),
	}, {
		name: "UntrustedClientCert",
		cfg:  etcdstore.Config{CertFile: strangerCert, KeyFile: strangerKey, CAFile: ca.CAFile},
		want: append([]string{"unknown certificate authority", "bad certificate"}, rejected...),
	}, {
		name: "WrongCA",
		cfg:  etcdstore.Config{CertFile: clientCert, KeyFile: clientKey, CAFile: other.CAFile},
		want: []string{"certificate signed by unknown authority"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.Endpoints, cfg.Prefix = []string{endpoint}, prefix
			s, err := tryStore(context.Background(), t, cfg)
			if err != nil {
				t.Fatalf("New: %v (it connects lazily; the call should fail, not New)", err)
			}
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer ccancel()
			start := time.Now()
			_, err = s.NetworkConfig(cctx)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("NetworkConfig took %v past its 2 s deadline", took)
			}
			if err == nil {
				t.Fatal("NetworkConfig succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("NetworkConfig error %q is not a deadline", err)
			}
			if !containsAny(err.Error(), tc.want) {
				t.Errorf("NetworkConfig error %q names none of %q", err, tc.want)
			}
		})
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func TestEtcdAuth(t *testing.T) {
	srv := startEtcd(t)
	endpoint := srv.clientURL.String()
	admin := srv.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	const prefix = "/coreos.com/network"
	if _, err := admin.Put(ctx, prefix+"/config", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "/elsewhere/config", `{"Network":"10.6.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	// What an operator does with etcdctl: a root user (AuthEnable refuses
	// without one), then a flannel user allowed the prefix and no more.
	steps := []struct {
		what string
		do   func() error
	}{
		{"add user root", func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err }},
		{"grant root", func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err }},
		{"add role flannel", func() error { _, err := admin.RoleAdd(ctx, "flannel"); return err }},
		{"grant prefix", func() error {
			_, err := admin.RoleGrantPermission(ctx, "flannel", prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user flannel", func() error { _, err := admin.UserAdd(ctx, "flannel", "s3cret"); return err }},
		{"grant flannel", func() error { _, err := admin.UserGrantRole(ctx, "flannel", "flannel"); return err }},
		{"enable auth", func() error { _, err := admin.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	root, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Username: "root", Password: "rootpw", Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })

	t.Run("Password", func(t *testing.T) {
		s, err := tryStore(ctx, t, etcdstore.Config{Endpoints: []string{endpoint}, Prefix: prefix, Username: "flannel", Password: "s3cret"})
		if err != nil {
			t.Fatal(err)
		}
		checkStoreWorks(t, s, root, prefix)
	})

	t.Run("WrongPassword", func(t *testing.T) {
		start := time.Now()
		_, err := tryStore(ctx, t, etcdstore.Config{Endpoints: []string{endpoint}, Prefix: prefix, Username: "flannel", Password: "wrong"})
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("New with a wrong password = %v, want %v", err, rpctypes.ErrAuthFailed)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("New took %v to refuse a wrong password", took)
		}
	})

	t.Run("NoCredentials", func(t *testing.T) {
		s, err := tryStore(ctx, t, etcdstore.Config{Endpoints: []string{endpoint}, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.NetworkConfig(ctx); !errors.Is(err, rpctypes.ErrUserEmpty) {
			t.Errorf("NetworkConfig without a user = %v, want %v", err, rpctypes.ErrUserEmpty)
		}
	})

	t.Run("OutsideGrant", func(t *testing.T) {
		// A prefix the user may not read: permission errors are final, so
		// Watch returns instead of retrying forever.
		s, err := tryStore(ctx, t, etcdstore.Config{Endpoints: []string{endpoint}, Prefix: "/elsewhere", Username: "flannel", Password: "s3cret"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.NetworkConfig(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("NetworkConfig = %v, want %v", err, rpctypes.ErrPermissionDenied)
		}
		if err := s.Watch(ctx, make(chan lease.Batch, 1)); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("Watch = %v, want %v", err, rpctypes.ErrPermissionDenied)
		}
	})
}
