// Command flanneld is weft's drop-in replacement for flannel's daemon: same
// flags, FLANNELD_* environment, etcd layout and subnet.env.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/app"
	"github.com/weft-net/weft/internal/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(flanneld(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// flanneld runs the daemon and returns the process's exit status: 0 after
// -h/--help (as upstream), 1 with a one-line error on stderr otherwise.
func flanneld(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	err := run(args, getenv, stdout, stderr)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "flanneld:", err)
	return 1
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	opts, err := config.ParseOptions(args, getenv, stderr)
	if err != nil {
		return err
	}
	if opts.Version {
		fmt.Fprintln(stdout, version)
		return nil
	}
	level := slog.LevelInfo
	if opts.Verbosity > 0 {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	logIgnored(log, opts.Ignored)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// WEFT_CPUPROFILE=file profiles the run until SIGTERM/SIGINT
	// (docs/PERFORMANCE.md); "%p" in file becomes the process ID. An
	// environment variable rather than a flag, so flanneld's flag set stays
	// exactly upstream's.
	if path := getenv("WEFT_CPUPROFILE"); path != "" {
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
	if path := getenv("WEFT_MEMPROFILE"); path != "" {
		defer writeHeapProfile(log, strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	}
	hooks, err := testHooks(getenv)
	if err != nil {
		return err
	}
	if hooks.LeaseTTL > 0 {
		log.Warn("test-only setting in use: WEFT_TEST_LEASE_TTL", "lease_ttl", hooks.LeaseTTL)
	}
	log.Info("starting", "version", version)
	if err := app.Run(ctx, log, opts, version, hooks); err != nil {
		return err
	}
	// SIGTERM/SIGINT: the kernel state stays in place so that traffic
	// keeps flowing while we restart.
	log.Info("stopped; kernel state left in place")
	return nil
}

// testHooks reads the settings that exist for tests only:
// WEFT_TEST_LEASE_TTL (a Go duration, at least 2 s) shortens this host's
// lease TTL from upstream's 24 hours so that an e2e test can see a lease
// lapse. Never set it in production: every host renews at half the TTL.
func testHooks(getenv func(string) string) (app.TestHooks, error) {
	var h app.TestHooks
	if v := getenv("WEFT_TEST_LEASE_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 2*time.Second {
			return h, fmt.Errorf("WEFT_TEST_LEASE_TTL=%q: want a duration of at least 2s", v)
		}
		h.LeaseTTL = d
	}
	return h, nil
}

// logIgnored reports the settings upstream takes and weft does not need:
// at debug level, or as a warning when the value is malformed.
func logIgnored(log *slog.Logger, ignored []config.Ignored) {
	for _, ig := range ignored {
		if ig.Err != nil {
			log.Warn("setting ignored, and its value is malformed", "name", ig.Name, "value", ig.Value, "err", ig.Err, "reason", ig.Reason)
			continue
		}
		log.Debug("setting ignored", "name", ig.Name, "value", ig.Value, "reason", ig.Reason)
	}
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
