package probe

import (
	"context"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// BenchmarkProberRound5000 measures what probing K = 5,000 peers costs
// per round: a Prober over 5,000 loopback addresses of a namespace (all
// answer), one round per second instead of 30 (the same probes, packed
// closer). It reports the process's CPU time (user + system, which
// includes the kernel's work for the requests and, on loopback, for the
// replies too) per round, and the allocations.
//
//	go test -run X -bench ProberRound -benchtime 5x ./internal/probe/
func BenchmarkProberRound5000(b *testing.B) {
	const k = 5000
	_, ns := testNS(b)
	p := openIn(b, ns, false)
	targets := make([]Target[int], k)
	for i := range targets {
		targets[i] = Target[int]{Key: i, Addr: netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})}
	}
	const interval = time.Second
	pr := New(Config[int]{Pinger: p, Interval: interval, Targets: func() []Target[int] { return append([]Target[int](nil), targets...) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pr.Run(ctx) }()
	// One round to warm up.
	time.Sleep(interval + 200*time.Millisecond)
	if r := pr.Report(); r.Reachable != k {
		b.Fatalf("after a round: %d/%d reachable", r.Reachable, k)
	}
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	start := time.Now()
	time.Sleep(time.Duration(b.N) * interval)
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	elapsed := time.Since(start)
	cancel()
	<-done
	cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()+after.Stime.Nano()-before.Stime.Nano()) * interval / elapsed
	b.ReportMetric(float64(cpu.Microseconds())/1000, "cpu-ms/round")
	b.ReportMetric(float64(after.Utime.Nano()-before.Utime.Nano())/float64(elapsed.Nanoseconds())*float64(interval.Nanoseconds())/1e6, "user-ms/round")
	if r := pr.Report(); r.Reachable != k || r.Unreachable != 0 {
		b.Errorf("%d/%d reachable, %d unreachable", r.Reachable, k, r.Unreachable)
	}
}
