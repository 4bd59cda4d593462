// Package app wires flanneld together: the lease store, the kernel
// dataplane, metrics, the health listener and the control loop. It keeps
// cmd/flanneld's main down to parsing flags and handling signals.
package app

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/metrics"
)

// TestHooks are settings for tests only, outside flanneld's flags (which
// are exactly upstream's); cmd/flanneld reads them from WEFT_TEST_*
// variables.
type TestHooks struct {
	// LeaseTTL replaces the lease TTL (upstream's 24 h, which no flag
	// changes), so that an e2e test can let a lease lapse.
	LeaseTTL time.Duration
}

// Run runs flanneld until ctx ends or a fatal error occurs.
func Run(ctx context.Context, log *slog.Logger, opts config.Options, version string, hooks TestHooks) error {
	m := metrics.New(version)
	var store interface {
		lease.Store
		WatchDownSince() time.Time
	}
	// Kubernetes mode only: set NetworkUnavailable=False after the first pass.
	var observe func(daemon.Pass)
	var markUp func(context.Context) error
	if opts.KubeSubnetMgr {
		ks, err := openKube(ctx, log.With("component", "kube"), &opts, m)
		if err != nil {
			return err
		}
		store = ks
		if opts.SetNodeNetworkUnavailable {
			observe, markUp = networkAvailable(log.With("component", "kube"), ks)
		}
	} else {
		cfg := etcdstore.ConfigFrom(opts)
		cfg.OnWatchRestart = m.WatchRestart
		es, err := etcdstore.New(ctx, log.With("component", "etcd"), cfg)
		if err != nil {
			return err
		}
		defer es.Close()
		store = es
	}

	dp, err := openDataplane(log, opts)
	if err != nil {
		return err
	}
	defer dp.Close()
	m.WatchWireGuard(readAtMostEvery(wgStatsEvery, wireGuardStats(dp)))

	health := httpapi.NewHealth(opts.ResyncPeriod, store.WatchDownSince)
	m.WatchStore(store.WatchDownSince)
	board := &daemon.Board{StoreDown: store.WatchDownSince, UDP: dp.UDP}
	m.WatchUDP(dp.UDP)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	if opts.HealthzPort > 0 {
		// The probes and metrics, where the kubelet and Prometheus look;
		// the status (every peer's addresses) only when asked to.
		var status func() []byte
		if opts.HealthzStatus {
			status = board.JSON
		}
		addr := net.JoinHostPort(opts.HealthzIP, strconv.Itoa(opts.HealthzPort))
		g.Go(func() error {
			return httpapi.Serve(ctx, log, addr, httpapi.Handler(health, m.Registry, status))
		})
	}
	if opts.StatusSocket != "" {
		g.Go(func() error {
			// The socket serves an operator's tool: failing to open it
			// must not take the node's network down with it.
			err := httpapi.ServeUnix(ctx, log, opts.StatusSocket, httpapi.Handler(health, m.Registry, board.JSON))
			if err != nil {
				log.Error("weft status will not reach this daemon", "err", err)
			}
			return nil
		})
	}
	if markUp != nil {
		g.Go(func() error { return markUp(ctx) })
	}
	g.Go(func() error {
		defer cancel() // the daemon ending stops the listener too
		return daemon.Run(ctx, daemon.Config{
			Options: opts, Log: log, Store: store, Dataplane: dp, System: dp, LeaseTTL: hooks.LeaseTTL,
			KernelRelease: kernelRelease(),
			Metrics:       m, Health: health, Status: board, Observer: observe,
			Preflight: func(n *config.Network) error {
				return checkBridgeNetfilter(log, os.DirFS("/proc/sys"), n)
			},
			OpenRules: func(ctx context.Context, n *config.Network) (daemon.RuleSyncer, error) {
				mode := masq.Select(n.EnableNFTables, exec.LookPath)
				return masq.Open(ctx, log.With("component", "masq"), mode)
			},
		})
	})
	return g.Wait()
}

// kernelRelease returns uname -r, or "" if it cannot be read.
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
