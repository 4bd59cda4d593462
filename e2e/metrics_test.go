package e2e

// Health endpoints, metrics and masquerading end to end.

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/lab"
)

func (c *cluster) curl(h *lab.Host, url string) (int, string) {
	c.t.Helper()
	out, err := c.Exec(context.Background(), h, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", url)
	if err != nil {
		return 0, out
	}
	i := strings.LastIndexByte(strings.TrimRight(out, "\n"), '\n')
	code, _ := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	return code, out[:i+1]
}

func metricValue(body, name string) float64 {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name) && (len(line) > len(name) && (line[len(name)] == ' ' || line[len(name)] == '{')) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func TestHealthAndMetrics(t *testing.T) {
	c := newCluster(t, "wthm", 2, "198.18.16.0/24", `{"Network":"10.16.0.0/16"}`)
	c.startAll("--healthz-ip=127.0.0.1", "--healthz-port=9101", "--resync-period=1s")
	h := c.Hosts[0]
	base := "http://127.0.0.1:9101"
	waitFor(t, "readyz 200", 10*time.Second, func() bool { code, _ := c.curl(h, base+"/readyz"); return code == 200 })
	if code, body := c.curl(h, base+"/healthz"); code != 200 {
		t.Errorf("healthz = %d %q", code, body)
	}
	_, body := c.curl(h, base+"/metrics")
	if v := metricValue(body, "flannel_peers"); v != 1 {
		t.Errorf("flannel_peers = %v, want 1\n%s", v, body)
	}
	for _, name := range []string{"flannel_reconcile_passes_total", "flannel_lease_expiry_timestamp_seconds", "flannel_kernel_objects_changed_total"} {
		if metricValue(body, name) <= 0 {
			t.Errorf("%s not positive", name)
		}
	}

	// Drift shows up as repairs.
	c.sh(h, "ip", "route", "del", c.subnets[1].String())
	waitFor(t, "repair counted", 10*time.Second, func() bool {
		_, body := c.curl(h, base+"/metrics")
		return metricValue(body, "flannel_kernel_objects_repaired_total") >= 1
	})

	// etcd goes away: the node stays ready, saying since when the store is
	// unreachable, and the watch restarts are counted.
	c.Etcd.Close()
	waitFor(t, "watch restarts counted", 60*time.Second, func() bool {
		_, body := c.curl(h, base+"/metrics")
		return metricValue(body, "flannel_store_watch_restarts_total") >= 1 &&
			metricValue(body, "flannel_store_unreachable_since_timestamp_seconds") > 0
	})
	if code, body := c.curl(h, base+"/readyz"); code != 200 || !strings.HasPrefix(body, "ok\nstore unreachable since ") {
		t.Errorf("readyz with etcd down = %d %q, want 200 saying the store is unreachable", code, body)
	}
	if err := c.pingUntil(h, netip.Addr{}, c.subnets[1].Addr(), 5*time.Second); err != nil {
		t.Errorf("overlay with etcd down: %v", err)
	}

	// The status is not on the network (no --healthz-status)...
	if code, body := c.curl(h, base+"/v1/status"); code != 404 {
		t.Errorf("/v1/status on the healthz listener = %d %q, want 404", code, body)
	}
	if out, err := c.Exec(context.Background(), h, weftBin, "status", "--url", base); err == nil || !strings.Contains(out, "--healthz-status") {
		t.Errorf("weft status --url without --healthz-status: %v\n%s", err, out)
	}
	// ...but on a socket beside the subnet file that only root may open.
	sock := filepath.Join(filepath.Dir(h.SubnetFile), "weft.sock")
	if fi, err := os.Stat(sock); err != nil {
		t.Errorf("status socket: %v", err)
	} else if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("status socket %s: mode %v, want a socket with 0600", sock, fi.Mode())
	}
	// weft status on the host, with no flags (the lab shows each host its
	// own directory as /run/flannel): one peer, kernel in sync with the plan.
	out, err := c.Exec(context.Background(), h, weftBin, "status", "--json")
	if err != nil {
		t.Fatalf("weft status: %v\n%s", err, out)
	}
	var st struct {
		Daemon struct {
			Lease struct{ Subnet string }
			Peers []struct{ Subnet string }
		}
		Drift struct {
			Desired        int
			Missing, Extra []string
		}
		Readyz string
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("weft status --json: %v\n%s", err, out)
	}
	if st.Daemon.Lease.Subnet != c.subnets[0].String() || len(st.Daemon.Peers) != 1 || !strings.HasPrefix(st.Readyz, "ok\nstore unreachable since ") {
		t.Errorf("weft status = %s", out)
	}
	if st.Drift.Desired == 0 || len(st.Drift.Missing) != 0 || len(st.Drift.Extra) != 0 {
		t.Errorf("weft status drift = %+v, want in sync", st.Drift)
	}
}

// nftCounter installs a counting rule in ns for ICMP echo requests from
// src and returns a function reading the count.
func (c *cluster) nftCounter(ns string, src netip.Addr) func() int {
	c.t.Helper()
	run := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			c.t.Fatalf("nft %v in %s: %v\n%s", args, ns, err, out)
		}
		return string(out)
	}
	run("add", "table", "ip", "wtcount")
	run("add", "chain", "ip", "wtcount", "in", "{ type filter hook input priority 0 ; }")
	run("add", "rule", "ip", "wtcount", "in", "ip", "saddr", src.String(), "icmp", "type", "echo-request", "counter")
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		m := re.FindStringSubmatch(run("list", "chain", "ip", "wtcount", "in"))
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
}

func TestIPMasq(t *testing.T) {
	c := newCluster(t, "wtmq", 2, "198.18.17.0/24", `{"Network":"10.17.0.0/16"}`)
	// An "external" host on the underlay with no route to the pod network:
	// a pod's packet comes back only if it was masqueraded to the host.
	ext := "wtmq-ext"
	extIP := netip.MustParseAddr("198.18.17.200")
	for _, args := range [][]string{
		{"netns", "add", ext},
		{"-n", c.Hub, "link", "add", "name", "wtmq-vx", "type", "veth", "peer", "name", "eth0", "netns", ext},
		{"-n", c.Hub, "link", "set", "wtmq-vx", "master", "br0", "up"},
		{"-n", ext, "addr", "add", extIP.String() + "/24", "dev", "eth0"},
		{"-n", ext, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ext).Run() })
	c.startAll("--ip-masq")
	c.addBridges()
	h1, h2 := c.Hosts[0], c.Hosts[1]
	pod1 := subnetenv.GatewayOf(c.subnets[h1.Index]).Addr()
	pod2 := subnetenv.GatewayOf(c.subnets[h2.Index]).Addr()

	seenAsHost := c.nftCounter(ext, h1.IP)
	if err := c.pingUntil(h1, pod1, extIP, 15*time.Second); err != nil {
		t.Fatalf("pod to external with --ip-masq: %v", err)
	}
	if seenAsHost() == 0 {
		t.Error("the external host did not see the host's address as the source")
	}

	// Pod to pod keeps the pod's address.
	seenAsPod := c.nftCounter(h2.NS, pod1)
	if err := c.pingUntil(h1, pod1, pod2, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if seenAsPod() == 0 {
		t.Error("pod-to-pod traffic was masqueraded (peer did not see the pod's address)")
	}

	// A deleted rule is restored by the resync (default --iptables-resync 5s).
	mode := "nftables"
	if _, err := exec.LookPath("iptables"); err == nil {
		mode = "iptables"
	}
	if mode == "iptables" {
		c.sh(h1, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
		waitFor(t, "masquerade rules restored", 15*time.Second, func() bool {
			return strings.Contains(c.sh(h1, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"), "MASQUERADE")
		})
	} else {
		c.sh(h1, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
		waitFor(t, "masquerade rules restored", 15*time.Second, func() bool {
			return strings.Contains(c.sh(h1, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg"), "masquerade")
		})
	}
}
