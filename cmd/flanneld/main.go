// Command flanneld is weft's drop-in replacement for flannel's daemon: same
// flags, FLANNELD_* environment, etcd layout and subnet.env.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if err := run(); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "flanneld:", err)
		}
		os.Exit(1)
	}
}

func run() error {
	opts, err := config.ParseOptions(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	if opts.Version {
		fmt.Println(version)
		return nil
	}
	level := slog.LevelInfo
	if opts.Verbosity > 0 {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if opts.KubeSubnetMgr {
		return errors.New("--kube-subnet-mgr: Kubernetes mode is not implemented yet; use the etcd store")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	store, err := etcdstore.New(ctx, log.With("component", "etcd"), etcdstore.Config{
		Endpoints: opts.EtcdEndpoints, Prefix: opts.EtcdPrefix,
		KeyFile: opts.EtcdKeyFile, CertFile: opts.EtcdCertFile, CAFile: opts.EtcdCAFile,
		Username: opts.EtcdUsername, Password: opts.EtcdPassword,
	})
	if err != nil {
		return err
	}
	defer store.Close()

	dp, err := dataplane.NewNetlink(log.With("component", "dataplane"), netns.None())
	if err != nil {
		return err
	}
	defer dp.Close()

	log.Info("starting", "version", version)
	err = daemon.Run(ctx, daemon.Config{
		Options:   opts,
		Log:       log,
		Store:     store,
		Dataplane: dp,
		System:    dp,
	})
	if err == nil {
		// SIGTERM/SIGINT: leave the kernel state in place so that traffic
		// keeps flowing while we restart.
		log.Info("stopped; kernel state left in place")
	}
	return err
}
