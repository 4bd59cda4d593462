// Package bench is `weft bench`: a reproducible scale benchmark of any
// flannel-compatible daemon binary. For each lease count K it builds a
// one-host lab cluster (internal/lab: a namespace on a bridge, an embedded
// etcd), runs the daemon there with the vxlan backend, injects K synthetic
// peer leases in upstream's exact etcd format, and measures through
// netlink, from outside the daemon, how long the kernel takes to reflect
// them:
//
//  1. join burst: K leases written (transactions of 100) while the daemon
//     runs → all K routes, neighbours and FDB entries on flannel.1;
//  2. cold start: daemon stopped, flannel.1 deleted, daemon started with K
//     leases in etcd → all present, and → subnet.env written;
//  3. single join / leave at scale: one Put (Delete) → its RTM_NEWROUTE
//     (RTM_DELROUTE), from a netlink subscription;
//  4. mass leave: all K deleted (transactions of 100) → all gone;
//  5. cost: the daemon's peak RSS, CPU seconds, log bytes per lease event.
//
// It relies only on flanneld's flags (--etcd-endpoints, --iface,
// --subnet-file) and upstream's etcd layout, so upstream flanneld can be
// measured side by side (--vs). Counting in bulk polls a cheap raw netlink
// dump every few milliseconds (dataplane.Probe); single events come from a
// subscription (dataplane.RouteWatch). Nothing parses ip(8) output.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lab"
)

// Daemon is a daemon binary under test.
type Daemon struct {
	// Name labels its column; Path is the binary.
	Name, Path string
}

// Options configure a benchmark.
type Options struct {
	// Daemons are measured in turn for every K and run, interleaved
	// (A B A B …), so drift in the machine's load hits both alike.
	Daemons []Daemon
	// Leases is the series of K.
	Leases []int
	// Samples is the number of single joins (and leaves) per run.
	Samples int
	// Runs repeats each (K, daemon); the summary reports medians.
	Runs int
	// Dir holds each run's lab (etcd data, logs); it is removed when
	// Keep is false.
	Dir  string
	Keep bool
	// Name prefixes the lab's namespaces (≤ 6 characters).
	Name string
	// Progress, if set, receives a progress line that is rewritten in
	// place (\r).
	Progress io.Writer
	Log      *slog.Logger
}

// device is the VXLAN device both daemons program for VNI 1.
const device = "flannel.1"

const (
	// pollEvery is the counting dump's period. A dump of 3×10,000 entries
	// parsed only as far as their headers costs well under a millisecond,
	// so polling this often barely competes with the daemon for the CPU.
	pollEvery = 10 * time.Millisecond
	// phaseTimeout bounds each bulk phase; upstream needs ~7 s at 8,000.
	phaseTimeout = 3 * time.Minute
	// sampleTimeout bounds one single join or leave.
	sampleTimeout = 10 * time.Second
	// sampleGap separates single samples, so each is measured on an idle
	// daemon rather than queued behind the previous one.
	sampleGap = 50 * time.Millisecond
	// settle lets trailing log lines land before log sizes are read.
	settle = 300 * time.Millisecond
)

// Run measures every daemon at every K and returns all runs. Runs already
// finished are returned together with the error that stopped the rest
// (e.g. a Ctrl-C).
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Runs < 1 {
		o.Runs = 1
	}
	res := &Result{CPUs: cpus(), Daemons: o.Daemons, Leases: o.Leases, Samples: o.Samples}
	for _, k := range o.Leases {
		for run := 1; run <= o.Runs; run++ {
			for _, d := range o.Daemons {
				r, err := runOne(ctx, o, d, k, run)
				if r != nil {
					res.Runs = append(res.Runs, *r)
				}
				if err != nil {
					return res, fmt.Errorf("%s at %d leases (run %d): %w", d.Name, k, run, err)
				}
			}
		}
	}
	if o.Progress != nil {
		fmt.Fprint(o.Progress, "\r\033[K")
	}
	return res, nil
}

// runner is one (daemon, K, run) measurement.
type runner struct {
	o     Options
	d     Daemon
	k     int
	label string
	c     *lab.Cluster
	h     *lab.Host
	cli   *clientv3.Client
	probe *dataplane.Probe
	ns    netns.NsHandle
	r     *RunResult
	last  time.Time // last progress line
}

func runOne(ctx context.Context, o Options, d Daemon, k, run int) (_ *RunResult, err error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("%s-k%d-r%d", sanitize(d.Name), k, run))
	if !o.Keep {
		defer os.RemoveAll(dir)
	}
	x := &runner{o: o, d: d, k: k, label: fmt.Sprintf("K=%d %s run %d", k, d.Name, run),
		r: &RunResult{Daemon: d.Name, Path: d.Path, Leases: k, Run: run}}
	x.progress("building lab")
	// Building the lab may take a few seconds; it must not outlive a
	// Ctrl-C, but Close runs regardless.
	x.c, err = lab.New(ctx, lab.Options{
		Name: o.Name, Hosts: 1, Underlay: netip.MustParsePrefix("172.31.250.0/24"),
		Dir: dir, Flanneld: d.Path, Log: o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("build lab: %w", err)
	}
	defer x.c.Close()
	x.h = x.c.Hosts[0]
	x.cli, err = clientv3.New(clientv3.Config{Endpoints: []string{x.c.EtcdClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	defer x.cli.Close()
	if _, err := x.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		return nil, fmt.Errorf("write network config: %w", err)
	}
	x.ns, err = netns.GetFromName(x.h.NS)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", x.h.NS, err)
	}
	defer x.ns.Close()
	x.probe, err = dataplane.NewProbe(x.ns)
	if err != nil {
		return nil, err
	}
	defer x.probe.Close()
	err = x.measure(ctx)
	if err != nil {
		x.r.Errors = append(x.r.Errors, err.Error())
	}
	return x.r, err
}

func (x *runner) measure(ctx context.Context) error {
	r := x.r
	// Start the daemon with no peers and wait until it holds its lease and
	// has made its device.
	x.progress("starting daemon")
	if err := x.c.Start(x.h); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	self, err := x.waitSubnetEnv(ctx)
	if err != nil {
		return err
	}
	if err := x.waitDevice(ctx); err != nil {
		return err
	}
	pid1, err := findPid(ctx, x.h.SubnetFile)
	if err != nil {
		return err
	}
	ps, err := makePeers(x.k+x.o.Samples, self)
	if err != nil {
		return err
	}
	peers, singles := ps[:x.k], ps[x.k:]
	x.progress("granting etcd leases")
	if err := grant(ctx, x.cli, ps); err != nil {
		return err
	}

	// 1. Join burst.
	log0 := fileSize(x.h.LogFile)
	x.progress("join burst")
	t0 := time.Now()
	if err := writeAll(ctx, x.cli, peers, false); err != nil {
		return err
	}
	tw := time.Now()
	r.JoinWrites = secs(tw.Sub(t0))
	c, err := x.waitCounts(ctx, "join burst", func(c dataplane.DevCounts) bool { return all(c, x.k) })
	r.JoinInstalled = c
	if err != nil {
		return err
	}
	done := time.Now()
	r.JoinBurst, r.JoinBurstLag = secs(done.Sub(t0)), secs(done.Sub(tw))
	time.Sleep(settle)
	logBurst := fileSize(x.h.LogFile) - log0

	// 2. Cold start: the kernel emptied of our objects, so the daemon must
	// install all K, as after a reboot.
	x.progress("cold start")
	hwm1, cpu1 := procStats(pid1)
	if err := x.c.Stop(x.h, syscall.SIGTERM); err != nil {
		// Exit status is the daemon's business (upstream exits non-zero
		// on SIGTERM in some versions); the measurement goes on.
		x.o.Log.Debug("daemon exit", "err", err)
	}
	if err := x.probe.DeleteLink(device); err != nil {
		return err
	}
	// Both daemons find their lease again by public IP, so removing
	// subnet.env changes nothing but makes its rewriting observable (ours
	// skips a write that would not change the file).
	if err := os.Remove(x.h.SubnetFile); err != nil {
		return fmt.Errorf("remove subnet.env: %w", err)
	}
	log1 := fileSize(x.h.LogFile)
	t0 = time.Now()
	if err := x.c.Start(x.h); err != nil {
		return fmt.Errorf("restart daemon: %w", err)
	}
	var (
		g      errgroup.Group
		envAt  time.Time
		envErr error
	)
	g.Go(func() error {
		_, envErr = x.waitSubnetEnv(ctx)
		envAt = time.Now()
		return nil
	})
	c, err = x.waitCounts(ctx, "cold start", func(c dataplane.DevCounts) bool { return all(c, x.k) })
	r.ColdInstalled = c
	if err != nil {
		return err
	}
	r.ColdStart = secs(time.Since(t0))
	_ = g.Wait()
	if envErr != nil {
		return envErr
	}
	r.ColdStartSubnetEnv = secs(envAt.Sub(t0))
	pid2, err := findPid(ctx, x.h.SubnetFile)
	if err != nil {
		return err
	}
	time.Sleep(settle)
	r.ColdStartLogBytes = fileSize(x.h.LogFile) - log1

	// 3. Single joins and leaves at scale.
	log2 := fileSize(x.h.LogFile)
	join, leave, acks, err := x.singles(ctx, singles)
	r.SingleJoin, r.SingleLeave, r.SinglePutAck = summarize(join), summarize(leave), summarize(acks)
	if err != nil {
		return err
	}

	// 4. Mass leave.
	x.progress("mass leave")
	t0 = time.Now()
	if err := writeAll(ctx, x.cli, peers, true); err != nil {
		return err
	}
	tw = time.Now()
	r.LeaveWrites = secs(tw.Sub(t0))
	c, err = x.waitCounts(ctx, "mass leave", func(c dataplane.DevCounts) bool { return all(c, 0) })
	r.LeaveRemaining = c
	if err != nil {
		return err
	}
	done = time.Now()
	r.MassLeave, r.MassLeaveLag = secs(done.Sub(t0)), secs(done.Sub(tw))
	time.Sleep(settle)

	// 5. Cost, over both processes.
	hwm2, cpu2 := procStats(pid2)
	r.PeakRSSMB = float64(max(hwm1, hwm2)) / 1024
	r.CPUSeconds = cpu1 + cpu2
	r.LogBytes = fileSize(x.h.LogFile)
	events := 2*x.k + 2*len(singles)
	r.LogBytesPerEvent = float64(logBurst+fileSize(x.h.LogFile)-log2) / float64(max(events, 1))
	// A clean stop, so a daemon that profiles itself (WEFT_CPUPROFILE)
	// gets to write its profile.
	if err := x.c.Stop(x.h, syscall.SIGTERM); err != nil {
		x.o.Log.Debug("daemon exit", "err", err)
	}
	x.progress("done")
	return nil
}

// singles measures one Put (then one Delete) at a time: the time from just
// before the etcd request to the arrival of the route notification.
func (x *runner) singles(ctx context.Context, ps []peer) (join, leave, acks []float64, err error) {
	w, err := dataplane.OpenRouteWatch(x.ns)
	if err != nil {
		return nil, nil, nil, err
	}
	type key struct {
		dst   netip.Prefix
		added bool
	}
	var (
		mu      sync.Mutex
		waiters = map[key]chan time.Time{}
	)
	wctx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error {
		return w.Run(wctx, func(dst netip.Prefix, added bool) {
			at := time.Now()
			mu.Lock()
			ch, ok := waiters[key{dst, added}]
			delete(waiters, key{dst, added})
			mu.Unlock()
			if ok {
				ch <- at
			}
		})
	})
	defer func() {
		stop()
		if werr := g.Wait(); werr != nil && err == nil {
			err = werr
		}
	}()
	one := func(p peer, added bool) (float64, error) {
		ch := make(chan time.Time, 1)
		mu.Lock()
		waiters[key{p.dst, added}] = ch
		mu.Unlock()
		t0 := time.Now()
		var err error
		if added {
			_, err = x.cli.Put(ctx, p.key, p.value, clientv3.WithLease(p.lease))
		} else {
			_, err = x.cli.Delete(ctx, p.key)
		}
		if err != nil {
			return 0, fmt.Errorf("write %s: %w", p.key, err)
		}
		if added {
			acks = append(acks, float64(time.Since(t0))/float64(time.Millisecond))
		}
		t := time.NewTimer(sampleTimeout)
		defer t.Stop()
		select {
		case at := <-ch:
			return float64(at.Sub(t0)) / float64(time.Millisecond), nil
		case <-t.C:
			return 0, fmt.Errorf("no route notification for %s within %s", p.dst, sampleTimeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	for i, added := range []bool{true, false} {
		for j, p := range ps {
			x.progress(fmt.Sprintf("single %s %d/%d", []string{"join", "leave"}[i], j+1, len(ps)))
			ms, err := one(p, added)
			if err != nil {
				return join, leave, acks, err
			}
			if added {
				join = append(join, ms)
			} else {
				leave = append(leave, ms)
			}
			if err := ctxsleep.For(ctx, sampleGap); err != nil {
				return join, leave, acks, err
			}
		}
	}
	return join, leave, acks, nil
}

// all reports whether c holds n of each kind.
func all(c dataplane.DevCounts, n int) bool { return c.Routes == n && c.Neighs == n && c.FDB == n }
