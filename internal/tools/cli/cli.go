// Package cli implements the weft command's subcommands (demo, leases, and
// the hidden helpers the demo re-executes), so cmd/weft stays a one-liner.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/weft-net/weft/internal/tools/bench"
	"github.com/weft-net/weft/internal/tools/demo"
	"github.com/weft-net/weft/internal/tools/lab"
	"github.com/weft-net/weft/internal/tools/podrt"
)

const usage = `usage: weft <command> [flags]

commands:
  demo        build a cluster of hosts and pods in network namespaces and test it
  demo down   remove a demo left running with --keep
  leases      list the cluster's subnet leases from etcd (flanneld's --etcd-* flags)
  status      this host's lease, peers, kernel drift and health (from the local flanneld's socket)
  doctor      check this host for known overlay faults; --fix applies the safe fixes (root)
`

// Main runs the weft command and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "demo":
		if len(args) > 1 && args[1] == "down" {
			err = demoDown(args[2:], stdout, stderr)
		} else if len(args) > 1 && args[1] == "etcd" {
			err = demoEtcd(ctx, args[2:])
		} else if len(args) > 1 && args[1] == "etcd-member" {
			err = demoEtcdMember(ctx, args[2:])
		} else {
			return demoCmd(ctx, args[1:], stdout, stderr)
		}
	case "pod-runtime":
		err = podrt.Serve(ctx, os.Stdin, stdout)
	case "leases":
		err = leasesCmd(ctx, args[1:], stdout, stderr)
	case "bench":
		return benchCmd(ctx, args[1:], stdout, stderr)
	case "status":
		err = statusCmd(ctx, args[1:], stdout, stderr)
	case "doctor":
		err = doctorCmd(ctx, args[1:], stdout, stderr)
		if errors.Is(err, errFailed) {
			return 1 // the report says why
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "weft: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "weft:", err)
		}
		return 1
	}
	return 0
}

func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weft demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o demo.Options
	var asJSON bool
	fs.IntVar(&o.Nodes, "nodes", 3, "number of hosts")
	fs.IntVar(&o.Pods, "pods", 2, "pods per host")
	fs.StringVar(&o.Backend, "backend", "vxlan", "vxlan, host-gw, wireguard or udp")
	fs.StringVar(&o.UpstreamFlanneld, "upstream-flanneld", "", "with --backend udp: also measure upstream flanneld's udp backend (this binary) between the same pods")
	fs.BoolVar(&o.DirectRouting, "direct-routing", false, "vxlan with DirectRouting")
	fs.BoolVar(&o.IPv6Only, "ipv6", false, "IPv6-only cluster")
	fs.BoolVar(&o.DualStack, "dual-stack", false, "dual-stack cluster")
	fs.BoolVar(&o.Keep, "keep", false, "leave the cluster running (remove it with `weft demo down`)")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON on stdout")
	fs.StringVar(&o.BinDir, "bin-dir", "", "directory with flanneld, flannel and the CNI plugins (default: this binary's)")
	fs.StringVar(&o.StateDir, "state-dir", demo.DefaultStateDir, "where logs and state go")
	fs.StringVar(&o.Name, "name", demo.Name, "prefix of the demo's namespaces (at most 6 characters)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "weft:", err)
		return 1
	}
	o.Self = self
	if o.BinDir == "" {
		o.BinDir = filepath.Dir(self)
	}
	o.Progress = stdout
	if asJSON {
		o.Progress = stderr
	} else {
		fmt.Fprintf(stdout, "weft demo: %d hosts × %d pods, backend %s%s\n", o.Nodes, o.Pods, o.Backend, familyNote(o))
	}
	res, err := demo.Run(ctx, o)
	if res != nil {
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(res)
		} else {
			res.Print(stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "weft demo:", err)
		return 1
	}
	if !res.OK {
		return 1
	}
	return 0
}

func familyNote(o demo.Options) string {
	switch {
	case o.IPv6Only:
		return ", IPv6 only"
	case o.DualStack:
		return ", dual-stack"
	case o.DirectRouting:
		return ", DirectRouting"
	}
	return ""
}

func demoDown(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft demo down", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", demo.DefaultStateDir, "the demo's state directory")
	name := fs.String("name", demo.Name, "the demo's namespace prefix")
	if err := fs.Parse(args); err != nil {
		return err
	}
	found, err := demo.Down(*stateDir, *name)
	if err != nil {
		return err
	}
	if found {
		fmt.Fprintln(stdout, "demo removed")
	} else {
		fmt.Fprintln(stdout, "no demo running")
	}
	return nil
}

// demoEtcd is the out-of-process etcd of a demo (so --keep can outlive
// the demo command).
func demoEtcd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("weft demo etcd", flag.ContinueOnError)
	dir := fs.String("dir", "", "data dir")
	hubNS := fs.String("hub-ns", "", "namespace to serve in")
	hubAddr := fs.String("hub-addr", "", "address to serve on in that namespace")
	urlFile := fs.String("url-file", "", "where to write the client URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return lab.ServeEtcd(ctx, *dir, *hubNS, *hubAddr, *urlFile)
}

// demoEtcdMember is one member of a lab's etcd cluster
// (lab.Options.EtcdMembers), run inside its namespace.
func demoEtcdMember(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("weft demo etcd-member", flag.ContinueOnError)
	var mc lab.MemberConfig
	fs.StringVar(&mc.Name, "name", "", "member name")
	fs.StringVar(&mc.Dir, "dir", "", "data dir")
	ipStr := fs.String("ip", "", "the member's address (client port 2379, peer port 2380)")
	fs.StringVar(&mc.InitialCluster, "initial-cluster", "", "name=peerURL,… of every member")
	fs.StringVar(&mc.ReadyFile, "ready-file", "", "created once the member serves")
	if err := fs.Parse(args); err != nil {
		return err
	}
	a, err := netip.ParseAddr(*ipStr)
	if err != nil {
		return fmt.Errorf("--ip: %w", err)
	}
	mc.IP = a
	return lab.ServeEtcdMember(ctx, mc)
}

func splitComma(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weft bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	daemon := fs.String("daemon", "", "daemon binary to measure (default: the flanneld next to this binary)")
	vs := fs.String("vs", "", "a second daemon binary to measure side by side (e.g. upstream flanneld)")
	leases := fs.String("leases", "1000,5000", "comma-separated series of peer lease counts")
	backendList := fs.String("backend", "vxlan", "backend(s) to measure: vxlan, wireguard, or both comma-separated (interleaved)")
	samples := fs.Int("samples", 20, "single joins and leaves per run")
	runs := fs.Int("runs", 1, "runs per daemon and lease count (interleaved; the table shows medians)")
	asJSON := fs.Bool("json", false, "print every run as JSON on stdout")
	dir := fs.String("dir", "", "where each run's etcd data and logs go (default: a temporary directory, in /dev/shm when present)")
	keep := fs.Bool("keep", false, "keep --dir afterwards (logs)")
	name := fs.String("name", "wtbn", "prefix of the bench's namespaces (at most 6 characters)")
	report := fs.String("report", "", "print the table of an earlier --json result `file` instead of measuring")
	store := fs.String("store", "etcd", "where leases live: etcd, or kube (Node objects in a real kube-apiserver, the daemon run with --kube-subnet-mgr)")
	kubeAPIServer := fs.String("kube-apiserver", "", "kube-apiserver binary for --store kube (default: $WEFT_KUBE_APISERVER, else the one tools/kube-apiserver/build.sh cached)")
	churn := fs.Int("churn-rounds", 2, "--store kube: heartbeat periods (10 s each) of node status churn")
	underlay := fs.String("underlay", "172.31.250.0/24", "the lab's underlay network")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *report != "" {
		if err := benchReport(*report, stdout); err != nil {
			fmt.Fprintln(stderr, "weft bench:", err)
			return 1
		}
		return 0
	}
	var o bench.Options
	for _, s := range splitComma(*leases) {
		k, err := strconv.Atoi(s)
		if err != nil || k < 1 {
			fmt.Fprintf(stderr, "weft bench: --leases: %q is not a positive number\n", s)
			return 2
		}
		o.Leases = append(o.Leases, k)
	}
	o.Backends = splitComma(*backendList)
	if len(o.Backends) == 0 {
		fmt.Fprintln(stderr, "weft bench: --backend: empty")
		return 2
	}
	if *daemon == "" {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "weft bench:", err)
			return 1
		}
		*daemon = filepath.Join(filepath.Dir(self), "flanneld")
	}
	for _, p := range []string{*daemon, *vs} {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			fmt.Fprintln(stderr, "weft bench:", err)
			return 1
		}
		if _, err := os.Stat(abs); err != nil {
			fmt.Fprintf(stderr, "weft bench: daemon: %v\n", err)
			return 1
		}
		o.Daemons = append(o.Daemons, bench.Daemon{Name: filepath.Base(abs), Path: abs})
	}
	if len(o.Daemons) == 2 && o.Daemons[0].Name == o.Daemons[1].Name {
		o.Daemons[0].Name, o.Daemons[1].Name = "A-"+o.Daemons[0].Name, "B-"+o.Daemons[1].Name
	}
	o.Samples, o.Runs, o.Keep, o.Name = *samples, *runs, *keep, *name
	o.Store, o.ChurnRounds = *store, *churn
	u, err := netip.ParsePrefix(*underlay)
	if err != nil {
		fmt.Fprintln(stderr, "weft bench: --underlay:", err)
		return 2
	}
	o.Underlay = u
	if o.Store == bench.StoreKube {
		if o.KubeAPIServer = kubeAPIServerPath(*kubeAPIServer); o.KubeAPIServer == "" {
			fmt.Fprintln(stderr, "weft bench: --store kube: no kube-apiserver: give --kube-apiserver or $WEFT_KUBE_APISERVER, or build one with tools/kube-apiserver/build.sh")
			return 1
		}
	}
	o.Dir = *dir
	if o.Dir == "" {
		base := ""
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			// etcd fsyncs every write; on tmpfs that costs nothing, so the
			// figures measure the daemon, not this machine's disk.
			base = "/dev/shm"
		}
		d, err := os.MkdirTemp(base, "weft-bench-")
		if err != nil {
			fmt.Fprintln(stderr, "weft bench:", err)
			return 1
		}
		o.Dir = d
		if !o.Keep {
			defer os.RemoveAll(d)
		}
	}
	o.Progress = stderr
	res, err := bench.Run(ctx, o)
	if res != nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(res)
		} else {
			res.Print(stdout)
		}
	}
	if o.Keep {
		fmt.Fprintln(stderr, "weft bench: logs kept in", o.Dir)
	}
	if err != nil {
		fmt.Fprintln(stderr, "\nweft bench:", err)
		return 1
	}
	return 0
}

// kubeAPIServerPath is flag, else $WEFT_KUBE_APISERVER, else the newest
// kube-apiserver tools/kube-apiserver/build.sh cached, else "".
func kubeAPIServerPath(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv("WEFT_KUBE_APISERVER"); p != "" {
		return p
	}
	base := os.Getenv("WEFT_CACHE_DIR")
	if base == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		base = filepath.Join(c, "weft")
	}
	m, _ := filepath.Glob(filepath.Join(base, "kube-apiserver-*", "kube-apiserver"))
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1]
}

func benchReport(path string, stdout io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res bench.Result
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	res.Print(stdout)
	return nil
}
