package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
)

// benchKubeResult is the part of `weft bench --store kube --json` this
// test checks.
type benchKubeResult struct {
	Store string `json:"store"`
	Runs  []struct {
		Daemon         string          `json:"daemon"`
		Leases         int             `json:"leases"`
		JoinInstalled  benchCounts     `json:"joinInstalled"`
		ColdInstalled  benchCounts     `json:"coldInstalled"`
		LeaveRemaining benchCounts     `json:"leaveRemaining"`
		Joins          struct{ N int } `json:"singleJoinMs"`
		Leaves         struct{ N int } `json:"singleLeaveMs"`
		Errors         []string        `json:"errors"`
		Kube           *struct {
			NodeBytes          int            `json:"nodeBytes"`
			ChurnUpdates       int            `json:"churnUpdates"`
			ChurnKernelChanges int            `json:"churnKernelChanges"`
			Requests           map[string]int `json:"requests"`
			ColdStartRequests  map[string]int `json:"coldStartRequests"`
		} `json:"kube"`
	} `json:"runs"`
}

// TestBenchKube runs a CI-sized `weft bench --store kube` against our
// flanneld and a real kube-apiserver, and checks what it measured is
// right — every node's peer installed after the annotation burst and the
// cold start, every one removed when the nodes are deleted, every single
// sample seen, the status churn made and met with no kernel change, the
// daemon's requests counted from the audit log — not how fast.
func TestBenchKube(t *testing.T) {
	apiserver := kubetest.Binary(t)
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/",
		"github.com/weft-net/weft/cmd/weft", "github.com/weft-net/weft/cmd/flanneld").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const k, samples = 50, 5
	cmd := exec.Command(filepath.Join(bin, "weft"), "bench", "--store", "kube", "--kube-apiserver", apiserver,
		"--leases", strconv.Itoa(k), "--samples", strconv.Itoa(samples), "--churn-rounds", "1",
		"--json", "--name", "wtbk", "--underlay", "198.18.125.0/24", "--dir", filepath.Join(t.TempDir(), "bench"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var res benchKubeResult
	if jerr := json.Unmarshal(stdout, &res); jerr != nil {
		t.Fatalf("weft bench: %v / %v\nstdout: %s\nstderr: %s", err, jerr, stdout, stderr.String())
	}
	if err != nil {
		t.Fatalf("weft bench: %v\nstderr: %s\nstdout: %s", err, stderr.String(), stdout)
	}
	if res.Store != "kube" || len(res.Runs) != 1 {
		t.Fatalf("store %q, %d runs; want kube, 1: %s", res.Store, len(res.Runs), stdout)
	}
	r := res.Runs[0]
	if len(r.Errors) > 0 || r.Leases != k || r.Daemon != "flanneld" || r.Kube == nil {
		t.Fatalf("run: daemon %q, %d leases, errors %v, kube figures %v", r.Daemon, r.Leases, r.Errors, r.Kube != nil)
	}
	want := benchCounts{Routes: k, Neighs: k, FDB: k}
	for name, c := range map[string]benchCounts{"join burst": r.JoinInstalled, "cold start": r.ColdInstalled} {
		if c != want {
			t.Errorf("%s: installed %+v, want %+v", name, c, want)
		}
	}
	if c := r.LeaveRemaining; c != (benchCounts{}) {
		t.Errorf("mass leave: %+v remain, want none", c)
	}
	if r.Joins.N != samples || r.Leaves.N != samples {
		t.Errorf("single samples: %d joins and %d leaves, want %d each", r.Joins.N, r.Leaves.N, samples)
	}
	kr := r.Kube
	if kr.NodeBytes < 2000 {
		t.Errorf("synthetic node is %d bytes of JSON; real ones are a few KB", kr.NodeBytes)
	}
	if kr.ChurnUpdates != k+1 {
		t.Errorf("status churn: %d updates, want one per node (%d)", kr.ChurnUpdates, k+1)
	}
	if kr.ChurnKernelChanges != 0 {
		t.Errorf("status churn: %d kernel changes, want 0 (nothing the daemon uses changed)", kr.ChurnKernelChanges)
	}
	// The daemon lists and watches nodes at least once per start (two
	// starts), and patches its node's status at least once.
	if kr.Requests["list"] < 2 || kr.Requests["watch"] < 2 || kr.Requests["patch"] < 1 {
		t.Errorf("API requests from the audit log: %v; want ≥ 2 lists, ≥ 2 watches, ≥ 1 patch", kr.Requests)
	}
	if kr.ColdStartRequests["list"] < 1 {
		t.Errorf("cold start made no list: %v", kr.ColdStartRequests)
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "wtbk-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}
