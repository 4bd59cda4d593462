package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"

	"github.com/weft-net/weft/internal/config"
)

// Result is a whole benchmark: every run of every daemon at every K.
type Result struct {
	CPUs int `json:"cpus"`
	// Store is etcd or kube (absent in results from before kube: etcd).
	Store   string   `json:"store,omitempty"`
	Daemons []Daemon `json:"daemons"`
	// Backends are the backends measured (absent in results from before
	// wireguard: vxlan alone).
	Backends []string    `json:"backends,omitempty"`
	Leases   []int       `json:"leases"`
	Samples  int         `json:"samples"`
	Runs     []RunResult `json:"runs"`
}

// RunResult is one daemon at one K. Times are seconds unless the name
// says Ms.
type RunResult struct {
	Daemon string `json:"daemon"`
	Path   string `json:"path"`
	// Backend is the network config's backend type ("" in results from
	// before wireguard: vxlan).
	Backend string `json:"backend,omitempty"`
	Leases  int    `json:"leases"`
	Run     int    `json:"run"`

	// JoinWrites is how long writing the K leases took; JoinBurst runs
	// from the first write, JoinBurstLag from the last acknowledged one,
	// to every peer's objects present (vxlan: K routes, neighbours and
	// FDB entries; wireguard: K WireGuard peers).
	JoinWrites   float64 `json:"joinWrites"`
	JoinBurst    float64 `json:"joinBurst"`
	JoinBurstLag float64 `json:"joinBurstLag"`
	// ColdStart runs from starting the daemon (K leases in etcd, its
	// device deleted) to all K present; ColdStartSubnetEnv to subnet.env
	// rewritten.
	ColdStart          float64 `json:"coldStart"`
	ColdStartSubnetEnv float64 `json:"coldStartSubnetEnv"`
	// SingleJoin and SingleLeave: etcd Put (Delete) → the peer's object
	// seen, with K installed, in milliseconds. vxlan: the arrival of its
	// RTM_NEWROUTE (RTM_DELROUTE); wireguard, which announces nothing:
	// the end of the first poll (every 2 ms) that finds its public key
	// present (absent).
	SingleJoin  Stats `json:"singleJoinMs"`
	SingleLeave Stats `json:"singleLeaveMs"`
	// SingleJoinLow and SingleLeaveLow (wireguard) are the lower bounds
	// polling gives: from the write to the start of the last poll that
	// did not yet show the change.
	SingleJoinLow  *Stats `json:"singleJoinLowMs,omitempty"`
	SingleLeaveLow *Stats `json:"singleLeaveLowMs,omitempty"`
	// SinglePutAck is how long each single join's Put took to be
	// acknowledged by etcd: the part of SingleJoin no daemon can shorten
	// (the watch event leaves etcd at about the same time).
	SinglePutAck Stats `json:"singlePutAckMs"`
	// LeaveWrites, MassLeave and MassLeaveLag mirror the join burst for
	// deleting all K.
	LeaveWrites  float64 `json:"leaveWrites"`
	MassLeave    float64 `json:"massLeave"`
	MassLeaveLag float64 `json:"massLeaveLag"`
	// PeakRSSMB is the larger VmHWM of the two daemon processes (before
	// and after the cold start), in MiB; CPUSeconds their user+system
	// time summed over the whole run.
	PeakRSSMB  float64 `json:"peakRSSMB"`
	CPUSeconds float64 `json:"cpuSeconds"`
	// LogBytesPerEvent is what the daemon logged during the join burst,
	// the single samples and the mass leave, per lease added or removed;
	// ColdStartLogBytes what it logged starting with K leases; LogBytes
	// the whole log.
	LogBytesPerEvent  float64 `json:"logBytesPerEvent"`
	ColdStartLogBytes int64   `json:"coldStartLogBytes"`
	LogBytes          int64   `json:"logBytes"`
	// ObserverGets is how many times the bench asked a userspace
	// WireGuard device for its peers over UAPI, ObserverGetSeconds the
	// wall time those gets took. The device runs inside the daemon, so
	// serving them is in its CPU seconds (and a get holds the device's
	// configuration lock against the daemon's writes); zero for vxlan and
	// kernel devices, which the kernel answers.
	ObserverGets       int     `json:"observerGets,omitempty"`
	ObserverGetSeconds float64 `json:"observerGetSeconds,omitempty"`
	// SingleGet is the wall time of each get made while awaiting single
	// joins and leaves, in milliseconds: with the 2 ms period, the
	// resolution of SingleJoin and SingleLeave. A get holds the userspace
	// device's configuration lock, so a daemon write arriving meanwhile
	// waits for it.
	SingleGet *Stats `json:"singleGetMs,omitempty"`

	// Kube holds the Kubernetes-mode figures.
	Kube *KubeResult `json:"kube,omitempty"`

	// Correctness: counts when each phase ended.
	JoinInstalled  Counts   `json:"joinInstalled"`
	ColdInstalled  Counts   `json:"coldInstalled"`
	LeaveRemaining Counts   `json:"leaveRemaining"`
	Errors         []string `json:"errors,omitempty"`
}

// Stats summarise samples (milliseconds).
type Stats struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
}

// median is s's median, NaN (shown as "-") without samples.
func (s *Stats) median() float64 {
	if s == nil {
		return math.NaN()
	}
	return s.Median
}

func summarize(xs []float64) Stats {
	if len(xs) == 0 {
		return Stats{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Stats{N: len(s), Median: quantile(s, 0.5), P90: quantile(s, 0.9), P99: quantile(s, 0.99), Max: s[len(s)-1]}
}

// quantile of sorted s by the nearest-rank method: with 20 samples, p99
// is the maximum, which is the honest answer.
func quantile(s []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

type row struct {
	name string
	get  func(*RunResult) float64
	unit string
	// only, if set, names the measurement the figure belongs to: "wg"
	// (shown when wireguard was measured), "kube" (Kubernetes mode).
	only string
}

// tableRows are the figures, in table order.
func tableRows() []row {
	kube := func(f func(*KubeResult) float64) func(*RunResult) float64 {
		return func(r *RunResult) float64 {
			if r.Kube == nil {
				return math.NaN()
			}
			return f(r.Kube)
		}
	}
	perEvent := func(r *RunResult) float64 {
		if r.Kube == nil {
			return math.NaN()
		}
		return float64(r.Kube.SinglesRequests.Total()) / float64(max(1, r.SingleJoin.N+r.SingleLeave.N))
	}
	return []row{
		{"nodes: create K+samples+1 (before the daemon)", kube(func(k *KubeResult) float64 { return k.NodesCreate }), "s", "kube"},
		{"  one node's JSON", kube(func(k *KubeResult) float64 { return float64(k.NodeBytes) }), "B", "kube"},
		{"join burst: writes took", func(r *RunResult) float64 { return r.JoinWrites }, "s", ""},
		{"join burst: first write → all K present", func(r *RunResult) float64 { return r.JoinBurst }, "s", ""},
		{"join burst: lag after last write", func(r *RunResult) float64 { return r.JoinBurstLag }, "s", ""},
		{"cold start → all K present", func(r *RunResult) float64 { return r.ColdStart }, "s", ""},
		{"cold start → subnet.env", func(r *RunResult) float64 { return r.ColdStartSubnetEnv }, "s", ""},
		{"single join median", func(r *RunResult) float64 { return r.SingleJoin.Median }, "ms", ""},
		{"single join p90", func(r *RunResult) float64 { return r.SingleJoin.P90 }, "ms", ""},
		{"single join p99", func(r *RunResult) float64 { return r.SingleJoin.P99 }, "ms", ""},
		{"single join max", func(r *RunResult) float64 { return r.SingleJoin.Max }, "ms", ""},
		{"  lower bound (median)", func(r *RunResult) float64 { return r.SingleJoinLow.median() }, "ms", "wg"},
		{"  of which the write's ack (median)", func(r *RunResult) float64 { return r.SinglePutAck.Median }, "ms", ""},
		{"single leave median", func(r *RunResult) float64 { return r.SingleLeave.Median }, "ms", ""},
		{"single leave p90", func(r *RunResult) float64 { return r.SingleLeave.P90 }, "ms", ""},
		{"single leave p99", func(r *RunResult) float64 { return r.SingleLeave.P99 }, "ms", ""},
		{"single leave max", func(r *RunResult) float64 { return r.SingleLeave.Max }, "ms", ""},
		{"  lower bound (median)", func(r *RunResult) float64 { return r.SingleLeaveLow.median() }, "ms", "wg"},
		{"mass leave: deletes took", func(r *RunResult) float64 { return r.LeaveWrites }, "s", ""},
		{"mass leave: first delete → all gone", func(r *RunResult) float64 { return r.MassLeave }, "s", ""},
		{"mass leave: lag after last delete", func(r *RunResult) float64 { return r.MassLeaveLag }, "s", ""},
		{"status churn: node status updates", kube(func(k *KubeResult) float64 { return float64(k.ChurnUpdates) }), "", "kube"},
		{"  they took", kube(func(k *KubeResult) float64 { return k.ChurnSeconds }), "s", "kube"},
		{"  daemon CPU meanwhile", kube(func(k *KubeResult) float64 { return k.ChurnCPU }), "s", "kube"},
		{"  kernel changes meanwhile", kube(func(k *KubeResult) float64 { return float64(k.ChurnKernelChanges) }), "", "kube"},
		{"  daemon API requests meanwhile", kube(func(k *KubeResult) float64 { return float64(k.ChurnRequests.Total()) }), "", "kube"},
		{"API requests: whole run", kube(func(k *KubeResult) float64 { return float64(k.Requests.Total()) }), "", "kube"},
		{"API requests: cold start", kube(func(k *KubeResult) float64 { return float64(k.ColdStartRequests.Total()) }), "", "kube"},
		{"API requests per single join/leave", perEvent, "", "kube"},
		{"peak RSS (VmHWM)", func(r *RunResult) float64 { return r.PeakRSSMB }, "MiB", ""},
		{"CPU seconds (whole run)", func(r *RunResult) float64 { return r.CPUSeconds }, "s", ""},
		{"log bytes per lease event", func(r *RunResult) float64 { return r.LogBytesPerEvent }, "B", ""},
		{"log bytes at cold start", func(r *RunResult) float64 { return float64(r.ColdStartLogBytes) }, "B", ""},
		{"UAPI gets served for the bench", func(r *RunResult) float64 { return float64(r.ObserverGets) }, "", "wg"},
		{"  their wall time", func(r *RunResult) float64 { return r.ObserverGetSeconds }, "s", "wg"},
		{"  one get while sampling singles (median)", func(r *RunResult) float64 { return r.SingleGet.median() }, "ms", "wg"},
	}
}

// column is one (backend, daemon) pair of a table.
type column struct{ backend, daemon string }

// columns are the table's columns: every daemon for every backend.
func (res *Result) columns() []column {
	bs := res.Backends
	if len(bs) == 0 {
		bs = []string{config.BackendVXLAN}
	}
	var cs []column
	for _, b := range bs {
		for _, d := range res.Daemons {
			cs = append(cs, column{b, d.Name})
		}
	}
	return cs
}

// Print writes one table per K: a column per daemon and backend (the
// median over its runs) and, with two columns, the ratio second/first.
func (res *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "weft bench: %d CPUs, %d single samples per run\n", res.CPUs, res.Samples)
	if res.Store == StoreKube {
		fmt.Fprintln(w, "  Kubernetes mode: --kube-subnet-mgr against a real kube-apiserver; joins annotate a node, leaves delete it")
	}
	for _, d := range res.Daemons {
		fmt.Fprintf(w, "  %s = %s\n", d.Name, d.Path)
	}
	cols := res.columns()
	wg := false
	for _, c := range cols {
		wg = wg || c.backend == config.BackendWireGuard
	}
	if wg {
		fmt.Fprintln(w, "  wireguard single join/leave: first poll (every 2 ms) showing the peer's public key present/absent; no per-peer route exists")
	}
	for _, k := range res.Leases {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "K = %d\tunit\t", k)
		for i, c := range cols {
			fmt.Fprintf(tw, "%c %s %s\t", 'A'+i, c.daemon, c.backend)
		}
		if len(cols) == 2 {
			fmt.Fprint(tw, "B/A\t")
		}
		fmt.Fprintln(tw)
		for _, rw := range tableRows() {
			if rw.only == "wg" && !wg || rw.only == "kube" && res.Store != StoreKube {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t", rw.name, rw.unit)
			var vals []float64
			for _, c := range cols {
				v, ok := res.median(c, k, rw.get)
				if !ok {
					v = math.NaN()
				}
				vals = append(vals, v)
				if ok && rw.unit == "" && v == math.Trunc(v) {
					fmt.Fprintf(tw, "%.0f\t", v)
				} else if ok {
					fmt.Fprintf(tw, "%s\t", format(v))
				} else {
					fmt.Fprint(tw, "-\t")
				}
			}
			if len(vals) == 2 {
				if vals[0] > 0 && !math.IsNaN(vals[1]) {
					fmt.Fprintf(tw, "%.2f\t", vals[1]/vals[0])
				} else {
					fmt.Fprint(tw, "-\t")
				}
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		for _, r := range res.Runs {
			if r.Leases == k && len(r.Errors) > 0 {
				fmt.Fprintf(w, "  %s %s run %d failed: %v\n", r.Daemon, r.backend(), r.Run, r.Errors)
			}
		}
	}
}

// backend is r's backend; results from before wireguard have none.
func (r *RunResult) backend() string {
	if r.Backend == "" {
		return config.BackendVXLAN
	}
	return r.Backend
}

// median of a figure over the successful runs of column c at k.
func (res *Result) median(c column, k int, get func(*RunResult) float64) (float64, bool) {
	var xs []float64
	for i := range res.Runs {
		r := &res.Runs[i]
		if r.Daemon == c.daemon && r.backend() == c.backend && r.Leases == k && len(r.Errors) == 0 {
			if v := get(r); !math.IsNaN(v) {
				xs = append(xs, v)
			}
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	slices.Sort(xs)
	return quantile(xs, 0.5), true
}

func format(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
