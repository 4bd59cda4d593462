package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
	"github.com/weft-net/weft/internal/tools/lab"
)

// TestKubeAPIServerRestart restarts the cluster's only kube-apiserver
// (default settings: watch cache on) while pods on three hosts ping each
// other at 100/s: nothing is lost, the daemons stay alive and ready and say
// the store is unreachable, the kernel is not touched, the watches come
// back with at most one LIST each (the new watch cache may not have their
// resourceVersion), and a node added as soon as the server answers is
// installed everywhere within 0.5 s.
func TestKubeAPIServerRestart(t *testing.T) {
	const n, port = 72, 9172
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	underlay := fmt.Sprintf("198.18.%d.0/24", n)
	// An audit log of node LISTs says who listed, and when.
	dir := t.TempDir()
	policy, audit := filepath.Join(dir, "audit-policy.yaml"), filepath.Join(dir, "audit.log")
	if err := os.WriteFile(policy, []byte(`apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["list"]
  resources: [{group: "", resources: ["nodes"]}]
- level: None
`), 0o644); err != nil {
		t.Fatal(err)
	}
	k := startKubeAPI(t, underlay, "--audit-policy-file="+policy, "--audit-log-path="+audit)
	c := newCluster(t, "wtou3", 3, underlay, "")
	st := k.store(kubeNetConf(n, false), podCIDRs(n, false))(c)
	c.startAll(append(st.flags, "--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", port))...)
	var pods []*lab.Pod
	for _, h := range c.Hosts {
		pods = append(pods, c.addPod(h, "p"))
	}
	for i, p := range pods {
		if err := podPing(p, pods[(i+1)%len(pods)].IPv4.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	routesBefore := map[string]string{}
	changedBefore := map[string]float64{}
	for _, h := range c.Hosts {
		waitFor(t, h.NS+" readyz 200", 10*time.Second, func() bool { code, _ := c.curl(h, base+"/readyz"); return code == 200 })
		routesBefore[h.NS] = c.sh(h, "ip", "route", "show")
		_, body := c.curl(h, base+"/metrics")
		changedBefore[h.NS] = metricValue(body, "flannel_kernel_objects_changed_total")
	}

	const down = 5 * time.Second
	count := int((down + 15*time.Second) / (10 * time.Millisecond))
	var pingers []*pinger
	for i, p := range pods {
		dst := pods[(i+1)%len(pods)]
		pingers = append(pingers, startPing(t, p.NS+" -> "+dst.NS, p.NS, netip.Addr{}, dst.IPv4, count))
	}
	monitors := make([]*monitor, len(c.Hosts))
	for i, h := range c.Hosts {
		monitors[i] = startMonitor(t, h.NS)
	}
	health := c.pollHealth(base, time.Second)
	newPeer := netip.MustParsePrefix(fmt.Sprintf("10.%d.200.0/24", n))
	seen := make([]<-chan time.Time, len(c.Hosts))
	for i, h := range c.Hosts {
		seen[i] = routeAppears(t, h.NS, newPeer)
	}
	time.Sleep(2 * time.Second)

	stopAt := time.Now()
	k.srv.Stop()
	t.Logf("kube-apiserver stopped (SIGTERM; it took %v to exit)", time.Since(stopAt).Round(time.Millisecond))
	for _, h := range c.Hosts {
		waitFor(t, h.NS+" readyz to say the store is unreachable", 10*time.Second, func() bool {
			code, body := c.curl(h, base+"/readyz")
			return code == 200 && strings.HasPrefix(body, "ok\nstore unreachable since ")
		})
	}
	time.Sleep(time.Until(stopAt.Add(down)))

	answered := k.srv.Restart(t)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "wtou3-extra", Annotations: map[string]string{
			annPrefix + "kube-subnet-manager": "true",
			annPrefix + "backend-type":        "vxlan",
			annPrefix + "backend-data":        `{"VNI":1,"VtepMAC":"02:00:00:00:99:99"}`,
			annPrefix + "public-ip":           fmt.Sprintf("198.18.%d.99", n),
		}},
		Spec: corev1.NodeSpec{PodCIDR: newPeer.String(), PodCIDRs: []string{newPeer.String()}},
	}
	if _, err := k.srv.Admin.CoreV1().Nodes().Create(k.ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	routes := routeTimes(t, c, seen, 10*time.Second)
	var per []string
	for i, h := range c.Hosts {
		per = append(per, fmt.Sprintf("%s %v", h.NS, routes[i].Sub(answered).Round(time.Millisecond)))
	}
	took := latest(routes).Sub(answered)
	t.Logf("kube-apiserver back after %v down; a node created %v after it answered was in every kernel %v after it answered (%v after the create): %s",
		answered.Sub(stopAt).Round(time.Millisecond), created.Sub(answered).Round(time.Millisecond),
		took.Round(time.Millisecond), latest(routes).Sub(created).Round(time.Millisecond), strings.Join(per, ", "))
	if took > 500*time.Millisecond {
		t.Errorf("a node added once the API server answered again reached the last kernel %v later, want ≤ 0.5 s", took)
	}

	// Node LISTs by the daemons (kube-flannel's service account) since the
	// server was stopped, from the audit log.
	lists := flannelNodeLists(t, audit, stopAt)
	var restarts []string
	for _, h := range c.Hosts {
		_, body := c.curl(h, base+"/metrics")
		restarts = append(restarts, fmt.Sprintf("%s %v (relists %v)", h.NS,
			metricValue(body, "flannel_store_watch_restarts_total"),
			metricValue(body, `flannel_store_watch_restarts_total{reason="compacted"}`)))
	}
	t.Logf("node LISTs by the daemons since the stop: %d for %d hosts; watch restarts counted: %s", lists, len(c.Hosts), strings.Join(restarts, ", "))
	if lists > len(c.Hosts) {
		t.Errorf("%d node LISTs by the daemons across the restart for %d hosts, want at most one each", lists, len(c.Hosts))
	}

	for _, p := range pingers {
		sent, lost := p.wait(t)
		t.Logf("%s at 100/s across the restart: %d sent, %d lost", p.what, sent, lost)
		if lost != 0 {
			t.Errorf("%s lost %d of %d pings across the restart", p.what, lost, sent)
		}
	}
	unreachable, total := health.check(t)
	t.Logf("healthz and readyz polled every second on every host: %d answers, all 200; %d readyz answers said the store was unreachable", total, unreachable)
	var needles []string
	for i := range c.Hosts {
		needles = append(needles, c.subnets[i].String(), c.subnets[i].Addr().String())
	}
	for i, h := range c.Hosts {
		if del := monitors[i].deleted(needles...); len(del) > 0 {
			t.Errorf("%s: kernel objects deleted across the restart: %q", h.NS, del)
		}
		var kept []string
		for _, line := range strings.Split(c.sh(h, "ip", "route", "show"), "\n") {
			if !strings.Contains(line, newPeer.Addr().String()) {
				kept = append(kept, line)
			}
		}
		if got := strings.Join(kept, "\n"); got != routesBefore[h.NS] {
			t.Errorf("%s: routes changed across the restart (besides the new node's):\n%s\n---\n%s", h.NS, routesBefore[h.NS], got)
		}
		_, body := c.curl(h, base+"/metrics")
		// The new node's route, neighbour and FDB entry, nothing else.
		if d := metricValue(body, "flannel_kernel_objects_changed_total") - changedBefore[h.NS]; d != 3 {
			t.Errorf("%s: %v kernel objects written across the restart, want the new node's 3", h.NS, d)
		}
		if done, err := h.Exited(); done {
			t.Errorf("%s: flanneld exited: %v", h.NS, err)
		}
	}
}

// flannelNodeLists counts the node LISTs kube-flannel's service account
// made since since, from a kube-apiserver audit log.
func flannelNodeLists(t *testing.T, path string, since time.Time) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		var ev struct {
			Verb                     string
			User                     struct{ Username string }
			ObjectRef                struct{ Resource string }
			RequestReceivedTimestamp time.Time
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit log line %q: %v", line, err)
		}
		if ev.Verb == "list" && ev.ObjectRef.Resource == "nodes" && ev.User.Username == kubetest.FlannelUser && !ev.RequestReceivedTimestamp.Before(since) {
			n++
		}
	}
	return n
}
