package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/lease/kubestore"
	"github.com/weft-net/weft/internal/metrics"
)

// openKube builds the Kubernetes lease store (--kube-subnet-mgr). The API
// server is --kube-api-url and/or --kubeconfig-file, else the in-cluster
// config of the pod's service account. It also applies the operator's
// node-public-ip / node-public-ipv6 annotations to opts, which, as
// upstream, take precedence over --public-ip / --public-ipv6.
func openKube(ctx context.Context, log *slog.Logger, opts *config.Options, m *metrics.Metrics) (*kubestore.Store, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(opts.KubeAPIURL, opts.KubeconfigFile)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "weft-flanneld"
	// Deprecation warnings go to our log, not to klog's stderr.
	cfg.WarningHandlerWithContext = warningLogger{log}
	// Not kubernetes.NewForConfig: linking the clientset costs every
	// start (etcd mode too) the registration of all API groups; see
	// kubestore.API.
	client, err := kubestore.NewClient(cfg, opts.KubeAnnotationPrefix)
	if err != nil {
		return nil, err
	}
	node, err := kubestore.NodeName(ctx, client, os.Getenv)
	if err != nil {
		return nil, err
	}
	store, err := kubestore.New(log, kubestore.Config{
		Client: client, NodeName: node,
		AnnotationPrefix: opts.KubeAnnotationPrefix, NetConfigPath: opts.NetConfigPath,
		OnWatchRestart: m.WatchRestart,
	})
	if err != nil {
		return nil, err
	}
	v4, v6, err := store.NodePublicIPs(ctx)
	if err != nil {
		// Upstream carries on without them too; the API server may just
		// be slow, and Acquire will wait for it.
		log.Warn("reading node-public-ip annotations failed", "err", err)
	}
	if v4.IsValid() {
		log.Info("public IP from node annotation", "ip", v4)
		opts.PublicIP = v4
	}
	if v6.IsValid() {
		log.Info("public IPv6 from node annotation", "ip", v6)
		opts.PublicIPv6 = v6
	}
	log.Info("kubernetes subnet manager", "node", node, "api", cfg.Host)
	return store, nil
}

type warningLogger struct{ log *slog.Logger }

func (w warningLogger) HandleWarningHeaderWithContext(ctx context.Context, code int, agent, text string) {
	w.log.Warn("kubernetes API warning", "code", code, "text", text)
}

var _ rest.WarningHandlerWithContext = warningLogger{}

// networkAvailable returns an observer for the daemon's passes and a
// function to run in the errgroup: after the first successful reconcile
// pass (routes to peers are in place, so pods on this node can reach the
// cluster) it sets the node's NetworkUnavailable condition to False,
// retrying until it succeeds or ctx ends.
func networkAvailable(log *slog.Logger, store *kubestore.Store) (func(daemon.Pass), func(ctx context.Context) error) {
	up := make(chan struct{})
	var once sync.Once
	observe := func(p daemon.Pass) {
		if p.Err == nil {
			once.Do(func() { close(up) })
		}
	}
	run := func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return nil
		case <-up:
		}
		for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
			err := store.SetNetworkAvailable(ctx)
			if err == nil {
				log.Info("node condition set", "NetworkUnavailable", "False", "reason", "FlannelIsUp")
				return nil
			}
			log.Warn("setting the node's NetworkUnavailable condition failed, retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
		}
	}
	return observe, run
}
