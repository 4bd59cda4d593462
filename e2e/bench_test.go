package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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
		JoinInstalled  struct{ Routes, Neighs, FDB int } `json:"joinInstalled"`
		ColdInstalled  struct{ Routes, Neighs, FDB int } `json:"coldInstalled"`
		LeaveRemaining struct{ Routes, Neighs, FDB int } `json:"leaveRemaining"`
		PeakRSSMB      float64                           `json:"peakRSSMB"`
		CPUSeconds     float64                           `json:"cpuSeconds"`
		Errors         []string                          `json:"errors"`
	} `json:"runs"`
}

// TestBench runs a CI-sized `weft bench` against our flanneld and checks
// that what it measured is right — every lease installed, after the burst
// and after the cold start, every one removed, every single sample seen —
// not how fast: timing on a shared CI machine proves nothing.
func TestBench(t *testing.T) {
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/",
		"github.com/weft-net/weft/cmd/weft", "github.com/weft-net/weft/cmd/flanneld").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const k, samples = 200, 5
	cmd := exec.Command(filepath.Join(bin, "weft"), "bench", "--leases", "200", "--samples", "5",
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
	if len(r.Errors) > 0 || r.Leases != k || r.Daemon != "flanneld" {
		t.Errorf("run: daemon %q, %d leases, errors %v", r.Daemon, r.Leases, r.Errors)
	}
	for name, c := range map[string]struct{ Routes, Neighs, FDB int }{"join burst": r.JoinInstalled, "cold start": r.ColdInstalled} {
		if c.Routes != k || c.Neighs != k || c.FDB != k {
			t.Errorf("%s: installed %+v, want %d of each", name, c, k)
		}
	}
	if c := r.LeaveRemaining; c.Routes != 0 || c.Neighs != 0 || c.FDB != 0 {
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
