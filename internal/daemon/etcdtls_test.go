package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/lease/etcdstore/etcdtest"
)

// syncBuffer is a log destination safe for the daemon's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEtcdMTLS runs the daemon on the store flanneld builds from its
// --etcd-* options, against an etcd that requires client certificates:
// with a valid one it programs a peer; without one, or with one from
// another authority, it keeps retrying and its log says why.
func TestEtcdMTLS(t *testing.T) {
	m := etcdtest.StartMTLS(t)
	admin := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const prefix = "/coreos.com/network"
	if _, err := admin.Put(ctx, prefix+"/config", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, prefix+"/subnets/10.5.7.0-24",
		`{"PublicIP":"192.168.1.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:0a"}}`); err != nil {
		t.Fatal(err)
	}

	// run starts a daemon with etcd options o and returns its log.
	run := func(t *testing.T, o config.Options) (*harness, *syncBuffer) {
		h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
		h.opts.SubnetFile = filepath.Join(t.TempDir(), "subnet.env") // no pinned lease: etcd decides
		o.EtcdPrefix = prefix
		store, err := etcdstore.New(context.Background(), slog.New(slog.DiscardHandler), etcdstore.ConfigFrom(o))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		var log syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{Options: h.opts, Log: slog.New(slog.NewTextHandler(&log, nil)), Store: store,
				Dataplane: h.dp, System: fakeSys{}, StoreAttempt: time.Second})
		}()
		h.done = done
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				// Stopped while still starting, it returns ctx's error.
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Errorf("daemon: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("daemon did not stop")
			}
		})
		return h, &log
	}
	ep := []string{m.ClientURL}

	t.Run("ClientCert", func(t *testing.T) {
		h, _ := run(t, config.Options{EtcdEndpoints: ep, EtcdCAFile: m.CA.CAFile, EtcdCertFile: m.ClientCert, EtcdKeyFile: m.ClientKey})
		h.waitState("the peer from etcd", func(s string) bool { return strings.Contains(s, "route 10.5.7.0/24") })
		got, err := admin.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || got.Count != 2 {
			t.Errorf("leases in etcd: %v, %v; want ours beside the peer's", got, err)
		}
	})

	rejected := []string{"certificate required", "bad certificate", "unknown certificate authority", "broken pipe", "connection reset by peer"}
	for _, tc := range []struct {
		name string
		o    config.Options
		want []string
	}{
		{"NoClientCert", config.Options{EtcdEndpoints: ep, EtcdCAFile: m.CA.CAFile}, rejected},
		{"UntrustedClientCert", config.Options{EtcdEndpoints: ep, EtcdCAFile: m.CA.CAFile, EtcdCertFile: m.StrangerCert, EtcdKeyFile: m.StrangerKey}, rejected},
		{"WrongCA", config.Options{EtcdEndpoints: ep, EtcdCAFile: m.Other.CAFile, EtcdCertFile: m.ClientCert, EtcdKeyFile: m.ClientKey},
			[]string{"certificate signed by unknown authority"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, log := run(t, tc.o)
			deadline := time.Now().Add(10 * time.Second)
			for {
				l := log.String()
				if strings.Contains(l, "network config not available") && containsAny(l, tc.want) {
					t.Logf("log:\n%s", l)
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("the log never said why (any of %q):\n%s", tc.want, l)
				}
				time.Sleep(50 * time.Millisecond)
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
