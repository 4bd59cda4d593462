package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// benchResult is the part of `weft bench --json` this test checks.
type benchResult struct {
	Runs []struct {
		Daemon  string `json:"daemon"`
		Leases  int    `json:"leases"`
		Samples struct {
			N int `json:"n"`
		} `json:"singleJoinMs"`
		Leaves struct {
			N int `json:"n"`
		} `json:"singleLeaveMs"`
		Backend        string      `json:"backend"`
		JoinInstalled  benchCounts `json:"joinInstalled"`
		ColdInstalled  benchCounts `json:"coldInstalled"`
		LeaveRemaining benchCounts `json:"leaveRemaining"`
		PeakRSSMB      float64     `json:"peakRSSMB"`
		CPUSeconds     float64     `json:"cpuSeconds"`
		Errors         []string    `json:"errors"`
	} `json:"runs"`
}

type benchCounts struct{ Routes, Neighs, FDB, WGPeers int }

// TestBench runs a CI-sized `weft bench` against our flanneld, for each
// backend, and checks that what it measured is right — every lease
// installed, after the burst and after the cold start, every one removed,
// every single sample seen — not how fast: timing on a shared CI machine
// proves nothing.
func TestBench(t *testing.T) {
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/",
		"github.com/weft-net/weft/cmd/weft", "github.com/weft-net/weft/cmd/flanneld").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		backend string
		k       int
		// want is every peer's objects, for k peers.
		want func(k int) benchCounts
	}{
		{"vxlan", 200, func(k int) benchCounts { return benchCounts{Routes: k, Neighs: k, FDB: k} }},
		// One WireGuard peer per host; the one device route is for the
		// whole network, so no per-peer route.
		{"wireguard", 50, func(k int) benchCounts { return benchCounts{WGPeers: k} }},
	} {
		t.Run(tc.backend, func(t *testing.T) { benchOne(t, bin, tc.backend, tc.k, tc.want) })
	}
}

func benchOne(t *testing.T, bin, backend string, k int, want func(int) benchCounts) {
	const samples = 5
	cmd := exec.Command(filepath.Join(bin, "weft"), "bench", "--backend", backend,
		"--leases", strconv.Itoa(k), "--samples", strconv.Itoa(samples),
		"--json", "--name", "wtbt", "--dir", filepath.Join(t.TempDir(), "bench"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var res benchResult
	if jerr := json.Unmarshal(stdout, &res); jerr != nil {
		t.Fatalf("weft bench: %v / %v\nstdout: %s\nstderr: %s", err, jerr, stdout, stderr.String())
	}
	if err != nil {
		t.Fatalf("weft bench: %v\nstderr: %s\nstdout: %s", err, stderr.String(), stdout)
	}
	if len(res.Runs) != 1 {
		t.Fatalf("got %d runs, want 1: %s", len(res.Runs), stdout)
	}
	r := res.Runs[0]
	if len(r.Errors) > 0 || r.Leases != k || r.Daemon != "flanneld" || r.Backend != backend {
		t.Errorf("run: daemon %q, backend %q, %d leases, errors %v", r.Daemon, r.Backend, r.Leases, r.Errors)
	}
	for name, c := range map[string]benchCounts{"join burst": r.JoinInstalled, "cold start": r.ColdInstalled} {
		if c != want(k) {
			t.Errorf("%s: installed %+v, want %+v", name, c, want(k))
		}
	}
	if c := r.LeaveRemaining; c != (benchCounts{}) {
		t.Errorf("mass leave: %+v remain, want none", c)
	}
	if r.Samples.N != samples || r.Leaves.N != samples {
		t.Errorf("single samples: %d joins and %d leaves, want %d each", r.Samples.N, r.Leaves.N, samples)
	}
	if r.PeakRSSMB <= 0 || r.CPUSeconds <= 0 {
		t.Errorf("cost not measured: RSS %v MiB, CPU %v s", r.PeakRSSMB, r.CPUSeconds)
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "wtbt-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}
