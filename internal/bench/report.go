package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"

	"github.com/weft-net/weft/internal/dataplane"
)

// Result is a whole benchmark: every run of every daemon at every K.
type Result struct {
	CPUs    int         `json:"cpus"`
	Daemons []Daemon    `json:"daemons"`
	Leases  []int       `json:"leases"`
	Samples int         `json:"samples"`
	Runs    []RunResult `json:"runs"`
}

// RunResult is one daemon at one K. Times are seconds unless the name
// says Ms.
type RunResult struct {
	Daemon string `json:"daemon"`
	Path   string `json:"path"`
	Leases int    `json:"leases"`
	Run    int    `json:"run"`

	// JoinWrites is how long writing the K leases took; JoinBurst runs
	// from the first write, JoinBurstLag from the last acknowledged one,
	// to all K routes, neighbours and FDB entries present.
	JoinWrites   float64 `json:"joinWrites"`
	JoinBurst    float64 `json:"joinBurst"`
	JoinBurstLag float64 `json:"joinBurstLag"`
	// ColdStart runs from starting the daemon (K leases in etcd, its
	// device deleted) to all K present; ColdStartSubnetEnv to subnet.env
	// rewritten.
	ColdStart          float64 `json:"coldStart"`
	ColdStartSubnetEnv float64 `json:"coldStartSubnetEnv"`
	// SingleJoin and SingleLeave: etcd Put (Delete) → RTM_NEWROUTE
	// (RTM_DELROUTE) with K installed, in milliseconds.
	SingleJoin  Stats `json:"singleJoinMs"`
	SingleLeave Stats `json:"singleLeaveMs"`
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

	// Correctness: counts when each phase ended.
	JoinInstalled  dataplane.DevCounts `json:"joinInstalled"`
	ColdInstalled  dataplane.DevCounts `json:"coldInstalled"`
	LeaveRemaining dataplane.DevCounts `json:"leaveRemaining"`
	Errors         []string            `json:"errors,omitempty"`
}

// Stats summarise samples (milliseconds).
type Stats struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
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
}

// tableRows are the figures, in table order.
func tableRows() []row {
	return []row{
		{"join burst: writes took", func(r *RunResult) float64 { return r.JoinWrites }, "s"},
		{"join burst: first write → all K present", func(r *RunResult) float64 { return r.JoinBurst }, "s"},
		{"join burst: lag after last write", func(r *RunResult) float64 { return r.JoinBurstLag }, "s"},
		{"cold start → all K present", func(r *RunResult) float64 { return r.ColdStart }, "s"},
		{"cold start → subnet.env", func(r *RunResult) float64 { return r.ColdStartSubnetEnv }, "s"},
		{"single join median", func(r *RunResult) float64 { return r.SingleJoin.Median }, "ms"},
		{"single join p90", func(r *RunResult) float64 { return r.SingleJoin.P90 }, "ms"},
		{"single join p99", func(r *RunResult) float64 { return r.SingleJoin.P99 }, "ms"},
		{"single join max", func(r *RunResult) float64 { return r.SingleJoin.Max }, "ms"},
		{"  of which etcd Put ack (median)", func(r *RunResult) float64 { return r.SinglePutAck.Median }, "ms"},
		{"single leave median", func(r *RunResult) float64 { return r.SingleLeave.Median }, "ms"},
		{"single leave p90", func(r *RunResult) float64 { return r.SingleLeave.P90 }, "ms"},
		{"single leave p99", func(r *RunResult) float64 { return r.SingleLeave.P99 }, "ms"},
		{"single leave max", func(r *RunResult) float64 { return r.SingleLeave.Max }, "ms"},
		{"mass leave: deletes took", func(r *RunResult) float64 { return r.LeaveWrites }, "s"},
		{"mass leave: first delete → all gone", func(r *RunResult) float64 { return r.MassLeave }, "s"},
		{"mass leave: lag after last delete", func(r *RunResult) float64 { return r.MassLeaveLag }, "s"},
		{"peak RSS (VmHWM)", func(r *RunResult) float64 { return r.PeakRSSMB }, "MiB"},
		{"CPU seconds (whole run)", func(r *RunResult) float64 { return r.CPUSeconds }, "s"},
		{"log bytes per lease event", func(r *RunResult) float64 { return r.LogBytesPerEvent }, "B"},
		{"log bytes at cold start", func(r *RunResult) float64 { return float64(r.ColdStartLogBytes) }, "B"},
	}
}

// Print writes one table per K: a column per daemon (the median over its
// runs) and, with two daemons, the ratio second/first.
func (res *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "weft bench: %d CPUs, %d single samples per run\n", res.CPUs, res.Samples)
	for i, d := range res.Daemons {
		fmt.Fprintf(w, "  %c = %s (%s)\n", 'A'+i, d.Name, d.Path)
	}
	for _, k := range res.Leases {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "K = %d\tunit\t", k)
		for i, d := range res.Daemons {
			fmt.Fprintf(tw, "%c %s\t", 'A'+i, d.Name)
		}
		if len(res.Daemons) == 2 {
			fmt.Fprint(tw, "B/A\t")
		}
		fmt.Fprintln(tw)
		for _, rw := range tableRows() {
			fmt.Fprintf(tw, "%s\t%s\t", rw.name, rw.unit)
			var vals []float64
			for _, d := range res.Daemons {
				v, ok := res.median(d.Name, k, rw.get)
				vals = append(vals, v)
				if ok {
					fmt.Fprintf(tw, "%s\t", format(v))
				} else {
					fmt.Fprint(tw, "-\t")
				}
			}
			if len(vals) == 2 {
				if vals[0] > 0 {
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
				fmt.Fprintf(w, "  %s run %d failed: %v\n", r.Daemon, r.Run, r.Errors)
			}
		}
	}
}

// median of a figure over the successful runs of daemon at k.
func (res *Result) median(daemon string, k int, get func(*RunResult) float64) (float64, bool) {
	var xs []float64
	for i := range res.Runs {
		r := &res.Runs[i]
		if r.Daemon == daemon && r.Leases == k && len(r.Errors) == 0 {
			xs = append(xs, get(r))
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
