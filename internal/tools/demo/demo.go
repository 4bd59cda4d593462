// Package demo implements `weft demo`: a whole cluster on one machine — an
// embedded etcd, N host namespaces on a bridge underlay, a real flanneld per
// host, and P pods per host attached through the flannel CNI plugin exactly
// as a container runtime would (libcni, a kube-flannel style conflist) —
// then prints the lease table, a pod-to-pod ping matrix and pod-to-pod vs
// host-to-host iperf3 throughput.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/lab"
)

// Name prefixes every namespace the demo creates (Options.Name overrides).
const Name = "wtdemo"

// HealthzPort is where each demo host's flanneld serves /healthz, /readyz
// and /metrics, on the host namespace's loopback.
const HealthzPort = 8285

// DefaultStateDir holds logs and state of a running demo.
const DefaultStateDir = "/run/weft-demo"

// Options configure a demo run.
type Options struct {
	Nodes, Pods int
	Backend     string // vxlan, host-gw, wireguard or udp
	// UpstreamFlanneld is an upstream flanneld binary: with Backend udp
	// the pod-to-pod throughput is measured again with it on the two
	// measured hosts, for the comparison with upstream's C proxy.
	UpstreamFlanneld string
	DirectRouting    bool
	IPv6Only         bool
	DualStack        bool
	Keep             bool
	// Name prefixes the demo's namespaces (default Name); tests use their
	// own so they never meet a developer's demo.
	Name string
	// BinDir holds flanneld, flannel and the reference CNI plugins.
	BinDir string
	// Self is the weft binary (re-executed for etcd and the pod runtime).
	Self     string
	StateDir string
	// Progress receives one line per step; nil discards.
	Progress io.Writer
}

// Result is what the demo measured; `--json` prints it.
type Result struct {
	Nodes      int          `json:"nodes"`
	Pods       int          `json:"podsPerNode"`
	Backend    string       `json:"backend"`
	Leases     []LeaseRow   `json:"leases"`
	PodList    []Pod        `json:"pods"`
	Pings      []Ping       `json:"pings"`
	Throughput *Throughput  `json:"throughput,omitempty"`
	Failed     int          `json:"failedPings"`
	OK         bool         `json:"ok"`
	Elapsed    JSONDuration `json:"elapsed"`
	Kept       bool         `json:"kept"`
}

// LeaseRow is one host's lease.
type LeaseRow struct {
	Host       string `json:"host"`
	Subnet     string `json:"subnet,omitempty"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	PublicIP   string `json:"publicIP,omitempty"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	// Identity names the host in its backend data: the VTEP MAC (vxlan),
	// the public key (wireguard).
	Identity string `json:"identity,omitempty"`
}

// Pod is one pod namespace and its addresses.
type Pod struct {
	Name string `json:"name"`
	Host string `json:"host"`
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
	pod  *lab.Pod
	ns   string
}

// Ping is one cell of the matrix.
type Ping struct {
	From   string  `json:"from"`
	To     string  `json:"to"`
	Family string  `json:"family"`
	OK     bool    `json:"ok"`
	RTTms  float64 `json:"rttMs,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// Throughput compares pod-to-pod with host-to-host TCP throughput and,
// when the backend is not vxlan, with a kernel VXLAN tunnel between the
// same two hosts (what the vxlan backend would carry pods over), so that
// one run puts the backend next to vxlan and the underlay.
type Throughput struct {
	PodToPodMbps float64 `json:"podToPodMbps"`
	VXLANMbps    float64 `json:"vxlanMbps,omitempty"`
	// UpstreamMbps is pod-to-pod with upstream's flanneld on both hosts
	// (Options.UpstreamFlanneld).
	UpstreamMbps   float64 `json:"upstreamPodToPodMbps,omitempty"`
	HostToHostMbps float64 `json:"hostToHostMbps"`
	Ratio          float64 `json:"ratio"`
	Error          string  `json:"error,omitempty"`
}

// JSONDuration prints as seconds.
type JSONDuration time.Duration

// MarshalJSON implements json.Marshaler.
func (d JSONDuration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(time.Duration(d).Seconds(), 'f', 2, 64)), nil
}

type run struct {
	o     Options
	c     *lab.Cluster
	res   *Result
	step  int
	steps int
	start time.Time
}

// Run runs the demo. It returns the result (also when some pings failed)
// and an error when the cluster could not be built or ctx ended; on return
// everything is removed unless Keep is set and the run got that far.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Name == "" {
		o.Name = Name
	}
	if o.Backend == "" {
		o.Backend = "vxlan"
	}
	if o.Backend != "vxlan" && o.Backend != "host-gw" && o.Backend != "wireguard" && o.Backend != "udp" && o.Backend != "extension" {
		return nil, fmt.Errorf("--backend: %q is not vxlan, host-gw, wireguard, udp or extension", o.Backend)
	}
	if (o.Backend == "udp" || o.Backend == "extension") && (o.IPv6Only || o.DualStack) {
		return nil, fmt.Errorf("--backend %s carries IPv4 only here: drop --ipv6 and --dual-stack", o.Backend)
	}
	if o.UpstreamFlanneld != "" && o.Backend != "udp" {
		return nil, errors.New("--upstream-flanneld compares throughput with upstream's udp backend: it needs --backend udp")
	}
	if o.Nodes < 1 || o.Nodes > 50 || o.Pods < 1 || o.Pods > 20 {
		return nil, errors.New("--nodes must be 1..50 and --pods 1..20")
	}
	for _, b := range []string{"flanneld", "flannel", "bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make build` first", b, o.BinDir)
		}
	}
	for _, t := range []string{"ip", "iperf3"} {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("%s not found: run `make demo` (it installs them) or `bash tools/deps.sh`", t)
		}
	}
	if _, err := lab.Teardown(o.StateDir, o.Name); err != nil {
		return nil, fmt.Errorf("remove an earlier demo: %w", err)
	}
	r := &run{o: o, steps: 6, start: time.Now(), res: &Result{Nodes: o.Nodes, Pods: o.Pods, Backend: o.Backend}}
	err := r.run(ctx)
	r.res.Elapsed = JSONDuration(time.Since(r.start))
	if r.c != nil {
		if o.Keep && err == nil {
			if derr := r.c.Detach(); derr != nil {
				err = derr
			} else {
				r.res.Kept = true
			}
		}
		if !r.res.Kept {
			r.delPods()
			r.c.Close()
			_ = os.RemoveAll(o.StateDir)
		}
	}
	return r.res, err
}

func (r *run) progress(format string, args ...any) func(error) {
	r.step++
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(r.o.Progress, "[%d/%d] %s ...", r.step, r.steps, msg)
	t := time.Now()
	return func(err error) {
		if err != nil {
			fmt.Fprintf(r.o.Progress, " failed: %v\n", err)
			return
		}
		fmt.Fprintf(r.o.Progress, " ok (%.1fs)\n", time.Since(t).Seconds())
	}
}

func (r *run) netConf() string {
	be := fmt.Sprintf(`{"Type":%q}`, r.o.Backend)
	if r.o.Backend == "vxlan" && r.o.DirectRouting {
		be = `{"Type":"vxlan","DirectRouting":true}`
	}
	if r.o.Backend == "extension" {
		// host-gw done by the operator's commands, as upstream's
		// documentation shows it (without a shell: one command each).
		ipCmd, err := exec.LookPath("ip")
		if err != nil {
			ipCmd = "ip"
		}
		be = fmt.Sprintf(`{"Type":"extension","SubnetAddCommand":"%s route replace $SUBNET via $PUBLIC_IP","SubnetRemoveCommand":"%s route del $SUBNET via $PUBLIC_IP"}`, ipCmd, ipCmd)
	}
	switch {
	case r.o.IPv6Only:
		return fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":%s}`, be)
	case r.o.DualStack:
		return fmt.Sprintf(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":%s}`, be)
	default:
		return fmt.Sprintf(`{"Network":"10.244.0.0/16","Backend":%s}`, be)
	}
}

func (r *run) v6() bool { return r.o.IPv6Only || r.o.DualStack }

func (r *run) run(ctx context.Context) error {
	done := r.progress("etcd and %d host namespaces on a bridge underlay", r.o.Nodes)
	opts := lab.Options{
		Name: r.o.Name, Hosts: r.o.Nodes, Underlay: netip.MustParsePrefix("198.18.200.0/24"),
		Dir: r.o.StateDir, Flanneld: filepath.Join(r.o.BinDir, "flanneld"),
		EtcdCommand: []string{r.o.Self, "demo", "etcd"},
	}
	if r.v6() {
		opts.UnderlayV6 = netip.MustParsePrefix("fd00:198:18:200::/64")
	}
	c, err := lab.New(ctx, opts)
	done(err)
	if err != nil {
		return err
	}
	r.c = c
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.EtcdClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/coreos.com/network/config", r.netConf()); err != nil {
		return fmt.Errorf("write network config: %w", err)
	}

	done = r.progress("flanneld on every host")
	err = r.startFlanneld(ctx)
	done(err)
	if err != nil {
		return err
	}
	if err := r.readLeases(ctx, cli); err != nil {
		return err
	}

	done = r.progress("%d pods per host through the flannel CNI plugin", r.o.Pods)
	err = r.addPods(ctx)
	done(err)
	if err != nil {
		return err
	}

	done = r.progress("pod-to-pod ping matrix (%d pods)", len(r.res.PodList))
	r.pingMatrix(ctx)
	if r.res.Failed > 0 {
		done(fmt.Errorf("%d of %d pings failed", r.res.Failed, len(r.res.Pings)))
	} else {
		done(nil)
	}

	done = r.progress("iperf3: pod-to-pod vs host-to-host")
	tp := r.throughput(ctx)
	r.res.Throughput = tp
	if tp.Error != "" {
		done(errors.New(tp.Error))
	} else {
		done(nil)
	}

	done = r.progress("checking every pod's CNI attachment")
	err = r.checkPods(ctx)
	done(err)
	r.res.OK = r.res.Failed == 0 && err == nil
	return ctx.Err()
}

func (r *run) startFlanneld(ctx context.Context) error {
	for _, h := range r.c.Hosts {
		// Health and metrics on each host's loopback (namespaces keep the
		// ports apart); the status on the socket beside each host's
		// subnet file: `ip netns exec <host> weft status --socket …`.
		if err := r.c.Start(h, "--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", HealthzPort)); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, h := range r.c.Hosts {
		for {
			if e, err := subnetenv.Read(h.SubnetFile); err == nil && (e.Subnet.IsValid() || e.IPv6Subnet.IsValid()) {
				break
			}
			if exited, err := h.Exited(); exited {
				log, _ := os.ReadFile(h.LogFile)
				return fmt.Errorf("%s: flanneld exited (%v):\n%s", h.NS, err, log)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: no subnet.env after 30s (log: %s)", h.NS, h.LogFile)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

func (r *run) readLeases(ctx context.Context, cli *clientv3.Client) error {
	resp, err := cli.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	byIP := map[netip.Addr]string{}
	for _, h := range r.c.Hosts {
		byIP[h.IP] = h.NS
		if h.IPv6.IsValid() {
			byIP[h.IPv6] = h.NS
		}
	}
	for _, kv := range resp.Kvs {
		l, err := lease.Decode(string(kv.Key), kv.Value)
		if err != nil {
			continue
		}
		row := LeaseRow{Host: byIP[l.Attrs.PublicIP]}
		if row.Host == "" {
			row.Host = byIP[l.Attrs.PublicIPv6]
		}
		if l.Subnet.IsValid() {
			row.Subnet, row.PublicIP = l.Subnet.String(), l.Attrs.PublicIP.String()
		}
		if l.IPv6Subnet.IsValid() {
			row.IPv6Subnet, row.PublicIPv6 = l.IPv6Subnet.String(), l.Attrs.PublicIPv6.String()
		}
		if row.Identity = backends.Identity(l.Attrs, false); row.Identity == "" {
			row.Identity = backends.Identity(l.Attrs, true)
		}
		r.res.Leases = append(r.res.Leases, row)
	}
	sort.Slice(r.res.Leases, func(i, j int) bool { return r.res.Leases[i].Host < r.res.Leases[j].Host })
	return nil
}

// Down removes a demo left running with --keep.
func Down(stateDir, name string) (bool, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if name == "" {
		name = Name
	}
	return lab.Teardown(stateDir, name)
}
