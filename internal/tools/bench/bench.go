// Package bench is `weft bench`: a reproducible scale benchmark of any
// flannel-compatible daemon binary. For each lease count K it builds a
// one-host lab cluster (internal/tools/lab: a namespace on a bridge, an embedded
// etcd), runs the daemon there with the vxlan or the wireguard backend,
// injects K synthetic peer leases in upstream's exact etcd format, and
// measures, from outside the daemon, how long the kernel takes to reflect
// them:
//
//  1. join burst: K leases written (transactions of 100) while the daemon
//     runs → every peer's objects present (vxlan: K routes, neighbours and
//     FDB entries on flannel.1; wireguard: K peers on flannel-wg);
//  2. cold start: daemon stopped, its device deleted, daemon started with
//     K leases in etcd → all present, and → subnet.env written;
//  3. single join / leave at scale: one Put (Delete) → its object seen
//     (vxlan: the RTM_NEWROUTE / RTM_DELROUTE, from a netlink
//     subscription; wireguard, which announces no peer changes: the first
//     poll, every 2 ms, that finds the public key present / absent);
//  4. mass leave: all K deleted (transactions of 100) → all gone;
//  5. cost: the daemon's peak RSS, CPU seconds, log bytes per lease event.
//
// It relies only on flanneld's flags (--etcd-endpoints, --iface,
// --subnet-file) and upstream's etcd layout, so upstream flanneld can be
// measured side by side (--vs). VXLAN objects are counted by polling a
// cheap raw netlink dump every few milliseconds (dataplane.Probe);
// WireGuard peers by asking the device for its peers (wgReader: the UAPI
// socket of a userspace device, wgctrl for a kernel one). Nothing parses
// ip(8) output.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/tools/lab"
)

// Daemon is a daemon binary under test.
type Daemon struct {
	// Name labels its column; Path is the binary.
	Name, Path string
}

// Options configure a benchmark.
type Options struct {
	// Daemons are measured in turn for every K, run and backend,
	// interleaved (A B A B …), so drift in the machine's load hits both
	// alike.
	Daemons []Daemon
	// Backends are the network config's backend types to measure, each
	// vxlan or wireguard (default: vxlan), interleaved like Daemons.
	Backends []string
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
	// Underlay is the lab's underlay network (default 172.31.250.0/24).
	Underlay netip.Prefix
	// Store is where leases live: StoreEtcd (default: upstream's etcd
	// layout) or StoreKube (Node objects in a real kube-apiserver, the
	// daemon run with --kube-subnet-mgr).
	Store string
	// KubeAPIServer is the kube-apiserver binary (StoreKube).
	KubeAPIServer string
	// ChurnRounds is how many heartbeat periods (10 s, kubelet's default)
	// of node status churn StoreKube measures (default 2).
	ChurnRounds int
	// Progress, if set, receives a progress line that is rewritten in
	// place (\r).
	Progress io.Writer
	Log      *slog.Logger
}

const (
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
	if len(o.Backends) == 0 {
		o.Backends = []string{config.BackendVXLAN}
	}
	if !o.Underlay.IsValid() {
		o.Underlay = netip.MustParsePrefix("172.31.250.0/24")
	}
	switch o.Store {
	case "":
		o.Store = StoreEtcd
	case StoreEtcd:
	case StoreKube:
		if len(o.Backends) != 1 || o.Backends[0] != config.BackendVXLAN {
			return nil, fmt.Errorf("--store kube measures the vxlan backend only")
		}
		if o.KubeAPIServer == "" {
			return nil, fmt.Errorf("--store kube needs a kube-apiserver binary")
		}
		if o.ChurnRounds < 1 {
			o.ChurnRounds = 2
		}
	default:
		return nil, fmt.Errorf("store %q: the bench knows etcd and kube", o.Store)
	}
	if err := checkBackends(ctx, o); err != nil {
		return nil, err
	}
	res := &Result{CPUs: cpus(), Store: o.Store, Daemons: o.Daemons, Backends: o.Backends, Leases: o.Leases, Samples: o.Samples}
	for _, k := range o.Leases {
		for run := 1; run <= o.Runs; run++ {
			for _, b := range o.Backends {
				for _, d := range o.Daemons {
					r, err := runOne(ctx, o, d, b, k, run)
					if r != nil {
						res.Runs = append(res.Runs, *r)
					}
					if err != nil {
						return res, fmt.Errorf("%s (%s) at %d leases (run %d): %w", d.Name, b, k, run, err)
					}
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
	o       Options
	d       Daemon
	backend string
	k       int
	label   string
	c       *lab.Cluster
	h       *lab.Host
	cli     *clientv3.Client
	probe   *dataplane.Probe
	obs     observer
	ns      netns.NsHandle
	kube    *kubeStore // nil in etcd mode
	r       *RunResult
	last    time.Time // last progress line
}

func runOne(ctx context.Context, o Options, d Daemon, backend string, k, run int) (_ *RunResult, err error) {
	dir := filepath.Join(o.Dir, fmt.Sprintf("%s-%s-k%d-r%d", sanitize(d.Name), backend, k, run))
	if !o.Keep {
		defer os.RemoveAll(dir)
	}
	x := &runner{o: o, d: d, backend: backend, k: k,
		label: fmt.Sprintf("K=%d %s %s run %d", k, d.Name, backend, run),
		r:     &RunResult{Daemon: d.Name, Path: d.Path, Backend: backend, Leases: k, Run: run}}
	hub := o.Underlay.Masked().Addr().Next()
	if o.Store == StoreKube {
		x.progress("starting kube-apiserver")
		x.kube, err = startKube(ctx, o.KubeAPIServer, filepath.Join(dir, "kube"), hub)
		if err != nil {
			return nil, err
		}
		defer x.kube.close()
	}
	x.progress("building lab")
	// Building the lab may take a few seconds; it must not outlive a
	// Ctrl-C, but Close runs regardless.
	x.c, err = lab.New(ctx, lab.Options{
		Name: o.Name, Hosts: 1, Underlay: o.Underlay,
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
	if _, err := x.cli.Put(ctx, prefix+"/config", netConfig(backend)); err != nil {
		return nil, fmt.Errorf("write network config: %w", err)
	}
	if x.kube != nil {
		addr, err := x.c.Expose(6443, x.kube.srv.Addr)
		if err != nil {
			return nil, err
		}
		if err := x.kube.expose(dir, addr, netConfig(backend)); err != nil {
			return nil, err
		}
		x.h.Env = []string{"NODE_NAME=" + x.kube.selfName}
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
	x.obs, err = newObserver(backend, x.h, x.ns, x.probe)
	if err != nil {
		return nil, err
	}
	defer x.obs.close()
	err = x.measure(ctx)
	cost := x.obs.cost()
	x.r.ObserverGets, x.r.ObserverGetSeconds = cost.gets, secs(cost.total)
	if len(cost.singleGets) > 0 {
		s := summarize(cost.singleGets)
		x.r.SingleGet = &s
	}
	if err != nil {
		x.r.Errors = append(x.r.Errors, err.Error())
	}
	return x.r, err
}

func (x *runner) measure(ctx context.Context) error {
	r := x.r
	var ps []peer
	if x.kube != nil {
		// Every node registered, its subnet allocated, before the daemon
		// starts; none runs flannel yet.
		var err error
		if ps, err = makePeers(x.backend, x.k+x.o.Samples, kubeSelf); err != nil {
			return err
		}
		x.progress(fmt.Sprintf("creating %d nodes", len(ps)+1))
		t0 := time.Now()
		if err := x.kube.createSelf(ctx, x.h.IP); err != nil {
			return err
		}
		if err := createNodes(ctx, x.kube.admin, ps); err != nil {
			return err
		}
		r.Kube = &KubeResult{NodesCreate: secs(time.Since(t0)), NodeBytes: nodeSize()}
	}
	// Start the daemon with no peers and wait until it holds its lease and
	// has made its device.
	x.progress("starting daemon")
	if err := x.startDaemon(); err != nil {
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
	if x.kube == nil {
		if ps, err = makePeers(x.backend, x.k+x.o.Samples, self); err != nil {
			return err
		}
		x.progress("granting etcd leases")
		if err := grant(ctx, x.cli, ps); err != nil {
			return err
		}
	} else if self != kubeSelf {
		return fmt.Errorf("daemon leased %s, its node's podCIDR is %s", self, kubeSelf)
	}
	peers, singles := ps[:x.k], ps[x.k:]

	// 1. Join burst.
	log0 := fileSize(x.h.LogFile)
	x.progress("join burst")
	t0 := time.Now()
	if err := x.writeAll(ctx, peers, 0, false); err != nil {
		return err
	}
	tw := time.Now()
	r.JoinWrites = secs(tw.Sub(t0))
	c, err := x.waitCounts(ctx, "join burst", x.k)
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
	// A userspace WireGuard device has ended with its daemon; a kernel
	// device (vxlan, or WireGuard where the kernel has it) survives a
	// SIGTERM and is deleted here.
	if err := x.probe.DeleteLink(x.obs.device()); err != nil {
		return err
	}
	// Both daemons find their lease again by public IP, so removing
	// subnet.env changes nothing but makes its rewriting observable (ours
	// skips a write that would not change the file).
	if err := os.Remove(x.h.SubnetFile); err != nil {
		return fmt.Errorf("remove subnet.env: %w", err)
	}
	log1 := fileSize(x.h.LogFile)
	req0 := x.requests()
	t0 = time.Now()
	if err := x.startDaemon(); err != nil {
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
	c, err = x.waitCounts(ctx, "cold start", x.k)
	r.ColdInstalled = c
	if err != nil {
		return err
	}
	r.ColdStart = secs(time.Since(t0))
	if x.kube != nil {
		r.Kube.ColdStartRequests = x.requests().sub(req0)
	}
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
	req0 = x.requests()
	join, leave, lowJoin, lowLeave, acks, err := x.singles(ctx, singles)
	if x.kube != nil {
		r.Kube.SinglesRequests = x.requests().sub(req0)
	}
	r.SingleJoin, r.SingleLeave, r.SinglePutAck = summarize(join), summarize(leave), summarize(acks)
	if x.backend == config.BackendWireGuard {
		lj, ll := summarize(lowJoin), summarize(lowLeave)
		r.SingleJoinLow, r.SingleLeaveLow = &lj, &ll
	}
	if err != nil {
		return err
	}

	// Kubernetes mode: status churn.
	if x.kube != nil {
		if err := x.churn(ctx, pid2); err != nil {
			return err
		}
	}

	// 4. Mass leave.
	x.progress("mass leave")
	t0 = time.Now()
	if err := x.writeAll(ctx, peers, 0, true); err != nil {
		return err
	}
	tw = time.Now()
	r.LeaveWrites = secs(tw.Sub(t0))
	c, err = x.waitCounts(ctx, "mass leave", 0)
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
	if x.kube != nil {
		r.Kube.Requests = x.requests()
	}
	r.LogBytesPerEvent = float64(logBurst+fileSize(x.h.LogFile)-log2) / float64(max(events, 1))
	// A clean stop, so a daemon that profiles itself (WEFT_CPUPROFILE)
	// gets to write its profile.
	if err := x.c.Stop(x.h, syscall.SIGTERM); err != nil {
		x.o.Log.Debug("daemon exit", "err", err)
	}
	x.progress("done")
	return nil
}

// checkBackends refuses unknown or repeated backends, and a second daemon
// with wireguard where the kernel has no WireGuard: upstream's wireguard
// backend makes kernel devices only (ours falls back to a userspace one),
// so it would fail to start, which would be no measurement.
func checkBackends(ctx context.Context, o Options) error {
	seen := map[string]bool{}
	for _, b := range o.Backends {
		if b != config.BackendVXLAN && b != config.BackendWireGuard {
			return fmt.Errorf("backend %q: the bench knows vxlan and wireguard", b)
		}
		if seen[b] {
			return fmt.Errorf("backend %q given twice", b)
		}
		seen[b] = true
	}
	if !seen[config.BackendWireGuard] || len(o.Daemons) < 2 {
		return nil
	}
	ok, why, err := kernelWireGuard(ctx, o.Name+"-wgck")
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("--vs with the wireguard backend needs the kernel's WireGuard module, which upstream flanneld requires and this kernel lacks (%s)", why)
	}
	return nil
}

// kernelWireGuard reports whether the kernel makes WireGuard devices, by
// making one in a scratch namespace of that name; why is ip's complaint
// when it does not.
func kernelWireGuard(ctx context.Context, ns string) (ok bool, why string, err error) {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return false, "", fmt.Errorf("ip netns add %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "add", "wgck", "type", "wireguard").CombinedOutput()
	if err != nil {
		return false, "ip link add type wireguard: " + strings.TrimSpace(string(out)), nil
	}
	return true, "", nil
}
