package etcdstore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// A quiet cluster is not a dead one: the liveness probe must not restart
// an idle watch, but must restart one whose etcd went away.
func TestWatchProbe(t *testing.T) {
	srv := startEtcd(t)
	p := newProxy(t, srv.clientURL.Host)
	var restarts atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := etcdstore.New(ctx, testLogger(), etcdstore.Config{
		Endpoints: []string{p.URL()}, Prefix: "/probe", ProbeInterval: 100 * time.Millisecond,
		OnWatchRestart: func(string) { restarts.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	out := make(chan lease.Batch, 16)
	go s.Watch(ctx, out)
	select {
	case b := <-out:
		if !b.Snapshot {
			t.Fatal("first batch is not a snapshot")
		}
	case <-ctx.Done():
		t.Fatal("no snapshot")
	}
	time.Sleep(time.Second) // ten probe intervals, idle
	if n := restarts.Load(); n != 0 {
		t.Fatalf("idle watch restarted %d times", n)
	}
	if !s.WatchDownSince().IsZero() {
		t.Fatal("idle watch reported down")
	}
	p.Cut()
	deadline := time.Now().Add(10 * time.Second)
	for restarts.Load() == 0 || s.WatchDownSince().IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("cut connection: watch not restarted or not reported down")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Heal()
	for !s.WatchDownSince().IsZero() {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("healed connection: watch still reported down")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
