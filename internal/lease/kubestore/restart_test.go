package kubestore

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
)

// countingAPI counts the store's list and watch requests.
type countingAPI struct {
	API
	lists, watches atomic.Int32
}

func (c *countingAPI) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	c.lists.Add(1)
	return c.API.ListNodes(ctx, opts)
}

func (c *countingAPI) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	c.watches.Add(1)
	return c.API.WatchNodes(ctx, opts)
}

// A kube-apiserver restart (default settings: watch cache on) costs the
// watch no relist storm: it resumes from its last resourceVersion, or
// lists once if the new server cannot serve that; a node added once the
// server is ready again arrives promptly; the store is unreachable while
// the server is down, and says so.
func TestKubeAPIRestart(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	ctx := kubetest.Context(t, 3*time.Minute)
	all, _ := manifests(t)
	if _, err := kubetest.Apply(ctx, srv.Config(srv.AdminToken), all, false); err != nil {
		t.Fatalf("apply deploy/kube-flannel.yml: %v", err)
	}
	makeNode(t, srv.Admin, "self", nil, "10.5.19.0/24")
	api := &countingAPI{API: flannelAPI(t, srv, srv.URL)}
	netConf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"10.5.0.0/16"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var restarts atomic.Int32
	s, err := New(verboseLog(), Config{Client: api, NodeName: "self", AnnotationPrefix: prefix, NetConfigPath: netConf,
		OnWatchRestart: func(string) { restarts.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := config.ParseNetwork([]byte(`{"Network":"10.5.0.0/16"}`))
	a := lease.Attrs{BackendType: "host-gw", PublicIP: netip.MustParseAddr("192.168.1.19")}
	if _, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: a}); err != nil {
		t.Fatal(err)
	}
	ch := make(chan lease.Batch, 16)
	go s.Watch(ctx, ch)
	if b := <-ch; !b.Snapshot {
		t.Fatalf("first batch %+v", b)
	}
	peer := func(name, cidr string) lease.Batch {
		t.Helper()
		l := lease.Lease{Subnet: netip.MustParsePrefix(cidr), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.7"), BackendType: "host-gw"}}
		makeNode(t, srv.Admin, name, peerAnnotations(mustAnnotations(t, prefix), l), cidr)
		for {
			select {
			case b := <-ch:
				for _, ev := range b.Events {
					if ev.Lease.Subnet == l.Subnet {
						return b
					}
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no batch with node %s", name)
			}
		}
	}
	peer("peer-1", "10.5.1.0/24")
	lists, watches := api.lists.Load(), api.watches.Load()

	srv.Stop()
	stopped := time.Now()
	for s.WatchDownSince().IsZero() {
		if time.Since(stopped) > 10*time.Second {
			t.Fatal("kube-apiserver stopped: the store still says it is reachable after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("kube-apiserver stopped: store unreachable after %v", time.Since(stopped).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	up := srv.Restart(t)
	b := peer("peer-2", "10.5.2.0/24")
	took := time.Since(up)
	t.Logf("node created after the restarted server answered: in the watch %v later; batch snapshot=%v events=%d; "+
		"%d list(s) and %d watch(es) since the restart began, %d watch restarts counted",
		took.Round(time.Millisecond), b.Snapshot, len(b.Events), api.lists.Load()-lists, api.watches.Load()-watches, restarts.Load())
	if !s.WatchDownSince().IsZero() {
		t.Error("still unreachable after the watch delivered")
	}
	if took > time.Second {
		t.Errorf("node delivered %v after the server answered again, want well under a second", took)
	}
	// The new server's watch cache starts at its own start: resuming from
	// before is answered 410, and costs one list, never one per attempt.
	if n := api.lists.Load() - lists; n > 1 {
		t.Errorf("%d lists across one restart, want at most 1", n)
	}
	if n := restarts.Load(); n > 3 {
		t.Errorf("%d watch restarts counted for one server restart, want a few (one per stream that ended)", n)
	}
}

func verboseLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return discard()
}
