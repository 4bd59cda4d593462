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
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/weft-net/weft/internal/app"
	"github.com/weft-net/weft/internal/config"
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

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// WEFT_CPUPROFILE=file profiles the run until SIGTERM/SIGINT
	// (docs/PERFORMANCE.md); "%p" in file becomes the process ID. An
	// environment variable rather than a flag, so flanneld's flag set stays
	// exactly upstream's.
	if path := os.Getenv("WEFT_CPUPROFILE"); path != "" {
		f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	// WEFT_MEMPROFILE=file writes a heap profile (live objects and
	// everything allocated since start) when the daemon stops.
	if path := os.Getenv("WEFT_MEMPROFILE"); path != "" {
		defer writeHeapProfile(log, strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	}
	log.Info("starting", "version", version)
	if err := app.Run(ctx, log, opts, version); err != nil {
		return err
	}
	// SIGTERM/SIGINT: the kernel state stays in place so that traffic
	// keeps flowing while we restart.
	log.Info("stopped; kernel state left in place")
	return nil
}

func writeHeapProfile(log *slog.Logger, path string) {
	f, err := os.Create(path)
	if err != nil {
		log.Error("heap profile", "err", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		log.Error("heap profile", "err", err)
	}
}
